"""How an int8 archive's weights are rounded: to nearest, or by GPTQ (error-compensating rounding).

The int8 grid is the one ONNX Runtime's quantizer uses for our weights: symmetric, one scale per
output channel, ``scale = max|w| / 127``. Folding batch norm into a convolution multiplies each output
channel by one number, which moves that channel's grid with it, so weights already on the grid here
stay on it after folding and the quantizer reproduces them exactly.

GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") rounds one input column at a time and spreads each column's rounding error over the
columns not yet rounded, weighted by the inverse of the layer's input second-moment matrix
``H = E[x x^T]`` measured on calibration images, so that the layer's output on such inputs moves as
little as possible. On our cifar10-mini models it removes almost all of the error of the weights
alone, but the whole int8 model's agreement with fp32 moved only within its measurement noise, the
activations' rounding being the larger error there (docs/results/deployment.md, "Where int8's error comes from"); so
``export`` rounds to nearest unless asked. A row whose largest weight the compensation pulled
below 127 steps would get another scale from the quantizer, so such a row is rounded to nearest
instead (counted in :class:`Rounding`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QMAX = 127
H_IMAGES = 256  # calibration images that measure H: 0.3 TFLOP per layer1 convolution at 224 px


@dataclass(frozen=True)
class Rounding:
    method: str
    layers: int
    rows: int
    rows_to_nearest: int  # GPTQ rows that fell back to nearest rounding (their largest weight moved)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def channel_scale(weight: Tensor) -> Tensor:
    """One scale per output channel, shaped to broadcast over ``weight``."""
    return weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True).clamp_min(1e-12) / QMAX


def round_to_nearest(weight: Tensor) -> Tensor:
    scale = channel_scale(weight)
    return (weight / scale).round().clamp(-QMAX, QMAX) * scale


def _columns(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's inputs as rows of the matrix its weight (flattened per output channel) multiplies."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def input_moments(model: nn.Module, layers: list[nn.Module], batches: list[Tensor]) -> list[Tensor]:
    """``E[x x^T]`` of each layer's (unfolded) input over ``batches``, from one pass of the float model."""
    sums = {id(layer): None for layer in layers}
    counts = dict.fromkeys(sums, 0)

    def hook(layer: nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        cols = _columns(layer, inputs[0].float())
        gram = (cols.T @ cols).double()
        key = id(layer)
        sums[key] = gram if sums[key] is None else sums[key] + gram
        counts[key] += len(cols)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return [(sums[id(layer)] / counts[id(layer)]).float() for layer in layers]


def gptq_rows(weight: Tensor, moments: Tensor, *, damp: float = 0.01, block: int = 128) -> tuple[Tensor, Tensor]:
    """GPTQ on a (rows, columns) weight: the rounded weight (on the grid of ``channel_scale(weight)``)
    and a mask of the rows whose largest weight still sits at 127 steps (the others need nearest)."""
    w = weight.float().clone()
    scale = channel_scale(w)[:, 0]
    h = moments.clone()
    dead = torch.diag(h) == 0  # inputs that were always zero: nothing to compensate against
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(len(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for start in range(0, w.shape[1], block):
        end = min(start + block, w.shape[1])
        w_block, errors = w[:, start:end].clone(), torch.zeros_like(w[:, start:end])
        h_block = hinv[start:end, start:end]
        for i in range(end - start):
            steps = (w_block[:, i] / scale).round().clamp(-QMAX, QMAX)
            q[:, start + i] = steps
            error = (w_block[:, i] - steps * scale) / h_block[i, i]
            w_block[:, i:] -= error[:, None] * h_block[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ hinv[start:end, end:]
    return q * scale[:, None], q.abs().amax(1) == QMAX


def round_weights(model: nn.Module, method: str, calibration: list[Tensor]) -> tuple[nn.Module, Rounding]:
    """A copy of ``model`` (eval mode) whose convolution and linear weights lie on the int8 grid."""
    model = copy.deepcopy(model).eval()
    layers = weight_layers(model)
    if method == "nearest":
        for layer in layers:
            layer.weight.data = round_to_nearest(layer.weight.data)
        return model, Rounding("nearest", len(layers), sum(len(la.weight) for la in layers), 0)
    if not calibration:  # export always has some; a caller without them gets a clear message
        raise ValueError("GPTQ rounding needs calibration images to measure each layer's inputs")
    images = torch.cat(calibration)[:H_IMAGES]
    moments = input_moments(model, layers, list(images.split(32)))
    fallback = 0
    for layer, h in zip(layers, moments, strict=True):
        flat = layer.weight.data.reshape(len(layer.weight), -1)
        rounded, on_grid = gptq_rows(flat, h)
        nearest = round_to_nearest(flat)
        layer.weight.data = torch.where(on_grid[:, None], rounded, nearest).reshape(layer.weight.shape)
        fallback += int((~on_grid).sum())
    return model, Rounding("gptq", len(layers), sum(len(la.weight) for la in layers), fallback)
