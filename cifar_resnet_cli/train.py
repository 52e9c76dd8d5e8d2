"""``train``: feature extraction or fine-tuning of the ResNet34 on CIFAR, resumable and honest.

The data stay on the training device as uint8 tensors; each step indexes a batch, augments it
there (crop, flip, CutMix/MixUp), normalises it, and takes one optimiser step. The learning rate is
a pure function of the global step (warm-up, then the schedule), so resuming needs only the step.
The best checkpoint is chosen on the validation split; the test set is scored once, at the end.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from torch.nn.parallel import DistributedDataParallel

from . import distributed, rundir
from .augment import mix_batch, preprocess, random_crop_flip
from .data import CIFAR_STATS
from .datasets import CifarData, ImageSet, default_data_dir
from .devices import device_description, resolve_device
from .distributed import DistContext, DistributedError, all_reduce_sum, barrier, broadcast_object
from .errors import CheckpointError, CifarResnetError, ConfigError, DownloadError
from .evaluate import Scores, autocast, evaluate_model, load_data_for, merge, score_logits
from .fileio import atomic_write_bytes, sha256_file
from .model import ResNet, freeze_backbone, resnet34
from .plots import PlotUnavailable, plot_curves
from .settings import Settings
from .weights import WeightsMeta, load_model, model_from_tensors, read_weights, save_weights

STATE_FORMAT = "1"
# Settings that may change when a run is resumed; any other difference is refused.
RESUMABLE_CHANGES = {("train", "epochs"), ("device",)}


class TrainingInterrupted(CifarResnetError):
    exit_code = 130


class TrainingDiverged(CifarResnetError):
    pass


class EpochMetrics(BaseModel):
    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    val_loss: float | None
    val_top1: float | None
    val_top5: float | None
    epoch_time_s: float
    images_per_s: float
    best: bool
    train_samples: int = 0  # images trained on in the epoch, all ranks together
    val_samples: int = 0  # images scored for validation, all ranks together


class TrainResult(BaseModel):
    run_dir: str
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
    best_val_top1: float | None
    test_top1: float
    test_top5: float
    test_loss: float
    train_time_s: float
    total_time_s: float
    images_per_s: float
    resumed_from_epoch: int | None
    device: str
    processes: int = 1
    history: list[EpochMetrics]
    warnings: list[str]


class TrainProgress(Protocol):
    """What the training loop reports while it runs; ``report.py`` draws it on stderr."""

    def start(self, *, run_dir: str, epochs: int, first_epoch: int, steps: int) -> None: ...
    def step(self, *, epoch: int, step: int, steps: int, loss: float, top1: float, lr: float, ips: float) -> None: ...
    def epoch_end(self, metrics: EpochMetrics) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


class NullProgress:
    def start(self, **_: Any) -> None: ...
    def step(self, **_: Any) -> None: ...
    def epoch_end(self, metrics: EpochMetrics) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Learning rate: a pure function of the step.
# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, *, total: int, steps_per_epoch: int, warmup: int, schedule: str,
              step_size: int, milestones: list[int], gamma: float) -> float:  # fmt: skip
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


def param_groups(model: ResNet, settings: Settings) -> list[dict[str, Any]]:
    """Head and backbone groups; no weight decay on BatchNorm parameters and biases (ndim <= 1)."""
    t = settings.train
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(("head" if name.startswith("fc.") else "backbone", p.ndim > 1), []).append(p)
    return [
        {
            "params": params,
            "name": part + ("" if decay else "-no-decay"),
            "lr": t.lr * (1.0 if part == "head" else t.backbone_lr_scale),
            "peak_lr": t.lr * (1.0 if part == "head" else t.backbone_lr_scale),
            "weight_decay": t.weight_decay if decay else 0.0,
        }
        for (part, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0] != "backbone", not kv[0][1]))
    ]


def make_optimizer(model: ResNet, settings: Settings) -> torch.optim.Optimizer:
    t = settings.train
    groups = param_groups(model, settings)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999))
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0)


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


@dataclass
class Init:
    model: ResNet
    meta: WeightsMeta  # the template for every checkpoint this run writes


def ported_cache_path(settings: Settings) -> Path:
    """Where ``--init imagenet`` keeps its ported weights (``~/.cache/cifar-resnet/ported``)."""
    m = settings.model
    name = f"resnet34-IMAGENET1K_V1-{settings.data.dataset}-{settings.num_classes}c-{m.stem}-{m.conv1_init}"
    return default_data_dir().parent / "ported" / f"{name}-{m.image_size}px.safetensors"


def initial_model(settings: Settings, data: CifarData) -> Init:
    """The model training starts from: ImageNet (ported on the fly, cached), a file, or scratch."""
    t, m = settings.train, settings.model
    common = {"num_classes": settings.num_classes, "class_names": list(data.classes), "dataset": data.name,
              "image_size": m.image_size, "val_size": len(data.val), "split_seed": settings.data.split_seed,
              "synthetic_size": settings.data.synthetic_size if data.synthetic else None}  # fmt: skip
    if t.init == "none":
        torch.manual_seed(t.seed)
        model = resnet34(num_classes=settings.num_classes, stem=m.stem)
        mean, std = CIFAR_STATS[data.name]
        meta = WeightsMeta(stem=m.stem, mean=mean, std=std, pretrained=False, conv1="random",
                           source=f"random initialisation (seed {t.seed})", source_sha256="none", **common)  # fmt: skip
        return Init(model, meta)
    if t.init == "imagenet":
        path = ported_cache_path(settings)
        if not path.is_file():
            from .port import port_weights

            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                port_weights(settings, out=path, weights="IMAGENET1K_V1", force=True)
            except DownloadError as exc:
                raise DownloadError(
                    exc.message,
                    f"{exc.hint}; or train from a file with --init FILE.safetensors (made by `cifar-resnet "
                    "port --from FILE.pth`), or from scratch with --init none",
                ) from None
    else:
        path = Path(t.init)
        if not path.is_file():
            raise CheckpointError(f"--init {t.init}: no such file", "use imagenet, none, or a .safetensors file")
    model, meta = load_model(path)
    if meta.num_classes != settings.num_classes or tuple(meta.class_names) != data.classes:
        raise CheckpointError(
            f"--init {path} is for {meta.dataset} ({meta.num_classes} classes), not {data.name} "
            f"({len(data.classes)} classes)",
            f"port weights for {data.name}: cifar-resnet port --dataset {data.name} ...",
        )
    if "stem" in m.model_fields_set and m.stem != meta.stem:
        raise ConfigError(f"--stem {m.stem} was asked for, but --init {path} has the {meta.stem} stem",
                          "drop --stem (the weights decide), or port weights with that stem")  # fmt: skip
    source = meta.source if t.init != "imagenet" else f"{meta.source} (ported to {path})"
    template = meta.model_copy(update={**common, "stem": meta.stem, "source": source,
                                       "source_sha256": meta.source_sha256 if t.init == "imagenet" else
                                       sha256_file(path)})  # fmt: skip
    return Init(model, template)


# ---------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------


def _save_state(path: Path, *, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                progress: dict[str, Any]) -> None:  # fmt: skip
    """Everything but the weights that an exact resume needs, as one safetensors file.

    The data order and the augmentation draws are functions of (seed, epoch, step, rank), so no
    data RNG state is needed; the optimizer state, the step and the best score are.
    """
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    header = {
        "format_version": STATE_FORMAT,
        "progress": json.dumps(progress),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=header))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: the same on every rank, and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def step_generator(seed: int, global_step: int, rank: int) -> torch.Generator:
    """The augmentation RNG of one step on one rank: reproducible without saved state."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + global_step) * 8_191 + rank) % 2**63)


