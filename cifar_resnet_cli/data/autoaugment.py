"""TrivialAugment, RandAugment and random erasing, per image and vectorised over the batch.

torchvision's ``TrivialAugmentWide``/``RandAugment`` transform one image (or a whole batch with one
draw); here every image of the batch draws its own operation, magnitude and sign, and each
operation runs once over the images that drew it, on the training device. The operations, their
magnitude ranges and the bin counts are torchvision's (TrivialAugment: Müller & Hutter, 2021,
https://arxiv.org/abs/2103.10158; RandAugment: Cubuk et al., 2020, https://arxiv.org/abs/1909.13719):

- geometric (shear, translate, rotate): nearest-neighbour resampling, the uncovered area filled with
  black; shears about the top-left corner and rotations about the centre, as torchvision's policies do;
- colour (brightness, colour, contrast, sharpness): PIL's ImageEnhance blends, factor 1 + m;
- posterize, solarize, autocontrast and equalize: PIL's definitions on uint8 values.

Images are uint8 ``[N, 3, S, S]`` (square: CIFAR, and image folders after their centre crop) and
stay uint8 after each operation, as with PIL. Every draw comes from the step's generator, so a
resumed run repeats them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

POLICIES = ("none", "trivialaugment", "randaugment")
BINS = 31
RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE = 2, 9  # torchvision's defaults
OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness"}
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def _ranges(policy: str, size: int) -> dict[str, tuple[float, float]]:
    """Each operation's magnitude at bin 0 and at the last bin."""
    if policy == "trivialaugment":  # TrivialAugmentWide
        enhance, shear, translate, rotate, bits = 0.99, 0.99, 32.0, 135.0, 2.0
    else:  # RandAugment
        enhance, shear, translate, rotate, bits = 0.9, 0.3, 150.0 / 331.0 * size, 30.0, 4.0
    return {
        "shear_x": (0.0, shear),
        "shear_y": (0.0, shear),
        "translate_x": (0.0, translate),
        "translate_y": (0.0, translate),
        "rotate": (0.0, rotate),
        "brightness": (0.0, enhance),
        "color": (0.0, enhance),
        "contrast": (0.0, enhance),
        "sharpness": (0.0, enhance),
        "posterize": (8.0, bits),
        "solarize": (1.0, 0.0),
    }


def auto_augment(images: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """``policy`` (trivialaugment: one operation at a random magnitude; randaugment: two operations
    at magnitude 9 of 31) applied to each uint8 image with its own draws."""
    if policy == "none":
        return images
    n = len(images)
    rounds = 1 if policy == "trivialaugment" else RANDAUGMENT_OPS
    ranges = _ranges(policy, images.shape[-1])
    x = images.float()
    for _ in range(rounds):
        op = torch.randint(len(OPS), (n,), generator=generator)
        if policy == "trivialaugment":
            level = torch.randint(BINS, (n,), generator=generator).float() / (BINS - 1)
        else:
            level = torch.full((n,), RANDAUGMENT_MAGNITUDE / (BINS - 1))
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        x = _apply_round(x, op, level, sign, ranges)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _apply_round(
    x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, ranges: dict[str, tuple[float, float]]
) -> torch.Tensor:
    device = x.device
    out = x.clone()
    for i, name in enumerate(OPS):
        chosen = (op == i).nonzero().flatten()
        if name == "identity" or not len(chosen):
            continue
        lo, hi = ranges.get(name, (0.0, 0.0))
        m = lo + (hi - lo) * level[chosen]
        if name in SIGNED:
            m = m * sign[chosen]
        sel = chosen.to(device)
        out[sel] = _OPERATIONS[name](x[sel], m.to(device)).round_().clamp_(0, 255)
    return out


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample with ``theta`` (output -> input, normalised coordinates), nearest, black outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _geometric(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def apply(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        n, size = len(x), x.shape[-1]
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if kind == "shear_x":  # out(x, y) = in(x + m*y, y), y from the top edge (torchvision's center=[0, 0])
            theta[:, 0, 1] = theta[:, 0, 2] = m  # normalised: the top edge is y = -1; square images
        elif kind == "shear_y":
            theta[:, 1, 0] = theta[:, 1, 2] = m
        elif kind == "translate_x":  # m pixels: out(x) = in(x - m)
            theta[:, 0, 2] = -2.0 * m / size
        elif kind == "translate_y":
            theta[:, 1, 2] = -2.0 * m / size
        else:  # rotate by m degrees about the centre
            a = m * (math.pi / 180.0)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        return _affine(x, theta)

    return apply


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (PIL's convert("L")), rounded down as PIL does."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).floor()


def _blend(degenerate: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: degenerate + (1 + m) * (x - degenerate)."""
    return degenerate + (1.0 + m).view(-1, 1, 1, 1) * (x - degenerate)


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
    smooth = (
        F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), kernel.view(1, 1, 3, 3))
        .round()
        .reshape(len(x), 3, x.shape[-2] - 2, x.shape[-1] - 2)
    )
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth  # PIL's SMOOTH filter leaves the border as it was
    return _blend(degenerate, x, m)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = (2.0 ** (8 - bits.round())).view(-1, 1, 1, 1)
    return (x / step).floor() * step


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    t = (threshold * 255.0).view(-1, 1, 1, 1)
    return torch.where(x >= t, 255.0 - x, x)


def _autocontrast(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x)


def _equalize(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize, per image and channel: a lookup table from the cumulative histogram."""
    n, c, h, w = x.shape
    values = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, values, torch.ones_like(values, dtype=torch.float))
    last = 255 - (hist > 0).flip(1).float().argmax(1)  # the highest value present
    step = ((h * w - hist.gather(1, last[:, None]).squeeze(1)) / 255.0).floor()
    before = hist.cumsum(1) - hist
    lut = ((before + (step / 2).floor()[:, None]) / step.clamp(min=1)[:, None]).floor().clamp(0, 255)
    lut = torch.where(step[:, None] > 0, lut, torch.arange(256.0, device=x.device).expand_as(lut))
    return lut.gather(1, values).reshape(n, c, h, w)


_OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    **{name: _geometric(name) for name in GEOMETRIC},
    "brightness": lambda x, m: _blend(torch.zeros_like(x), x, m),
    "color": lambda x, m: _blend(_grey(x).expand_as(x), x, m),
    "contrast": lambda x, m: _blend(_grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), x, m),
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": _solarize,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
}


def random_erase(
    x: torch.Tensor,
    prob: float,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020, https://arxiv.org/abs/1708.04896) of normalised images:
    with probability ``prob`` per image, one rectangle of ``scale`` of the area and aspect ``ratio``
    is replaced by standard-normal noise (timm's "pixel" mode; 0 would be the mean colour)."""
    if prob <= 0:
        return x
    n, c, h, w = x.shape
    on = torch.rand(n, generator=generator) < prob
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=generator)
    eh = (area * log_r.exp()).sqrt().round().clamp(1, h)
    ew = (area / log_r.exp()).sqrt().round().clamp(1, w)
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    out = x.clone()
    for i in on.nonzero().flatten().tolist():  # noise drawn for the erased boxes only, not the whole batch
        t, le, hh, ww = int(top[i]), int(left[i]), int(eh[i]), int(ew[i])
        out[i, :, t : t + hh, le : le + ww] = torch.randn(c, hh, ww, generator=generator).to(x.device, x.dtype)
    return out
