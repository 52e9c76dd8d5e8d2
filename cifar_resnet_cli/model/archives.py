"""Exported archives of every kind, read back by the runtime a user would use.

Three kinds, each carrying our metadata (classes, mean/std, image size, source and its sha256) in the
format's own place, so a user with only that runtime can use the file:

- ``torchscript`` (``.pt``): ``torch.jit.load``; metadata in ``_extra_files["cifar_resnet.json"]``.
- ``aoti`` (``.pt2``): an AOTInductor package, ``torch._inductor.aoti_load_package``; metadata in the
  archive's ``extra/cifar_resnet.json`` (``torch.export.pt2_archive._package.load_pt2(f).extra_files``).
- ``onnx`` (``.onnx``): run by ONNX Runtime or OpenVINO; metadata in ``metadata_props["cifar_resnet"]``.

Every loader returns a plain callable: float32 NCHW tensor in, float32 logits out.
"""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import CheckpointError, CifarResnetError
from .weights import WeightsMeta

METADATA_FILE = "cifar_resnet.json"  # TorchScript _extra_files and the .pt2 archive's extra/ folder
ONNX_METADATA_KEY = "cifar_resnet"
ONNX_RUNTIMES = ("onnxruntime", "openvino")
EXTRAS = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}

OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # our dtype names -> OpenVINO's inference precision hints

Runner = Callable[[Tensor], Tensor]


class MissingExtra(CifarResnetError):
    """An optional dependency that is not installed."""


def optional(module: str, purpose: str) -> Any:
    """Import an optional dependency, or fail with one line naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise MissingExtra(
            f"{purpose} needs {module.split('.')[0]}, which is not installed",
            f"pip install 'cifar-resnet[{extra}]' (or pip install -e '.[{extra}]' in a clone)",
        ) from None


def is_pt2(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/archive_format") and z.read(name).strip() == b"pt2" for name in z.namelist())


def archive_kind(path: Path) -> str | None:
    """``torchscript``, ``aoti`` or ``onnx`` for a file ``export`` may have written; None for anything else
    (our ``.safetensors`` checkpoints)."""
    if not path.is_file():
        return None
    if path.suffix == ".onnx":
        return "onnx"
    if not zipfile.is_zipfile(path):
        return None
    try:
        return "aoti" if is_pt2(path) else "torchscript"
    except (zipfile.BadZipFile, OSError, KeyError):
        return "torchscript"  # torch.jit.load will say what is wrong with it


def is_archive(path: Path) -> bool:
    return archive_kind(path) is not None


def _checked_meta(data: dict, path: Path) -> WeightsMeta:
    fields = {k: v for k, v in data.items() if k in WeightsMeta.model_fields}
    return WeightsMeta.checked(fields, path)


def _no_metadata(path: Path, where: str) -> CheckpointError:
    return CheckpointError(
        f"{path} has no {where}, so its classes and preprocessing are unknown", "export it with `cifar-resnet export`"
    )


def _unreadable(path: Path, kind: str, exc: Exception) -> CheckpointError:
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return CheckpointError(
        f"{path} is not a readable {kind} archive ({type(exc).__name__}: {first})",
        "export it again with `cifar-resnet export`",
    )


# ---- TorchScript ---------------------------------------------------------------------------------------


def load_torchscript(path: Path, device: torch.device | str = "cpu", *, optimize: bool = True):
    """A TorchScript archive; a frozen one gets ``torch.jit.optimize_for_inference`` for this machine."""
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # RuntimeError for anything torch.jit cannot read
        raise CheckpointError(f"{path} is not a readable TorchScript archive ({exc.__class__.__name__})") from None
    if not extra[METADATA_FILE]:
        raise _no_metadata(path, f"{METADATA_FILE} in its extra files")
    data = json.loads(extra[METADATA_FILE])
    if optimize and data.get("export_method") == "frozen":
        module = torch.jit.optimize_for_inference(module)
    return module, _checked_meta(data, path), data


# ---- AOTInductor ---------------------------------------------------------------------------------------


def zip_metadata(path: Path, kind: str) -> dict:
    """Our metadata from a zip archive's ``extra/`` folder (a ``.pt2`` package, or a TorchScript file,
    which ``torch.jit.save`` also writes as a zip), read without loading any code or weights."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if not names:
                raise _no_metadata(path, f"extra/{METADATA_FILE}")
            return json.loads(z.read(names[0]))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as exc:
        raise _unreadable(path, kind, exc) from None


def pt2_metadata(path: Path) -> dict:
    """The metadata of a ``.pt2`` package, read as plain zip (no compiled code is loaded)."""
    return zip_metadata(path, "AOTInductor")


class LoaderCrashed(CifarResnetError):
    """A runtime's native loader that killed the (child) process it loaded a file in."""


# Device types whose AOTInductor packages are loaded in a child process first. torch 2.11.0+cu130's loader
# crashed (SIGSEGV) on every CUDA package on an NVIDIA H200, torch's own aoti_compile_and_package example
# included; a crash cannot be caught, so it must happen in a process we can lose.
PROBED_DEVICE_TYPES = {"cuda"}
PROBE_TIMEOUT_S = 300
_AOTI_PROBE = "import sys, torch; torch._inductor.aoti_load_package(open(sys.argv[1], 'rb'))"


