"""Image-folder datasets: the user's own photos, sorted into class folders.

The layout is the one torchvision's ``ImageFolder``, timm and Ultralytics use::

    DIR/train/<class>/*.jpg|png|...   the classes are the folder names here, sorted
    DIR/val/<class>/...               optional; without it, validation is drawn from train
    DIR/test/<class>/...              optional; without it, there is no test set

Every image is decoded once (:func:`images.read_image`), its shorter side resized to the image size
and the centre cropped (:func:`augment.fit_image`), and kept as uint8 ``[N, 3, S, S]``, exactly like
CIFAR. The decoded set is cached in one safetensors file per (folder, image size), keyed by every
file's path, size and modification time: the second run starts at once, a changed folder is
re-read. Files that cannot be read are listed and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import CifarResnetError
from ..core.fileio import atomic_write_bytes
from ..core.progress import Tasks, task
from .augment import fit_image
from .images import ImageReadError, image_extensions, read_image
from .sets import LAYOUT_HINT, Data, DataError, DataRequest, ImageSet, default_data_dir, split_train_val

READER_VERSION = "1"
SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1


class FolderError(DataError):
    """A folder that is not an image-folder dataset."""


@dataclass(frozen=True)
class Entry:
    split: str
    rel: str  # path relative to the dataset folder, as shown to the user
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Scan:
    root: Path
    classes: tuple[str, ...]
    entries: tuple[Entry, ...]
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason)
    splits: tuple[str, ...]  # the split folders present

    def key(self, image_size: int) -> str:
        """What the decoded tensors depend on: every file's path, size and mtime, and the image size."""
        h = hashlib.sha256(json.dumps([READER_VERSION, image_size, "crop", self.classes]).encode())
        for e in self.entries:
            h.update(f"\n{e.split}\t{e.rel}\t{e.label}\t{e.size}\t{e.mtime_ns}".encode())
        return h.hexdigest()


