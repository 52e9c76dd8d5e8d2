"""``inspect``: the layer table of our ResNet34 and its proof of parity with torchvision's.

Parity is checked three ways: the names and shapes of every parameter and buffer, the parameter
counts, and the numbers: the same (random) weights loaded into both models, eval mode, each
stage's feature map and the logits compared. With the ``imagenet`` stem both models run the same
operations, so the difference is exactly 0 in fp32. With the ``cifar`` stem torchvision's model
gets the same stem surgery (3x3/1 ``conv1``, no max pool) before the comparison.
"""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from pydantic import BaseModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..core.devices import device_description, resolve_device
from ..core.settings import Settings
from .resnet import STAGES, ResNet, freeze_backbone, resnet34

PARITY_TOLERANCE = 1e-6


class LayerRow(BaseModel):
    name: str
    type: str
    output_shape: list[int]
    params: int
    trainable_params: int
    status: Literal["trainable", "frozen", "partial", "-"]
    flops: int


class TensorRow(BaseModel):
    name: str
    kind: Literal["parameter", "buffer"]
    ours: list[int] | None
    torchvision: list[int] | None
    same: bool


class ParityRow(BaseModel):
    name: str
    shape: list[int]
    max_abs_diff: float


class InspectResult(BaseModel):
    stem: str
    num_classes: int
    image_size: int
    device: str
    backbone_frozen: bool
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    total_flops: int
    torchvision_params: int
    tensors: list[TensorRow]
    tensors_same: int
    tensors_differing: list[str]
    parity: list[ParityRow]
    max_abs_diff: float
    tolerance: float = PARITY_TOLERANCE
    passed: bool
    warnings: list[str]


def torchvision_reference(stem: str, num_classes: int) -> nn.Module:
    """torchvision's ResNet34, with the same stem surgery as ours when ``stem == "cifar"``."""
    ref = torchvision.models.resnet34(weights=None, num_classes=num_classes)
    if stem == "cifar":
        ref.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        ref.maxpool = nn.Identity()
    return ref


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, so parity exercises them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def _stage_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stem output, each stage's feature map, the pooled features and the logits."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach().clone())
        )
        for name in ("maxpool", *STAGES, "avgpool")
    ]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    outputs["stem"] = outputs.pop("maxpool")
    outputs["features"] = torch.flatten(outputs.pop("avgpool"), 1)
    outputs["logits"] = logits.detach()
    return outputs


@torch.inference_mode()
def compare_outputs(ours: nn.Module, reference: nn.Module, x: torch.Tensor, *, logits: bool = True) -> list[ParityRow]:
    """Run both models in eval mode on ``x``; the max |difference| of every stage (and the logits).

    ``logits=False`` compares the backbone only, for models whose heads differ.
    """
    ours.eval()
    reference.eval()
    a = _stage_outputs(ours, x)
    b = _stage_outputs(reference, x)
    order = ("stem", *STAGES, "features", *(("logits",) if logits else ()))
    return [
        ParityRow(name=k, shape=list(a[k].shape), max_abs_diff=float((a[k].float() - b[k].float()).abs().max()))
        for k in order
    ]


def _layer_rows(model: ResNet, x: torch.Tensor, depth: int) -> tuple[list[LayerRow], int]:
    shapes: dict[str, list[int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(
                module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, list(out.shape)))
            )
    flop_counter = FlopCounterMode(display=False, depth=None)
    try:
        with torch.inference_mode(), flop_counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    counts = flop_counter.get_flop_counts()
    root = type(model).__name__

    rows = []
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue
        params = list(module.parameters())
        n = sum(p.numel() for p in params)
        t = sum(p.numel() for p in params if p.requires_grad)
        status = "-" if n == 0 else "trainable" if t == n else "frozen" if t == 0 else "partial"
        rows.append(
            LayerRow(
                name=name,
                type=type(module).__name__,
                output_shape=shapes.get(name, []),
                params=n,
                trainable_params=t,
                status=status,
                flops=int(sum(counts.get(f"{root}.{name}", {}).values())),
            )
        )
    return rows, int(flop_counter.get_total_flops())


def _tensor_rows(ours: nn.Module, theirs: nn.Module) -> list[TensorRow]:
    def table(m: nn.Module) -> dict[str, tuple[str, list[int]]]:
        out = {k: ("parameter", list(v.shape)) for k, v in m.named_parameters()}
        out.update({k: ("buffer", list(v.shape)) for k, v in m.named_buffers()})
        return out

    a, b = table(ours), table(theirs)
    names = list(a) + [k for k in b if k not in a]
    return [
        TensorRow(
            name=k,
            kind=(a.get(k) or b[k])[0],
            ours=a[k][1] if k in a else None,
            torchvision=b[k][1] if k in b else None,
            same=k in a and k in b and a[k][1] == b[k][1],
        )
        for k in names
    ]


def inspect_model(settings: Settings, *, depth: int = 2) -> InspectResult:
    """Build the configured model, tabulate it, and prove it matches torchvision's ResNet34."""
    device = resolve_device(settings.device)
    stem, num_classes, size = settings.model.stem, settings.num_classes, settings.model.image_size
    generator = torch.Generator().manual_seed(settings.train.seed)

    torch.manual_seed(settings.train.seed)
    model = resnet34(num_classes=num_classes, stem=stem)
    randomise_batchnorm(model, generator)
    if settings.train.freeze_backbone:
        freeze_backbone(model)
    model.to(device).eval()

    x = torch.randn(2, 3, size, size, generator=generator).to(device)
    layers, total_flops = _layer_rows(model, x[:1], depth)

    plain_tv = torchvision.models.resnet34(weights=None, num_classes=num_classes)
    tensors = _tensor_rows(model, plain_tv)

    reference = torchvision_reference(stem, num_classes)
    reference.load_state_dict(model.state_dict())  # shared weights, strict: every name must match
    parity = compare_outputs(model, reference.to(device), x)
    max_diff = max(p.max_abs_diff for p in parity)

    warnings = []
    final = next(p.shape for p in parity if p.name == "layer4")
    if final[-1] == 1 and final[-2] == 1:
        warnings.append(
            f"at {size} px the {stem} stem leaves a 1x1 final feature map (layer4): the 7x7/2 conv and "
            "max pool shrink the image 32x; use --stem cifar, or --image-size 128 or more for transfer"
        )
    params = sum(p.numel() for p in model.parameters())
    return InspectResult(
        stem=stem,
        num_classes=num_classes,
        image_size=size,
        device=device_description(device),
        backbone_frozen=settings.train.freeze_backbone,
        layers=layers,
        total_params=params,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_flops=total_flops,
        torchvision_params=sum(p.numel() for p in plain_tv.parameters()),
        tensors=tensors,
        tensors_same=sum(t.same for t in tensors),
        tensors_differing=[t.name for t in tensors if not t.same],
        parity=parity,
        max_abs_diff=max_diff,
        passed=max_diff <= PARITY_TOLERANCE,
        warnings=warnings,
    )
