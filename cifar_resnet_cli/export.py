"""``export``: TorchScript archives (trace, script, frozen) that prove themselves before they are kept.

Every archive is made on the CPU (a traced graph must not bake a device in), saved, loaded back
with plain ``torch.jit.load``, and compared with the eager model on a batch of a different size
than the tracing example. Only then is it renamed into place. The checkpoint's metadata (classes,
mean/std, input size, source and its sha256) travels in the archive's ``_extra_files``.
"""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from . import __version__
from .devices import device_description, resolve_device
from .errors import CheckpointError, OutputError, VerificationError
from .fileio import check_output_dir, output_error, sha256_file, temporary_beside
from .progress import Tasks, task
from .settings import ExportSettings, Settings
from .weights import WeightsMeta, load_model

METADATA_FILE = "cifar_resnet.json"
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


def tolerances(dtype: str, atol: float | None, min_agreement: float | None) -> tuple[float, float]:
    """Defaults: fp32 must match to 1e-4 (relative to the largest logit above 1) and agree on every
    top-1; bf16/fp16 keep about 3 significant digits, so 5e-2 and 90% agreement."""
    default_atol, default_agreement = (1e-4, 1.0) if dtype == "fp32" else (5e-2, 0.9)
    return (
        atol if atol is not None else default_atol,
        min_agreement if min_agreement is not None else default_agreement,
    )


def build_variant(model: nn.Module, method: str, example: Tensor, *, dtype: str = "fp32",
                  channels_last: bool = False, optimize: bool = True) -> nn.Module:  # fmt: skip
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

    def ok(self, min_agreement: float) -> bool:
        """Within tolerance everywhere, and the same top-1 wherever the eager margin exceeds twice the
        allowed error (two logits closer than that may swap under reduced precision; others may not)."""
        return self.max_abs_diff <= self.allowed and self.decisive_agreement >= min_agreement


@torch.inference_mode()
def compare(candidate: nn.Module, reference: Tensor, x: Tensor, atol: float) -> Agreement:
    out = candidate(x).float()
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
        images=len(x),
        allowed=atol * scale,
    )


class ArchiveInfo(BaseModel):
    method: str
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


class ExportResult(BaseModel):
    checkpoint: str
    checkpoint_sha256: str
    archives: list[ArchiveInfo]
    example_batch: int
    verify_batch: int
    image_size: int
    warnings: list[str]


def archive_metadata(meta: WeightsMeta, *, method: str, dtype: str, channels_last: bool, checkpoint_sha256: str) -> str:
    data = meta.model_dump(mode="json")
    data.update({
        "export_method": method, "export_dtype": dtype, "export_channels_last": channels_last,
        "exported_from_sha256": checkpoint_sha256, "export_torch_version": torch.__version__,
        "export_package_version": __version__, "input": "float32 [N, 3, image_size, image_size], RGB in [0, 1], "
        "then (x - mean) / std",
    })  # fmt: skip
    return json.dumps(data, indent=2)


def is_archive(path: Path) -> bool:
    """TorchScript archives are zip files; our safetensors checkpoints are not."""
    return path.is_file() and zipfile.is_zipfile(path)


def load_archive(
    path: Path, device: torch.device | str = "cpu", *, optimize: bool = True
) -> tuple[torch.jit.ScriptModule, WeightsMeta, dict]:
    """A TorchScript archive written by ``export`` and its metadata.

    A frozen archive gets ``torch.jit.optimize_for_inference`` for this machine after loading
    (``optimize=False`` returns it as plain ``torch.jit.load`` gives it).
    """
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # RuntimeError for anything torch.jit cannot read
        raise CheckpointError(f"{path} is not a readable TorchScript archive ({exc.__class__.__name__})") from None
    if not extra[METADATA_FILE]:
        raise CheckpointError(
            f"{path} has no {METADATA_FILE} in its extra files, so its classes and preprocessing are unknown",
            "export it with `cifar-resnet export`",
        )
    data = json.loads(extra[METADATA_FILE])
    fields = {k: v for k, v in data.items() if k in WeightsMeta.model_fields}
    if optimize and data.get("export_method") == "frozen":
        module = torch.jit.optimize_for_inference(module)
    return module, WeightsMeta.checked(fields, path), data


def _suffix(method: str, dtype: str, channels_last: bool) -> str:
    parts = [method] + ([dtype] if dtype != "fp32" else []) + (["cl"] if channels_last else [])
    return ".".join(parts)


