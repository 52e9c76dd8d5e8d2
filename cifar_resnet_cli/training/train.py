"""``train``: feature extraction or fine-tuning of the ResNet34 on CIFAR, resumable and honest.

The data stay on the training device as uint8 tensors; each step indexes a batch, augments it
there (crop, flip, CutMix/MixUp), normalises it, and takes one optimiser step. The learning rate is
a pure function of the global step (warm-up, then the schedule), so resuming needs only the step.
The best checkpoint is chosen on the validation split; the test set is scored once, at the end.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch.nn.parallel import DistributedDataParallel

from ..core.devices import device_description, resolve_device
from ..core.errors import CheckpointError, ConfigError, TrainingDiverged, TrainingInterrupted
from ..core.fileio import remove_temporaries
from ..core.progress import NoTasks, Tasks, task
from ..core.settings import Settings, parse_checkpoint_every
from ..data.augment import preprocess
from ..data.loading import load_data_for
from ..data.presets import TrainTransform
from ..data.sets import Data, ImageSet
from ..measure.class_metrics import balanced_accuracy
from ..measure.evaluate import Scores, autocast, evaluate_model, merge, score_logits
from ..measure.plots import PlotUnavailable, plot_curves
from ..model.resnet import ResNet, freeze_backbone
from ..model.weights import WeightsMeta, load_model, model_from_tensors
from . import distributed, rundir
from .checkpoint import (
    CheckpointClock,
    Checkpointer,
    Generation,
    Progress,
    StopRequest,
    read_generation,
    restore_optimizer,
    stop_on_signals,
)
from .distributed import DistContext, DistributedError, all_reduce_sum, barrier, broadcast_object
from .ema import WeightsEma
from .plan import settings_for_run
from .sampling import balanced_draw, balanced_weights, class_counts, epoch_order, imbalance_note, step_generator
from .setup import Init, initial_model, make_optimizer, param_groups
from .sinks import MetricsSinks, tensorboard_enabled

# param_groups, initial_model and make_optimizer (setup.py) stay importable from here.
__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "initial_model",
    "make_optimizer",
    "param_groups",
    "train",
]

# Settings that may change when a run is resumed (they do not change the result); others are refused.
RESUMABLE_CHANGES = {
    ("train", "epochs"),
    ("device",),
    ("train", "checkpoint_every"),
    ("train", "log_interval"),
    ("train", "tensorboard"),
}


class EpochMetrics(BaseModel):
    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    val_loss: float | None
    val_top1: float | None
    val_top5: float | None
    val_balanced_accuracy: float | None = None  # mean per-class recall on validation
    val_score: float | None = None  # what --select-by picks the best epoch by (top-1 or balanced accuracy)
    epoch_time_s: float
    images_per_s: float
    best: bool
    train_samples: int = 0  # images trained on in the epoch, all ranks together
    val_samples: int = 0  # images scored for validation, all ranks together


class TrainResult(BaseModel):
    run_dir: str
    best_checkpoint: str  # selected on the validation split: what to eval, export and ship
    last_checkpoint: str
    dataset: str
    synthetic: bool
    init: str
    pretrained: bool
    mode: str
    feature_cache: bool
    feature_cache_note: str | None
    epochs: int
    steps_per_epoch: int
    train_images: int
    val_images: int
    test_images: int
    best_epoch: int
    best_val_top1: float | None  # validation top-1 of the best epoch
    select_by: str = "top1"  # what picked the best epoch: top1, or balanced (accuracy)
    best_val_balanced_accuracy: float | None = None  # validation balanced accuracy of the best epoch
    class_counts: dict[str, int] = {}  # training images per class
    class_weights: str = "none"
    sampler: str = "uniform"
    test_top1: float | None  # None: the data has no test set (an image folder without test/)
    test_top5: float | None
    test_loss: float | None
    train_time_s: float  # epochs, plus the feature extraction of a cached-feature run
    feature_extraction_s: float = 0.0
    feature_images_per_s: float | None = None  # cached-feature runs: backbone forward, train + val images
    head_images_per_s: float | None = None  # cached-feature runs: the head's training epochs
    total_time_s: float
    images_per_s: float
    resumed_from_epoch: int | None
    stopped_early_epoch: int | None = None  # --patience stopped the run after this epoch
    ema: bool = False  # best.safetensors and top/ hold the EMA weights (--ema-decay with --ema-eval)
    precision: str = ""  # what --amp and --channels-last became, and why
    device: str
    processes: int = 1
    history: list[EpochMetrics]
    warnings: list[str]
    skipped_files: list[str] = []  # image folders: every file that could not be read, with the reason


class TrainProgress(Tasks, Protocol):
    """What the training loop reports while it runs (and, as :class:`Tasks`, its long steps:
    feature extraction, validation, the test); ``report.py`` draws it on stderr."""

    def start(self, *, run_dir: str, epochs: int, first_epoch: int, steps: int) -> None: ...
    def step(self, *, epoch: int, step: int, steps: int, loss: float, top1: float, lr: float, ips: float) -> None: ...
    def epoch_end(self, metrics: EpochMetrics) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


class NullProgress(NoTasks):
    def start(self, **_: Any) -> None: ...
    def step(self, **_: Any) -> None: ...
    def epoch_end(self, metrics: EpochMetrics) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Learning rate: a pure function of the step.
# ---------------------------------------------------------------------------------------------


def lr_factor(
    step: int,
    *,
    total: int,
    steps_per_epoch: int,
    warmup: int,
    schedule: str,
    step_size: int,
    milestones: list[int],
    gamma: float,
) -> float:
    """The multiplier of the peak learning rate at optimisation step ``step`` (0-based)."""
    if schedule == "onecycle":
        # One-cycle (Smith & Topin, 2018): linear rise from lr/25 over the warm-up (default 30% of
        # the steps), then cosine annealing to zero.
        rise = warmup or max(1, int(0.3 * total))
        if step < rise:
            return 1 / 25 + (1 - 1 / 25) * step / rise
        t = (step - rise) / max(1, total - rise)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if step < warmup:
        return (step + 1) / warmup
    epoch = step // steps_per_epoch
    if schedule == "cosine":  # SGDR without restarts (Loshchilov & Hutter, 2017)
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "step":
        return gamma ** (epoch // step_size)
    if schedule == "multistep":
        return gamma ** sum(epoch >= m for m in milestones)
    return 1.0


def _schedule_args(settings: Settings, steps_per_epoch: int) -> dict[str, Any]:
    t = settings.train
    return {
        "total": t.epochs * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "warmup": round(t.warmup_epochs * steps_per_epoch),
        "schedule": t.schedule,
        "step_size": t.step_size or max(1, t.epochs // 3),
        "milestones": t.milestones if t.milestones is not None else [max(1, t.epochs // 2), max(1, t.epochs * 3 // 4)],
        "gamma": t.gamma,
    }


def settings_for_resume(run_dir: Path, overrides: dict[str, Any]) -> Settings:
    """The run's own settings, with only the flags given now on top; incompatible changes refused.

    The environment and TOML files are not consulted: a resumed run continues as it started.
    """
    from ..core.settings import load_settings

    saved = rundir.read_json(run_dir / rundir.SETTINGS)
    if isinstance(saved.get("data"), dict):  # runs from before the stratified split drew it at random
        saved["data"].setdefault("val_split", "random")
    settings = load_settings(overrides=overrides, base=saved)
    before, after = Settings.model_validate(saved).model_dump(mode="json"), settings.model_dump(mode="json")
    changed = []
    for section, value in after.items():
        if isinstance(value, dict):
            changed += [
                ((section, k), before[section].get(k), v) for k, v in value.items() if before[section].get(k) != v
            ]
        elif before.get(section) != value:
            changed.append(((section,), before.get(section), value))
    refused = [c for c in changed if c[0] not in RESUMABLE_CHANGES]
    if refused:
        what = "; ".join(f"{'.'.join(k)}: {a!r} -> {b!r}" for k, a, b in refused)
        raise ConfigError(
            f"cannot resume {run_dir} with different settings ({what})",
            "resume may change only --epochs, --device, --checkpoint-every, --log-interval and --tensorboard; "
            "start a new run for anything else",
        )
    return settings


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def _features(
    model: ResNet,
    images: torch.Tensor,
    meta: WeightsMeta,
    image_size: int,
    batch: int,
    channels_last: bool,
    amp: str,
    tasks: Tasks,
    what: str,
) -> torch.Tensor:
    out = []
    with task(tasks, f"extracting {what} features ({len(images)} images)", -(-len(images) // batch)) as bar:
        for start in range(0, len(images), batch):
            x = preprocess(images[start : start + batch], meta.mean, meta.std, image_size, channels_last=channels_last)
            with autocast(images.device, amp):
                out.append(model.forward_features(x).float())
            bar.advance()
    return torch.cat(out) if out else torch.empty(0, model.fc.in_features, device=images.device)


def _shard(index: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's part of a batch (or split): contiguous, sizes differing by at most one."""
    return torch.tensor_split(index, ctx.world_size)[ctx.rank] if ctx.enabled else index