@dataclass
class FolderSplits:
    classes: tuple[str, ...]
    images: dict[str, torch.Tensor]  # split -> uint8 [N, 3, S, S]
    labels: dict[str, torch.Tensor]  # split -> int64 [N]
    skipped: list[tuple[str, str]]
    cached: bool


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _walk(folder: Path) -> Iterator[Path]:
    """Every non-hidden file under ``folder``, following links to folders once (no cycles), sorted."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def scan(root: Path) -> Scan:
    """The classes, files and skipped files of an image-folder dataset, or a clear error."""
    if not root.is_dir():
        raise FolderError(f"{root} is not a folder" if root.exists() else f"{root} does not exist", LAYOUT_HINT)
    if not (root / "train").is_dir():
        found = ", ".join(p.name + "/" for p in _subdirs(root)[:5]) or "no folders"
        hint = (
            f"pass --data-dir {root.parent}, the folder that holds {root.name}/" if root.name in SPLITS else LAYOUT_HINT
        )
        raise FolderError(f"{root} has no train/ folder (it holds {found})", hint)
    classes = tuple(p.name for p in _subdirs(root / "train"))
    if len(classes) < 2:
        raise FolderError(
            f"{root / 'train'} has {len(classes)} class folder{'s' if len(classes) != 1 else ''}"
            f"{' (' + classes[0] + ')' if classes else ''}; a classifier needs at least 2",
            f"put each class's images in its own folder: {root}/train/<class>/",
        )
    extensions = image_extensions()
    entries: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    splits = tuple(s for s in SPLITS if (root / s).is_dir())
    for split in splits:
        folder = root / split
        for loose in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            skipped.append((str(loose.relative_to(root)), "not inside a class folder"))
        unknown = [p.name for p in _subdirs(folder) if p.name not in classes]
        if unknown:
            raise FolderError(
                f"{folder} has class folders that train/ does not have: {', '.join(unknown[:5])}",
                f"val/ and test/ may only use train/'s classes ({', '.join(classes[:10])}"
                f"{', ...' if len(classes) > 10 else ''})",
            )
        for label, name in enumerate(classes):
            if (folder / name).is_dir():
                entries += _class_files(root, folder / name, split, label, extensions, skipped)
    empty = [c for i, c in enumerate(classes) if not any(e.label == i and e.split == "train" for e in entries)]
    if empty:
        raise FolderError(
            f"{root / 'train'}: no images in the class folder{'s' if len(empty) > 1 else ''} {', '.join(empty[:5])}",
            "every class needs training images; remove the empty folder or fill it",
        )
    return Scan(root, classes, tuple(entries), tuple(skipped), splits)


def _class_files(
    root: Path, folder: Path, split: str, label: int, extensions: set[str], skipped: list[tuple[str, str]]
) -> list[Entry]:
    out = []
    for path in _walk(folder):
        rel = str(path.relative_to(root))
        if path.suffix.lower() not in extensions:
            skipped.append((rel, f"not an image file extension ({path.suffix or 'none'})"))
            continue
        try:
            st = path.stat()
        except OSError as exc:  # a broken link, a file removed meanwhile, no permission
            skipped.append((rel, f"cannot be read ({exc.strerror or type(exc).__name__})"))
            continue
        out.append(Entry(split, rel, label, st.st_size, st.st_mtime_ns))
    return out


def cache_path(cache_dir: Path, root: Path, image_size: int) -> Path:
    """One cache file per dataset folder and image size; a changed folder overwrites it."""
    where = str(root.resolve())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name)[:40] or "folder"
    return cache_dir / f"{slug}-{hashlib.sha256(where.encode()).hexdigest()[:12]}-{image_size}px.safetensors"


def _read_cache(path: Path, key: str) -> FolderSplits | None:
    """The cached decode when it exists, is intact and has this key; otherwise None (read again)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key or meta.get("version") != READER_VERSION:
                return None
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        splits = json.loads(meta["splits"])
        return FolderSplits(
            classes=tuple(json.loads(meta["classes"])),
            images={s: tensors[f"{s}.images"] for s in splits},
            labels={s: tensors[f"{s}.labels"] for s in splits},
            skipped=[tuple(x) for x in json.loads(meta["skipped"])],
            cached=True,
        )
    except Exception:  # missing, truncated, damaged or from another version: decode again
        return None


def _write_cache(path: Path, key: str, data: FolderSplits) -> str | None:
    """Write the cache atomically; a failure (full disk, read-only cache) is a note, not an error."""
    from safetensors.torch import save

    tensors = {}
    for s in data.images:
        tensors[f"{s}.images"] = data.images[s].contiguous()
        tensors[f"{s}.labels"] = data.labels[s].contiguous()
    meta = {
        "version": READER_VERSION,
        "key": key,
        "classes": json.dumps(data.classes),
        "splits": json.dumps(list(data.images)),
        "skipped": json.dumps(data.skipped),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(tensors, metadata=meta))
    except (OSError, CifarResnetError) as exc:
        return f"the decoded images were not cached ({getattr(exc, 'message', exc)}); the next run decodes again"
    return None


def _decode(root: Path, entries: list[Entry], image_size: int, tasks: Tasks | None) -> list[torch.Tensor | str]:
    """Each file as uint8 [3, S, S], or the reason it could not be read; threads overlap the decoding."""

    def one(e: Entry) -> torch.Tensor | str:
        try:
            image, *_ = read_image(root / e.rel, image_size)
        except ImageReadError as exc:
            return str(exc)
        return fit_image(image, image_size, "crop")

    out: list[torch.Tensor | str] = []
    what = f"decoding {len(entries)} images to {image_size} px"
    with task(tasks, what, len(entries)) as bar, ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(one, entries):
            out.append(result)
            bar.advance()
    return out