def _save_archive(variant: nn.Module, tmp: str, extra: dict[str, str], target: Path) -> None:
    """torch.jit.save into the temporary file; its C++ writer reports a full disk as a RuntimeError."""
    try:
        torch.jit.save(variant, tmp, _extra_files=extra)
    except (OSError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OutputError(
            f"cannot write {target}: {reason}", "check free disk space and that the folder is writable"
        ) from None


def _export_one(model: nn.Module, method: str, target: Path, example: Tensor, x: Tensor, reference: Tensor,
                meta: WeightsMeta, ckpt_sha: str, device: torch.device, e: ExportSettings, atol: float,
                min_agreement: float, bar: Tasks) -> ArchiveInfo:  # fmt: skip
    """Build one archive, save it to a temporary file, load it back, verify it, then move it in place."""
    dtype, channels_last = e.dtype, e.channels_last
    variant = build_variant(copy.deepcopy(model), method, example, dtype=dtype, channels_last=channels_last,
                            optimize=False)  # fmt: skip
    bar.advance()
    fd, tmp = temporary_beside(target)
    os.close(fd)
    try:
        extra = {METADATA_FILE: archive_metadata(meta, method=method, dtype=dtype, channels_last=channels_last,
                                                 checkpoint_sha256=ckpt_sha)}  # fmt: skip
        _save_archive(variant, tmp, extra, target)
        bar.advance()
        # As a user gets it (plain torch.jit.load), and as our loaders run it (frozen: optimised).
        plain, _, _ = load_archive(Path(tmp), device, optimize=False)
        agreement = compare(plain, reference.to(device), x.to(device), atol)
        if method == "frozen":
            optimised = compare(load_archive(Path(tmp), device)[0], reference.to(device), x.to(device), atol)
            agreement = max(agreement, optimised, key=lambda a: a.max_abs_diff)
        if not agreement.ok(min_agreement):
            raise VerificationError(
                f"the {method} archive differs from the eager model: max |diff| {agreement.max_abs_diff:.3g} "
                f"(allowed {agreement.allowed:.3g}), top-1 agreement {agreement.decisive_agreement:.0%} on "
                f"{agreement.decisive_images} decisive images (required {min_agreement:.0%}); nothing was written",
                "loosen --atol/--min-agreement only if the difference is expected (reduced precision)",
            )
        try:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise output_error(exc, target) from None
        bar.advance()
    finally:
        Path(tmp).unlink(missing_ok=True)
    return ArchiveInfo(
        method=method, path=str(target), dtype=dtype, channels_last=channels_last, frozen=method == "frozen",
        bytes=target.stat().st_size, sha256=sha256_file(target), verified_on=device_description(device),
        agreement=agreement, atol=atol, min_agreement=min_agreement,
    )  # fmt: skip


def export_model(settings: Settings, path: Path, *, force: bool = False, tasks: Tasks | None = None) -> ExportResult:
    """Write one verified TorchScript archive per method into ``settings.export.out_dir``."""
    e = settings.export
    out_dir, methods, dtype, channels_last = e.out_dir, e.methods, e.dtype, e.channels_last
    example_batch, verify_batch = e.example_batch, e.verify_batch
    if example_batch == verify_batch:
        raise VerificationError("the verification batch must differ in size from the tracing example",
                                "change --example-batch or --verify-batch")  # fmt: skip
    device = resolve_device(settings.device)
    if dtype == "fp16" and device.type != "cuda":
        raise VerificationError("fp16 archives are verified on CUDA only", "use --dtype bf16 on the CPU")
    model, meta = load_model(path)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file, not a folder", "pass a folder for the archives")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, out_dir, "create --out folder") from None
    check_output_dir(out_dir, "--out folder")
    model.eval()
    ckpt_sha = sha256_file(path)
    size = meta.image_size
    gen = torch.Generator().manual_seed(settings.train.seed)
    example = torch.randn(example_batch, 3, size, size, generator=gen)
    x = torch.randn(verify_batch, 3, size, size, generator=gen)
    with torch.inference_mode():
        reference = model(x).float()
    atol, min_agreement = tolerances(dtype, e.atol, e.min_agreement)
    targets = {m: out_dir / f"{path.stem}.{_suffix(m, dtype, channels_last)}.pt" for m in methods}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise CheckpointError(f"{', '.join(existing)} already exists", "pass --force to overwrite")

    archives = []
    for method, target in targets.items():
        with task(tasks, f"{method} archive: build, save, load back, verify", 3) as bar:
            archives.append(_export_one(model, method, target, example, x, reference, meta, ckpt_sha, device, e,
                                        atol, min_agreement, bar))  # fmt: skip
    return ExportResult(
        checkpoint=str(path),
        checkpoint_sha256=ckpt_sha,
        archives=archives,
        example_batch=example_batch,
        verify_batch=verify_batch,
        image_size=size,
        warnings=[],
    )
