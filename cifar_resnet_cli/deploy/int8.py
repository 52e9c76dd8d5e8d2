"""int8 archives: the calibrated ONNX file, scored on the checkpoint's held-out images against fp32, and
past its budget the fewest most sensitive layers kept in float (int8_fallback.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ..core.errors import VerificationError
from ..core.intervals import paired_difference_interval, proportion_interval
from ..core.progress import Tasks
from ..core.settings import Settings
from ..data.augment import preprocess
from ..data.loading import load_checked_data
from ..data.sets import DataError
from ..model.archives import load_archive
from ..model.weights import WeightsMeta
from .int8_fallback import drop_points, keep_in_float, median_ms, split, timing_batch
from .job import Deployed, ExportJob, HeldOutImages
from .rounding import Rounding, round_weights
from .writers import Int8Writer, onnx_proto


class Int8Fallback(BaseModel):
    """Why layers stayed in float and what that costs (int8_fallback.py). The drop and agreement of the
    HeldOut this belongs to are then measured on the report images only, which the ranking never saw."""

    all_int8_drop: float  # points on all held-out images: the drop that started the search
    all_int8_drop_on_report: float  # points on the report images, beside the mixed file's drop there
    ranking_images: int  # held-out images the layers were ranked on
    ranked: list[str]  # every layer, the most sensitive first
    drops: list[float]  # drop on the report images with the first 1, 2, ... ranked layers in float
    max_float_layers: int
    files_tried: int
    timing_batch: int  # images per timed call, in the runtime that scored the file
    ms: dict[str, float]  # median ms per call: fp32 (the ONNX file), int8 (every layer), mixed (this file)


class HeldOut(BaseModel):
    """An int8 archive scored on real held-out images against the fp32 checkpoint it came from."""

    split: str  # the checkpoint's validation split: never seen by training or calibration
    images: int
    calibration_images: int  # drawn from the training split
    fp32_top1: float
    int8_top1: float
    accuracy_drop: float  # percentage points, fp32 - int8
    max_accuracy_drop: float
    top1_agreement: float
    weight_rounding: str = "nearest"  # gptq or nearest (int8 files from before the option: nearest)
    rows_to_nearest: int = 0  # gptq: output channels rounded to nearest instead (their largest weight moved)
    runtime: str = "onnxruntime"  # what computed int8_top1 and the agreement (files from before: onnxruntime)
    # The counts behind the figures and their 95% intervals (intervals.py); None in files from before them.
    flipped: int | None = None  # images whose int8 top-1 differs from fp32's
    fp32_only_correct: int | None = None  # images only fp32 gets right; the drop is (this - the next) / images
    int8_only_correct: int | None = None
    top1_agreement_ci95: tuple[float, float] | None = None  # Wilson interval, fractions like top1_agreement
    accuracy_drop_ci95: tuple[float, float] | None = None  # points, paired (Tango score interval)
    float_layers: list[str] = []  # layers the fallback kept in float (empty: every layer int8)
    fallback: Int8Fallback | None = None  # how they were chosen and what they cost; None when not needed


def write_int8(job: ExportJob, model: nn.Module, tmp: Path, metadata: str) -> HeldOut:
    """The int8 file at ``tmp``, scored; past the budget, the mixed file with the fewest layers in float.

    With nearest rounding the float weights go to ONNX Runtime, whose quantizer rounds them to the same
    grid (rounding.py), so a layer kept in float keeps its own weights; GPTQ's go in already rounded.
    """
    rounded, rounding = round_weights(model, job.weight_rounding, job.calibration or [])
    source = model if job.weight_rounding == "nearest" else rounded
    with Int8Writer(onnx_proto(Deployed(source).eval(), job.example, metadata), job.calibration or []) as writer:
        writer.write(tmp)
        all_int8 = _file_logits(job, tmp)
        held_out = _score_int8(job, all_int8, rounding)
        if held_out.accuracy_drop <= job.max_drop or job.max_float_layers == 0:
            return held_out
        return _fallback(job, writer, tmp, rounding, held_out, all_int8, model)


def _fallback(
    job: ExportJob,
    writer: Int8Writer,
    tmp: Path,
    rounding: Rounding,
    all_int8: HeldOut,
    all_int8_logits: Tensor,
    model: nn.Module,
) -> HeldOut:
    """Keep the fewest most sensitive layers in float until the drop fits, or refuse (int8_fallback.py).
    ``all_int8_logits``: the all-int8 file's logits on every held-out image, already computed."""
    assert job.held_out is not None and job.held_out_logits is not None
    scratch = Path(writer.prepared).with_name("all.int8.onnx")
    shutil.copyfile(tmp, scratch)
    held = job.held_out
    logits_of = lambda path, index: _file_logits(job, path, index)  # noqa: E731
    search = keep_in_float(
        writer,
        tmp,
        logits_of,
        job.held_out_logits,
        held.labels,
        model,
        max_drop=job.max_drop,
        limit=job.max_float_layers,
    )
    _, report = split(len(held.labels))
    if search.every_layer_drop is not None:
        raise VerificationError(
            f"the int8 archive loses {all_int8.accuracy_drop:.2f} points of top-1 on {all_int8.images} held-out images "
            f"(allowed {job.max_drop:g}), and still {search.every_layer_drop:.2f} points on {len(report)} of them "
            "with every convolution and linear layer in float: what stays int8 (additions, pooling) is calibrated "
            "badly; nothing was written",
            "check the calibration images (they should look like the training data), or ship fp32/bf16",
        )
    if not search.fits:
        raise VerificationError(
            f"the int8 archive loses {all_int8.accuracy_drop:.2f} points of top-1 on {all_int8.images} held-out images "
            f"(allowed {job.max_drop:g}), and with up to {len(search.drops)} of its most sensitive layers in float "
            f"({', '.join(search.ranked[: len(search.drops)])}) it still loses {min(search.drops, default=100):.2f} "
            f"points on {len(report)} of them; nothing was written",
            "calibrate on more images (--calibration-images), allow more --max-float-layers, or ship fp32/bf16",
        )
    x = next(held.batches(timing_batch(job.meta.image_size)))
    runners = {
        name: load_archive(path, "cpu", kind="onnx", runtime=job.onnx_runtime)[0]
        for name, path in (("fp32", writer.fp32), ("int8", scratch), ("mixed", tmp))
    }
    ms = median_ms(runners, x)
    if ms["mixed"] >= ms["fp32"]:
        raise VerificationError(
            f"the int8 archive fits its budget only with {len(search.float_layers)} layers in float "
            f"({', '.join(search.float_layers)}), and then it is no faster than the fp32 ONNX file in "
            f"{job.onnx_runtime} ({ms['mixed']:.2f} against {ms['fp32']:.2f} ms per {len(x)} images); nothing "
            "was written",
            "ship the fp32 ONNX file (export --method onnx), or calibrate on more images (--calibration-images)",
        )
    held_out = _score_int8(job, _file_logits(job, tmp, report), rounding, report)
    all_on_report = drop_points(all_int8_logits[report], job.held_out_logits[report], held.labels[report])
    fallback = Int8Fallback(
        all_int8_drop=all_int8.accuracy_drop,
        all_int8_drop_on_report=all_on_report,
        ranking_images=len(held.labels) - len(report),
        ranked=search.ranked,
        drops=search.drops,
        max_float_layers=job.max_float_layers,
        files_tried=search.files_tried,
        timing_batch=len(x),
        ms=ms,
    )
    return held_out.model_copy(update={"float_layers": search.float_layers, "fallback": fallback})


