"""ONNX archives: fp32 from the dynamo exporter, int8 statically quantized (int8.py)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..core.errors import CifarResnetError
from ..model.archives import optional
from .int8 import HeldOut, write_int8
from .job import Deployed, ExportJob, job_metadata
from .writers import onnx_proto, save_onnx, set_onnx_metadata


def write(job: ExportJob, method: str, model: nn.Module, tmp: Path, target: Path, metadata: str) -> HeldOut | None:
    """The fp32 file, or the int8 one scored on the held-out images (its score returned)."""
    if job.dtype == "int8":
        held_out = write_int8(job, model, tmp, metadata)
        set_onnx_metadata(tmp, job_metadata(job, method, held_out))
        return held_out
    save_onnx(onnx_proto(Deployed(model).eval(), job.example, metadata), tmp)
    return None


def unavailable(dtype: str) -> str | None:
    if dtype != "fp32":
        return None  # int8 needs the same extra; its writer says so in one line
    try:
        optional("onnxscript", "ONNX export")
    except CifarResnetError as exc:
        return str(exc)
    return None
