"""``export``: archives (TorchScript trace/script/frozen, AOTInductor ``.pt2``, ONNX fp32 and int8) that
prove themselves before they are kept.

Every archive is saved to a temporary file, loaded back with its runtime's own loader in a fresh
object, and compared with the eager model on a batch of a different size than the example it was
made from; an int8 archive is also scored on the checkpoint's held-out (validation) images against
the fp32 model. Only then is it renamed into place. The checkpoint's metadata (classes, mean/std,
input size, source and its sha256) travels in the format's own place (see archives.py).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from .. import __version__
from ..core.devices import device_description, resolve_device
from ..core.errors import CheckpointError, CifarResnetError, OutputError, VerificationError
from ..core.fileio import check_output_dir, output_error, sha256_file, temporary_beside
from ..core.intervals import paired_difference_interval, proportion_interval
from ..core.progress import Tasks, task
from ..core.settings import Settings
from ..data.augment import preprocess
from ..data.loading import load_checked_data, run_data_settings
from ..data.sets import DataError
from ..model.archives import METADATA_FILE, SUFFIXES, LoaderCrashed, load_archive, optional
from ..model.weights import WeightsMeta, load_model
from .int8_fallback import drop_points, keep_in_float, median_ms, split, timing_batch
from .rounding import Rounding, round_weights
from .writers import Int8Writer, aoti_available, onnx_proto, save_onnx, set_onnx_metadata, write_aoti

TORCHSCRIPT_METHODS = ("trace", "script", "frozen")
KINDS = {"trace": "torchscript", "script": "torchscript", "frozen": "torchscript", "aoti": "aoti", "onnx": "onnx"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Deployed(nn.Module):
    """The model as deployed: float32 NCHW in, float32 logits out; inside, any dtype and layout.

    Casting the weights (not autocast) keeps every variant a plain graph that TorchScript can
    freeze and that a user can call without knowing how it was built.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        super().__init__()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(dtype=dtype, memory_format=fmt).eval()
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()


DEFAULT_TOLERANCES = {"fp32": (1e-4, 1.0), "bf16": (5e-2, 0.9), "fp16": (5e-2, 0.9), "int8": (0.1, 0.95)}


def tolerances(dtype: str, atol: float | None, min_agreement: float | None) -> tuple[float, float]:
    """Defaults: fp32 must match to 1e-4 (relative to the largest logit above 1) and agree on every
    top-1; bf16/fp16 keep about 3 significant digits, so 5e-2 and 90% agreement. int8 (256 levels per
    tensor) is judged on real held-out images: 95% top-1 agreement wherever the fp32 margin exceeds a
    fifth of the largest logit, and the accuracy drop (``--max-accuracy-drop``); its max |diff| is reported."""
    default_atol, default_agreement = DEFAULT_TOLERANCES[dtype]
    return (
        atol if atol is not None else default_atol,
        min_agreement if min_agreement is not None else default_agreement,
    )


def build_variant(
    model: nn.Module,
    method: str,
    example: Tensor,
    *,
    dtype: str = "fp32",
    channels_last: bool = False,
    optimize: bool = True,
) -> nn.Module:
    """``eager``, ``trace``, ``script`` or ``frozen`` (scripted, frozen, and optimize_for_inference).

    ``optimize=False`` stops ``frozen`` after ``torch.jit.freeze``: what ``optimize_for_inference``
    makes is specific to this machine's build and cannot be saved (pytorch/pytorch#69608), so an
    archive holds the frozen graph and :func:`load_archive` optimises it after loading.
    """
    deployed = Deployed(model, DTYPES[dtype], channels_last).eval()
    if method == "eager":
        return deployed
    if method == "trace":
        with torch.inference_mode(False), torch.no_grad():
            return torch.jit.trace(deployed, example)
    scripted = torch.jit.script(deployed)
    if method == "script":
        return scripted
    if method == "frozen":
        frozen = torch.jit.freeze(scripted.eval())
        return torch.jit.optimize_for_inference(frozen) if optimize else frozen
    raise ValueError(f"unknown method {method!r}")


