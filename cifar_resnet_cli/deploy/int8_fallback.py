"""int8 within its accuracy budget by itself: the fewest layers kept in float that bring the drop within it.

When the all-int8 file loses more top-1 than ``--max-accuracy-drop`` allows, the held-out (validation)
images are split in two. On one image in three, each convolution or linear layer is quantized alone
(ONNX Runtime's ``nodes_to_exclude`` holding every other node) and ranked by how far that moves the
softmax from fp32's (KL divergence): a smooth measure, informative on a few hundred images where flip
counts are not. The most sensitive layers are then kept in float one more at a time until
the drop, measured on the other two thirds only, fits the budget; the ranking never saw those images.

We write the search ourselves on ONNX Runtime rather than call NNCF's ``quantize_with_accuracy_control``:
NNCF is not installable from this project's package index, the QDQ file it would produce is the same
kind as ours (it runs in ONNX Runtime and OpenVINO alike), and ONNX Runtime's calibration cache makes each
tried file cost about a second, so ranking ResNet34's 37 layers takes tens of seconds at 32 px.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .writers import Int8Writer

RANKING_SHARE = 3  # one image in three ranks the layers; the others report the drop
TIMING_ROUNDS, TIMING_WARMUP = 9, 2

Logits = Callable[[Path, Tensor], Tensor]  # (file, indices of held-out images) -> its logits on them


@dataclass(frozen=True)
class Search:
    """The outcome: the nodes and layers kept in float (empty if none would do), and what was tried."""

    float_nodes: list[str]
    float_layers: list[str]
    ranked: list[str]  # every layer, the most sensitive first
    drops: list[float]  # the drop (points, report images) with the first 1, 2, ... ranked layers in float
    files_tried: int
    every_layer_drop: float | None = None  # set when even every layer in float missed the budget

    @property
    def fits(self) -> bool:
        return bool(self.float_nodes)


def split(n: int) -> tuple[Tensor, Tensor]:
    """Indices of the held-out images that rank the layers (every third) and of those that report the drop."""
    index = torch.arange(n)
    ranking = index % RANKING_SHARE == 0
    return index[ranking], index[~ranking]


def layer_names(model: nn.Module, nodes: list[tuple[str, str]]) -> dict[str, str]:
    """ONNX node -> our layer name. A convolution with its batch norm folded in carries the norm's name
    scope in the exported graph; we name it after the convolution that precedes that norm."""
    conv_before: dict[str, str] = {}
    last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            last_conv = name
        elif isinstance(module, nn.BatchNorm2d) and last_conv is not None:
            conv_before[name] = last_conv
    return {node: conv_before.get(scope, scope) for node, scope in nodes}


def drop_points(logits: Tensor, reference: Tensor, labels: Tensor) -> float:
    """Top-1 points lost against the reference (fp32) logits, from image counts."""
    lost = int((reference.argmax(1) == labels).sum()) - int((logits.argmax(1) == labels).sum())
    return 100 * lost / max(len(labels), 1)


def divergence(logits: Tensor, reference: Tensor) -> float:
    """Mean KL(fp32 || file) of the softmax outputs: how far the file's predictions are from fp32's."""
    return float(F.kl_div(logits.log_softmax(1), reference.log_softmax(1), log_target=True, reduction="batchmean"))


def rank_layers(
    writer: Int8Writer, scratch: Path, logits_of: Logits, reference: Tensor, ranking: Tensor, nodes: list[str]
) -> list[str]:
    """The nodes ordered by the divergence each causes when it alone is quantized, largest first.

    One layer quantized at a time, every other node of the graph in float: putting one layer back to float
    alone misses a tensor quantized by both its producer and its consumer (an outlier channel between two
    convolutions stays quantized while either of them is int8), where quantizing each alone shows both.
    """
    everything = writer.node_names()
    error = {}
    for node in nodes:
        writer.write(scratch, exclude=[other for other in everything if other != node])
        error[node] = divergence(logits_of(scratch, ranking), reference[ranking])
    return sorted(nodes, key=lambda node: -error[node])


def keep_in_float(
    writer: Int8Writer,
    out: Path,
    logits_of: Logits,
    reference: Tensor,
    labels: Tensor,
    model: nn.Module,
    *,
    max_drop: float,
    limit: int,
) -> Search:
    """Keep the fewest most sensitive layers in float until the drop on the report images fits ``max_drop``;
    the fitting file is left at ``out``. Tries at most ``limit`` layers.

    First, every convolution and linear layer in float at once: if even that misses the budget, the error
    lies in what stays int8 whatever is chosen (the additions, the pooling: ranges calibrated badly), and no
    ranking can help, so the search ends there (``every_layer_drop``) after one file instead of forty.
    """
    names = layer_names(model, writer.weight_nodes())
    ranking, report = split(len(labels))
    writer.write(out, exclude=list(names))
    every_layer = drop_points(logits_of(out, report), reference[report], labels[report])
    if every_layer > max_drop:
        return Search([], [], [], [], 1, every_layer_drop=every_layer)
    ranked = rank_layers(writer, out, logits_of, reference, ranking, list(names))
    drops = []
    for k in range(1, min(limit, len(ranked)) + 1):
        writer.write(out, exclude=ranked[:k])
        drops.append(drop_points(logits_of(out, report), reference[report], labels[report]))
        if drops[-1] <= max_drop:
            chosen = ranked[:k]
            return Search(chosen, [names[n] for n in chosen], [names[n] for n in ranked], drops, 1 + len(names) + k)
    return Search([], [], [names[n] for n in ranked], drops, 1 + len(names) + len(drops))


def median_ms(runners: dict[str, Callable[[Tensor], Tensor]], x: Tensor) -> dict[str, float]:
    """Median milliseconds per call of each runner on ``x``, the runners interleaved round by round so
    that a slow moment of the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for round_ in range(TIMING_WARMUP + TIMING_ROUNDS):
            for name, run in runners.items():
                start = time.perf_counter()
                run(x)
                if round_ >= TIMING_WARMUP:
                    times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def timing_batch(image_size: int) -> int:
    """Images per timed call: 64 at 32 px, about the same work per call at larger sizes (1 at 224 px)."""
    return max(1, round(64 * (32 / image_size) ** 2))
