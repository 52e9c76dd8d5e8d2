"""``eval``: top-1, top-5, loss, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from ..core.devices import device_description, resolve_device
from ..core.fileio import atomic_write_bytes, check_writable
from ..core.intervals import proportion_interval
from ..core.progress import Tasks, task
from ..core.settings import Settings
from ..data.augment import preprocess
from ..data.loading import load_checked_data, split_of
from ..data.sets import ImageSet
from ..model.archives import load_for_inference
from .class_metrics import ClassScores, per_class_csv, per_class_scores, summary
from .plots import PlotUnavailable, plot_confusion


@dataclass
class Scores:
    """Sums over a split, on the CPU: what every metric is computed from."""

    loss_sum: float
    top1: int
    top5: int
    count: int
    confusion: torch.Tensor  # [true, predicted] int64

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def top1_acc(self) -> float:
        return self.top1 / max(self.count, 1)

    @property
    def top5_acc(self) -> float:
        return self.top5 / max(self.count, 1)


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``off|bf16|fp16`` (fp16 only on CUDA)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp != "off")


def ranked(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best scores of each row and their classes, best first; equal scores in class order.

    One rule for every command: the first of tied classes ranks first, as ``argmax`` documents and as
    export and train score top-1. ``topk`` orders equal values as its kernel happens to, and int8 logits
    tie exactly on about 1% of images (256 levels), so with it eval of an int8 archive disagreed with
    the held-out score its export stored, and predict could name another class than eval counted.
    """
    values, indices = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


@torch.inference_mode()
def score_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Scores:
    """Scores of one batch of logits (float) against integer labels."""
    logits = logits.float()
    _, topk = ranked(logits, min(5, num_classes))
    pred = topk[:, 0]
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    return Scores(
        loss_sum=float(F.cross_entropy(logits, labels, reduction="sum")),
        top1=int((pred == labels).sum()),
        top5=int((topk == labels[:, None]).any(1).sum()),
        count=len(labels),
        confusion=confusion.cpu(),
    )


def merge(scores: Sequence[Scores], num_classes: int) -> Scores:
    total = Scores(0.0, 0, 0, 0, torch.zeros(num_classes, num_classes, dtype=torch.int64))
    for s in scores:
        total = Scores(
            total.loss_sum + s.loss_sum,
            total.top1 + s.top1,
            total.top5 + s.top5,
            total.count + s.count,
            total.confusion + s.confusion,
        )
    return total


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    data: ImageSet,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    num_classes: int,
    batch_size: int = 512,
    amp: str = "off",
    channels_last: bool = False,
    tta: bool = False,
    tasks: Tasks | None = None,
    label: str = "evaluating",
) -> Scores:
    """Evaluate ``model`` (eval mode) on a device-resident split, batch by batch (reported to ``tasks``
    as ``label``)."""
    was_training = getattr(model, "training", False)  # a frozen TorchScript module has no mode
    if hasattr(model, "training"):
        model.eval()
    device = data.images.device
    parts = []
    try:
        with task(tasks, f"{label} ({len(data)} images)", -(-len(data) // batch_size)) as bar:
            for start in range(0, len(data), batch_size):
                x = preprocess(
                    data.images[start : start + batch_size], mean, std, image_size, channels_last=channels_last
                )
                with autocast(device, amp):
                    logits = model(x).float()
                    if tta:  # average the probabilities of the image and its mirror
                        probs = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2
                        logits = probs.clamp_min(1e-12).log()
                parts.append(score_logits(logits, data.labels[start : start + batch_size], num_classes))
                bar.advance()
    finally:
        if hasattr(model, "training"):
            model.train(was_training)
    return merge(parts, num_classes)


class EvalResult(BaseModel):
    checkpoint: str
    dataset: str
    synthetic: bool
    split: str
    images: int
    top1: float
    top1_ci95: tuple[float, float] | None = None  # Wilson 95% interval (intervals.py); None: older results
    top5: float
    loss: float
    tta: bool
    balanced_accuracy: float | None = None  # mean per-class recall (class_metrics.py); None: older results
    macro_precision: float | None = None
    macro_recall: float | None = None
    macro_f1: float | None = None
    per_class: list[ClassScores]
    per_class_csv: str | None = None
    confusion: list[list[int]]
    class_names: list[str]
    confusion_csv: str | None
    confusion_plot: str | None = None
    device: str
    time_s: float
    images_per_s: float
    warnings: list[str]


def confusion_csv(confusion: torch.Tensor, names: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true\\predicted", *names])
    for name, row in zip(names, confusion.tolist(), strict=True):
        writer.writerow([name, *row])
    return buf.getvalue().encode()


def evaluate_checkpoint(
    settings: Settings,
    path: Path,
    *,
    confusion: Path | None = None,
    confusion_plot: Path | None = None,
    per_class_csv_path: Path | None = None,
    tasks: Tasks | None = None,
) -> EvalResult:
    """Evaluate one of our checkpoints on the test (or validation) split."""
    outputs = ((confusion, "--confusion file"), (confusion_plot, "--confusion-plot file"))
    for target, what in (*outputs, (per_class_csv_path, "--per-class-csv file")):
        if target is not None:
            check_writable(target, force=True, what=what)
    device = resolve_device(settings.device)
    model, meta = load_for_inference(path, device, runtime=settings.onnx_runtime)  # archives carry the metadata
    data = load_checked_data(settings, meta, path, tasks)
    split = split_of(data, settings.eval.split)
    start = time.perf_counter()
    scores = evaluate_model(
        model,
        split.to(device),
        mean=meta.mean,
        std=meta.std,
        image_size=meta.image_size,
        num_classes=meta.num_classes,
        batch_size=settings.eval.batch_size,
        tta=settings.eval.tta,
        tasks=tasks,
        label=f"eval {settings.eval.split}",
    )
    elapsed = time.perf_counter() - start
    per_class = per_class_scores(scores.confusion, data.classes)
    if confusion is not None:
        atomic_write_bytes(confusion, confusion_csv(scores.confusion, data.classes))
    if per_class_csv_path is not None:
        atomic_write_bytes(per_class_csv_path, per_class_csv(per_class))
    warnings = []
    if data.synthetic:
        warnings.append("evaluated on SYNTHETIC data, not CIFAR: the numbers say nothing about real images")
    plotted = None
    if confusion_plot is not None:
        try:
            plot_confusion(scores.confusion.tolist(), data.classes, confusion_plot)
            plotted = str(confusion_plot)
        except PlotUnavailable as exc:
            warnings.append(f"no confusion plot: {exc.hint}")
    if not meta.pretrained and meta.trained_epochs is None:
        warnings.append(f"{path} holds random, untrained weights")
    return EvalResult(
        checkpoint=str(path),
        dataset=data.name,
        synthetic=data.synthetic,
        split=settings.eval.split,
        images=scores.count,
        top1=scores.top1_acc,
        top1_ci95=proportion_interval(scores.top1, scores.count),
        top5=scores.top5_acc,
        loss=scores.loss,
        tta=settings.eval.tta,
        **summary(per_class).model_dump(),
        per_class=per_class,
        per_class_csv=str(per_class_csv_path) if per_class_csv_path is not None else None,
        confusion=scores.confusion.tolist(),
        class_names=list(data.classes),
        confusion_csv=str(confusion) if confusion is not None else None,
        confusion_plot=plotted,
        device=device_description(device),
        time_s=elapsed,
        images_per_s=scores.count / elapsed if elapsed > 0 else 0.0,
        warnings=warnings,
    )