class Agreement(BaseModel):
    """A variant's logits against eager fp32 on the same batch."""

    max_abs_diff: float
    scale: float  # the largest |eager logit|, at least 1: tolerances are relative to it
    top1_agreement: float  # over every image
    decisive_images: int  # images whose eager top-1 beats top-2 by more than twice the allowed error
    decisive_agreement: float  # top-1 agreement over those
    images: int
    allowed: float  # atol x scale

    def ok(self, min_agreement: float, *, check_diff: bool = True) -> bool:
        """Within tolerance everywhere, and the same top-1 wherever the eager margin exceeds twice the
        allowed error (two logits closer than that may swap under reduced precision; others may not).
        ``check_diff=False`` (int8, whose error has no a-priori bound) judges the agreement only."""
        within = self.max_abs_diff <= self.allowed or not check_diff
        return within and self.decisive_agreement >= min_agreement


@torch.inference_mode()
def compare(candidate: nn.Module, reference: Tensor, x: Tensor, atol: float) -> Agreement:
    return compare_outputs(candidate(x).float(), reference, atol)


def compare_outputs(out: Tensor, reference: Tensor, atol: float) -> Agreement:
    """Logits against the eager fp32 logits of the same images."""
    scale = max(1.0, float(reference.abs().max()))
    same = out.argmax(1) == reference.argmax(1)
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    decisive = margin > 2 * atol * scale
    return Agreement(
        max_abs_diff=float((out - reference).abs().max()),
        scale=scale,
        top1_agreement=float(same.float().mean()),
        decisive_images=int(decisive.sum()),
        decisive_agreement=float(same[decisive].float().mean()) if bool(decisive.any()) else 1.0,
        images=len(out),
        allowed=atol * scale,
    )


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


class ArchiveInfo(BaseModel):
    method: str
    kind: str  # torchscript, aoti, onnx
    runtime: str  # what loaded it back for verification
    path: str
    dtype: str
    channels_last: bool
    frozen: bool
    bytes: int
    sha256: str
    verified_on: str
    agreement: Agreement
    atol: float
    min_agreement: float
    held_out: HeldOut | None = None


class ExportResult(BaseModel):
    checkpoint: str
    checkpoint_sha256: str
    archives: list[ArchiveInfo]
    example_batch: int
    verify_batch: int
    image_size: int
    warnings: list[str]


def archive_metadata(
    meta: WeightsMeta,
    *,
    method: str,
    dtype: str,
    channels_last: bool,
    checkpoint_sha256: str,
    device: torch.device,
    held_out: HeldOut | None = None,
    data_settings: dict | None = None,
) -> str:
    """``data_settings``: where the checkpoint's data lives (``data_dir``, ``download``), so that ``eval``
    finds it for an archive kept outside the run folder."""
    data = meta.model_dump(mode="json")
    data.update(
        {
            "export_method": method,
            "export_dtype": dtype,
            "export_channels_last": channels_last,
            "export_device": device.type if method == "aoti" else "any",
            "exported_from_sha256": checkpoint_sha256,
            "export_torch_version": torch.__version__,
            "export_package_version": __version__,
            "input": "float32 [N, 3, image_size, image_size], RGB in [0, 1], then (x - mean) / std",
        }
    )
    if held_out is not None:
        data["int8_held_out"] = held_out.model_dump()
    if data_settings:
        data["data"] = data_settings
    return json.dumps(data, indent=2)


def suffix(method: str, dtype: str, channels_last: bool) -> str:
    """File name after the checkpoint's stem: ``trace.pt``, ``frozen.bf16.cl.pt``, ``aoti.pt2``, ``int8.onnx``."""
    parts = ([method] if method != "onnx" else []) + ([dtype] if dtype != "fp32" else [])
    parts += ["cl"] if channels_last else []
    return "".join(f"{p}." for p in parts) + SUFFIXES[KINDS[method]].lstrip(".")


def methods_for_all(dtype: str, channels_last: bool = False) -> tuple[list[str], list[str]]:
    """What ``--method all`` writes here for ``dtype``, and a note for each kind left out and why."""
    if dtype == "int8":
        return ["onnx"], []
    methods, notes = list(TORCHSCRIPT_METHODS), []
    if aoti_available():
        methods.append("aoti")
    else:
        notes.append(f"no aoti archive: AOTInductor packages need torch >= 2.8 (this is {torch.__version__})")
    if channels_last:
        notes.append("no onnx archive: --channels-last applies to TorchScript and aoti archives only")
    elif dtype == "fp32":
        try:
            optional("onnxscript", "ONNX export")
            methods.append("onnx")
        except CifarResnetError as exc:
            notes.append(f"no onnx archive: {exc}")
    else:
        notes.append(f"no onnx archive: ONNX archives are fp32 or int8 (asked for {dtype})")
    return methods, notes