@torch.inference_mode()
def _file_logits(job: ExportJob, path: Path, index: Tensor | None = None) -> Tensor:
    """An ONNX file's logits on the held-out images (those at ``index``, or all), from a fresh session."""
    assert job.held_out is not None
    runner, _, _ = load_archive(path, "cpu", kind="onnx", runtime=job.onnx_runtime)
    held = job.held_out if index is None else job.held_out.subset(index)
    if job.held_out_logits is None:
        job.held_out_logits = torch.cat([job.model(x).float() for x in job.held_out.batches()])
    return torch.cat([runner(x) for x in held.batches()])


def _score_int8(job: ExportJob, int8: Tensor, rounding: Rounding, index: Tensor | None = None) -> HeldOut:
    """The int8 file's top-1 (its logits ``int8``) on the held-out images (at ``index``, or all) against
    the fp32 checkpoint's."""
    assert job.held_out is not None and job.held_out_logits is not None
    fp32, labels = job.held_out_logits, job.held_out.labels
    if index is not None:
        fp32, labels = fp32[index], labels[index]
    n = max(len(labels), 1)
    fp32_right, int8_right = fp32.argmax(1) == labels, int8.argmax(1) == labels
    fp32_correct, int8_correct = int(fp32_right.sum()), int(int8_right.sum())
    flipped = int((fp32.argmax(1) != int8.argmax(1)).sum())
    fp32_only, int8_only = int((fp32_right & ~int8_right).sum()), int((int8_right & ~fp32_right).sum())
    drop_low, drop_high = paired_difference_interval(fp32_only, int8_only, n)
    # Points from image counts, so that 10 images of 1,000 are exactly 1.0 (not 1.0000000000000036).
    return HeldOut(
        split="val" if index is None else "val (report part)",
        images=len(labels),
        calibration_images=sum(len(b) for b in job.calibration or []),
        fp32_top1=100 * fp32_correct / n,
        int8_top1=100 * int8_correct / n,
        accuracy_drop=100 * (fp32_correct - int8_correct) / n,
        max_accuracy_drop=job.max_drop,
        top1_agreement=(n - flipped) / n,
        weight_rounding=rounding.method,
        rows_to_nearest=rounding.rows_to_nearest,
        runtime=job.onnx_runtime,
        flipped=flipped,
        fp32_only_correct=fp32_only,
        int8_only_correct=int8_only,
        top1_agreement_ci95=proportion_interval(n - flipped, n),
        accuracy_drop_ci95=(100 * drop_low, 100 * drop_high),
    )


def int8_data(
    settings: Settings, meta: WeightsMeta, path: Path, tasks: Tasks | None
) -> tuple[list[Tensor], HeldOutImages]:
    """Calibration batches from the checkpoint's training split (preprocessed as the checkpoint's metadata
    says: mean/std, image size) and its held-out validation images (preprocessed when they are read)."""
    data = load_checked_data(settings, meta, path, tasks)
    if len(data.val) == 0:
        raise DataError(
            "int8 export measures the accuracy drop on the checkpoint's validation split, which is empty",
            "set data.val_size above 0 (CIFAR_RESNET_DATA__VAL_SIZE or the TOML file)",
        )
    n = min(settings.export.calibration_images, len(data.train))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(settings.train.seed))[:n]
    images = preprocess(data.train.images[order], meta.mean, meta.std, meta.image_size)
    calibration = list(images.split(32))
    return calibration, HeldOutImages(data.val.images, data.val.labels, meta.mean, meta.std, meta.image_size)