def probe_load(path: Path, device_type: str) -> None:
    """Load ``path`` in a child Python first (``_AOTI_PROBE``, given the path as ``sys.argv[1]``). A child
    killed by a signal (or hung) raises :class:`LoaderCrashed`; a child that merely raised is left to the
    caller's own load, which reports that error as usual. The messages leave the path out: it may be a
    temporary file (export, bench), and eval/predict name the file they were given."""
    cmd = [sys.executable, "-c", _AOTI_PROBE, str(path)]
    fix = "on this device use export --method frozen or trace; a package exported with --device cpu runs on the CPU"
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LoaderCrashed(
            f"loading a {device_type} AOTInductor package did not finish in {PROBE_TIMEOUT_S} s "
            "(tried in a separate process)",
            fix,
        ) from None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise LoaderCrashed(
            f"torch {torch.__version__}'s AOTInductor loader crashed ({name}) loading a "
            f"{device_type} package (tried in a separate process, so nothing else was lost): a "
            "fault in torch's native loader",
            fix,
        )


class AotiRunner:
    """An AOTInductor package: compiled for one device type, batch size dynamic."""

    def __init__(self, path: Path, device: torch.device) -> None:
        data = pt2_metadata(path)
        built_for = data.get("export_device", "cpu")
        if built_for != device.type:
            raise CheckpointError(
                f"{path} was compiled for {built_for} and cannot run on {device.type}",
                f"run it with --device {built_for}, or export it again on {device.type}",
            )
        if device.type in PROBED_DEVICE_TYPES:
            probe_load(path, device.type)
        try:
            with open(path, "rb") as f:  # a file object: export verifies temporary files not named .pt2
                self.model = torch._inductor.aoti_load_package(f)
        except Exception as exc:  # a damaged package: the loader raises whatever its C++ side meets
            raise _unreadable(path, "AOTInductor", exc) from None
        self.data, self.device = data, device

    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.device, torch.float32).contiguous())


# ---- ONNX ------------------------------------------------------------------------------------------------


def onnx_metadata(path: Path) -> dict:
    onnx = optional("onnx", "reading an ONNX archive")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for a damaged file
        raise _unreadable(path, "ONNX", exc) from None
    props = {p.key: p.value for p in proto.metadata_props}
    if ONNX_METADATA_KEY not in props:
        raise _no_metadata(path, f"metadata_props[{ONNX_METADATA_KEY!r}]")
    return json.loads(props[ONNX_METADATA_KEY])


class OrtRunner:
    """An ONNX file in ONNX Runtime's CPU provider, with as many threads as torch uses."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = optional("onnxruntime", "running an ONNX archive with ONNX Runtime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not ours to fix
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise _unreadable(path, "ONNX", exc) from None
        self.input = self.session.get_inputs()[0].name
        self.precision = "fp32"

    def __call__(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input: x.detach().to("cpu", torch.float32).contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


class OpenVinoRunner:
    """An ONNX file compiled by OpenVINO for the CPU. ``precision`` sets its inference precision hint
    (``fp32``, ``bf16``); None leaves OpenVINO's default for the CPU (bf16 where the CPU has it)."""

    runtime = "openvino"

    def __init__(self, path: Path, precision: str | None = None, threads: int | None = None) -> None:
        ov = optional("openvino", "running an ONNX archive with OpenVINO")
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_HINTS[precision]
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:
            raise _unreadable(path, "ONNX (OpenVINO)", exc) from None
        self.request = compiled.create_infer_request()
        self.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, x: Tensor) -> Tensor:
        out = self.request.infer({0: x.detach().to("cpu", torch.float32).contiguous().numpy()})[0]
        return torch.from_numpy(out.copy()).to(x.device)


def onnx_runner(path: Path, runtime: str = "onnxruntime", precision: str | None = None) -> OrtRunner | OpenVinoRunner:
    if runtime == "openvino":
        return OpenVinoRunner(path, precision)
    return OrtRunner(path)


# ---- any kind ----------------------------------------------------------------------------------------------


def read_metadata(path: Path) -> dict:
    """An archive's metadata without running it."""
    kind = archive_kind(path)
    if kind == "onnx":
        return onnx_metadata(path)
    if kind == "aoti":
        return pt2_metadata(path)
    return zip_metadata(path, "TorchScript")


def load_archive(
    path: Path,
    device: torch.device | str = "cpu",
    *,
    optimize: bool = True,
    runtime: str = "onnxruntime",
    kind: str | None = None,
) -> tuple[Runner, WeightsMeta, dict]:
    """Any archive ``export`` writes, as (callable, metadata, raw metadata dict).

    ONNX archives run on the CPU (``runtime``: onnxruntime or openvino); inputs on another device are
    moved to the CPU and the logits moved back. AOTInductor packages run on the device they were built for.
    ``kind`` skips the detection (export verifies temporary files, whose names say nothing).
    """
    device = torch.device(device)
    kind = kind or archive_kind(path)
    if kind == "onnx":  # OpenVINO computes an fp32 file in fp32 (its CPU default would be bf16 on some CPUs)
        data = onnx_metadata(path)
        precision = "fp32" if data.get("export_dtype") == "fp32" else None
        return onnx_runner(path, runtime, precision), _checked_meta(data, path), data
    if kind == "aoti":
        runner = AotiRunner(path, device)
        return runner, _checked_meta(runner.data, path), runner.data
    return load_torchscript(path, device, optimize=optimize)


def load_for_inference(
    path: Path, device: torch.device | str = "cpu", *, runtime: str = "onnxruntime"
) -> tuple[Runner, WeightsMeta]:
    """Any model file a command may be given, ready to call: one of our ``.safetensors`` checkpoints (an
    eager ResNet34 in eval mode on ``device``) or any archive ``export`` writes."""
    if is_archive(path):
        runner, meta, _ = load_archive(path, device, runtime=runtime)
        return runner, meta
    from .weights import load_model

    model, meta = load_model(path)
    return model.to(device).eval(), meta