def _save_archive(variant: nn.Module, tmp: str, extra: dict[str, str], target: Path) -> None:
    """torch.jit.save into the temporary file; its C++ writer reports a full disk as a RuntimeError."""
    try:
        torch.jit.save(variant, tmp, _extra_files=extra)
    except (OSError, RuntimeError) as exc:
        raise _write_error(exc, target) from None


def _write_error(exc: Exception, target: Path) -> OutputError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutputError(f"cannot write {target}: {reason}", "check free disk space and that the folder is writable")


@dataclass(frozen=True)
class HeldOutImages:
    """The validation split as it is stored (uint8), preprocessed one batch at a time: 5,000 images at
    224 px are 3 GB as float32 and 0.75 GB as they are."""

    images: Tensor
    labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int

    def subset(self, index: Tensor) -> HeldOutImages:
        return HeldOutImages(self.images[index], self.labels[index], self.mean, self.std, self.image_size)

    def batches(self, size: int = 256) -> Iterator[Tensor]:
        for i in range(0, len(self.images), size):
            yield preprocess(self.images[i : i + size], self.mean, self.std, self.image_size)


@dataclass
class _Job:
    """What every archive of one export shares: the model, the inputs, the reference and the settings."""

    model: nn.Module
    meta: WeightsMeta
    ckpt_sha: str
    device: torch.device
    dtype: str
    channels_last: bool
    example: Tensor
    x: Tensor
    reference: Tensor
    atol: float
    min_agreement: float
    max_drop: float  # int8: allowed top-1 loss on the held-out images, in points
    weight_rounding: str  # int8: gptq or nearest
    max_float_layers: int  # int8: layers the fallback may keep in float (0: none, refuse instead)
    data_settings: dict  # the data folder and download choice, recorded in the archive for eval
    onnx_runtime: str  # what loads ONNX files back and scores int8: onnxruntime or openvino
    calibration: list[Tensor] | None = None  # int8: preprocessed training batches
    held_out: HeldOutImages | None = None  # int8: the validation images and labels
    held_out_logits: Tensor | None = None  # int8: the fp32 model's logits on them, computed once


def _write(job: _Job, method: str, tmp: Path, target: Path) -> HeldOut | None:
    """Write ``method``'s archive of the job's model to ``tmp``; for int8, score it on the held-out images."""
    model = copy.deepcopy(job.model)
    metadata = _metadata(job, method)
    try:
        if method in TORCHSCRIPT_METHODS:
            variant = build_variant(
                model, method, job.example, dtype=job.dtype, channels_last=job.channels_last, optimize=False
            )
            _save_archive(variant, str(tmp), {METADATA_FILE: metadata}, target)
        elif method == "aoti":
            deployed = Deployed(model.to(job.device), DTYPES[job.dtype], job.channels_last).eval()
            write_aoti(deployed, job.example.to(job.device), tmp, metadata)
        elif job.dtype == "int8":
            held_out = _write_int8(job, model, tmp, metadata)
            set_onnx_metadata(tmp, _metadata(job, method, held_out))
            return held_out
        else:
            save_onnx(onnx_proto(Deployed(model).eval(), job.example, metadata), tmp)
    except OSError as exc:
        raise _write_error(exc, target) from None
    return None


def _metadata(job: _Job, method: str, held_out: HeldOut | None = None) -> str:
    return archive_metadata(
        job.meta,
        method=method,
        dtype=job.dtype,
        channels_last=job.channels_last,
        checkpoint_sha256=job.ckpt_sha,
        device=job.device,
        held_out=held_out,
        data_settings=job.data_settings,
    )


