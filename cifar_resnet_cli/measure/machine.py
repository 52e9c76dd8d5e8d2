"""The machine's limits, measured: matrix-multiply rates per dtype and the model's FLOPs.

A speed is only meaningful beside what the machine can do at most. The bound used here is the rate
of one large square matmul (``n`` x ``n`` by ``n`` x ``n``, 2 n^3 floating-point operations) in
each dtype, timed on this device: the best a dense kernel reaches on this CPU or GPU, with these
threads. A training step's work is counted with ``torch.utils.flop_counter`` (every matmul and
convolution of the forward and the backward pass, as 2 x multiply-adds), so
``images/s x FLOPs per image / matmul rate`` is the share of that bound a configuration uses.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..model.resnet import resnet34

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class MatmulRate:
    dtype: str
    n: int
    gflops: float  # median of the timed calls
    calls: int


def matmul_rate(
    dtype: str, device: torch.device, *, n: int = 4096, min_seconds: float = 2.0, min_calls: int = 3
) -> MatmulRate:
    """GFLOP/s of ``n`` x ``n`` matmuls in ``dtype`` on ``device``: one warm-up call, then calls until
    ``min_seconds`` have passed (at least ``min_calls``); the median call."""
    kind = DTYPES[dtype]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=kind)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=kind)
    times: list[float] = []
    with torch.inference_mode():
        torch.mm(a, b)
        _sync(device)
        started = time.perf_counter()
        while len(times) < min_calls or time.perf_counter() - started < min_seconds:
            tick = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - tick)
    return MatmulRate(dtype, n, 2 * n**3 / statistics.median(times) / 1e9, len(times))


def model_flops(stem: str, image_size: int, *, num_classes: int = 10, training: bool) -> float:
    """FLOPs per image of our ResNet34: the forward pass, or forward + backward (``training``).

    Counted on a batch of two in training mode (BatchNorm's batch statistics need more than one
    image) and divided by two. The backward pass is about twice the forward (the input and the
    weight gradients), less the first convolution's input gradient, which is never needed.
    """
    model = resnet34(num_classes=num_classes, stem=stem).train(training)
    x = torch.randn(2, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if training:
            out.sum().backward()
    return counter.get_total_flops() / 2
