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
from safetensors import SafetensorError
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

from . import rundir
from .augment import mix_batch, preprocess, random_crop_flip
from .data import CIFAR_STATS
from .datasets import CifarData, default_data_dir
from .devices import device_description, resolve_device
from .errors import CheckpointError, CifarResnetError, ConfigError, DownloadError
from .evaluate import Scores, autocast, evaluate_model, load_data_for, merge, score_logits
from .fileio import atomic_write_bytes
from .model import ResNet, freeze_backbone, resnet34
from .plots import PlotUnavailable, plot_curves
from .settings import Settings
from .weights import WeightsMeta, load_model, model_from_tensors, save_weights

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
                                       _sha(path)})  # fmt: skip
    return Init(model, template)


def _sha(path: Path) -> str:
    from .fileio import sha256_file

    return sha256_file(path)


# ---------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------


def _save_state(path: Path, *, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                scaler: torch.amp.GradScaler | None, progress: dict[str, Any],
                epoch_perm: torch.Tensor | None) -> None:  # fmt: skip
    """Everything but the weights that an exact resume needs, as one safetensors file."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.data": generator.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    if epoch_perm is not None:
        tensors["epoch_perm"] = epoch_perm.cpu().contiguous()
    header = {
        "format_version": STATE_FORMAT,
        "progress": json.dumps(progress),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=header))


def _load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run cannot be resumed", "start a new run")
    try:
        tensors = st_load_file(str(path))
        from safetensors import safe_open

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


def train(settings: Settings, progress: TrainProgress | None = None, *, resume: Path | None = None) -> TrainResult:
    """Train as ``settings`` say; write the run directory; return the summary."""
    progress = progress or NullProgress()
    t = settings.train
    started = time.perf_counter()
    device = resolve_device(settings.device)
    _check_runtime(settings, device)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    data = load_data_for(settings).to(device)
    warnings: list[str] = []
    if data.synthetic:
        warnings.append("training on SYNTHETIC data (a built-in stand-in), not CIFAR")
    if len(data.val) == 0:
        warnings.append("no validation split (--val-size 0): best.safetensors is simply the last epoch")

    state_tensors: dict[str, torch.Tensor] = {}
    saved: dict[str, Any] = {}
    if resume is not None:
        state_tensors, saved = _load_state(resume / rundir.LAST_STATE)
        tensors, meta = _read_last(resume)
        if meta.trained_steps != saved["progress"]["global_step"] or meta.run != resume.name:
            raise CheckpointError(
                f"{resume}: last.safetensors (step {meta.trained_steps}) and last.state.safetensors (step "
                f"{saved['progress']['global_step']}) do not belong together",
                "the run was stopped while saving; start a new run",
            )
        model = model_from_tensors(tensors, meta, resume / rundir.LAST, num_classes=settings.num_classes)
        init = Init(model, meta)
        run_dir = resume
    else:
        init = initial_model(settings, data)
        run_dir = rundir.create_run_dir(t.runs_dir, t.name or "train")
        rundir.write_json(run_dir / rundir.SETTINGS, settings.model_dump(mode="json"))
    model, template = init.model, init.meta.model_copy(update={"run": run_dir.name})
    if t.freeze_backbone:
        freeze_backbone(model)
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if t.compile else model

    n_train = len(data.train)
    n_batches = math.ceil(n_train / t.batch_size)
    steps = min(n_batches, t.limit_batches or n_batches)
    sched = _schedule_args(settings, steps)
    optimizer = make_optimizer(model, settings)
    scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
    generator = torch.Generator().manual_seed(t.seed)
    history = [EpochMetrics.model_validate(r) for r in rundir.read_jsonl(run_dir / rundir.METRICS)]
    first_epoch, first_step, partial = 1, 0, {"loss_sum": 0.0, "correct": 0, "seen": 0}
    best_top1, best_epoch = -1.0, 0
    epoch_perm = None
    if resume is not None:
        _restore_optimizer(optimizer, state_tensors, saved)
        generator.set_state(state_tensors["rng.data"])
        torch.set_rng_state(state_tensors["rng.torch"])
        if "rng.cuda" in state_tensors and device.type == "cuda":
            torch.cuda.set_rng_state(state_tensors["rng.cuda"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        p = saved["progress"]
        best_top1, best_epoch = p["best_top1"], p["best_epoch"]
        history = history[: p["epoch"]]
        if p["step_in_epoch"]:  # stopped inside an epoch: finish that epoch first
            first_epoch, first_step, partial = p["epoch"] + 1, p["step_in_epoch"], p["partial"]
            epoch_perm = state_tensors["epoch_perm"]
        else:
            first_epoch = p["epoch"] + 1
        if first_epoch > t.epochs:
            raise ConfigError(f"{run_dir} has finished {p['epoch']} epochs already",
                              f"raise --epochs above {p['epoch']} to train longer")  # fmt: skip
    resumed_from = first_epoch - 1 if resume is not None else None

    cached = t.freeze_backbone and t.cache_features and not t.augment and t.cutmix == 0 and t.mixup == 0
    cache_note = None
    train_feats = val_feats = None
    if cached:
        tick = time.perf_counter()
        train_feats = _features(model, data.train.images, template, settings.model.image_size,
                                settings.eval.batch_size, t.channels_last, t.amp)  # fmt: skip
        extract_s = time.perf_counter() - tick
        val_feats = _features(model, data.val.images, template, settings.model.image_size,
                              settings.eval.batch_size, t.channels_last, t.amp)  # fmt: skip
    train_time = 0.0
    head_times: list[float] = []

    def save_last(epochs_done: int, step_in_epoch: int, perm: torch.Tensor | None, stats: dict | None) -> None:
        """The resume state, then the weights; both carry the step, so a torn pair is detected."""
        progress_state = {"epoch": epochs_done, "step_in_epoch": step_in_epoch, "global_step":
                          epochs_done * steps + step_in_epoch, "best_top1": best_top1, "best_epoch": best_epoch,
                          "partial": stats}  # fmt: skip
        _save_state(run_dir / rundir.LAST_STATE, optimizer=optimizer, generator=generator, scaler=scaler,
                    epoch_perm=perm, progress=progress_state)  # fmt: skip
        save_weights(run_dir / rundir.LAST, model.state_dict(), _meta_at(template, epochs_done, step_in_epoch, steps))

    progress.start(run_dir=str(run_dir), epochs=t.epochs, first_epoch=first_epoch, steps=steps)
    try:
        with _graceful_interrupt(progress) as interrupt:
            for epoch in range(first_epoch, t.epochs + 1):
                model.train()
                if epoch_perm is None:
                    epoch_perm = torch.randperm(n_train, generator=generator)
                batches = torch.tensor_split(epoch_perm.to(device), n_batches)[:steps]
                loss_sum = torch.tensor(partial["loss_sum"], device=device, dtype=torch.float64)
                correct, seen = partial["correct"], partial["seen"]
                epoch_start = time.perf_counter()
                for i in range(first_step, steps):
                    idx = batches[i]
                    labels = data.train.labels[idx]
                    global_step = (epoch - 1) * steps + i
                    factor = lr_factor(global_step, **sched)
                    for group in optimizer.param_groups:
                        group["lr"] = group["peak_lr"] * factor
                    if cached:
                        with autocast(device, t.amp):
                            logits = model.fc(train_feats[idx])
                        target: torch.Tensor = labels
                    else:
                        images = data.train.images[idx]
                        if t.augment:
                            images = random_crop_flip(images, generator)
                        x = preprocess(images, template.mean, template.std, settings.model.image_size,
                                       channels_last=t.channels_last)  # fmt: skip
                        target = labels
                        if t.cutmix > 0 or t.mixup > 0:
                            soft = F.one_hot(labels, settings.num_classes).float()
                            x, target = mix_batch(x, soft, cutmix_alpha=t.cutmix, mixup_alpha=t.mixup,
                                                  prob=t.mix_prob, generator=generator)  # fmt: skip
                        with autocast(device, t.amp):
                            logits = forward(x)
                    loss = F.cross_entropy(logits.float(), target, label_smoothing=t.label_smoothing)
                    if not bool(torch.isfinite(loss)):
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
                    loss_sum += loss.detach().double() * len(idx)
                    correct += int((logits.detach().argmax(1) == labels).sum())
                    seen += len(idx)
                    elapsed = time.perf_counter() - epoch_start
                    progress.step(epoch=epoch, step=i + 1, steps=steps, loss=float(loss_sum) / seen,
                                  top1=correct / seen, lr=optimizer.param_groups[-1]["lr"],
                                  ips=(seen - partial["seen"]) / max(elapsed, 1e-9))  # fmt: skip
                    if interrupt["stop"] and i + 1 < steps:
                        save_last(epoch - 1, i + 1, epoch_perm,
                                  {"loss_sum": float(loss_sum), "correct": correct, "seen": seen})  # fmt: skip
                        raise TrainingInterrupted(
                            f"interrupted at epoch {epoch}, step {i + 1}/{steps}; state saved in {run_dir}",
                            f"resume with: cifar-resnet train --resume {run_dir}",
                        )
                epoch_time = time.perf_counter() - epoch_start
                train_time += epoch_time
                if cached:
                    head_times.append(epoch_time)

                # Validation: selects the best checkpoint.
                val: Scores | None = None
                if len(data.val):
                    if cached:
                        with torch.inference_mode():
                            model.eval()
                            val = merge([score_logits(model.fc(val_feats[s : s + 4096]), data.val.labels[s : s + 4096],
                                                      settings.num_classes) for s in range(0, len(data.val), 4096)],
                                        settings.num_classes)  # fmt: skip
                    else:
                        val = evaluate_model(model, data.val, mean=template.mean, std=template.std,
                                             image_size=settings.model.image_size, num_classes=settings.num_classes,
                                             batch_size=settings.eval.batch_size, amp=t.amp,
                                             channels_last=t.channels_last)  # fmt: skip
                score = val.top1_acc if val is not None else float(epoch)
                is_best = score > best_top1
                if is_best:
                    best_top1, best_epoch = score, epoch
                metrics = EpochMetrics(
                    epoch=epoch, lr=optimizer.param_groups[-1]["lr"], train_loss=float(loss_sum) / max(seen, 1),
                    train_top1=correct / max(seen, 1), val_loss=val.loss if val else None,
                    val_top1=val.top1_acc if val else None, val_top5=val.top5_acc if val else None,
                    epoch_time_s=epoch_time, images_per_s=(seen - partial["seen"]) / max(epoch_time, 1e-9),
                    best=is_best,
                )  # fmt: skip
                history.append(metrics)

                # Save: state, weights, best, metrics; each atomically.
                save_last(epoch, 0, None, None)
                if is_best:
                    save_weights(run_dir / rundir.BEST, model.state_dict(), _meta_at(template, epoch, 0, steps))
                rundir.write_jsonl(run_dir / rundir.METRICS, [h.model_dump() for h in history])
                progress.epoch_end(metrics)
                epoch_perm, first_step, partial = None, 0, {"loss_sum": 0.0, "correct": 0, "seen": 0}
                if interrupt["stop"]:
                    raise TrainingInterrupted(
                        f"interrupted after epoch {epoch}; state saved in {run_dir}",
                        f"resume with: cifar-resnet train --resume {run_dir}",
                    )
    finally:
        progress.stop()

    # The test set, once, with the checkpoint chosen on validation.
    best_model, best_meta = load_model(run_dir / rundir.BEST)
    best_model.to(device)
    test = evaluate_model(
        best_model,
        data.test,
        mean=best_meta.mean,
        std=best_meta.std,
        image_size=settings.model.image_size,
        num_classes=settings.num_classes,
        batch_size=settings.eval.batch_size,
    )  # fmt: skip  (fp32, as `eval` measures it)
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
        device=device_description(device), history=history, warnings=warnings,
    )  # fmt: skip
    try:
        plot_curves({run_dir.name: [h.model_dump() for h in history]}, run_dir / rundir.CURVES)
    except PlotUnavailable as exc:
        result.warnings.append(f"no {rundir.CURVES}: {exc.hint}")
    rundir.write_json(run_dir / rundir.SUMMARY, result.model_dump(mode="json"))
    return result


def _meta_at(template: WeightsMeta, epochs_done: int, step_in_epoch: int, steps: int) -> WeightsMeta:
    return template.model_copy(
        update={"trained_epochs": epochs_done, "trained_steps": epochs_done * steps + step_in_epoch}
    )


def _read_last(run_dir: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    from .weights import read_weights

    return read_weights(run_dir / rundir.LAST)