def _reduce_scores(scores: Scores, ctx: DistContext, device: torch.device) -> Scores:
    """Sum the scores of every rank's shard: each sample counted exactly once."""
    if not ctx.enabled:
        return scores
    k = scores.confusion.shape[0]
    packed = torch.cat(
        [
            torch.tensor([scores.loss_sum, scores.top1, scores.top5, scores.count], dtype=torch.float64),
            scores.confusion.flatten().double(),
        ]
    ).to(device)
    total = all_reduce_sum(packed, ctx).cpu()
    return Scores(float(total[0]), int(total[1]), int(total[2]), int(total[3]), total[4:].round().long().view(k, k))


def _evaluate(
    model: ResNet,
    split: ImageSet,
    settings: Settings,
    template: WeightsMeta,
    ctx: DistContext,
    device: torch.device,
    *,
    amp: str,
    channels_last: bool,
    features: torch.Tensor | None = None,
    tasks: Tasks | None = None,
    label: str = "evaluating",
) -> Scores:
    """Scores on a split; under torchrun each rank scores its shard and the sums are reduced."""
    local = _shard(torch.arange(len(split)), ctx).to(split.labels.device)
    if features is not None:  # cached features: the head alone
        with torch.inference_mode():
            model.eval()
            parts = [
                score_logits(
                    model.fc(features[local[s : s + 4096]]), split.labels[local[s : s + 4096]], settings.num_classes
                )
                for s in range(0, len(local), 4096)
            ]
        scores = merge(parts, settings.num_classes)
    else:
        scores = evaluate_model(
            model,
            split.subset(local),
            mean=template.mean,
            std=template.std,
            image_size=settings.model.image_size,
            num_classes=settings.num_classes,
            batch_size=settings.eval.batch_size,
            amp=amp,
            channels_last=channels_last,
            tasks=tasks,
            label=label,
        )
    return _reduce_scores(scores, ctx, device)


