"""A run's settings, resolved once before training starts: what the data decides (an image folder's
classes and validation size), what the device decides (``--amp auto``'s timed choice, channels-last),
and the checks that need both. The loop, checkpoints and reports then read them and never change them;
settings.json records them, so a resumed run computes as it started."""

from __future__ import annotations

import math

import torch

from ..core.devices import resolve_precision
from ..core.errors import ConfigError
from ..core.progress import Tasks
from ..core.settings import Settings
from ..data.loading import settings_for_data
from ..data.sets import Data
from ..model.resnet import freeze_backbone, resnet34
from . import distributed
from .precision_probe import step_seconds


def settings_for_run(
    settings: Settings, data: Data, device: torch.device, tasks: Tasks | None = None
) -> tuple[Settings, str, list[str]]:
    """The settings of this run on this data and device, why its precision was chosen, and notes (what
    ``--lr auto`` found)."""
    settings = settings_for_data(settings, data)
    settings, notes = _learning_rate(settings, data, tasks)
    t = settings.train
    if t.patience is not None and len(data.val) == 0:
        raise ConfigError("--patience needs a validation split to watch", "drop --patience, or set --val-size above 0")
    if t.select_by == "balanced" and len(data.val) == 0:
        raise ConfigError(
            "--select-by balanced needs a validation split to score", "drop --select-by, or set --val-size above 0"
        )
    n_batches = math.ceil(len(data.train) / (t.batch_size * t.accum_steps))
    run_steps = t.epochs * min(n_batches, t.limit_batches or n_batches)
    timer = None if device.type != "cpu" or distributed.launched_by_torchrun() else step_timer(settings, device)
    precision = resolve_precision(t.amp, t.channels_last, device, timer=timer, run_steps=run_steps)
    train = t.model_copy(update={"amp": precision.amp, "channels_last": precision.channels_last})
    return settings.model_copy(update={"train": train}), precision.reason, notes


def _learning_rate(settings: Settings, data: Data, tasks: Tasks | None) -> tuple[Settings, list[str]]:
    """``--lr auto``: the range test's suggestion, recorded in the run's settings (a resume keeps it)."""
    if settings.train.lr != "auto":
        return settings, []
    if distributed.launched_by_torchrun():
        raise ConfigError(
            "--lr auto is not run under torchrun (each process would find its own rate)",
            "run `cifar-resnet lr-find` with the same settings first and pass its suggestion as --lr",
        )
    from .lr_find import lr_find

    found = lr_find(settings, data=data, plot=None, tasks=tasks)
    lr = min(found.suggested_lr, 10.0)
    note = (
        f"--lr auto: the range test ({found.steps} steps) suggests {lr:.3g} (steepest descent of the smoothed "
        f"loss; the minimum / 10 is {found.min_loss_lr_div10:.3g}): training with {lr:.3g}"
    )
    train = settings.train.model_copy(update={"lr": lr})
    return settings.model_copy(update={"train": train}), [note]


def step_timer(settings: Settings, device: torch.device):
    """Seconds per training step of this run's model and batch, for ``--amp auto`` to compare precisions;
    under torchrun every rank would time differently, so there it keeps the rule (devices.py)."""
    m, t = settings.model, settings.train

    def timer(amp: str, channels_last: bool) -> float:
        model = resnet34(num_classes=settings.num_classes, stem=m.stem)
        if t.freeze_backbone:
            freeze_backbone(model)
        return step_seconds(
            model,
            batch=t.batch_size,
            image_size=m.image_size,
            num_classes=settings.num_classes,
            device=device,
            amp=amp,
            channels_last=channels_last,
        )

    return timer
