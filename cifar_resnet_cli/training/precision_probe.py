"""``--amp auto`` on the CPU by measurement: a few training steps of the run's own model, batch and image
size in each candidate precision, before epoch 1.

No rule of thumb holds across CPUs: bf16 autocast is 2.6x faster than fp32 with AMX on the
compute-bound CIFAR stem, yet 13% slower with the ImageNet stem at 32 px, where small feature maps
leave the casts and layout changes as the larger cost (docs/numerics.md has the table).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..measure.evaluate import autocast

# One warm-up step left bf16's first oneDNN kernel builds in the timed ones (1.4 s measured against 0.54 s
# a step later, AMX, ImageNet stem 32 px, batch 128): two. devices.MIN_RUN_STEPS keeps this under 5% of a run.
WARMUP_STEPS, TIMED_STEPS = 2, 3


def step_seconds(
    model: nn.Module,
    *,
    batch: int,
    image_size: int,
    num_classes: int,
    device: torch.device,
    amp: str,
    channels_last: bool,
) -> float:
    """Median seconds of one SGD step (forward, backward, update) of a copy of ``model`` on random images.
    Draws from its own generator: the run's random stream is not touched."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(device, memory_format=fmt).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device, memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    times = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        with autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
