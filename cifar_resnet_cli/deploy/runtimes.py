"""``bench``'s deployment variants: the model written to an archive file and run by another runtime.

``aoti`` (an AOTInductor ``.pt2`` package), ``onnxruntime`` and ``openvino`` (one ONNX file, fp32 or
static int8, shared by both runtimes within a run). Each is built in a temporary folder from the same
eager model as the other variants, loaded back by its runtime's own loader, and timed like them; the
time to build the file is reported on its own (``build_s``), apart from the first call's cold start.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..model.archives import AotiRunner, LoaderCrashed, OpenVinoRunner, OrtRunner, optional
from .job import DTYPES, Deployed
from .writers import onnx_proto, quantize_onnx, save_onnx, write_aoti

RUNTIME_VARIANTS = ("aoti", "onnxruntime", "openvino")
EXTRA_OF = {"onnxruntime": ("onnxruntime", "onnxscript"), "openvino": ("openvino", "onnxscript")}


def not_applicable(variant: str, dtype: str, layout: str, device: torch.device) -> str | None:
    """Why a variant x dtype x layout cannot exist (skipped, not reported as a failure), or None."""
    if dtype == "int8" and variant not in ("onnxruntime", "openvino"):
        return f"{variant} int8 (int8 is an ONNX file, run by onnxruntime or openvino)"
    if variant in ("onnxruntime", "openvino"):
        if device.type != "cpu":
            return f"{variant} on {device.type} (our ONNX runtimes run on the CPU)"
        if layout == "nhwc":
            return f"{variant} nhwc (ONNX runtimes pick their own layout)"
        if variant == "onnxruntime" and dtype in ("bf16", "fp16"):
            return f"onnxruntime {dtype} (its CPU provider has no {dtype} convolutions)"
        if variant == "openvino" and dtype == "fp16":
            return "openvino fp16 (a GPU precision; this is the CPU plugin)"
    return None


def check_installed(variant: str) -> None:
    """A missing extra is one line naming it (the bench reports it in the variant's row)."""
    for module in EXTRA_OF.get(variant, ()):
        optional(module, f"the {variant} variant")


class Workshop:
    """A temporary folder where one bench run builds its archive files, each once."""

    def __init__(self, model: nn.Module, example: Tensor, calibration: list[Tensor]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cifar-resnet-bench-")
        self.folder = Path(self._dir.name)
        self.model, self.example, self.calibration = model, example, calibration
        self._onnx: dict[str, tuple[Path, float]] = {}
        self._aoti_crash: LoaderCrashed | None = None  # the loader crashed once: the next packages are not built

    def close(self) -> None:
        self._dir.cleanup()

    def onnx(self, dtype: str) -> tuple[Path, float]:
        """The fp32 or int8 ONNX file and the seconds it took to make (int8 includes the fp32 export)."""
        if dtype not in self._onnx:
            start = time.perf_counter()
            proto = onnx_proto(Deployed(_cpu_copy(self.model)).eval(), self.example.cpu(), "{}")
            path = self.folder / f"model.{dtype}.onnx"
            if dtype == "int8":
                quantize_onnx(proto, path, self.calibration)
            else:
                save_onnx(proto, path)
            self._onnx[dtype] = (path, time.perf_counter() - start)
        return self._onnx[dtype]

    def build(self, variant: str, dtype: str, layout: str, device: torch.device) -> tuple[Callable, float]:
        """The variant as a callable, and its build time in seconds."""
        check_installed(variant)
        if variant == "aoti":
            return self._aoti(dtype, layout, device)
        path, seconds = self.onnx(dtype)
        if variant == "onnxruntime":
            return OrtRunner(path), seconds
        return OpenVinoRunner(path, None if dtype == "int8" else dtype), seconds

    def _aoti(self, dtype: str, layout: str, device: torch.device) -> tuple[Callable, float]:
        if self._aoti_crash is not None:  # a minute of compiling for the same crash: say so instead
            raise LoaderCrashed(f"not built: {self._aoti_crash.message}", self._aoti_crash.hint)
        start = time.perf_counter()
        path = self.folder / f"model.{dtype}.{layout}.pt2"
        deployed = Deployed(_cpu_copy(self.model).to(device), DTYPES[dtype], layout == "nhwc").eval()
        write_aoti(deployed, self.example.to(device), path, json.dumps({"export_device": device.type}))
        try:
            return AotiRunner(path, device), time.perf_counter() - start
        except LoaderCrashed as exc:
            self._aoti_crash = exc
            raise


def _cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).float().cpu()