def _write_int8(job: _Job, model: nn.Module, tmp: Path, metadata: str) -> HeldOut:
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
    job: _Job,
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
def _file_logits(job: _Job, path: Path, index: Tensor | None = None) -> Tensor:
    """An ONNX file's logits on the held-out images (those at ``index``, or all), from a fresh session."""
    assert job.held_out is not None
    runner, _, _ = load_archive(path, "cpu", kind="onnx", runtime=job.onnx_runtime)
    held = job.held_out if index is None else job.held_out.subset(index)
    if job.held_out_logits is None:
        job.held_out_logits = torch.cat([job.model(x).float() for x in job.held_out.batches()])
    return torch.cat([runner(x) for x in held.batches()])


def _score_int8(job: _Job, int8: Tensor, rounding: Rounding, index: Tensor | None = None) -> HeldOut:
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


def _verify(job: _Job, method: str, tmp: Path, held_out: HeldOut | None) -> tuple[Agreement, str]:
    """Load the written file back with its runtime's own loader and compare it with the eager model."""
    device = torch.device("cpu") if KINDS[method] == "onnx" else job.device
    loaded, _, _ = load_archive(tmp, device, optimize=False, kind=KINDS[method], runtime=job.onnx_runtime)
    runtime = getattr(loaded, "runtime", "torch")
    if held_out is not None:  # int8: judged on real images, where its ranges were calibrated
        assert job.held_out is not None
        with torch.inference_mode():
            out = torch.cat([loaded(x) for x in job.held_out.batches()])
        return compare_outputs(out, job.held_out_logits, job.atol), runtime
    agreement = compare(loaded, job.reference.to(device), job.x.to(device), job.atol)
    if method == "frozen":  # also as our loaders run it: optimised for this machine after loading
        optimised = compare(
            load_archive(tmp, device, kind="torchscript")[0], job.reference.to(device), job.x.to(device), job.atol
        )
        agreement = max(agreement, optimised, key=lambda a: a.max_abs_diff)
    return agreement, runtime


def _check(method: str, agreement: Agreement, job: _Job, held_out: HeldOut | None) -> None:
    int8 = held_out is not None
    if not agreement.ok(job.min_agreement, check_diff=not int8):
        raise VerificationError(
            f"the {method} {job.dtype} archive differs from the eager model: max |diff| {agreement.max_abs_diff:.3g} "
            f"(allowed {agreement.allowed:.3g}), top-1 agreement {agreement.decisive_agreement:.0%} on "
            f"{agreement.decisive_images} decisive images (required {job.min_agreement:.0%}); nothing was written",
            "loosen --atol/--min-agreement only if the difference is expected (reduced precision)",
        )
    if int8 and held_out.accuracy_drop > held_out.max_accuracy_drop:
        raise VerificationError(
            f"the int8 archive loses {held_out.accuracy_drop:.2f} points of top-1 on {held_out.images} held-out "
            f"images ({held_out.fp32_top1:.2f}% fp32 -> {held_out.int8_top1:.2f}% int8; allowed "
            f"{held_out.max_accuracy_drop:g}); nothing was written",
            "allow layers in float (--max-float-layers), calibrate on more images (--calibration-images), "
            "or ship fp32/bf16",
        )


