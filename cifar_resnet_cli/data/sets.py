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
    num_classes: int | None
    synthetic_size: int
    image_size: int
    tasks: Tasks | None = None


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/cifar-resnet/data`` (``~/.cache/cifar-resnet/data``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cifar-resnet" / "data"


def split_train_val(train: ImageSet, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Hold out ``val_size`` training images (seeded permutation) for model selection."""
    if val_size >= len(train):
        raise DataError(
            f"--val-size {val_size} leaves no training images (the training set has {len(train)})",
            f"use a --val-size below {len(train)}",
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size])
