"""How the ONNX and AOTInductor archives are written (TorchScript is in export.py).

Both take a :class:`~cifar_resnet_cli.export.Deployed` model (float32 NCHW in, float32 logits out)
and keep the batch dimension dynamic, so one file serves batch 1 and batch 512 alike.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.errors import CifarResnetError
from ..model.archives import METADATA_FILE, ONNX_METADATA_KEY, optional

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
            program = torch.onnx.export(
                deployed,
                (example,),
                dynamo=True,
                dynamic_shapes=_batch_dim(),
                input_names=["input"],
                output_names=["logits"],
                verbose=False,
            )
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


class Int8Writer:
    """Static int8 quantization by ONNX Runtime, prepared and calibrated once, written as often as asked.

    QDQ format, signed int8 weights per output channel, unsigned int8 activations with min/max ranges
    measured on ``calibration`` (preprocessed float32 batches). u8 activations x s8 weights is the x86 VNNI
    instruction's own pairing: ONNX Runtime runs it about 3x faster than s8 x s8, OpenVINO equally fast.
    Each range is the average of the calibration batches' min/max (batches of 32), not the extreme over
    all of them, so one outlier image does not widen a range for every image (docs/results: "Deployment").
    The ranges are cached (ONNX Runtime's ``calibration_cache_path``, 1.27+), so each further file with
    other ``exclude``d nodes (kept in float) costs a second, not a calibration pass.
    """

    def __init__(self, fp32_proto, calibration: list[Tensor]) -> None:
        self._quant = optional("onnxruntime.quantization", "int8 ONNX export")
        shape_inference = optional("onnxruntime.quantization.shape_inference", "int8 ONNX export")
        if "calibration_cache_path" not in inspect.signature(self._quant.quantize_static).parameters:
            raise ExportFailed(
                "int8 export needs onnxruntime >= 1.27 (its calibration cache)",
                "pip install -U 'onnxruntime>=1.27' (the [onnx] extra)",
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="cifar-resnet-int8-")
        root = Path(self._tmp.name)
        self.fp32, self.prepared, self._cache = root / "fp32.onnx", root / "prepared.onnx", root / "calibration.json"
        self._calibration = calibration
        save_onnx(fp32_proto, self.fp32)
        try:
            with _quiet():
                shape_inference.quant_pre_process(str(self.fp32), str(self.prepared))
        except Exception as exc:
            self.close()
            raise ExportFailed(f"ONNX Runtime could not prepare the model ({_first_line(exc)})") from None

    def write(self, out: Path, exclude: Sequence[str] = ()) -> None:
        """The int8 file with the ONNX nodes named in ``exclude`` left in float."""
        q = self._quant
        try:
            with _quiet():
                q.quantize_static(
                    str(self.prepared),
                    str(out),
                    _Calibration(self._calibration),
                    quant_format=q.QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=q.CalibrationMethod.MinMax,
                    extra_options={"CalibMovingAverage": True},
                    nodes_to_exclude=list(exclude),
                    calibration_cache_path=str(self._cache),
                )
        except CifarResnetError:
            raise
        except Exception as exc:
            raise ExportFailed(f"ONNX Runtime could not quantize the model ({_first_line(exc)})") from None

    def node_names(self) -> list[str]:
        onnx = optional("onnx", "int8 ONNX export")
        return [node.name for node in onnx.load(str(self.prepared)).graph.node]

    def weight_nodes(self) -> list[tuple[str, str]]:
        """(ONNX node name, the module it computes) of every convolution and linear layer, in graph order.
        The module comes from the exporter's name scopes; a convolution with its batch norm folded in
        carries the batch norm's scope, which :func:`module_of_scope`'s caller maps back."""
        onnx = optional("onnx", "int8 ONNX export")
        nodes = []
        for node in onnx.load(str(self.prepared)).graph.node:
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes", "")
                nodes.append((node.name, module_of_scope(scopes) or node.name))
        return nodes

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> Int8Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def module_of_scope(scopes: str) -> str | None:
    """The innermost module under the deployed wrapper in an exporter name-scope list, e.g.
    ``['', 'model', 'model.layer1', 'model.layer1.0.bn1', 'op']`` -> ``layer1.0.bn1``."""
    names = re.findall(r"'model\.([^']+)'", scopes)
    return names[-1] if names else None


def quantize_onnx(fp32_proto, out: Path, calibration: list[Tensor], *, exclude: Sequence[str] = ()) -> None:
    """One int8 file (see :class:`Int8Writer`); ``exclude``: ONNX node names kept in float."""
    with Int8Writer(fp32_proto, calibration) as writer:
        writer.write(out, exclude)


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
        raise ExportFailed(
            f"AOTInductor packages need torch >= 2.8; this is torch {torch.__version__}",
            "upgrade torch, or export --method trace/script/onnx",
        )
    from torch.export.pt2_archive._package import package_pt2

    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(deployed, (example,), dynamic_shapes=_batch_dim())
    except Exception as exc:  # a graph torch.export cannot capture, or a batch range it cannot prove
        raise ExportFailed(
            f"torch.export could not capture the model ({_first_line(exc)})",
            "export --method trace or --method onnx instead",
        ) from None
    try:
        with _quiet(), torch.no_grad():
            args, kwargs = program.example_inputs
            files = torch._inductor.aot_compile(
                program.module(), args, kwargs, options={"aot_inductor.package": True, "freezing": True}
            )
    except Exception as exc:  # Inductor raises many kinds; a missing C++ compiler is the usual one
        raise ExportFailed(
            f"AOTInductor could not compile the model ({_first_line(exc)})",
            "it needs a C++ compiler (g++) on this machine",
        ) from None
    with open(path, "wb") as f:
        package_pt2(f, aoti_files=files, extra_files={METADATA_FILE: metadata})
