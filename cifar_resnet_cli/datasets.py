"""CIFAR-10/100, the synthetic stand-in and image folders as device-resident uint8 tensors.

Reading is ours: the official "python version" pickled batches go straight into one
``uint8 [N, 3, 32, 32]`` tensor (no per-image PIL), through an unpickler that allows only what
those files contain. Downloading goes through torchvision's CIFAR classes (URL, md5, extraction).
The synthetic set is generated, deterministically, and written in the same layout, so it is read
by the same code. Image folders (the user's own photos) are read by :mod:`folders`.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .archives import is_archive, read_metadata
from .data import CIFAR10_CLASSES, CIFAR100_CLASSES, class_names
from .errors import CheckpointError, CifarResnetError, DownloadError
from .fileio import atomic_write_bytes

if TYPE_CHECKING:
    from .progress import Tasks
    from .settings import Settings
    from .weights import WeightsMeta


LAYOUT_HINT = "an image-folder dataset is DIR/train/<class>/*.jpg (or .png, ...), with optional DIR/val/ and DIR/test/"


class DataError(CifarResnetError):
    """Missing, corrupted or unsafe dataset files."""


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files live under ``--data-dir`` and what they hold."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR10_LAYOUT = Layout(
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    "labels",
    "label_names",
)
CIFAR100_LAYOUT = Layout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names")
SYNTHETIC_VERSION = 1


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Allows only what CIFAR batches hold: dicts, lists, strings, numbers and numpy arrays.

    Every other global (``os.system``, ``builtins.eval``, ...) is refused, so a crafted file cannot
    run code.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return codecs.encode
        raise _ForbiddenGlobal(f"global {module}.{name} is not allowed in a CIFAR batch")


_CORRUPT = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except _ForbiddenGlobal as exc:
        raise DataError(
            f"{path} is not a safe CIFAR batch ({exc})", "delete it and download the dataset again"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
    ) as exc:
        raise DataError(
            f"{path} is corrupted ({type(exc).__name__}: {exc})", "delete it and download the dataset again"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch")
    return obj


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = _unpickle(path)
        data, y = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            raise DataError(f"{path} has no uint8 'data' array of shape (N, 3072) (found {shape})")
        if not isinstance(y, (list, np.ndarray)) or len(y) != len(data):
            raise DataError(f"{path} has {len(data)} images but its '{label_key}' does not match")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(np.asarray(y, dtype=np.int64)))
    return torch.cat(images), torch.cat(labels)


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
class CifarData:
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

    def to(self, device: torch.device) -> CifarData:
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/cifar-resnet/data`` (``~/.cache/cifar-resnet/data``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cifar-resnet" / "data"


def _missing(folder: Path, layout: Layout) -> list[str]:
    return [f for f in layout.files if not (folder / f).is_file()]


def _download(name: str, root: Path, layout: Layout) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):  # torchvision checks the md5 of the archive and extracts it
            cls(root=str(root), train=train, download=True)
    except Exception as exc:  # URLError, socket errors, md5 mismatch, disk full
        raise DownloadError(
            f"could not download {name} into {root} ({type(exc).__name__}: {exc})",
            f"offline, put the official python-version files ({', '.join(layout.files)}) into "
            f"{root / layout.folder}, or pass --data-dir with a folder that holds {layout.folder}/",
        ) from None


def split_train_val(train: ImageSet, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Hold out ``val_size`` training images (seeded permutation) for model selection."""
    if val_size >= len(train):
        raise DataError(
            f"--val-size {val_size} leaves no training images (the training set has {len(train)})",
            f"use a --val-size below {len(train)}",
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size])