def train(settings: Settings, progress: TrainProgress | None = None, *, resume: Path | None = None) -> TrainResult:
    """Train as ``settings`` say; write the run directory; return the summary.

    Under ``torchrun`` every rank runs this; rank 0 alone writes files and reports progress.
    """
    ctx, device = distributed.setup(resolve_device(settings.device), settings.train.dist_timeout)
    shown = (progress or NullProgress()) if ctx.is_main else NullProgress()
    try:
        return _train(settings, shown, resume, ctx, device)
    finally:
        shown.stop()  # the display (and the terminal cursor) restored however training ends
        distributed.teardown()


def _train(
    settings: Settings, progress: TrainProgress, resume: Path | None, ctx: DistContext, device: torch.device
) -> TrainResult:
    started = time.perf_counter()
    _check_runtime(settings, device, ctx)
    data = load_data_for(settings, tasks=progress).to(device)
    settings, precision, notes = settings_for_run(settings, data, device, progress)  # once: read-only from here
    warnings = [*data.notes, *notes, *_warnings(settings, data, ctx)]
    with stop_on_signals(progress.note) as stop:
        init = None
        if resume is None:
            init = initial_model(settings, data) if ctx.is_main else None
            barrier(ctx)  # rank 0 may have ported ImageNet weights into the cache; now every rank can read them
            if not ctx.is_main:
                init = initial_model(settings, data)
            if init.note:
                warnings.append(init.note)
        with _run_folder(settings, resume, ctx) as run_dir:
            stop.resume_hint = f"resume with: cifar-resnet train --resume {run_dir}"
            gen = read_generation(run_dir) if resume is not None else None
            loop, start = _prepare(settings, data, ctx, device, run_dir, gen, init, progress, stop)
            progress.start(
                run_dir=str(run_dir), epochs=settings.train.epochs, first_epoch=start.epoch + 1, steps=loop.steps
            )
            loop.run(start)
            result = _finish(loop, started, start.epoch if gen is not None else None, warnings)
            return result.model_copy(update={"precision": precision})


def _check_runtime(settings: Settings, device: torch.device, ctx: DistContext) -> None:
    t = settings.train
    if t.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA", "use --amp bf16 on the CPU")
    if t.batch_size < ctx.world_size:
        raise ConfigError(
            f"--batch-size {t.batch_size} is smaller than the {ctx.world_size} processes",
            "--batch-size is the global batch, split over the processes",
        )
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _warnings(settings: Settings, data: Data, ctx: DistContext) -> list[str]:
    warnings = []
    if data.synthetic:
        warnings.append("training on SYNTHETIC data (a built-in stand-in), not CIFAR")
    if len(data.val) == 0:
        warnings.append("no validation split (--val-size 0): best.safetensors is simply the last epoch")
    if settings.train.sync_bn and not ctx.enabled:
        warnings.append("--sync-bn has nothing to synchronise on one process: plain BatchNorm it is")
    note = imbalance_note(class_counts(data.train.labels, len(data.classes)), data.classes)
    t = settings.train
    if note and t.class_weights == "none" and t.sampler == "uniform":
        warnings.append(note)
    return warnings