def _export_one(job: _Job, method: str, target: Path, bar: Tasks) -> ArchiveInfo:
    """Build one archive, save it to a temporary file, load it back, verify it, then move it in place."""
    fd, name = temporary_beside(target)
    os.close(fd)
    tmp = Path(name)
    try:
        held_out = _write(job, method, tmp, target)
        bar.advance()
        agreement, runtime = _verify(job, method, tmp, held_out)
        bar.advance()
        _check(method, agreement, job, held_out)
        try:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise output_error(exc, target) from None
        bar.advance()
    finally:
        tmp.unlink(missing_ok=True)
    return ArchiveInfo(
        method=method,
        kind=KINDS[method],
        runtime=runtime,
        path=str(target),
        dtype=job.dtype,
        channels_last=job.channels_last,
        frozen=method == "frozen",
        bytes=target.stat().st_size,
        sha256=sha256_file(target),
        verified_on=device_description(torch.device("cpu") if method == "onnx" else job.device),
        agreement=agreement,
        atol=job.atol,
        min_agreement=job.min_agreement,
        held_out=held_out,
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


def export_model(
    settings: Settings,
    path: Path,
    *,
    force: bool = False,
    tasks: Tasks | None = None,
    tamper_calibration: float | None = None,
) -> ExportResult:
    """Write one verified archive per method into ``settings.export.out_dir``.

    ``tamper_calibration`` (tests only) scales the calibration images, to show a destroyed int8 model is refused.
    """
    e = settings.export
    if e.example_batch == e.verify_batch:
        raise VerificationError(
            "the verification batch must differ in size from the tracing example",
            "change --example-batch or --verify-batch",
        )
    device = resolve_device(settings.device)
    if e.dtype == "fp16" and device.type != "cuda":
        raise VerificationError("fp16 archives are verified on CUDA only", "use --dtype bf16 on the CPU")
    if e.dtype == "int8" and device.type != "cpu":
        raise VerificationError("int8 archives are ONNX files for CPU runtimes", "use --device cpu")
    model, meta = load_model(path)
    out_dir = _prepare_out_dir(e.out_dir)
    model.eval()
    ckpt_sha = sha256_file(path)
    methods, warnings = (e.methods, []) if e.methods != ["all"] else methods_for_all(e.dtype, e.channels_last)
    if settings.onnx_runtime == "openvino" and any(KINDS[m] == "onnx" for m in methods):
        optional("openvino", "--onnx-runtime openvino")  # before minutes of export and calibration
    targets = {m: out_dir / f"{path.stem}.{suffix(m, e.dtype, e.channels_last)}" for m in methods}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise CheckpointError(f"{', '.join(existing)} already exists", "pass --force to overwrite")
    job = _job(settings, model, meta, ckpt_sha, device, path)
    if e.dtype == "int8":
        job.calibration, job.held_out = int8_data(settings, meta, path, tasks)
        if tamper_calibration is not None:
            job.calibration = [b * tamper_calibration for b in job.calibration]
    archives = []
    for method, target in targets.items():
        try:
            with task(tasks, f"{method} {e.dtype} archive: write, load back, verify", 3) as bar:
                archives.append(_export_one(job, method, target, bar))
        except LoaderCrashed as exc:  # --method all writes what can be made here; a named method must be made
            if e.methods != ["all"]:
                raise
            warnings.append(f"no {method} archive: {exc.message}")
    return ExportResult(
        checkpoint=str(path),
        checkpoint_sha256=ckpt_sha,
        archives=archives,
        example_batch=e.example_batch,
        verify_batch=e.verify_batch,
        image_size=meta.image_size,
        warnings=warnings,
    )


def _prepare_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file, not a folder", "pass a folder for the archives")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, out_dir, "create --out folder") from None
    check_output_dir(out_dir, "--out folder")
    return out_dir


def data_settings(settings: Settings, checkpoint: Path) -> dict:
    """The data folder and download choice of the checkpoint's run (``settings.json`` beside it), or the
    ones this export was given: recorded in each archive so that ``eval`` of an archive kept elsewhere
    reads the same data."""
    chosen, d = settings.data.model_fields_set, settings.data
    found = {k: v for k, v in run_data_settings(checkpoint).items() if k in ("data_dir", "download") and v is not None}
    if "data_dir" in chosen and d.data_dir is not None:
        found["data_dir"] = str(d.data_dir)
    if "download" in chosen:
        found["download"] = d.download
    return found


def _job(
    settings: Settings, model: nn.Module, meta: WeightsMeta, ckpt_sha: str, device: torch.device, path: Path
) -> _Job:
    e = settings.export
    size = meta.image_size
    gen = torch.Generator().manual_seed(settings.train.seed)
    example = torch.randn(e.example_batch, 3, size, size, generator=gen)
    x = torch.randn(e.verify_batch, 3, size, size, generator=gen)
    with torch.inference_mode():
        reference = model(x).float()
    atol, min_agreement = tolerances(e.dtype, e.atol, e.min_agreement)
    return _Job(
        model=model,
        meta=meta,
        ckpt_sha=ckpt_sha,
        device=device,
        dtype=e.dtype,
        channels_last=e.channels_last,
        example=example,
        x=x,
        reference=reference,
        atol=atol,
        min_agreement=min_agreement,
        max_drop=e.max_accuracy_drop,
        weight_rounding=e.weight_rounding,
        max_float_layers=e.max_float_layers,
        data_settings=data_settings(settings, path),
        onnx_runtime=settings.onnx_runtime,
    )
