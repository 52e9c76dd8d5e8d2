"""Device selection: ``auto`` picks CUDA, then MPS, then the CPU; a missing device is an error."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DeviceError

MIN_RUN_STEPS = 200  # timing costs 2 x 5 steps: at most 5% of a run this long


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` into a ``torch.device`` that exists on this machine."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return _cuda()
        return torch.device("mps" if mps_ok else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for, but CUDA is not available here", "use --device cpu or auto")
        return _cuda()
    if name == "mps" and not mps_ok:
        raise DeviceError("--device mps was asked for, but MPS is not available here", "use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}", "choose auto, cpu, cuda or mps")
    return torch.device(name)


def _cuda() -> torch.device:
    ieee_fp32_convolutions()
    return torch.device("cuda")


def ieee_fp32_convolutions() -> None:
    """fp32 on CUDA means fp32: cuDNN convolutions off TF32, which torch allows by default.

    TF32 keeps 10 mantissa bits, so on an H200 eager "fp32" logits of ResNet34 were 4e-3 off the CPU's
    and two fp32 runs of one model 3e-3 apart: bench's fp32 rows and export's fp32 checks (1e-4 of the
    logits) would measure TF32. Speed on tensor cores is what ``--amp bf16`` (auto on such GPUs) is for.
    The legacy flag, not ``cudnn.conv.fp32_precision``: after the new one, torch itself refuses to read
    ``cudnn.allow_tf32``, which Inductor's convolution templates read (so compiled fp32 convolutions
    follow this flag too). Matrix products already default to IEEE fp32.
    """
    torch.backends.cudnn.allow_tf32 = False


def device_description(device: torch.device) -> str:
    """A short human name of the device, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_name() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_matrix_flags() -> list[str]:
    """The CPU's matrix instruction sets that bf16 speed depends on (Linux ``/proc/cpuinfo``)."""
    for line in _cpuinfo():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f") if f in present]
    return []


@dataclass(frozen=True)
class Precision:
    amp: str  # off, bf16 or fp16
    channels_last: bool
    reason: str


StepTimer = Callable[[str, bool], float]  # (amp, channels_last) -> seconds per training step
TIE_MARGIN = 0.05  # bf16 must be this much faster than fp32 to be chosen: fp32 is exact, and wins ties


def resolve_precision(
    amp: str,
    channels_last: bool | None,
    device: torch.device,
    *,
    timer: StepTimer | None = None,
    run_steps: int | None = None,
) -> Precision:
    """``--amp auto`` and an unset ``--channels-last``, decided for this device and run, with the reason.

    CPU: where bf16 would be emulated (neither AMX nor AVX-512 bf16) fp32; otherwise both are timed
    (``timer``, a few steps each, precision_probe.py) and bf16 is chosen only if more than 5% faster; a run
    too short to repay that timing, or one with no timer, stays in fp32. CUDA: bf16 where the GPU computes it
    natively (compute capability 8.0+, emulation not counted), else fp16 with a scaler. Channels-last comes
    with reduced precision on the CPU and CUDA, and stays off in fp32 on the CPU.
    """
    why = "asked for"
    timings = ""
    if amp == "auto":
        if device.type == "cpu":
            amp, why, timings = _cpu_auto(channels_last, timer, run_steps)
        elif device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
            why = (
                "auto: this GPU computes bf16 natively"
                if amp == "bf16"
                else "auto: this GPU has no native bf16: fp16 with a gradient scaler"
            )
        else:
            amp, why = "off", f"auto: fp32 on {device.type}"
    if channels_last is None:
        channels_last = amp != "off" and device.type in ("cpu", "cuda")
        why += f"; channels-last {'on' if channels_last else 'off'} (auto)"
    else:
        why += f"; channels-last {'on' if channels_last else 'off'} (asked for)"
    return Precision(amp, channels_last, why + timings)


def _cpu_auto(channels_last: bool | None, timer: StepTimer | None, run_steps: int | None) -> tuple[str, str, str]:
    native = [f for f in cpu_matrix_flags() if f in ("amx_bf16", "avx512_bf16")]
    if not native:
        return "off", "auto: this CPU has neither AMX nor AVX-512 bf16, so bf16 would be emulated: fp32", ""
    if timer is None:  # under torchrun: each process would time differently and could choose differently
        return "off", "auto: fp32 (bf16 is only chosen by timing this run, which torchrun runs do not do)", ""
    if run_steps is None or run_steps < MIN_RUN_STEPS:
        return "off", f"auto: fp32 (a run of {run_steps or 0} steps is too short to repay timing bf16 against it)", ""
    start = time.perf_counter()
    fp32 = timer("off", bool(channels_last))
    bf16 = timer("bf16", True if channels_last is None else channels_last)
    amp = "bf16" if bf16 < (1 - TIE_MARGIN) * fp32 else "off"
    verdict = "faster" if amp == "bf16" else "not 5% faster"
    why = f"auto: bf16 ({', '.join(native)}) timed {verdict} than fp32 for this run"
    spent = time.perf_counter() - start
    timings = f"; {1e3 * fp32:.0f} ms fp32 against {1e3 * bf16:.0f} ms bf16 a step (timed in {spent:.1f} s)"
    return amp, why, timings
