"""CIFAR-10, CIFAR-100, the synthetic stand-in and image folders: class names and normalisation constants."""

from __future__ import annotations

from typing import Literal

Dataset = Literal["cifar10", "cifar100", "synthetic", "folder"]
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "synthetic", "folder")

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
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": ((0.499, 0.499, 0.500), (0.285, 0.285, 0.286)),  # measured on the generated set
    "folder": (IMAGENET_MEAN, IMAGENET_STD),  # the user's photos: the statistics of ImageNet photos
}

# An image folder's classes are its folder names: known only once it is read.
DEFAULT_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": 10}
ALLOWED_NUM_CLASSES: dict[str, tuple[int, ...] | None] = {
    "cifar10": (10,),
    "cifar100": (100,),
    "synthetic": (10, 100),
    "folder": None,
}


def class_names(dataset: str, num_classes: int) -> tuple[str, ...]:
    """The label names of ``dataset`` with ``num_classes`` classes, in label order."""
    if dataset == "cifar10":
        return CIFAR10_CLASSES
    if dataset == "cifar100":
        return CIFAR100_CLASSES
    width = len(str(num_classes - 1))
    prefix = "class" if dataset == "folder" else "synthetic"  # a folder's real names replace these
    return tuple(f"{prefix}_{i:0{width}d}" for i in range(num_classes))
