"""``ablate``: what each residual block and stage contributes, by removing its residual branch.

A BasicBlock computes relu(F(x) + shortcut(x)). Removing the branch sets F(x) = 0, so the block
passes relu(shortcut(x)): the identity, or the 1x1 downsample path where the shape changes (the
lesion study of Veit et al., 2016, https://arxiv.org/abs/1605.06431). Each block, then each whole
stage, is evaluated that way on the validation or test split and compared with the intact model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ..core.devices import device_description, resolve_device
from ..core.progress import Tasks, task
from ..core.settings import Settings
from ..data.loading import load_checked_data, split_of
from ..data.sets import ImageSet
from ..model.resnet import STAGES, BasicBlock, ResNet
from ..model.weights import load_model
from .evaluate import evaluate_model
from .plots import PlotUnavailable, plot_ablation


class ShortcutOnly(nn.Module):
    """A block with its residual branch removed: relu(shortcut(x))."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.downsample = block.downsample

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.downsample(x) if self.downsample is not None else x)


@contextmanager
def without_branches(model: ResNet, blocks: list[str]) -> Iterator[None]:
    """Replace the named blocks (``layer2.0``, ...) by :class:`ShortcutOnly` for the duration."""
    saved = []
    for name in blocks:
        stage, index = name.split(".")
        seq: nn.Sequential = getattr(model, stage)
        saved.append((seq, int(index), seq[int(index)]))
        seq[int(index)] = ShortcutOnly(seq[int(index)])
    try:
        yield
    finally:
        for seq, index, block in saved:
            seq[index] = block


class AblationRow(BaseModel):
    name: str
    kind: str  # block | stage
    blocks: list[str]
    top1: float
    drop: float


class AblateResult(BaseModel):
    checkpoint: str
    dataset: str
    synthetic: bool
    split: str
    images: int
    intact_top1: float
    rows: list[AblationRow]
    plot: str | None
    device: str
    warnings: list[str]


def ablate(
    settings: Settings, path: Path, *, limit: int | None = None, plot: Path | None = None, tasks: Tasks | None = None
) -> AblateResult:
    """Evaluate the checkpoint with each block's and each stage's residual branch removed."""
    device = resolve_device(settings.device)
    model, meta = load_model(path)
    data = load_checked_data(settings, meta, path, tasks)
    split = split_of(data, settings.eval.split)
    if limit is not None:
        split = ImageSet(split.images[:limit], split.labels[:limit])
    split = split.to(device)
    model.to(device).eval()

    def top1() -> float:
        return evaluate_model(
            model,
            split,
            mean=meta.mean,
            std=meta.std,
            image_size=meta.image_size,
            num_classes=meta.num_classes,
            batch_size=settings.eval.batch_size,
        ).top1_acc

    candidates = [(f"{s}.{i}", "block", [f"{s}.{i}"]) for s in STAGES for i in range(len(getattr(model, s)))]
    candidates += [(s, "stage", [f"{s}.{i}" for i in range(len(getattr(model, s)))]) for s in STAGES]
    rows = []
    with task(tasks, f"ablation: {len(candidates) + 1} evaluations of {len(split)} images", len(candidates) + 1) as bar:
        intact = top1()
        bar.advance()
        for name, kind, blocks in candidates:
            with without_branches(model, blocks):
                acc = top1()
            rows.append(AblationRow(name=name, kind=kind, blocks=blocks, top1=acc, drop=intact - acc))
            bar.advance()
    rows.sort(key=lambda r: r.drop, reverse=True)

    warnings = []
    if data.synthetic:
        warnings.append("ablated on SYNTHETIC data, not CIFAR")
    plotted = None
    if plot is not None:
        try:
            block_rows = [r for r in rows if r.kind == "block"] + [r for r in rows if r.kind == "stage"]
            plot_ablation([r.name for r in block_rows], [r.drop for r in block_rows], intact, plot)
            plotted = str(plot)
        except PlotUnavailable as exc:
            warnings.append(f"no plot: {exc}")
    return AblateResult(
        checkpoint=str(path),
        dataset=data.name,
        synthetic=data.synthetic,
        split=settings.eval.split,
        images=len(split),
        intact_top1=intact,
        rows=rows,
        plot=plotted,
        device=device_description(device),
        warnings=warnings,
    )
