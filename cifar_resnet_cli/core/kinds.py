"""The data-set kinds: one registry line each, with what every layer needs to know about it.

Settings take their ``--dataset`` choices from here, ``port`` and ``train`` their class names and
normalisation, and :func:`cifar_resnet_cli.data.loading.load_data_for` the module that reads it
(named by path, so that settings and ``--help`` never import torch). A new kind is one module with
``load(request) -> Data`` under ``cifar_resnet_cli/data/`` plus one line in :data:`DATASET_KINDS`
(docs/design.md has a worked example).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# The fine labels of CIFAR-100 in label order (the order of ``meta['fine_label_names']``).
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)

# Per-channel mean and std of the training images, in [0, 1] RGB.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetKind:
    """What a data-set kind is: its classes, its normalisation, and the module that reads it."""

    description: str
    stats: Stats  # mean and std of its training images
    loader: str  # "package.module": a module with load(DataRequest) -> Data
    classes: tuple[str, ...] | None = None  # fixed label names; None: generated or read from the data
    allowed_classes: tuple[int, ...] | None = None  # head sizes it can have; None: any (from the data)
    name_prefix: str = "class"  # generated label names: class_0, class_1, ...
    own_val_default: bool = False  # without --val-size it holds out its own share (a folder: 10% of train/)

    @property
    def default_classes(self) -> int | None:
        return len(self.classes) if self.classes else (self.allowed_classes or (None,))[0]

    def load(self, request: Any) -> Any:
        return import_module(self.loader).load(request)


DATASET_KINDS: dict[str, DatasetKind] = {
    "cifar10": DatasetKind(
        "CIFAR-10 (downloaded through torchvision)",
        ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "cifar_resnet_cli.data.cifar",
        CIFAR10_CLASSES,
        (10,),
    ),
    "cifar100": DatasetKind(
        "CIFAR-100, fine labels",
        ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        "cifar_resnet_cli.data.cifar",
        CIFAR100_CLASSES,
        (100,),
    ),
    "synthetic": DatasetKind(
        "the offline stand-in, generated",
        ((0.499, 0.499, 0.500), (0.285, 0.285, 0.286)),  # measured on the generated set
        "cifar_resnet_cli.data.synthetic",
        None,
        (10, 100),
        "synthetic",
    ),
    "folder": DatasetKind(
        "your images in DIR/train/<class>/",
        (IMAGENET_MEAN, IMAGENET_STD),  # the user's photos: the statistics of ImageNet photos
        "cifar_resnet_cli.data.folders",
        own_val_default=True,
    ),
}
DATASETS: tuple[str, ...] = tuple(DATASET_KINDS)
Dataset = Literal[DATASETS]  # type: ignore[valid-type]  # the choices of --dataset, from the registry

# Derived tables, for the places that only need one fact.
CIFAR_STATS: dict[str, Stats] = {name: kind.stats for name, kind in DATASET_KINDS.items()}
DEFAULT_NUM_CLASSES = {n: k.default_classes for n, k in DATASET_KINDS.items() if k.default_classes is not None}
ALLOWED_NUM_CLASSES = {name: kind.allowed_classes for name, kind in DATASET_KINDS.items()}


def class_names(dataset: str, num_classes: int) -> tuple[str, ...]:
    """The label names of ``dataset`` with ``num_classes`` classes, in label order (a folder's real
    names replace the generated ones once it is read)."""
    kind = DATASET_KINDS[dataset]
    if kind.classes is not None:
        return kind.classes
    width = len(str(num_classes - 1))
    return tuple(f"{kind.name_prefix}_{i:0{width}d}" for i in range(num_classes))