def load_cifar(
    name: str,
    data_dir: Path,
    *,
    download: bool,
    val_size: int,
    split_seed: int,
    num_classes: int = 10,
    synthetic_size: int = 10_000,
) -> CifarData:
    """Read a dataset (downloading or generating it when asked) and split off validation."""
    if name == "synthetic":
        folder = write_synthetic(data_dir, num_classes=num_classes, train_size=synthetic_size)
        layout = CIFAR10_LAYOUT if num_classes == 10 else CIFAR100_LAYOUT
        layout = dataclasses.replace(layout, folder=folder.name)
        classes = class_names("synthetic", num_classes)
    else:
        layout = CIFAR10_LAYOUT if name == "cifar10" else CIFAR100_LAYOUT
        folder = data_dir / layout.folder
        classes = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
        if _missing(folder, layout):
            if not download:
                raise DataError(
                    f"{name} not found in {folder}: expected {', '.join(_missing(folder, layout))}",
                    f"pass --download, or --data-dir pointing at the folder that holds {layout.folder}/",
                )
            _download(name, data_dir, layout)
    meta = _unpickle(folder / layout.meta_file)
    names = meta.get(layout.names_key)
    if names is not None and tuple(names) != tuple(classes):
        raise DataError(f"{folder / layout.meta_file} names other classes than {name} has")
    x_train, y_train = _read_batches(folder, layout.train_files, layout.label_key)
    x_test, y_test = _read_batches(folder, layout.test_files, layout.label_key)
    for y, what in ((y_train, "training"), (y_test, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise DataError(f"{folder}: {what} labels outside 0..{len(classes) - 1}")
    train, val = split_train_val(ImageSet(x_train, y_train), val_size, split_seed)
    return CifarData(name, tuple(classes), train, val, ImageSet(x_test, y_test), folder, name == "synthetic")


# ---------------------------------------------------------------------------------------------
# The synthetic stand-in: learnable, deterministic, written in the CIFAR layout.
# ---------------------------------------------------------------------------------------------


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


def dataset_for(settings: Settings, meta: WeightsMeta | None) -> str:
    """The dataset a command works on: the one the user chose, else the checkpoint's own."""
    chosen = settings.data.model_fields_set
    return settings.data.dataset if "dataset" in chosen or meta is None else meta.dataset


def run_data_settings(checkpoint: Path | None) -> dict:
    """Where a model's data lives: the ``data`` section of the run folder a checkpoint sits in
    (``settings.json`` beside it), else, for an archive ``export`` wrote, the data folder and download
    choice recorded in its metadata; {} when neither says."""
    if checkpoint is None:
        return {}
    saved = checkpoint.parent / "settings.json"
    if saved.is_file():
        try:
            data = json.loads(saved.read_text(encoding="utf-8")).get("data")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            data = None
        return data if isinstance(data, dict) else {}
    if not is_archive(checkpoint):
        return {}
    try:
        data = read_metadata(checkpoint).get("data")
    except CifarResnetError:  # an unreadable archive is reported by the loader that runs it
        return {}
    return data if isinstance(data, dict) else {}


def load_image_folder(
    root: Path,
    image_size: int,
    *,
    val_size: int | None,
    val_size_chosen: bool,
    split_seed: int,
    tasks: Tasks | None = None,
) -> CifarData:
    """An image-folder dataset: train/ (validation drawn from it unless val/ exists) and test/ if any."""
    from .folders import DEFAULT_VAL_FRACTION, read_folder  # Pillow is imported only for folders

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
        train, val = split_train_val(train, size, split_seed)
    if "test" in found.images:
        test = ImageSet(found.images["test"], found.labels["test"])
    else:
        empty = torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
        test = ImageSet(empty, torch.empty(0, dtype=torch.int64))
        notes.append(f"{root} has no test/ folder: there is no test set, so no test accuracy is reported")
    skipped = tuple(f"{rel} ({why})" for rel, why in found.skipped)
    return CifarData("folder", found.classes, train, val, test, root, False, tuple(notes), skipped)


def load_data_for(
    settings: Settings, meta: WeightsMeta | None = None, checkpoint: Path | None = None, tasks: Tasks | None = None
) -> CifarData:
    """The dataset a command works on; for a checkpoint, its own dataset and split unless the user set
    one, and for a checkpoint inside a run folder, that run's data folder and download choice too."""
    d = settings.data
    chosen = d.model_fields_set
    run = run_data_settings(checkpoint)

    def from_meta(field: str) -> int:
        value = getattr(meta, field) if meta is not None else None
        return value if value is not None and field not in chosen else getattr(d, field)

    data_dir = d.data_dir
    if "data_dir" not in chosen and run.get("data_dir"):
        data_dir = Path(run["data_dir"])
    download = d.download if "download" in chosen or "download" not in run else bool(run["download"])
    if dataset_for(settings, meta) == "folder":
        if data_dir is None:
            raise DataError("--dataset folder needs --data-dir DIR, the folder that holds train/<class>/", LAYOUT_HINT)
        image_size = meta.image_size if meta is not None else settings.model.image_size
        val_size = d.val_size if "val_size" in chosen else (meta.val_size if meta is not None else None)
        return load_image_folder(
            data_dir,
            image_size,
            val_size=val_size,
            val_size_chosen="val_size" in chosen,
            split_seed=from_meta("split_seed"),
            tasks=tasks,
        )
    return load_cifar(
        dataset_for(settings, meta),
        data_dir or default_data_dir(),
        download=download,
        val_size=from_meta("val_size"),
        split_seed=from_meta("split_seed"),
        num_classes=meta.num_classes if meta is not None else settings.num_classes,
        synthetic_size=from_meta("synthetic_size"),
    )


def settings_for_data(settings: Settings, data: CifarData) -> Settings:
    """Settings completed by the data: an image folder's class count and validation size, so that the
    run folder's settings.json resumes on the same classes and the same split."""
    if data.name != "folder":
        return settings
    n = len(data.classes)
    if settings.model.num_classes not in (None, n):
        raise DataError(
            f"model.num_classes {settings.model.num_classes}: {data.folder} has {n} class folders",
            "drop num_classes from the settings: a folder's classes are its folder names",
        )
    model = settings.model.model_copy(update={"num_classes": n})
    split = settings.data.model_copy(update={"val_size": len(data.val)})
    return settings.model_copy(update={"model": model, "data": split})


def load_checked_data(settings: Settings, meta: WeightsMeta, path: Path, tasks: Tasks | None = None) -> CifarData:
    """The data a checkpoint is measured on, refused when its classes are not the checkpoint's."""
    dataset = dataset_for(settings, meta)
    if dataset != "folder":  # known before reading anything
        check_classes(meta, dataset, path)
    data = load_data_for(settings, meta, path, tasks)
    check_classes(meta, dataset, path, data)
    return data


def split_of(data: CifarData, split: str) -> ImageSet:
    """The ``val`` or ``test`` split, or a clear error when it holds no images."""
    images = data.test if split == "test" else data.val
    if len(images) == 0:
        if data.name == "folder" and split == "test":
            raise DataError(
                f"{data.folder} has no test/ folder (or no readable images in it)",
                "use --split val, or add DIR/test/<class>/ images",
            )
        other = "val" if split == "test" else "test"
        raise DataError(f"the {split} split of {data.name} is empty", f"use --split {other}")
    return images


def check_classes(meta: WeightsMeta, dataset: str, path: Path, data: CifarData | None = None) -> None:
    """A checkpoint fits a dataset when both have the same classes, in the same order. For an image
    folder, ``data`` (already read) holds its classes."""
    classes = data.classes if data is not None else class_names(dataset, meta.num_classes)
    where = f"the image folder {data.folder}" if data is not None and data.name == "folder" else dataset
    on = f"--dataset {meta.dataset}{' --data-dir ...' if meta.dataset == 'folder' else ''}"
    hint = f"evaluate it on the data it was trained on ({on}), or use a checkpoint trained on {where}"
    if tuple(meta.class_names) == tuple(classes):
        return
    if meta.num_classes != len(classes):
        raise CheckpointError(
            f"{path} has a {meta.num_classes}-class head ({meta.dataset}), but {where} has {len(classes)} classes"
            f"{_class_difference(meta.class_names, classes)}",
            hint,
        )
    raise CheckpointError(
        f"{path} was trained on other classes than {where} has{_class_difference(meta.class_names, classes)}", hint
    )


def _class_difference(model: list[str] | tuple[str, ...], data: tuple[str, ...]) -> str:
    missing = [c for c in model if c not in data]
    extra = [c for c in data if c not in model]
    parts = [f"not in the data: {', '.join(missing[:5])}"] if missing else []
    parts += [f"not in the checkpoint: {', '.join(extra[:5])}"] if extra else []
    return f" ({'; '.join(parts)})" if parts else " (the same names in another order)"
