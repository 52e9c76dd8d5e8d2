"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks"):
train from the run's own starting point while the learning rate grows exponentially, and read a good
peak rate off the loss curve. Nothing is saved and no run folder is touched.

The loss is smoothed with a bias-corrected exponential average (as fastai's ``lr_find``); the test
stops early once it exceeds 4x its minimum. Two readings are reported: the steepest descent of the
smoothed loss against log(lr) (``suggested_lr``), and the rate at the minimum divided by 10.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from ..core.devices import device_description, resolve_device
from ..core.errors import ConfigError
from ..core.fileio import check_writable
from ..core.progress import Tasks, task
from ..core.settings import Settings
from ..data.loading import load_data_for, settings_for_data
from ..data.presets import TrainTransform
from ..data.sets import Data
from ..measure.evaluate import autocast
from ..measure.plots import PlotUnavailable, plot_lr_find
from ..model.resnet import freeze_backbone
from .sampling import balanced_weights, class_counts, epoch_order, step_generator
from .setup import initial_model, make_optimizer

SMOOTHING = 0.98  # weight of the running average: about the last 50 steps
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum


class LrFindResult(BaseModel):
    suggested_lr: float  # steepest descent of the smoothed loss against log(lr)
    min_loss_lr_div10: float  # the rate at the lowest smoothed loss, divided by 10
    start_lr: float
    end_lr: float
    steps: int  # steps taken (fewer than asked when the loss diverged)
    stopped_early: bool
    lrs: list[float]
    losses: list[float]  # raw
    smoothed: list[float]
    plot: str | None
    device: str
    warnings: list[str]


def lr_find(
    settings: Settings,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    plot: Path | None = None,
    data: Data | None = None,
    tasks: Tasks | None = None,
) -> LrFindResult:
    """The range test from the settings' data, model, initialisation, freezing and optimiser."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"--start-lr {start_lr:g} must be above 0 and below --end-lr {end_lr:g}")
    steps = settings.train.lr_find_steps
    if plot is not None:
        check_writable(plot, force=True, what="--plot file")
    device = resolve_device(settings.device)
    data = data if data is not None else load_data_for(settings, tasks=tasks)
    settings = settings_for_data(settings, data)
    if settings.train.lr == "auto":  # the test sets every rate itself; the optimiser needs a number to start
        settings = settings.model_copy(update={"train": settings.train.model_copy(update={"lr": 1.0})})
    if len(data.train) < settings.train.batch_size:
        raise ConfigError(
            f"the training split has {len(data.train)} images, fewer than one batch of {settings.train.batch_size}",
            "lower --batch-size, or add images",
        )
    lrs, losses = _sweep(settings, data, device, steps, start_lr, end_lr, tasks)
    smoothed = _smooth(losses)
    suggested, at_min = _readings(lrs, smoothed)
    warnings = []
    if data.synthetic:
        warnings.append("on SYNTHETIC data: the suggestion says nothing about real images")
    plotted = None
    if plot is not None:
        try:
            plot_lr_find(lrs, smoothed, suggested, plot)
            plotted = str(plot)
        except PlotUnavailable as exc:
            warnings.append(f"no plot: {exc.hint}")
    return LrFindResult(
        suggested_lr=suggested,
        min_loss_lr_div10=at_min / 10,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=len(lrs),
        stopped_early=len(lrs) < steps,
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        plot=plotted,
        device=device_description(device),
        warnings=warnings,
    )


def _sweep(
    settings: Settings, data: Data, device: torch.device, steps: int, start: float, end: float, tasks: Tasks | None
) -> tuple[list[float], list[float]]:
    """One training step per rate, from ``start`` to ``end`` geometrically; stops when the loss diverges."""
    t = settings.train
    init = initial_model(settings, data)
    model = init.model.to(device)
    if t.freeze_backbone:
        freeze_backbone(model)
    model.train()
    optimizer = make_optimizer(model, settings)
    transform = TrainTransform(t, init.meta.mean, init.meta.std, settings.model.image_size, settings.num_classes)
    weight = None
    if t.class_weights == "balanced":
        weight = balanced_weights(class_counts(data.train.labels, settings.num_classes)).to(device)
    amp = t.amp if t.amp in ("bf16", "fp16") else "off"  # auto would time both first: fp32 is the safe reading
    train = data.train.to(device)
    order = torch.cat([epoch_order(len(train), t.seed, e) for e in range(1, 2 + steps * t.batch_size // len(train))])
    lrs, losses, best = [], [], math.inf
    with task(tasks, f"lr-find: {steps} steps from {start:g} to {end:g}", steps) as bar:
        for i in range(steps):
            lr = start * (end / start) ** (i / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr * group["peak_lr"] / t.lr
            idx = order[i * t.batch_size : (i + 1) * t.batch_size].to(device)
            x, y = transform(train.images[idx], train.labels[idx], step_generator(t.seed, i, 0))
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, weight=weight, label_smoothing=t.label_smoothing)
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            bar.advance()
            smooth = _smooth(losses)[-1]
            best = min(best, smooth)
            if not math.isfinite(value) or smooth > DIVERGED * best:
                break
            loss.backward()
            optimizer.step()
    return lrs, losses


def _smooth(losses: list[float]) -> list[float]:
    out, avg = [], 0.0
    for i, value in enumerate(losses, start=1):
        avg = SMOOTHING * avg + (1 - SMOOTHING) * (value if math.isfinite(value) else 1e12)
        out.append(avg / (1 - SMOOTHING**i))
    return out


def _readings(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(steepest descent, rate at the minimum) of the smoothed curve, before it turns up for good. The
    first tenth of the steps is skipped: the average has not settled there."""
    low = min(range(len(smoothed)), key=lambda i: smoothed[i])
    skip = max(1, len(smoothed) // 10)
    span = range(skip, max(low, skip + 1))
    if len(span) < 2:
        return lrs[low], lrs[low]
    slopes = {
        i: (smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        for i in span
        if i + 1 < len(lrs)
    }
    steepest = min(slopes, key=lambda i: slopes[i]) if slopes else low
    return lrs[steepest], lrs[low]
