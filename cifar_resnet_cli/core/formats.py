"""The export formats: one registry line each, with what settings, export, eval and bench need to know.

``export --method``'s choices and their checks, ``--method all``, the file suffixes and the module
that writes each format come from :data:`EXPORT_FORMATS`. The writer is named by path, so that
settings and ``--help`` never import torch. A new format is one module under
``cifar_resnet_cli/deploy/`` with ``write(job, method, model, tmp, target, metadata)`` and
``unavailable(dtype) -> str | None``, plus one line here (docs/design.md has a worked example).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

FLOAT_DTYPES = ("fp32", "bf16", "fp16")
# How each file kind is named to users, and its suffix; model/archives.py reads each kind back.
FILE_KINDS = {"torchscript": ("TorchScript", ".pt"), "aoti": ("aoti", ".pt2"), "onnx": ("ONNX", ".onnx")}
# Why a dtype is made by some formats only (the error names it).
DTYPE_NOTES = {"int8": "static QDQ quantization by ONNX Runtime"}


@dataclass(frozen=True)
class ExportFormat:
    """What an export method writes, in which dtypes and layouts, and the module that writes it."""

    description: str
    kind: str  # the file kind (FILE_KINDS): how it is read back
    dtypes: tuple[str, ...]  # --dtype values it can be written in
    writer: str  # "package.module" with write(...) and unavailable(dtype)
    channels_last: bool = True  # can hold NHWC inside (--channels-last)
    dtype_note: str = ""  # why it is not made in the other dtypes
    layout_note: str = ""  # why it does not take --channels-last

    @property
    def label(self) -> str:
        return FILE_KINDS[self.kind][0]

    @property
    def suffix(self) -> str:
        return FILE_KINDS[self.kind][1]

    def module(self) -> Any:
        return import_module(self.writer)


_TORCHSCRIPT = "cifar_resnet_cli.deploy.torchscript"
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "trace": ExportFormat("torch.jit.trace", "torchscript", FLOAT_DTYPES, _TORCHSCRIPT),
    "script": ExportFormat("torch.jit.script", "torchscript", FLOAT_DTYPES, _TORCHSCRIPT),
    "frozen": ExportFormat(
        "scripted, torch.jit.freeze, optimize_for_inference after loading", "torchscript", FLOAT_DTYPES, _TORCHSCRIPT
    ),
    "aoti": ExportFormat(
        "torch.export + AOTInductor .pt2 package", "aoti", FLOAT_DTYPES, "cifar_resnet_cli.deploy.aoti"
    ),
    "onnx": ExportFormat(
        "ONNX (dynamo exporter); int8: QDQ by ONNX Runtime's static quantizer",
        "onnx",
        ("fp32", "int8"),
        "cifar_resnet_cli.deploy.onnx",
        channels_last=False,
        dtype_note="ONNX Runtime's CPU provider has no bf16/fp16 convolutions (OpenVINO runs an fp32 ONNX file "
        "in bf16 by itself)",
        layout_note="ONNX runtimes pick the layout themselves",
    ),
}
ExportMethod = Literal[(*EXPORT_FORMATS, "all")]  # type: ignore[valid-type]  # --method's choices


def _labels(names: list[str]) -> str:
    return " and ".join(dict.fromkeys(EXPORT_FORMATS[m].label for m in names))


def method_problem(methods: list[str], dtype: str, channels_last: bool) -> str | None:
    """Why these methods cannot be written in this dtype and layout, or None."""
    named = [m for m in methods if m != "all"]
    wrong = [m for m in named if dtype not in EXPORT_FORMATS[m].dtypes]
    noted = [m for m in wrong if EXPORT_FORMATS[m].dtype_note]
    if wrong and len(noted) < len(wrong):
        can = [m for m, f in EXPORT_FORMATS.items() if dtype in f.dtypes]
        why = f" ({DTYPE_NOTES[dtype]})" if dtype in DTYPE_NOTES else ""
        return f"{dtype} archives are {_labels(can)} files{why}: use --method {', '.join(can)}, not {', '.join(wrong)}"
    if noted:
        f = EXPORT_FORMATS[noted[0]]
        return f"{f.label} archives are {' or '.join(f.dtypes)}, not {dtype}: {f.dtype_note}"
    flat = [m for m in named if not EXPORT_FORMATS[m].channels_last]
    if channels_last and (flat or not any(EXPORT_FORMATS[m].channels_last for m in methods_for(dtype))):
        nhwc = [m for m, f in EXPORT_FORMATS.items() if f.channels_last]
        f = EXPORT_FORMATS[(flat or methods_for(dtype))[0]]
        return f"--channels-last applies to {_labels(nhwc)} archives; {f.layout_note}"
    return None


def methods_for(dtype: str) -> list[str]:
    """The methods that can write ``dtype``, in registry order."""
    return [m for m, f in EXPORT_FORMATS.items() if dtype in f.dtypes]
