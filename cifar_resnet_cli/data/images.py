"""Reading one image file into RGB uint8, the same way for ``predict`` and for image-folder datasets.

Conversions, stated once:

- transparency (RGBA, LA, palette or RGB with a transparent colour) is composited on **white**,
  so a transparent background becomes white rather than whatever colour the hidden pixels hold;
- 16-bit and 32-bit integer greyscale is scaled to 8 bits (65535 -> 255), not clipped at 255;
  floating-point images are read as [0, 1] when their values lie there, otherwise as [0, 255];
- the EXIF orientation is applied, as photo viewers do;
- an image with more than :data:`MAX_PIXELS` pixels is refused (a decompression-bomb guard).

JPEGs are decoded at a reduced scale (libjpeg's DCT scaling) when that still leaves both sides at
least as large as asked, which makes large photos several times faster to read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

MAX_PIXELS = 64_000_000  # 8000 x 8000; Pillow warns above 89.5 M and refuses above 179 M
TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageReadError(Exception):
    """A file that is not a readable image (its message names the reason)."""


def image_extensions() -> set[str]:
    """Every file extension Pillow can open."""
    from PIL import Image

    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _to_rgb(img):  # PIL.Image.Image -> PIL.Image.Image in mode RGB
    from PIL import Image

    if img.mode in TRANSPARENT_MODES or (img.mode in ("P", "RGB", "L") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        array = np.asarray(img)
        if img.mode == "F":
            scale = 255.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 1.0
            grey = np.nan_to_num(array.astype(np.float64) * scale).clip(0, 255).round().astype(np.uint8)
        else:
            top = 65535 if img.mode.startswith("I;16") or int(array.max(initial=0)) <= 65535 else 2**32 - 1
            grey = (array.astype(np.float64).clip(0, top) * (255 / top)).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")


def read_image(path: Path, min_size: int | None = None) -> tuple[torch.Tensor, int, int, str]:
    """RGB uint8 [3, H, W], the file's width, height and mode (RGBA, L, P, I;16, ...).

    With ``min_size``, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, as long as both sides stay
    at least ``min_size``. Every failure (unreadable, truncated, not an image, too large) is an
    :class:`ImageReadError` whose message says what was wrong.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height, mode = img.width, img.height, img.mode
                if width * height > MAX_PIXELS:
                    raise ImageReadError(f"{width}x{height} pixels is over the {MAX_PIXELS:,} pixel limit")
                if min_size is not None and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                img.load()  # decode now, so a truncated file fails here and not later
                rgb = _to_rgb(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"decompression bomb guard: {exc}") from None
    except Exception as exc:  # Pillow raises many types for a bad file (OSError, SyntaxError, ValueError ...)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ImageReadError(f"{type(exc).__name__}: {text}" if text else type(exc).__name__) from None
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1), width, height, mode
