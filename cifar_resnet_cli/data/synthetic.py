"""The synthetic stand-in: learnable, deterministic, generated once and written in the CIFAR layout,
so that it is read by the same code as CIFAR (offline tests and demos)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import torch

from ..core.fileio import atomic_write_bytes
from ..core.kinds import class_names
from .cifar import CIFAR10_LAYOUT, CIFAR100_LAYOUT, _missing, read_layout
from .sets import Data, DataError, DataRequest, default_data_dir

SYNTHETIC_VERSION = 1


def synthetic_images(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """32x32 RGB images whose class sets a colour, a stripe orientation and a stripe frequency.

    Every image has random brightness, phase and pixel noise, so the classes overlap a little and
    a model must look at colour and texture together; a ResNet learns them in a few hundred steps.
    """
    n = len(labels)
    cls = torch.arange(num_classes)
    hue = cls.float() / num_classes * 2 * torch.pi
    colours = 0.5 + 0.35 * torch.stack([torch.cos(hue), torch.cos(hue - 2.094), torch.cos(hue + 2.094)], 1)
    angle = (cls % 4).float() * torch.pi / 4
    freq = 2.0 + (cls // 4 % 3).float() * 1.5
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    a, f = angle[labels][:, None, None], freq[labels][:, None, None]
    phase = torch.rand(n, 1, 1, generator=generator) * 2 * torch.pi
    stripes = torch.sin((xx * torch.cos(a) + yy * torch.sin(a)) * f * 2 * torch.pi / 32 + phase)
    brightness = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    img = colours[labels][:, :, None, None] * brightness + 0.18 * stripes[:, None]
    img = img + 0.08 * torch.randn(n, 3, 32, 32, generator=generator)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def write_synthetic(data_dir: Path, *, num_classes: int, train_size: int, seed: int = 0) -> Path:
    """Generate the synthetic set once into ``data_dir`` in the CIFAR layout; return its folder."""
    if num_classes not in (10, 100):
        raise DataError(f"synthetic data has 10 or 100 classes, not {num_classes}")
    folder = data_dir / f"synthetic-{num_classes}c-{train_size}-v{SYNTHETIC_VERSION}"
    layout = CIFAR10_LAYOUT if num_classes == 10 else CIFAR100_LAYOUT
    if not _missing(folder, layout):
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder} ({exc})", "pass a writable --data-dir") from None
    generator = torch.Generator().manual_seed(seed)
    test_size = max(train_size // 5, num_classes)
    names = list(class_names("synthetic", num_classes))

    def batch(size: int, label: str) -> dict:
        labels = torch.arange(size) % num_classes
        labels = labels[torch.randperm(size, generator=generator)]
        images = synthetic_images(labels, num_classes, generator)
        return {
            "batch_label": label,
            layout.label_key: labels.tolist(),
            "data": images.reshape(size, -1).numpy(),
            "filenames": [f"synthetic_{label.replace(' ', '_')}_{i:06d}.png" for i in range(size)],
        }

    sizes = np.array_split(np.arange(train_size), len(layout.train_files))
    files = {
        name: batch(len(part), f"synthetic training batch {i + 1}")
        for i, (name, part) in enumerate(zip(layout.train_files, sizes, strict=True))
    }
    files[layout.test_files[0]] = batch(test_size, "synthetic test batch")
    files[layout.meta_file] = {layout.names_key: names, "synthetic": True, "version": SYNTHETIC_VERSION}
    for name, obj in files.items():
        atomic_write_bytes(folder / name, pickle.dumps(obj, protocol=2))
    return folder


def load(request: DataRequest) -> Data:
    """The synthetic set with ``request.num_classes`` classes (10 or 100), generated when missing."""
    num_classes = request.num_classes or 10
    data_dir = request.data_dir or default_data_dir()
    folder = write_synthetic(data_dir, num_classes=num_classes, train_size=request.synthetic_size)
    layout = dataclasses.replace(CIFAR10_LAYOUT if num_classes == 10 else CIFAR100_LAYOUT, folder=folder.name)
    classes = class_names("synthetic", num_classes)
    return read_layout("synthetic", folder, layout, classes, request)
