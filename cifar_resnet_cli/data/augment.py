"""Batched, device-resident preprocessing and augmentation (no per-image PIL in the hot path).

``preprocess`` is the one definition of how uint8 images become model inputs (scale to [0, 1],
resize, normalise), used by training, evaluation and prediction alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def preprocess(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 or float [0, 1] images [N, 3, H, W] -> normalised float32 [N, 3, size, size]."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        # Bilinear with antialiasing: the right filter for downsampling, plain bilinear upwards.
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for the whole batch at once."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    rows = dy[:, None] + torch.arange(h, device=device)  # [n, h]
    base = torch.arange(w, device=device)
    cols = dx[:, None] + torch.where(flip[:, None], base.flip(0), base)  # flipped columns read backwards
    idx_n = torch.arange(n, device=device)[:, None, None, None]
    idx_c = torch.arange(c, device=device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets; with ``smoothing`` ε each row is (1-ε)·onehot + ε/K (Szegedy et al., 2016)."""
    target = F.one_hot(labels, num_classes).float()
    return target * (1 - smoothing) + smoothing / num_classes if smoothing else target


def mixup(
    x: torch.Tensor, target: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al., 2018, https://arxiv.org/abs/1710.09412): convex blend of image pairs."""
    lam = _beta(alpha, generator)
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


def cutmix(
    x: torch.Tensor, target: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019, https://arxiv.org/abs/1905.04899): paste a box from another image.

    The targets are mixed by the box's actual area after clipping at the border.
    """
    n, _, h, w = x.shape
    lam = _beta(alpha, generator)
    perm = torch.randperm(n, generator=generator).to(x.device)
    cut = (1 - lam) ** 0.5
    bh, bw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return out, kept * target + (1 - kept) * target[perm]


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One draw from Beta(alpha, alpha) with our generator (Jöhnk's method, vectorised).

    Draw u, v ~ U(0, 1); x = u^(1/a), y = v^(1/a); where x + y <= 1, x / (x + y) is Beta(a, a).
    4096 candidates at once make a rejection of all of them vanishingly rare for alpha <= 4.
    """
    while True:
        u = torch.rand(2, 4096, generator=generator, dtype=torch.float64).pow(1.0 / alpha)
        total = u.sum(0)
        ok = (total <= 1) & (total > 0)
        if bool(ok.any()):
            i = int(ok.nonzero()[0])
            return float(u[0, i] / total[i])


def mix_batch(
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    cutmix_alpha: float,
    mixup_alpha: float,
    prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``prob``, apply CutMix or MixUp (one of them, evenly, when both are on)."""
    if (cutmix_alpha <= 0 and mixup_alpha <= 0) or float(torch.rand(1, generator=generator)) >= prob:
        return x, target
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(1, generator=generator)) < 0.5)
    if use_cutmix:
        return cutmix(x, target, cutmix_alpha, generator)
    return mixup(x, target, mixup_alpha, generator)


def fit_image(image: torch.Tensor, size: int, mode: str = "crop") -> torch.Tensor:
    """A uint8 image [3, H, W] of any size -> uint8 [3, size, size] for the model.

    ``crop`` keeps the aspect ratio: the shorter side is resized to ``size`` and the centre is
    cropped; ``stretch`` resizes both sides to ``size``. Resampling is the same antialiased bilinear
    filter as :func:`preprocess` uses.
    """
    _, h, w = image.shape
    if mode == "stretch":
        target = (size, size)
    else:
        scale = size / min(h, w)
        target = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = image[None].float()
    if (h, w) != target:
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x[0].round().clamp(0, 255).to(torch.uint8)
