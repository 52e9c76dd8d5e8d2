"""TorchScript archives: ``trace``, ``script`` and ``frozen`` (scripted, then torch.jit.freeze)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .job import DTYPES, Deployed, ExportJob, write_error


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


def _save_archive(variant: nn.Module, tmp: str, extra: dict[str, str], target: Path) -> None:
    """torch.jit.save into the temporary file; its C++ writer reports a full disk as a RuntimeError."""
    try:
        torch.jit.save(variant, tmp, _extra_files=extra)
    except (OSError, RuntimeError) as exc:
        raise write_error(exc, target) from None


def write(job: ExportJob, method: str, model: nn.Module, tmp: Path, target: Path, metadata: str) -> None:
    """The archive of ``method`` at ``tmp``: the frozen graph unoptimised (optimize_for_inference's output is
    specific to this machine's build and cannot be saved; the loaders optimise after loading)."""
    from ..model.archives import METADATA_FILE

    variant = build_variant(
        model, method, job.example, dtype=job.dtype, channels_last=job.channels_last, optimize=False
    )
    _save_archive(variant, str(tmp), {METADATA_FILE: metadata}, target)


def unavailable(dtype: str) -> str | None:
    return None  # TorchScript ships with torch