def read_folder(
    root: Path, image_size: int, cache_dir: Path, tasks: Tasks | None = None
) -> tuple[FolderSplits, list[str]]:
    """Decode (or load from the cache) every split of an image-folder dataset; also returns notes."""
    found = scan(root)
    key = found.key(image_size)
    path = cache_path(cache_dir, root, image_size)
    data = _read_cache(path, key)
    notes: list[str] = []
    if data is None:
        decoded = _decode(root, list(found.entries), image_size, tasks)
        skipped = list(found.skipped)
        images: dict[str, list[torch.Tensor]] = {s: [] for s in found.splits}
        labels: dict[str, list[int]] = {s: [] for s in found.splits}
        for e, result in zip(found.entries, decoded, strict=True):
            if isinstance(result, str):
                skipped.append((e.rel, result))
            else:
                images[e.split].append(result)
                labels[e.split].append(e.label)
        empty = torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
        data = FolderSplits(
            classes=found.classes,
            images={s: torch.stack(v) if v else empty for s, v in images.items()},
            labels={s: torch.tensor(v, dtype=torch.int64) for s, v in labels.items()},
            skipped=skipped,
            cached=False,
        )
        note = _write_cache(path, key, data)
        if note:
            notes.append(note)
    _check_readable(root, data)
    if data.skipped:
        shown = "; ".join(f"{rel} ({why})" for rel, why in data.skipped[:3])
        more = f"; and {len(data.skipped) - 3} more" if len(data.skipped) > 3 else ""
        notes.append(f"{len(data.skipped)} file{'s' if len(data.skipped) > 1 else ''} skipped in {root}: {shown}{more}")
    return data, notes


def _check_readable(root: Path, data: FolderSplits) -> None:
    counts = torch.bincount(data.labels["train"], minlength=len(data.classes))
    empty = [c for c, n in zip(data.classes, counts.tolist(), strict=True) if n == 0]
    if empty:
        raise FolderError(
            f"{root / 'train'}: no readable images in {', '.join(empty[:5])} "
            f"({len(data.skipped)} files could not be read)",
            "every class needs training images that Pillow can open",
        )


def load_image_folder(
    root: Path,
    image_size: int,
    *,
    val_size: int | None,
    val_size_chosen: bool,
    split_seed: int,
    val_split: str = "stratified",
    tasks: Tasks | None = None,
) -> Data:
    """An image-folder dataset: train/ (validation drawn from it unless val/ exists) and test/ if any."""
    found, notes = read_folder(root, image_size, default_data_dir().parent / "folders", tasks)
    train = ImageSet(found.images["train"], found.labels["train"])
    if "val" in found.images:
        val = ImageSet(found.images["val"], found.labels["val"])
        if val_size_chosen and val_size != len(val):  # equal: a resumed run's own settings
            raise DataError(
                f"--val-size {val_size}: {root / 'val'} is this dataset's validation set",
                "drop --val-size, or remove val/ to hold out part of train/ instead",
            )
    else:
        size = val_size if val_size is not None else max(1, round(len(train) * DEFAULT_VAL_FRACTION))
        train, val = split_train_val(train, size, split_seed, val_split)
    if "test" in found.images:
        test = ImageSet(found.images["test"], found.labels["test"])
    else:
        empty = torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
        test = ImageSet(empty, torch.empty(0, dtype=torch.int64))
        notes.append(f"{root} has no test/ folder: there is no test set, so no test accuracy is reported")
    skipped = tuple(f"{rel} ({why})" for rel, why in found.skipped)
    return Data("folder", found.classes, train, val, test, root, False, tuple(notes), skipped)


def load(request: DataRequest) -> Data:
    """The image folder ``request.data_dir``, read at ``request.image_size``."""
    assert request.data_dir is not None  # loading.load_dataset refuses a folder without one
    return load_image_folder(
        request.data_dir,
        request.image_size,
        val_size=request.val_size,
        val_size_chosen=request.val_size_chosen,
        split_seed=request.split_seed,
        val_split=request.val_split,
        tasks=request.tasks,
    )
