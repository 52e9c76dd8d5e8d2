"""What a run starts from: the initial model (ImageNet weights ported on the fly and cached, a file,
or scratch) and the optimiser with its parameter groups. Shared by ``train`` and ``lr-find``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, ConfigError, DownloadError
from ..core.fileio import sha256_file
from ..core.kinds import CIFAR_STATS
from ..core.settings import Settings
from ..data.sets import Data, default_data_dir
from ..model.resnet import ResNet, resnet34
from ..model.weights import WeightsMeta, load_model


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
    """SGD or AdamW, with the fused implementation (one kernel over every tensor) where this torch
    has it for the model's device: the same numbers, and on a 2-core CPU the SGD step of ResNet34
    takes about 8 ms instead of about 90 ms with the per-tensor loop (docs/training.md)."""
    t = settings.train
    groups = param_groups(model, settings)
    # Not fused SGD under fp16's GradScaler: its kernel advances the momentum on the steps the scaler
    # skips (an overflow, routine in the first steps), so the next step applies a garbage update and the
    # loss is nan by step 5 (torch 2.11 on an H200; torch 2.14 on the CPU). Fused AdamW skips them.
    sgd_with_scaler = t.optimizer == "sgd" and t.amp == "fp16"
    fused = {"fused": True} if fused_supported(model) and not sgd_with_scaler else {}
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999), **fused)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, **fused)


def fused_supported(model: torch.nn.Module) -> bool:
    """Whether torch's fused SGD/AdamW kernels serve every trainable parameter (CPU and CUDA, float)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())


@dataclass
class Init:
    model: ResNet
    meta: WeightsMeta  # the template for every checkpoint this run writes
    note: str | None = None  # what was adapted (a new head), for the run's warnings


def ported_cache_path(settings: Settings) -> Path:
    """Where ``--init imagenet`` keeps its ported weights (``~/.cache/cifar-resnet/ported``)."""
    m = settings.model
    name = f"resnet34-IMAGENET1K_V1-{settings.data.dataset}-{settings.num_classes}c-{m.stem}-{m.conv1_init}"
    return default_data_dir().parent / "ported" / f"{name}-{m.image_size}px.safetensors"


def initial_model(settings: Settings, data: Data) -> Init:
    """The model training starts from: ImageNet (ported on the fly, cached), a file, or scratch."""
    t, m = settings.train, settings.model
    common = {
        "num_classes": settings.num_classes,
        "class_names": list(data.classes),
        "dataset": data.name,
        "image_size": m.image_size,
        "val_size": len(data.val),
        "split_seed": settings.data.split_seed,
        "val_split": settings.data.val_split,
        "synthetic_size": settings.data.synthetic_size if data.synthetic else None,
    }
    if t.init == "none":
        torch.manual_seed(t.seed)
        # Each residual block starts as the identity (its last BatchNorm's weight 0; Goyal et al. 2017). Without
        # it the 16 blocks add up: the first loss is far above ln(classes) and, at the usual peak rates without
        # warm-up, training diverged or not by the CPU's rounding (docs/numerics.md).
        model = resnet34(num_classes=settings.num_classes, stem=m.stem, zero_init_residual=True)
        mean, std = CIFAR_STATS[data.name]
        source = f"random initialisation (seed {t.seed}, residual branches zeroed)"
        meta = WeightsMeta(
            stem=m.stem,
            mean=mean,
            std=std,
            pretrained=False,
            conv1="random",
            source=source,
            source_sha256="none",
            **common,
        )
        return Init(model, meta)
    if t.init == "imagenet":
        path = ported_cache_path(settings)
        if not path.is_file():
            from ..model.port import port_weights

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
    note = None
    if meta.num_classes != settings.num_classes:
        model = _new_head(model, settings.num_classes, t.seed)
        if t.init != "imagenet":  # a ported ImageNet head is always new; a trained one is replaced
            note = (
                f"--init {path} has a {meta.num_classes}-class head ({meta.dataset}): its backbone is used "
                f"with a new {settings.num_classes}-class head (seed {t.seed})"
            )
    elif tuple(meta.class_names) != data.classes and t.init != "imagenet":
        model = _new_head(model, settings.num_classes, t.seed)
        note = (
            f"--init {path} was trained on other classes ({meta.dataset}): its backbone is used with a new "
            f"head for {data.name}'s classes (seed {t.seed})"
        )
    if "stem" in m.model_fields_set and m.stem != meta.stem:
        raise ConfigError(
            f"--stem {m.stem} was asked for, but --init {path} has the {meta.stem} stem",
            "drop --stem (the weights decide), or port weights with that stem",
        )
    source = meta.source if t.init != "imagenet" else f"{meta.source} (ported to {path})"
    template = meta.model_copy(
        update={
            **common,
            "stem": meta.stem,
            "source": source,
            "source_sha256": meta.source_sha256 if t.init == "imagenet" else sha256_file(path),
        }
    )
    return Init(model, template, note)


def _new_head(model: ResNet, num_classes: int, seed: int) -> ResNet:
    """The same backbone with a freshly initialised ``num_classes`` head (nn.Linear's default init)."""
    torch.manual_seed(seed)
    fresh = resnet34(num_classes=num_classes, stem=model.stem)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    fresh.load_state_dict(backbone, strict=False)
    return fresh
