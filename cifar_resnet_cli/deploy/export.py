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
import os
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import nn

from ..core.devices import device_description, resolve_device
from ..core.errors import CheckpointError, OutputError, VerificationError
from ..core.fileio import check_output_dir, output_error, sha256_file, temporary_beside
from ..core.formats import EXPORT_FORMATS, FLOAT_DTYPES
from ..core.progress import Tasks, task
from ..core.settings import Settings
from ..data.loading import run_data_settings
from ..model.archives import METADATA_FILE, LoaderCrashed, load_archive, optional
from ..model.weights import WeightsMeta, load_model
from .int8 import HeldOut, Int8Fallback, int8_data
from .job import (
    DTYPES,
    Agreement,
    Deployed,
    ExportJob,
    HeldOutImages,
    archive_metadata,
    compare,
    compare_outputs,
    job_metadata,
    tolerances,
    write_error,
)
from .torchscript import build_variant

__all__ = [  # the names other modules and tests use, wherever they are defined
    "DTYPES",
    "METADATA_FILE",
    "Agreement",
    "ArchiveInfo",
    "Deployed",
    "ExportResult",
    "HeldOut",
    "HeldOutImages",
    "Int8Fallback",
    "archive_metadata",
    "build_variant",
    "compare_outputs",
    "export_model",
    "methods_for_all",
    "suffix",
]


def suffix(method: str, dtype: str, channels_last: bool) -> str:
    """File name after the checkpoint's stem: ``trace.pt``, ``frozen.bf16.cl.pt``, ``aoti.pt2``, ``int8.onnx``."""
    parts = ([method] if method != "onnx" else []) + ([dtype] if dtype != "fp32" else [])
    parts += ["cl"] if channels_last else []
    return "".join(f"{p}." for p in parts) + EXPORT_FORMATS[method].suffix.lstrip(".")


def methods_for_all(dtype: str, channels_last: bool = False) -> tuple[list[str], list[str]]:
    """What ``--method all`` writes here for ``dtype``, and a note for each kind left out and why (a kind
    that is not made in this dtype at all, as TorchScript for int8, is left out without one)."""
    methods, notes = [], []
    nhwc = " and ".join(dict.fromkeys(f.label for f in EXPORT_FORMATS.values() if f.channels_last))
    for method, fmt in EXPORT_FORMATS.items():
        if dtype not in fmt.dtypes:
            if dtype in FLOAT_DTYPES and FLOAT_DTYPES[0] in fmt.dtypes:
                notes.append(
                    f"no {method} archive: {fmt.label} archives are {' or '.join(fmt.dtypes)} (asked for {dtype})"
                )
            continue
        if channels_last and not fmt.channels_last:
            notes.append(f"no {method} archive: --channels-last applies to {nhwc} archives only")
            continue
        reason = fmt.module().unavailable(dtype)
        if reason:
            notes.append(f"no {method} archive: {reason}")
        else:
            methods.append(method)
    return methods, notes


def _write(job: ExportJob, method: str, tmp: Path, target: Path) -> HeldOut | None:
    """Write ``method``'s archive of the job's model to ``tmp`` through its format's writer; for int8,
    its score on the held-out images."""
    try:
        return (
            EXPORT_FORMATS[method]
            .module()
            .write(job, method, copy.deepcopy(job.model), tmp, target, job_metadata(job, method))
        )
    except OSError as exc:
        raise write_error(exc, target) from None


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


def _verify(job: ExportJob, method: str, tmp: Path, held_out: HeldOut | None) -> tuple[Agreement, str]:
    """Load the written file back with its runtime's own loader and compare it with the eager model."""
    device = torch.device("cpu") if EXPORT_FORMATS[method].kind == "onnx" else job.device
    loaded, _, _ = load_archive(tmp, device, optimize=False, kind=EXPORT_FORMATS[method].kind, runtime=job.onnx_runtime)
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


def _check(method: str, agreement: Agreement, job: ExportJob, held_out: HeldOut | None) -> None:
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


def _export_one(job: ExportJob, method: str, target: Path, bar: Tasks) -> ArchiveInfo:
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
        kind=EXPORT_FORMATS[method].kind,
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
    if settings.onnx_runtime == "openvino" and any(EXPORT_FORMATS[m].kind == "onnx" for m in methods):
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
) -> ExportJob:
    e = settings.export
    size = meta.image_size
    gen = torch.Generator().manual_seed(settings.train.seed)
    example = torch.randn(e.example_batch, 3, size, size, generator=gen)
    x = torch.randn(e.verify_batch, 3, size, size, generator=gen)
    with torch.inference_mode():
        reference = model(x).float()
    atol, min_agreement = tolerances(e.dtype, e.atol, e.min_agreement)
    return ExportJob(
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
