"""Device selection: ``auto`` picks CUDA, then MPS, then the CPU; a missing device is an error."""

from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` into a ``torch.device`` that exists on this machine."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but CUDA is not available here", "use --device cpu or auto")
    if name == "mps" and not mps_ok:
        raise DeviceError("--device mps was asked for, but MPS is not available here", "use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}", "choose auto, cpu, cuda or mps")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    """A short human name of the device, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