@contextmanager
def _run_folder(settings: Settings, resume: Path | None, ctx: DistContext) -> Iterator[Path]:
    """The run folder, locked by rank 0 while it trains there, with a killed writer's temporary files
    removed. A new folder that fails before its first checkpoint is removed again: it holds nothing
    that could be resumed or read."""
    t = settings.train
    run_dir, created = resume, False
    if resume is None:
        made = None
        if ctx.is_main:
            made = rundir.create_run_dir(t.runs_dir, t.name or "train")
            created = True
        run_dir = Path(broadcast_object(str(made) if made else None, ctx))
    assert run_dir is not None
    try:
        with rundir.locked(run_dir) if ctx.is_main else nullcontext():
            if ctx.is_main:
                remove_temporaries(run_dir)
                if created:
                    rundir.write_json(run_dir / rundir.SETTINGS, settings.model_dump(mode="json"))
            barrier(ctx)
            yield run_dir
    except BaseException:
        if created and not (run_dir / rundir.LAST_STATE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@dataclass
class _Sums:
    """Running sums of an epoch on this rank (rank 0 also carries a resumed epoch's earlier part)."""

    loss: torch.Tensor
    correct: int = 0
    seen: int = 0
    samples: int = 0

    def totals(self, ctx: DistContext, device: torch.device) -> list[float]:
        packed = torch.tensor([float(self.loss), self.correct, self.seen, self.samples], dtype=torch.float64)
        return all_reduce_sum(packed.to(device), ctx).tolist()


@dataclass
class _Loop:
    """One training run's state between steps: the model, its optimiser, the data, the history."""

    settings: Settings
    ctx: DistContext
    device: torch.device
    data: Data
    model: ResNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ckpt: Checkpointer
    progress: TrainProgress
    stop: StopRequest
    steps: int
    n_batches: int
    sched: dict[str, Any]
    forward: torch.nn.Module | None = None
    head: torch.nn.Module | None = None
    cached: bool = False
    train_feats: torch.Tensor | None = None
    val_feats: torch.Tensor | None = None
    extract_s: float = 0.0
    history: list[EpochMetrics] = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int = 0
    train_time: float = 0.0
    head_times: list[float] = field(default_factory=list)
    ema: WeightsEma | None = None
    stopped_early: int | None = None  # the epoch --patience stopped at
    class_weight: torch.Tensor | None = None  # --class-weights balanced: the loss weight of each class

    @property
    def template(self) -> WeightsMeta:
        return self.ckpt.template

    @cached_property
    def transform(self) -> TrainTransform:
        """Every augmentation of this run, normalised as its checkpoints say (data/presets.py)."""
        m, s = self.template, self.settings
        return TrainTransform(s.train, m.mean, m.std, s.model.image_size, s.num_classes)

    def run(self, start: Progress) -> None:
        t = self.settings.train
        clock = CheckpointClock(*parse_checkpoint_every(t.checkpoint_every), time.monotonic)
        first_step, partial = start.step_in_epoch, start.partial
        for epoch in range(start.epoch + 1, t.epochs + 1):
            self._epoch(epoch, first_step, partial, clock)
            first_step, partial = 0, None
            if t.patience is not None and epoch - self.best_epoch >= t.patience and epoch < t.epochs:
                self.stopped_early = epoch
                self.progress.note(
                    f"early stop: no better validation top-1 in {t.patience} epochs "
                    f"(best {self.best_top1:.2%} at epoch {self.best_epoch})"
                )
                break

    def _epoch(self, epoch: int, first_step: int, partial: dict[str, float] | None, clock: CheckpointClock) -> None:
        """Train one epoch from ``first_step`` (mid-epoch on resume), then validate, record and save."""
        sums, coverage, seen_before, epoch_time = self._train_epoch(epoch, first_step, partial, clock)
        # Every sample of the epoch seen exactly once across the ranks (fewer with --limit-batches).
        coverage = all_reduce_sum(coverage, self.ctx)
        if int(coverage.max()) > 1 or (first_step == 0 and self.steps == self.n_batches and int(coverage.min()) < 1):
            raise DistributedError(f"epoch {epoch}: the ranks did not share the data exactly once")
        self._end_epoch(epoch, sums.totals(self.ctx, self.device), seen_before, epoch_time, clock)

    def _train_epoch(
        self, epoch: int, first_step: int, partial: dict[str, float] | None, clock: CheckpointClock
    ) -> tuple[_Sums, torch.Tensor, int, float]:
        """The optimisation steps of one epoch: the running sums, which samples were seen, and the time."""
        t, ctx, device = self.settings.train, self.ctx, self.device
        self.model.train()
        n_train = len(self.data.train)
        # Positions in the epoch, shared out once each; they name images through the sampler's draw.
        batches = torch.tensor_split(epoch_order(n_train, t.seed, epoch).to(device), self.n_batches)[: self.steps]
        draw = balanced_draw(self.data.train.labels, t.seed, epoch).to(device) if t.sampler == "balanced" else None
        before = partial if partial is not None and ctx.is_main else {}
        loss0 = torch.tensor(before.get("loss_sum", 0.0), dtype=torch.float64, device=device)
        sums = _Sums(loss0, *(int(before.get(k, 0)) for k in ("correct", "seen", "samples")))
        seen_before = int(partial["seen"]) if partial else 0
        coverage = torch.zeros(n_train, device=device, dtype=torch.int32)
        epoch_start = time.perf_counter()
        for i in range(first_step, self.steps):
            idx = _shard(batches[i], ctx)
            coverage[idx] += 1
            images = idx if draw is None else draw[idx]
            loss_total, logits, labels = self._step(epoch, i, images, len(batches[i]))
            sums.loss += loss_total.double()
            sums.correct += int((logits.argmax(1) == labels).sum())
            sums.seen += len(idx)
            sums.samples += len(idx)
            if ctx.is_main:
                ips = (sums.seen - seen_before) * ctx.world_size / max(time.perf_counter() - epoch_start, 1e-9)
                self.progress.step(
                    epoch=epoch,
                    step=i + 1,
                    steps=self.steps,
                    loss=float(sums.loss) / max(sums.seen, 1),
                    top1=sums.correct / max(sums.seen, 1),
                    lr=self.optimizer.param_groups[-1]["lr"],
                    ips=ips,
                )
            self._save_if_due(epoch, i, sums, clock)
        epoch_time = time.perf_counter() - epoch_start
        self.train_time += epoch_time
        if self.cached:
            self.head_times.append(epoch_time)
        return sums, coverage, seen_before, epoch_time

    def _save_if_due(self, epoch: int, i: int, sums: _Sums, clock: CheckpointClock) -> None:
        """Inside an epoch: save a resumable state when the clock says so or a signal came (then stop)."""
        ctx, device = self.ctx, self.device
        due = ctx.is_main and clock.tick()
        flags = all_reduce_sum(torch.tensor([float(self.stop.signum is not None), float(due)], device=device), ctx)
        if (flags[0] > 0 or flags[1] > 0) and i + 1 < self.steps:
            totals = sums.totals(ctx, device)
            partial_now = {
                "loss_sum": totals[0],
                "correct": int(totals[1]),
                "seen": int(totals[2]),
                "samples": int(totals[3]),
            }
            step = (epoch - 1) * self.steps + i + 1
            self._save(Progress(epoch - 1, i + 1, step, self.best_top1, self.best_epoch, partial_now), clock)
            if flags[0] > 0:
                raise self._interrupted(f"at epoch {epoch}, step {i + 1}/{self.steps}")

    def _end_epoch(self, epoch: int, totals: list[float], seen_before: int, epoch_time: float, clock) -> None:
        """Validate, record the epoch's metrics, save the epoch-end state, and stop if a signal came."""
        val = self._validate(epoch)
        balanced = balanced_accuracy(val.confusion) if val is not None else None
        by_balanced = self.settings.train.select_by == "balanced"
        score = (balanced if by_balanced else val.top1_acc) if val is not None else float(epoch)
        is_best = score > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = score, epoch
        metrics = EpochMetrics(
            epoch=epoch,
            lr=self.optimizer.param_groups[-1]["lr"],
            train_loss=totals[0] / max(totals[2], 1),
            train_top1=totals[1] / max(totals[2], 1),
            val_loss=val.loss if val else None,
            val_top1=val.top1_acc if val else None,
            val_top5=val.top5_acc if val else None,
            val_balanced_accuracy=balanced,
            val_score=score if val else None,
            epoch_time_s=epoch_time,
            images_per_s=(totals[2] - seen_before) / max(epoch_time, 1e-9),
            best=is_best,
            train_samples=int(totals[3]),
            val_samples=val.count if val else 0,
        )
        self.history.append(metrics)
        self._save(Progress(epoch, 0, epoch * self.steps, self.best_top1, self.best_epoch), clock)
        self.progress.epoch_end(metrics)
        stop = all_reduce_sum(torch.tensor([float(self.stop.signum is not None)], device=self.device), self.ctx)
        if stop[0] > 0 and epoch < self.settings.train.epochs:
            raise self._interrupted(f"after epoch {epoch}")

    def _step(self, epoch: int, i: int, idx: torch.Tensor, global_batch: int):
        """One optimisation step on this rank's share ``idx`` of the batch (``--accum-steps`` forward and
        backward passes, then one update); returns its summed loss, logits and labels (detached)."""
        t, ctx = self.settings.train, self.ctx
        global_step = (epoch - 1) * self.steps + i
        factor = lr_factor(global_step, **self.sched)
        for group in self.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        inputs, target, labels = self._inputs(global_step, idx)
        self.optimizer.zero_grad(set_to_none=True)
        losses, logits = [], []
        parts = [
            (x, y)
            for x, y in zip(inputs.tensor_split(t.accum_steps), target.tensor_split(t.accum_steps), strict=True)
            if len(x)
        ]  # a short last batch may not fill every part
        for k, (x, y) in enumerate(parts):
            # Sum over this rank's images / global batch x ranks: DDP's average of the ranks' gradients is
            # then the gradient of the global mean loss, whatever the shard and micro-batch sizes.
            with self._no_sync(last=k == len(parts) - 1):
                with autocast(self.device, t.amp):
                    out = self.head(x) if self.cached else self.forward(x)
                loss_total = F.cross_entropy(
                    out.float(), y, weight=self.class_weight, label_smoothing=t.label_smoothing, reduction="sum"
                )
                loss = loss_total * (ctx.world_size / global_batch)
                bad = all_reduce_sum(torch.tensor([float(not bool(torch.isfinite(loss)))], device=self.device), ctx)
                if bad[0] > 0:  # on any rank: every rank stops before its backward pass, none steps
                    raise TrainingDiverged(
                        f"the loss became {float(loss.detach())} at epoch {epoch}, step {i + 1}; last good "
                        f"checkpoint: {self.ckpt.last_good()}",
                        "lower --lr, add --warmup-epochs or --clip-grad, or turn off --amp fp16",
                    )
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            losses.append(loss_total.detach())
            logits.append(out.detach())
        self._update(global_step)
        return torch.stack(losses).sum(), torch.cat(logits), labels

    def _inputs(self, global_step: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch as the model sees it: cached features, or images augmented (all draws from the
        step's generator, over the whole batch, so accumulation does not change them) and normalised."""
        labels = self.data.train.labels[idx]
        if self.cached:
            return self.train_feats[idx], labels, labels
        rng = step_generator(self.settings.train.seed, global_step, self.ctx.rank)
        x, target = self.transform(self.data.train.images[idx], labels, rng)
        return x, target, labels

    def _no_sync(self, *, last: bool):
        """Under DDP, gradients are all-reduced once per step: on the last micro-batch."""
        module = self.head if self.cached else self.forward
        sync = getattr(module, "no_sync", None)
        return nullcontext() if last or sync is None else sync()

    def _update(self, global_step: int) -> None:
        """Clip (``--clip-grad``), step the optimiser, and move the EMA of the weights."""
        t = self.settings.train
        if t.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, t.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, global_step)

    def _validate(self, epoch: int) -> Scores | None:
        """Validation scores (they select the best checkpoint); a non-finite loss stops the run."""
        if not len(self.data.val):
            return None
        t = self.settings.train
        model = self.ema.model if self.ema is not None and t.ema_eval else self.model
        val = _evaluate(
            model,
            self.data.val,
            self.settings,
            self.template,
            self.ctx,
            self.device,
            amp=t.amp,
            channels_last=t.channels_last,
            features=self.val_feats,
            tasks=self.progress,
            label=f"validation, epoch {epoch}",
        )
        if not math.isfinite(val.loss):
            raise TrainingDiverged(
                f"the validation loss became {val.loss} at epoch {epoch} (the weights have blown up); this epoch was "
                f"not saved; last good checkpoint: {self.ckpt.last_good()}",
                "lower --lr, add --warmup-epochs, or turn off --amp fp16",
            )
        return val

    def _save(self, progress: Progress, clock: CheckpointClock) -> None:
        progress.history = [h.model_dump() for h in self.history]
        self.ckpt.save(self.model, self.optimizer, self.scaler, progress, self.ema.tensors() if self.ema else None)
        clock.reset()
        barrier(self.ctx)

    def _interrupted(self, where: str) -> TrainingInterrupted:
        name = self.stop.name or "a signal on another process"
        return TrainingInterrupted(
            f"{name}: stopped {where}; state saved in {self.ckpt.run_dir}",
            self.stop.resume_hint,
            signum=self.stop.signum or signal.SIGTERM,
        )


def _prepare(
    settings: Settings,
    data: Data,
    ctx: DistContext,
    device: torch.device,
    run_dir: Path,
    gen: Generation | None,
    init: Init | None,
    progress: TrainProgress,
    stop: StopRequest,
) -> tuple[_Loop, Progress]:
    """The model (new or from the checkpoint), its optimiser, and where training starts."""
    t = settings.train
    start = Progress(epoch=0, step_in_epoch=0, global_step=0, best_top1=-1.0, best_epoch=0)
    if gen is not None:
        start = gen.progress
        _check_resumable(run_dir, start, t.epochs)
        model = model_from_tensors(gen.weights, gen.meta, run_dir / rundir.LAST_STATE, num_classes=settings.num_classes)
        template = gen.meta
    else:
        assert init is not None
        model, template = init.model, init.meta
    if t.freeze_backbone:
        freeze_backbone(model)
    if t.sync_bn and ctx.enabled:
        distributed.convert_sync_batchnorm(model)
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    n_batches = math.ceil(len(data.train) / (t.batch_size * t.accum_steps))  # optimisation steps per epoch
    steps = min(n_batches, t.limit_batches or n_batches)
    sinks = MetricsSinks(run_dir, tensorboard=ctx.is_main and tensorboard_enabled(t.tensorboard))
    ckpt = Checkpointer(
        run_dir,
        template.model_copy(update={"run": run_dir.name}),
        write=ctx.is_main,
        sinks=sinks,
        best_from_ema=t.ema_decay > 0 and t.ema_eval,
        keep_top_k=t.keep_top_k,
    )
    loop = _Loop(
        settings=settings,
        ctx=ctx,
        device=device,
        data=data,
        model=model,
        optimizer=make_optimizer(model, settings),
        scaler=torch.amp.GradScaler("cuda") if t.amp == "fp16" else None,
        ckpt=ckpt,
        progress=progress,
        stop=stop,
        steps=steps,
        n_batches=n_batches,
        sched=_schedule_args(settings, steps),
    )
    if t.ema_decay > 0:
        loop.ema = WeightsEma(model, t.ema_decay)
    if t.class_weights == "balanced":
        loop.class_weight = balanced_weights(class_counts(data.train.labels, settings.num_classes)).to(device)
    if gen is not None:
        if loop.ema is not None:
            if gen.ema is None:
                raise CheckpointError(f"{run_dir / rundir.LAST_STATE} holds no EMA weights", "start a new run")
            loop.ema.load(gen.ema)
        restore_optimizer(loop.optimizer, gen)
        torch.set_rng_state(gen.rng)
        if loop.scaler is not None and gen.header["scaler"]:
            loop.scaler.load_state_dict(gen.header["scaler"])
        loop.history = [EpochMetrics.model_validate(r) for r in start.history]
        loop.best_top1, loop.best_epoch = start.best_top1, start.best_epoch
        for name in ckpt.repair(gen):
            progress.note(f"{name} was behind the checkpoint (stopped while saving): rewritten from it")
        barrier(ctx)
    _wrap(loop)
    return loop, start


def _check_resumable(run_dir: Path, start: Progress, epochs: int) -> None:
    done = start.epoch + (1 if start.step_in_epoch else 0)
    finished = start.epoch >= epochs and start.step_in_epoch == 0 and (run_dir / rundir.SUMMARY).is_file()
    if finished or done > epochs:
        raise ConfigError(
            f"{run_dir} has finished {start.epoch} epochs already",
            f"raise --epochs above {start.epoch} to train longer",
        )


def _wrap(loop: _Loop) -> None:
    """Feature cache, DDP and torch.compile around the model, as the settings ask."""
    t, ctx, model = loop.settings.train, loop.ctx, loop.model
    loop.cached = t.freeze_backbone and t.cache_features and loop.transform.is_identity
    if loop.cached:
        size, batch = loop.settings.model.image_size, loop.settings.eval.batch_size
        tick = time.perf_counter()
        args = (loop.template, size, batch, t.channels_last, t.amp, loop.progress)
        loop.train_feats = _features(model, loop.data.train.images, *args, "training")
        loop.val_feats = _features(model, loop.data.val.images, *args, "validation")
        loop.extract_s = time.perf_counter() - tick
        loop.train_time += loop.extract_s  # part of what training cost: counted in its time and images/s
    # Under torchrun, gradients are averaged by DistributedDataParallel: around the head alone when
    # the head trains on cached features, around the whole model otherwise.
    loop.head, loop.forward = model.fc, model
    if ctx.enabled:
        ids = [loop.device.index] if loop.device.type == "cuda" else None
        if loop.cached:
            loop.head = DistributedDataParallel(model.fc, device_ids=ids)
        else:
            loop.forward = DistributedDataParallel(model, device_ids=ids)
    if t.compile:
        loop.forward = torch.compile(loop.forward)


def _best_scores(history: list[EpochMetrics], best_epoch: int, select_by: str) -> dict[str, Any]:
    """The validation figures of the best epoch (None without validation)."""
    best = next((h for h in history if h.epoch == best_epoch), None)
    return {
        "best_val_top1": best.val_top1 if best is not None else None,
        "best_val_balanced_accuracy": best.val_balanced_accuracy if best is not None else None,
        "select_by": select_by,
    }


def _cache_figures(loop: _Loop) -> tuple[str | None, float | None, float | None]:
    """A cached-feature run: what the cache saved (a note), extraction and head images/s."""
    if not (loop.cached and loop.head_times):
        return None, None, None
    n, head_s, train_n = len(loop.head_times), sum(loop.head_times), len(loop.data.train)
    extract_ips = (train_n + len(loop.data.val)) / max(loop.extract_s, 1e-9)
    head_ips = n * train_n / max(head_s, 1e-9)
    per_epoch_uncached = loop.extract_s + head_s / n
    gain = n * per_epoch_uncached / (loop.extract_s + head_s)
    note = (
        f"features computed once in {loop.extract_s:.2f} s ({extract_ips:.0f} images/s); head epochs took "
        f"{head_s / n:.3f} s ({head_ips:.0f} images/s); without the cache each epoch would run the backbone "
        f"again (about {per_epoch_uncached:.2f} s): about {gain:.1f}x "
        f"faster over {n} epochs (estimated from the extraction time)"
    )
    return note, extract_ips, head_ips


def _finish(loop: _Loop, started: float, resumed_from: int | None, warnings: list[str]) -> TrainResult:
    """The test set, once, with the checkpoint chosen on validation; summary.json and the curves."""
    settings, ctx, device, data, t = loop.settings, loop.ctx, loop.device, loop.data, loop.settings.train
    run_dir = loop.ckpt.run_dir
    best_model, best_meta = load_model(run_dir / rundir.BEST)
    best_model.to(device)
    test = None
    if len(data.test):
        test = _evaluate(
            best_model,
            data.test,
            settings,
            best_meta,
            ctx,
            device,
            amp="off",
            channels_last=False,
            tasks=loop.progress,
            label="test, best checkpoint",
        )
    cache_note, extract_ips, head_ips = _cache_figures(loop)
    history = loop.history
    trained_images = sum(h.images_per_s * h.epoch_time_s for h in history[(resumed_from or 0) :])
    result = TrainResult(
        run_dir=str(run_dir),
        best_checkpoint=str(run_dir / rundir.BEST),
        last_checkpoint=str(run_dir / rundir.LAST),
        dataset=data.name,
        synthetic=data.synthetic,
        init=loop.template.source,
        pretrained=loop.template.pretrained,
        mode="feature extraction" if t.freeze_backbone else "fine-tuning",
        feature_cache=loop.cached,
        feature_cache_note=cache_note,
        epochs=t.epochs,
        steps_per_epoch=loop.steps,
        train_images=len(data.train),
        val_images=len(data.val),
        test_images=len(data.test),
        best_epoch=loop.best_epoch,
        **_best_scores(history, loop.best_epoch, t.select_by),
        class_counts=dict(zip(data.classes, class_counts(data.train.labels, len(data.classes)), strict=True)),
        class_weights=t.class_weights,
        sampler=t.sampler,
        test_top1=test and test.top1_acc,
        test_top5=test and test.top5_acc,
        test_loss=test and test.loss,
        train_time_s=loop.train_time,
        feature_extraction_s=loop.extract_s,
        feature_images_per_s=extract_ips,
        head_images_per_s=head_ips,
        total_time_s=time.perf_counter() - started,
        images_per_s=trained_images / max(loop.train_time, 1e-9),
        resumed_from_epoch=resumed_from,
        stopped_early_epoch=loop.stopped_early,
        ema=loop.ckpt.best_from_ema,
        device=device_description(device),
        processes=ctx.world_size,
        history=history,
        warnings=warnings,
        skipped_files=list(data.skipped),
    )
    loop.ckpt.sinks.close()
    if ctx.is_main:
        try:
            plot_curves({run_dir.name: [h.model_dump() for h in history]}, run_dir / rundir.CURVES)
        except PlotUnavailable as exc:
            result.warnings.append(f"no {rundir.CURVES}: {exc.hint}")
        rundir.write_json(run_dir / rundir.SUMMARY, result.model_dump(mode="json"))
    barrier(ctx)
    return result