def _load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run cannot be resumed", "start a new run")
    try:
        tensors = st_load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        parsed = {k: json.loads(v) for k, v in header.items() if k != "format_version"}
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable resume state ({exc})") from None
    if header.get("format_version") != STATE_FORMAT:
        raise CheckpointError(f"{path} has resume-state format {header.get('format_version')}, expected {STATE_FORMAT}")
    return tensors, parsed


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], parsed: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in parsed["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    current = optimizer.state_dict()["param_groups"]
    saved = parsed["param_groups"]
    if [len(g["params"]) for g in saved] != [len(g["params"]) for g in current]:
        raise CheckpointError("the saved optimizer state does not fit this model's trainable parameters")
    optimizer.load_state_dict({"state": state, "param_groups": saved})


def settings_for_resume(run_dir: Path, overrides: dict[str, Any]) -> Settings:
    """The run's own settings, with only the flags given now on top; incompatible changes refused.

    The environment and TOML files are not consulted: a resumed run continues as it started.
    """
    from .settings import load_settings

    saved = rundir.read_json(run_dir / rundir.SETTINGS)
    settings = load_settings(overrides=overrides, base=saved)
    before, after = Settings.model_validate(saved).model_dump(mode="json"), settings.model_dump(mode="json")
    changed = []
    for section, value in after.items():
        if isinstance(value, dict):
            changed += [((section, k), before[section].get(k), v) for k, v in value.items()
                        if before[section].get(k) != v]  # fmt: skip
        elif before.get(section) != value:
            changed.append(((section,), before.get(section), value))
    refused = [c for c in changed if c[0] not in RESUMABLE_CHANGES]
    if refused:
        what = "; ".join(f"{'.'.join(k)}: {a!r} -> {b!r}" for k, a, b in refused)
        raise ConfigError(
            f"cannot resume {run_dir} with different settings ({what})",
            "resume may only change --epochs and --device; start a new run for anything else",
        )
    return settings


# ---------------------------------------------------------------------------------------------
# Ctrl-C: finish the step, save, exit
# ---------------------------------------------------------------------------------------------


@contextmanager
def _graceful_interrupt(progress: TrainProgress):
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(_signum, _frame):
        if flag["stop"]:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        flag["stop"] = True
        progress.note("Ctrl-C: saving a resumable state after this step (press again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _check_runtime(settings: Settings, device: torch.device) -> None:
    t = settings.train
    if t.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA", "use --amp bf16 on the CPU")


@torch.inference_mode()
def _features(model: ResNet, images: torch.Tensor, meta: WeightsMeta, image_size: int, batch: int,
              channels_last: bool, amp: str) -> torch.Tensor:  # fmt: skip
    out = []
    for start in range(0, len(images), batch):
        x = preprocess(images[start : start + batch], meta.mean, meta.std, image_size, channels_last=channels_last)
        with autocast(images.device, amp):
            out.append(model.forward_features(x).float())
    return torch.cat(out) if out else torch.empty(0, model.fc.in_features, device=images.device)


def _shard(index: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's part of a batch (or split): contiguous, sizes differing by at most one."""
    return torch.tensor_split(index, ctx.world_size)[ctx.rank] if ctx.enabled else index


def _reduce_scores(scores: Scores, ctx: DistContext, device: torch.device) -> Scores:
    """Sum the scores of every rank's shard: each sample counted exactly once."""
    if not ctx.enabled:
        return scores
    k = scores.confusion.shape[0]
    packed = torch.cat([
        torch.tensor([scores.loss_sum, scores.top1, scores.top5, scores.count], dtype=torch.float64),
        scores.confusion.flatten().double(),
    ]).to(device)  # fmt: skip
    total = all_reduce_sum(packed, ctx).cpu()
    return Scores(float(total[0]), int(total[1]), int(total[2]), int(total[3]),
                  total[4:].round().long().view(k, k))  # fmt: skip


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
) -> Scores:
    """Scores on a split; under torchrun each rank scores its shard and the sums are reduced."""
    local = _shard(torch.arange(len(split)), ctx).to(split.labels.device)
    if features is not None:  # cached features: the head alone
        with torch.inference_mode():
            model.eval()
            parts = [score_logits(model.fc(features[local[s : s + 4096]]), split.labels[local[s : s + 4096]],
                                  settings.num_classes) for s in range(0, len(local), 4096)]  # fmt: skip
        scores = merge(parts, settings.num_classes)
    else:
        scores = evaluate_model(model, split.subset(local), mean=template.mean, std=template.std,
                                image_size=settings.model.image_size, num_classes=settings.num_classes,
                                batch_size=settings.eval.batch_size, amp=amp, channels_last=channels_last)  # fmt: skip
    return _reduce_scores(scores, ctx, device)


def train(settings: Settings, progress: TrainProgress | None = None, *, resume: Path | None = None) -> TrainResult:
    """Train as ``settings`` say; write the run directory; return the summary.

    Under ``torchrun`` every rank runs this; rank 0 alone writes files and reports progress.
    """
    ctx, device = distributed.setup(resolve_device(settings.device), settings.train.dist_timeout)
    try:
        return _train(settings, progress if ctx.is_main else None, resume, ctx, device)
    finally:
        distributed.teardown()


def _train(settings: Settings, progress: TrainProgress | None, resume: Path | None, ctx: DistContext,
           device: torch.device) -> TrainResult:  # fmt: skip
    progress = progress or NullProgress()
    t = settings.train
    started = time.perf_counter()
    _check_runtime(settings, device)
    if t.batch_size < ctx.world_size:
        raise ConfigError(f"--batch-size {t.batch_size} is smaller than the {ctx.world_size} processes",
                          "--batch-size is the global batch, split over the processes")  # fmt: skip
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    data = load_data_for(settings).to(device)
    warnings: list[str] = []
    if data.synthetic:
        warnings.append("training on SYNTHETIC data (a built-in stand-in), not CIFAR")
    if len(data.val) == 0:
        warnings.append("no validation split (--val-size 0): best.safetensors is simply the last epoch")
    if t.sync_bn and not ctx.enabled:
        warnings.append("--sync-bn has nothing to synchronise on one process: plain BatchNorm it is")

    state_tensors: dict[str, torch.Tensor] = {}
    saved: dict[str, Any] = {}
    if resume is not None:
        state_tensors, saved = _load_state(resume / rundir.LAST_STATE)
        tensors, meta = read_weights(resume / rundir.LAST)
        if meta.trained_steps != saved["progress"]["global_step"] or meta.run != resume.name:
            raise CheckpointError(
                f"{resume}: last.safetensors (step {meta.trained_steps}) and last.state.safetensors (step "
                f"{saved['progress']['global_step']}) do not belong together",
                "the run was stopped while saving; start a new run",
            )
        init = Init(model_from_tensors(tensors, meta, resume / rundir.LAST, num_classes=settings.num_classes), meta)
        run_dir = resume
    else:
        init = initial_model(settings, data) if ctx.is_main else None
        barrier(ctx)  # rank 0 may have ported ImageNet weights into the cache; now every rank can read them
        if not ctx.is_main:
            init = initial_model(settings, data)
        run_dir = None
        if ctx.is_main:
            run_dir = rundir.create_run_dir(t.runs_dir, t.name or "train")
            rundir.write_json(run_dir / rundir.SETTINGS, settings.model_dump(mode="json"))
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None, ctx))
    model, template = init.model, init.meta.model_copy(update={"run": run_dir.name})
    if t.freeze_backbone:
        freeze_backbone(model)
    if t.sync_bn and ctx.enabled:
        distributed.convert_sync_batchnorm(model)
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)

    n_train = len(data.train)
    n_batches = math.ceil(n_train / t.batch_size)
    steps = min(n_batches, t.limit_batches or n_batches)
    sched = _schedule_args(settings, steps)
    optimizer = make_optimizer(model, settings)
    scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
    history = [EpochMetrics.model_validate(r) for r in rundir.read_jsonl(run_dir / rundir.METRICS)]
    first_epoch, first_step, partial = 1, 0, {"loss_sum": 0.0, "correct": 0, "seen": 0}
    best_top1, best_epoch = -1.0, 0
    if resume is not None:
        _restore_optimizer(optimizer, state_tensors, saved)
        torch.set_rng_state(state_tensors["rng.torch"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        p = saved["progress"]
        best_top1, best_epoch = p["best_top1"], p["best_epoch"]
        history = history[: p["epoch"]]
        first_epoch = p["epoch"] + 1
        if p["step_in_epoch"]:  # stopped inside an epoch: finish that epoch first
            first_step, partial = p["step_in_epoch"], p["partial"]
        if first_epoch > t.epochs:
            raise ConfigError(f"{run_dir} has finished {p['epoch']} epochs already",
                              f"raise --epochs above {p['epoch']} to train longer")  # fmt: skip
    resumed_from = first_epoch - 1 if resume is not None else None

    cached = t.freeze_backbone and t.cache_features and not t.augment and t.cutmix == 0 and t.mixup == 0
    train_feats = val_feats = None
    extract_s = 0.0
    if cached:
        tick = time.perf_counter()
        train_feats = _features(model, data.train.images, template, settings.model.image_size,
                                settings.eval.batch_size, t.channels_last, t.amp)  # fmt: skip
        extract_s = time.perf_counter() - tick
        val_feats = _features(model, data.val.images, template, settings.model.image_size,
                              settings.eval.batch_size, t.channels_last, t.amp)  # fmt: skip
    # Under torchrun, gradients are averaged by DistributedDataParallel: around the head alone when
    # the head trains on cached features, around the whole model otherwise.
    head: torch.nn.Module = model.fc
    forward: torch.nn.Module = model
    if ctx.enabled:
        ids = [device.index] if device.type == "cuda" else None
        if cached:
            head = DistributedDataParallel(model.fc, device_ids=ids)
        else:
            forward = DistributedDataParallel(model, device_ids=ids)
    if t.compile:
        forward = torch.compile(forward)
    train_time = 0.0
    head_times: list[float] = []

    def save_last(epochs_done: int, step_in_epoch: int, stats: dict | None) -> None:
        """The resume state, then the weights; both carry the step, so a torn pair is detected."""
        if ctx.is_main:
            progress_state = {"epoch": epochs_done, "step_in_epoch": step_in_epoch, "global_step":
                              epochs_done * steps + step_in_epoch, "best_top1": best_top1, "best_epoch": best_epoch,
                              "partial": stats}  # fmt: skip
            _save_state(run_dir / rundir.LAST_STATE, optimizer=optimizer, scaler=scaler, progress=progress_state)
            save_weights(
                run_dir / rundir.LAST, model.state_dict(), _meta_at(template, epochs_done, step_in_epoch, steps)
            )
        barrier(ctx)

    progress.start(run_dir=str(run_dir), epochs=t.epochs, first_epoch=first_epoch, steps=steps)
    try:
        with _graceful_interrupt(progress) as interrupt:
            for epoch in range(first_epoch, t.epochs + 1):
                model.train()
                batches = torch.tensor_split(epoch_order(n_train, t.seed, epoch).to(device), n_batches)[:steps]
                loss_sum = torch.tensor(partial["loss_sum"], device=device, dtype=torch.float64)
                correct, seen = partial["correct"], partial["seen"]
                coverage = torch.zeros(n_train, device=device, dtype=torch.int32)
                epoch_start = time.perf_counter()
                for i in range(first_step, steps):
                    global_batch = batches[i]
                    idx = _shard(global_batch, ctx)
                    coverage[idx] += 1
                    labels = data.train.labels[idx]
                    global_step = (epoch - 1) * steps + i
                    factor = lr_factor(global_step, **sched)
                    for group in optimizer.param_groups:
                        group["lr"] = group["peak_lr"] * factor
                    if cached:
                        with autocast(device, t.amp):
                            logits = head(train_feats[idx])
                        target: torch.Tensor = labels
                    else:
                        rng = step_generator(t.seed, global_step, ctx.rank)
                        images = data.train.images[idx]
                        if t.augment:
                            images = random_crop_flip(images, rng)
                        x = preprocess(images, template.mean, template.std, settings.model.image_size,
                                       channels_last=t.channels_last)  # fmt: skip
                        target = labels
                        if t.cutmix > 0 or t.mixup > 0:
                            soft = F.one_hot(labels, settings.num_classes).float()
                            x, target = mix_batch(x, soft, cutmix_alpha=t.cutmix, mixup_alpha=t.mixup,
                                                  prob=t.mix_prob, generator=rng)  # fmt: skip
                        with autocast(device, t.amp):
                            logits = forward(x)
                    # Sum over this rank's images / global batch x ranks: DDP's average of the ranks'
                    # gradients is then the gradient of the global mean loss, whatever the shard sizes.
                    loss_total = F.cross_entropy(logits.float(), target, label_smoothing=t.label_smoothing,
                                                 reduction="sum")  # fmt: skip
                    loss = loss_total * (ctx.world_size / len(global_batch))
                    bad = all_reduce_sum(torch.tensor([float(not bool(torch.isfinite(loss)))], device=device), ctx)
                    if bad[0] > 0:  # on any rank: every rank stops, none steps
                        last = f"{run_dir / rundir.LAST} (epoch {len(history)})" if history else "none saved yet"
                        raise TrainingDiverged(
                            f"the loss became {float(loss.detach())} at epoch {epoch}, step {i + 1}; "
                            f"last good checkpoint: {last}",
                            "lower --lr, add --warmup-epochs, or turn off --amp fp16",
                        )
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    loss_sum += loss_total.detach().double()
                    correct += int((logits.detach().argmax(1) == labels).sum())
                    seen += len(idx)
                    if ctx.is_main:
                        elapsed = time.perf_counter() - epoch_start
                        progress.step(epoch=epoch, step=i + 1, steps=steps, loss=float(loss_sum) / max(seen, 1),
                                      top1=correct / max(seen, 1), lr=optimizer.param_groups[-1]["lr"],
                                      ips=(seen - partial["seen"]) * ctx.world_size / max(elapsed, 1e-9))  # fmt: skip
                    stop = all_reduce_sum(torch.tensor([float(interrupt["stop"])], device=device), ctx)
                    if stop[0] > 0 and i + 1 < steps:  # Ctrl-C on any rank: all save and stop here
                        totals = all_reduce_sum(torch.tensor([float(loss_sum), correct, seen], dtype=torch.float64,
                                                             device=device), ctx)  # fmt: skip
                        save_last(epoch - 1, i + 1, {"loss_sum": float(totals[0]) / ctx.world_size,
                                                     "correct": int(totals[1]) // ctx.world_size,
                                                     "seen": int(totals[2]) // ctx.world_size})  # fmt: skip
                        raise TrainingInterrupted(
                            f"interrupted at epoch {epoch}, step {i + 1}/{steps}; state saved in {run_dir}",
                            f"resume with: cifar-resnet train --resume {run_dir}",
                        )
                epoch_time = time.perf_counter() - epoch_start
                train_time += epoch_time
                if cached:
                    head_times.append(epoch_time)

                # Every sample of the epoch seen exactly once across the ranks (fewer with --limit-batches).
                coverage = all_reduce_sum(coverage, ctx)
                if int(coverage.max()) > 1 or (first_step == 0 and steps == n_batches and int(coverage.min()) < 1):
                    raise DistributedError(f"epoch {epoch}: the ranks did not share the data exactly once")
                totals = all_reduce_sum(torch.tensor([float(loss_sum), correct, seen], dtype=torch.float64,
                                                     device=device), ctx).tolist()  # fmt: skip
                epoch_seen = int(totals[2]) - partial["seen"] * (ctx.world_size if ctx.enabled else 1)

                # Validation: selects the best checkpoint.
                val: Scores | None = None
                if len(data.val):
                    val = _evaluate(model, data.val, settings, template, ctx, device, amp=t.amp,
                                    channels_last=t.channels_last, features=val_feats)  # fmt: skip
                score = val.top1_acc if val is not None else float(epoch)
                is_best = score > best_top1
                if is_best:
                    best_top1, best_epoch = score, epoch
                metrics = EpochMetrics(
                    epoch=epoch, lr=optimizer.param_groups[-1]["lr"], train_loss=totals[0] / max(totals[2], 1),
                    train_top1=totals[1] / max(totals[2], 1), val_loss=val.loss if val else None,
                    val_top1=val.top1_acc if val else None, val_top5=val.top5_acc if val else None,
                    epoch_time_s=epoch_time, images_per_s=epoch_seen / max(epoch_time, 1e-9), best=is_best,
                    train_samples=int(coverage.sum()), val_samples=val.count if val else 0,
                )  # fmt: skip
                history.append(metrics)

                # Save (rank 0): state, weights, best, metrics; each atomically.
                save_last(epoch, 0, None)
                if ctx.is_main:
                    if is_best:
                        save_weights(run_dir / rundir.BEST, model.state_dict(), _meta_at(template, epoch, 0, steps))
                    rundir.write_jsonl(run_dir / rundir.METRICS, [h.model_dump() for h in history])
                barrier(ctx)
                progress.epoch_end(metrics)
                first_step, partial = 0, {"loss_sum": 0.0, "correct": 0, "seen": 0}
                stop = all_reduce_sum(torch.tensor([float(interrupt["stop"])], device=device), ctx)
                if stop[0] > 0 and epoch < t.epochs:
                    raise TrainingInterrupted(
                        f"interrupted after epoch {epoch}; state saved in {run_dir}",
                        f"resume with: cifar-resnet train --resume {run_dir}",
                    )
    finally:
        progress.stop()

    # The test set, once, with the checkpoint chosen on validation.
    best_model, best_meta = load_model(run_dir / rundir.BEST)
    best_model.to(device)
    test = _evaluate(best_model, data.test, settings, best_meta, ctx, device, amp="off", channels_last=False)
    cache_note = None
    if cached and head_times:
        per_epoch_uncached = extract_s + sum(head_times) / len(head_times)
        epochs_here = len(head_times)
        speedup = epochs_here * per_epoch_uncached / (extract_s + sum(head_times))
        cache_note = (
            f"features computed once in {extract_s:.2f} s; head epochs took {sum(head_times) / epochs_here:.3f} s; "
            f"without the cache each epoch would run the backbone again (about {per_epoch_uncached:.2f} s): "
            f"about {speedup:.1f}x faster over {epochs_here} epochs (estimated from the extraction time)"
        )
    trained_images = sum(h.images_per_s * h.epoch_time_s for h in history[(resumed_from or 0) :])
    result = TrainResult(
        run_dir=str(run_dir), dataset=data.name, synthetic=data.synthetic, init=template.source,
        pretrained=template.pretrained, mode="feature extraction" if t.freeze_backbone else "fine-tuning",
        feature_cache=cached, feature_cache_note=cache_note, epochs=t.epochs, steps_per_epoch=steps,
        train_images=n_train, val_images=len(data.val), test_images=len(data.test), best_epoch=best_epoch,
        best_val_top1=best_top1 if len(data.val) else None, test_top1=test.top1_acc, test_top5=test.top5_acc,
        test_loss=test.loss, train_time_s=train_time, total_time_s=time.perf_counter() - started,
        images_per_s=trained_images / max(train_time, 1e-9), resumed_from_epoch=resumed_from,
        device=device_description(device), processes=ctx.world_size, history=history, warnings=warnings,
    )  # fmt: skip
    if ctx.is_main:
        try:
            plot_curves({run_dir.name: [h.model_dump() for h in history]}, run_dir / rundir.CURVES)
        except PlotUnavailable as exc:
            result.warnings.append(f"no {rundir.CURVES}: {exc.hint}")
        rundir.write_json(run_dir / rundir.SUMMARY, result.model_dump(mode="json"))
    barrier(ctx)
    return result


def _meta_at(template: WeightsMeta, epochs_done: int, step_in_epoch: int, steps: int) -> WeightsMeta:
    return template.model_copy(
        update={"trained_epochs": epochs_done, "trained_steps": epochs_done * steps + step_in_epoch}
    )
