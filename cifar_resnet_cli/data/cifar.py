"""CIFAR-10 and CIFAR-100, read from the official "python version" batches (downloaded when missing).

Reading is ours: the pickled batches go straight into one ``uint8 [N, 3, 32, 32]`` tensor (no
per-image PIL), through an unpickler that allows only what those files contain. Downloading goes
through torchvision's CIFAR classes (URL, md5, extraction).
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DownloadError
from ..core.kinds import DATASET_KINDS
from .sets import Data, DataError, DataRequest, ImageSet, default_data_dir, split_train_val


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


def read_layout(name: str, folder: Path, layout: Layout, classes: tuple[str, ...], request: DataRequest) -> Data:
    """Read the batches of ``layout`` in ``folder``, check them against ``classes``, split off validation."""
    meta = _unpickle(folder / layout.meta_file)
    names = meta.get(layout.names_key)
    if names is not None and tuple(names) != tuple(classes):
        raise DataError(f"{folder / layout.meta_file} names other classes than {name} has")
    x_train, y_train = _read_batches(folder, layout.train_files, layout.label_key)
    notes: tuple[str, ...] = ()
    if any(not (folder / f).is_file() for f in layout.test_files):  # a training set kept apart from its test set
        x_test, y_test = torch.empty(0, 3, 32, 32, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        notes = (
            f"{folder} has no {', '.join(layout.test_files)}: there is no test set, so no test accuracy is reported",
        )
    else:
        x_test, y_test = _read_batches(folder, layout.test_files, layout.label_key)
    for y, what in ((y_train, "training"), (y_test, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise DataError(f"{folder}: {what} labels outside 0..{len(classes) - 1}")
    split = (request.val_size or 0, request.split_seed, request.val_split)
    train, val = split_train_val(ImageSet(x_train, y_train), *split)
    test = ImageSet(x_test, y_test)
    return Data(name, tuple(classes), train, val, test, folder, name == "synthetic", notes)


def load(request: DataRequest) -> Data:
    """CIFAR-10 or CIFAR-100 from ``request.data_dir`` (downloading it when asked)."""
    name, data_dir = request.name, request.data_dir or default_data_dir()
    layout = CIFAR10_LAYOUT if name == "cifar10" else CIFAR100_LAYOUT
    folder = data_dir / layout.folder
    missing = _missing(folder, layout)
    if missing and not set(missing) <= set(layout.test_files):  # without its test batch it still trains
        if not request.download:
            raise DataError(
                f"{name} not found in {folder}: expected {', '.join(_missing(folder, layout))}",
                f"pass --download, or --data-dir pointing at the folder that holds {layout.folder}/",
            )
        _download(name, data_dir, layout)
    return read_layout(name, folder, layout, DATASET_KINDS[name].classes or (), request)
