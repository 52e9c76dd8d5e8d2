"""Write a CIFAR-10/100 "python version" folder as an image-folder dataset (lossless PNG files).

    python scripts/cifar_to_folder.py DATA_DIR OUT [--dataset cifar10] [--val-size 1000] [--split-seed 0]

OUT gets train/<class>/, val/<class>/ and test/<class>/. The validation images are the ones
``cifar-resnet train --dataset cifar10 --val-size N --split-seed S`` holds out, so the CIFAR path
and the folder path (``--dataset folder --data-dir OUT``) train, select and test on the same images:
docs/folders.md's comparison of the two readers is made this way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from cifar_resnet_cli.data.loading import load_dataset
from cifar_resnet_cli.data.sets import ImageSet


def write_split(images: ImageSet, classes: tuple[str, ...], out: Path, offset: int = 0) -> None:
    for i, (image, label) in enumerate(zip(images.images, images.labels.tolist(), strict=True)):
        folder = out / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{offset + i:06d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="folder that holds cifar-10-batches-py/ or cifar-100-python/")
    parser.add_argument("out", type=Path, help="new folder for train/, val/ and test/")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} is not empty; give a new folder", file=sys.stderr)
        return 1
    data = load_dataset(args.dataset, args.data_dir, download=False, val_size=args.val_size, split_seed=args.split_seed)
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        write_split(split, data.classes, args.out / name)
    print(f"{args.out}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
