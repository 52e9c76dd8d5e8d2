"""The in-memory form of every data set: uint8 image tensors, their labels, and the three splits.

Every kind (:data:`cifar_resnet_cli.core.kinds.DATASET_KINDS`) reads its files into a :class:`Data`
of device-resident ``uint8 [N, 3, H, W]`` tensors; what a loader needs is one :class:`DataRequest`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..core.errors import CifarResnetError

if TYPE_CHECKING:
    from ..core.progress import Tasks

LAYOUT_HINT = "an image-folder dataset is DIR/train/<class>/*.jpg (or .png, ...), with optional DIR/val/ and DIR/test/"


class DataError(CifarResnetError):
    """Missing, corrupted or unsafe dataset files."""


@dataclass
class ImageSet:
    """Images (uint8 [N, 3, H, W]: 32x32 for CIFAR, the image size for folders) and labels (int64 [N])."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class Data:
    """The training split, the held-out validation split, and the test set."""

    name: str
    classes: tuple[str, ...]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    folder: Path
    synthetic: bool
    notes: tuple[str, ...] = ()  # what the reader skipped, chose or could not do
    skipped: tuple[str, ...] = ()  # image folders: every file that was not read, "path (reason)"

    def to(self, device: torch.device) -> Data:
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


@dataclass(frozen=True)
class DataRequest:
    """What a data-set kind's ``load`` is given: the resolved data settings, one object for every kind."""

    name: str
    data_dir: Path | None
    download: bool
    val_size: int | None  # None: the kind's own default (a folder: 10% of train/)
    val_size_chosen: bool  # the user set it (a folder with val/ refuses it)
    split_seed: int
    val_split: str  # stratified or random (runs and checkpoints from before stratified: random)
    num_classes: int | None
    synthetic_size: int
    image_size: int
    tasks: Tasks | None = None


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/cifar-resnet/data`` (``~/.cache/cifar-resnet/data``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cifar-resnet" / "data"


def split_train_val(train: ImageSet, val_size: int, seed: int, method: str = "stratified") -> tuple[ImageSet, ImageSet]:
    """Hold out ``val_size`` training images (seeded) for model selection: ``stratified``, each class in
    proportion to its share of train (largest remainders round the counts), or ``random``."""
    if val_size >= len(train):
        raise DataError(
            f"--val-size {val_size} leaves no training images (the training set has {len(train)})",
            f"use a --val-size below {len(train)}",
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    if method == "random" or val_size == 0:
        return train.subset(order[val_size:]), train.subset(order[:val_size])
    held = torch.zeros(len(train), dtype=torch.bool)
    held[_stratified_pick(train.labels.cpu(), order, val_size)] = True
    in_order = held[order]
    return train.subset(order[~in_order]), train.subset(order[in_order])


def _stratified_pick(labels: torch.Tensor, order: torch.Tensor, val_size: int) -> torch.Tensor:
    """The first images of each class in ``order``, as many as its share of ``val_size``."""
    counts = torch.bincount(labels)
    exact = counts.double() * val_size / len(labels)
    quota = exact.floor().long()
    short = val_size - int(quota.sum())
    if short > 0:  # largest remainders first; equal ones by class index
        remainder = exact - quota
        ranked = sorted(range(len(counts)), key=lambda c: (-float(remainder[c]), c))
        quota[ranked[:short]] += 1
    ordered = labels[order]
    return torch.cat([order[ordered == c][: int(q)] for c, q in enumerate(quota.tolist())])
