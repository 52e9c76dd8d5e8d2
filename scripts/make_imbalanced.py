"""Make a 10:1 imbalanced CIFAR-10 training set (docs/imbalance.md): every image of the first half of
the classes, one in ten of the others (the first ones in the set's own order), written in the official
python-version layout without a test batch, so that `cifar-resnet train --dataset cifar10 --data-dir OUT`
reads it.

    python scripts/make_imbalanced.py SRC OUT [--ratio 10] [--minority 5,6,7,8,9]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import torch

from cifar_resnet_cli.core.fileio import atomic_write_bytes
from cifar_resnet_cli.core.kinds import CIFAR10_CLASSES
from cifar_resnet_cli.data.cifar import CIFAR10_LAYOUT
from cifar_resnet_cli.data.loading import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="folder holding cifar-10-batches-py/")
    parser.add_argument("out", type=Path)
    parser.add_argument("--ratio", type=int, default=10, help="keep one in RATIO images of a minority class")
    parser.add_argument("--minority", default="5,6,7,8,9", help="the classes cut down (label numbers)")
    args = parser.parse_args()
    data = load_dataset("cifar10", args.src, download=False, val_size=0, split_seed=0, val_split="random")
    order = torch.argsort(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0)))
    images, labels = data.train.images[order], data.train.labels[order]  # back to the files' own order
    minority = {int(c) for c in args.minority.split(",")}
    keep = torch.ones(len(labels), dtype=torch.bool)
    for c in minority:
        members = (labels == c).nonzero().flatten()
        keep[members] = False
        keep[members[: len(members) // args.ratio]] = True
    images, labels = images[keep], labels[keep]
    folder = args.out / CIFAR10_LAYOUT.folder
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(labels)), len(CIFAR10_LAYOUT.train_files))
    for name, part in zip(CIFAR10_LAYOUT.train_files, parts, strict=True):
        batch = {
            "batch_label": f"imbalanced {name}",
            "labels": labels[part].tolist(),
            "data": images[part].reshape(len(part), -1).numpy(),
        }
        atomic_write_bytes(folder / name, pickle.dumps(batch, protocol=2))
    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": len(parts[0]), "num_vis": 3072}
    atomic_write_bytes(folder / CIFAR10_LAYOUT.meta_file, pickle.dumps(meta, protocol=2))
    counts = torch.bincount(labels, minlength=10).tolist()
    print(
        f"{len(labels)} images in {folder}: "
        + ", ".join(f"{n} {c}" for n, c in zip(CIFAR10_CLASSES, counts, strict=True))
    )


if __name__ == "__main__":
    main()
