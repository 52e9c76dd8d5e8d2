"""How long an image folder takes to read: the first time (decoding) and the second (the cache).

    python benchmarks/folder_read.py DIR [--image-size 32] [--cache-dir /tmp/folder-cache]

Prints one JSON object: images, seconds and images/s for the decode and for the cached read, and
the machine (CPU model, threads, torch). The cache folder is emptied first, so the first read
always decodes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from cifar_resnet_cli.core.devices import cpu_matrix_flags, cpu_name
from cifar_resnet_cli.data.folders import read_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/cifar-resnet-folder-bench"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.cache_dir, ignore_errors=True)
    timings = {}
    for what in ("decode", "cached"):
        start = time.perf_counter()
        data, _ = read_folder(args.folder, args.image_size, args.cache_dir)
        seconds = time.perf_counter() - start
        assert data.cached == (what == "cached")
        n = sum(len(v) for v in data.labels.values())
        timings[what] = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}
    print(
        json.dumps(
            {
                "folder": str(args.folder),
                "image_size": args.image_size,
                **timings,
                "skipped": len(data.skipped),
                "cpu": cpu_name(),
                "cpu_flags": cpu_matrix_flags(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
