"""AOTInductor archives: torch.export, compiled ahead of time into a ``.pt2`` package for the export device."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .job import DTYPES, Deployed, ExportJob
from .writers import aoti_available, write_aoti


def write(job: ExportJob, method: str, model: nn.Module, tmp: Path, target: Path, metadata: str) -> None:
    deployed = Deployed(model.to(job.device), DTYPES[job.dtype], job.channels_last).eval()
    write_aoti(deployed, job.example.to(job.device), tmp, metadata)


def unavailable(dtype: str) -> str | None:
    if aoti_available():
        return None
    return f"AOTInductor packages need torch >= 2.8 (this is {torch.__version__})"
