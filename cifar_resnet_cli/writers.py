"""How the ONNX and AOTInductor archives are written (TorchScript is in export.py).

Both take a :class:`~cifar_resnet_cli.export.Deployed` model (float32 NCHW in, float32 logits out)
and keep the batch dimension dynamic, so one file serves batch 1 and batch 512 alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .archives import METADATA_FILE, ONNX_METADATA_KEY, optional
from .errors import CifarResnetError

MAX_BATCH = 65_536  # the dynamic batch dimension's upper bound (torch.export needs one)


class ExportFailed(CifarResnetError):
    """An exporter that could not convert the model (reported with its first line)."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters print progress to stdout and log about missing CUDA toolkits; our stdout is for results."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _batch_dim() -> dict[str, dict[int, object]]:
    """The batch dimension dynamic, up to MAX_BATCH or what the traced kernels allow below it.

    ``Dim.DYNAMIC`` lets export narrow the range instead of failing: on CUDA, convolution's backend
    choice guards on the tensor sizes, and a named ``Dim(max=65536)`` was refused with "Constraints
    violated (batch)" (torch 2.11, H200, at 32 and 224 px). A guard that does not hold for every batch
    size becomes a check on the input (a batch past it is refused, tests/test_archives.py); still an
    error if the batch would be fixed to one size. Older torch, without Dim hints, gets the named Dim.
    """
    hint = getattr(torch.export.Dim, "DYNAMIC", None)
    dim = hint(min=1, max=MAX_BATCH) if callable(hint) else torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return {"x": {0: dim}}


def onnx_proto(deployed: nn.Module, example: Tensor, metadata: str):
    """The model as an ONNX ModelProto (torch.onnx.export with the dynamo exporter), input ``input``
    [batch, 3, H, W] float32, output ``logits``, our metadata in ``metadata_props``."""
    optional("onnxscript", "ONNX export")
    onnx = optional("onnx", "ONNX export")
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(deployed, (example,), dynamo=True, dynamic_shapes=_batch_dim(),
                                        input_names=["input"], output_names=["logits"], verbose=False)  # fmt: skip
    except Exception as exc:  # the exporter raises its own error types for unsupported graphs
        raise ExportFailed(f"torch.onnx.export could not convert the model ({_first_line(exc)})") from None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {ONNX_METADATA_KEY: metadata})
    return proto


def save_onnx(proto, path: Path) -> None:
    """One self-contained file (ResNet34 is far below protobuf's 2 GB limit, so no external data)."""
    onnx = optional("onnx", "ONNX export")
    onnx.save_model(proto, str(path), save_as_external_data=False)


def set_onnx_metadata(path: Path, metadata: str) -> None:
    onnx = optional("onnx", "ONNX export")
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {ONNX_METADATA_KEY: metadata})
    save_onnx(proto, path)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, batches: list[Tensor]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {"input": batch.numpy()}


def quantize_onnx(fp32_proto, out: Path, calibration: list[Tensor], *, exclude: Sequence[str] = ()) -> None:
    """Static int8 quantization by ONNX Runtime: QDQ format, signed int8 weights per output channel,
    unsigned int8 activations with min/max ranges measured on ``calibration`` (preprocessed float32
    batches). u8 activations x s8 weights is the x86 VNNI instruction's own pairing: ONNX Runtime runs
    it about 3x faster than s8 x s8 (10.4 against 29.6 ms, batch 1, 224 px, AMD EPYC), OpenVINO equally fast.
    Each range is the average of the calibration batches' min/max (batches of 32), not the extreme over all
    of them: one outlier image no longer widens a range for every image. On a cifar10-mini model (32 px, 256
    calibration images, 1,000 held-out) that took the drop from 1.0 to 0.0 points and the top-1 agreement
    from 86% to 94% (README, "Deployment"). ``exclude``: ONNX node names kept in float (used by
    ``benchmarks/int8_sensitivity.py`` to quantize one stage at a time)."""
    quant = optional("onnxruntime.quantization", "int8 ONNX export")
    shape_inference = optional("onnxruntime.quantization.shape_inference", "int8 ONNX export")
    with tempfile.TemporaryDirectory(prefix="cifar-resnet-int8-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        save_onnx(fp32_proto, fp32)
        try:
            with _quiet():
                shape_inference.quant_pre_process(str(fp32), str(prepared))
                quant.quantize_static(
                    str(prepared), str(out), _Calibration(calibration), quant_format=quant.QuantFormat.QDQ,
                    per_channel=True, activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
                    calibrate_method=quant.CalibrationMethod.MinMax, extra_options={"CalibMovingAverage": True},
                    nodes_to_exclude=list(exclude),
                )  # fmt: skip
        except CifarResnetError:
            raise
        except Exception as exc:
            raise ExportFailed(f"ONNX Runtime could not quantize the model ({_first_line(exc)})") from None


def aoti_available() -> bool:
    """AOTInductor packages with extra files need torch.export's pt2 archive (torch 2.8 and later)."""
    try:
        from torch.export.pt2_archive._package import package_pt2  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch._inductor, "aot_compile")


def write_aoti(deployed: nn.Module, example: Tensor, path: Path, metadata: str) -> None:
    """torch.export (batch dynamic), AOTInductor with freezing (weights folded into the compiled code's
    constants), packaged with our metadata as ``extra/cifar_resnet.json``. The package runs on the
    device type of ``example``; compiling needs a C++ compiler on the exporting machine only."""
    if not aoti_available():
        raise ExportFailed(f"AOTInductor packages need torch >= 2.8; this is torch {torch.__version__}",
                           "upgrade torch, or export --method trace/script/onnx")  # fmt: skip
    from torch.export.pt2_archive._package import package_pt2

    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(deployed, (example,), dynamic_shapes=_batch_dim())
    except Exception as exc:  # a graph torch.export cannot capture, or a batch range it cannot prove
        raise ExportFailed(f"torch.export could not capture the model ({_first_line(exc)})",
                           "export --method trace or --method onnx instead") from None  # fmt: skip
    try:
        with _quiet(), torch.no_grad():
            args, kwargs = program.example_inputs
            files = torch._inductor.aot_compile(program.module(), args, kwargs,
                                                options={"aot_inductor.package": True, "freezing": True})  # fmt: skip
    except Exception as exc:  # Inductor raises many kinds; a missing C++ compiler is the usual one
        raise ExportFailed(f"AOTInductor could not compile the model ({_first_line(exc)})",
                           "it needs a C++ compiler (g++) on this machine") from None  # fmt: skip
    with open(path, "wb") as f:
        package_pt2(f, aoti_files=files, extra_files={METADATA_FILE: metadata})
