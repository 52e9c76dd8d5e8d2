"""Which data a command works on, read through the data-set registry, and checked against a checkpoint.

:func:`load_data_for` resolves the data settings (the flags, a checkpoint's own data set and split,
the run folder it sits in) into one :class:`~.sets.DataRequest` and hands it to the kind's loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import CheckpointError, CifarResnetError
from ..core.kinds import DATASET_KINDS, class_names
from ..model.archives import is_archive, read_metadata
from .sets import LAYOUT_HINT, Data, DataError, DataRequest, ImageSet

if TYPE_CHECKING:
    from ..core.progress import Tasks
    from ..core.settings import Settings
    from ..model.weights import WeightsMeta


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


def load_dataset(
    name: str,
    data_dir: Path | None,
    *,
    download: bool = False,
    val_size: int | None = None,
    split_seed: int = 0,
    num_classes: int | None = None,
    synthetic_size: int = 10_000,
    image_size: int = 32,
    val_size_chosen: bool = False,
    val_split: str = "stratified",
    tasks: Tasks | None = None,
) -> Data:
    """Read the data set ``name`` (a key of the registry) with these data settings."""
    if name == "folder" and data_dir is None:
        raise DataError("--dataset folder needs --data-dir DIR, the folder that holds train/<class>/", LAYOUT_HINT)
    request = DataRequest(
        name,
        data_dir,
        download,
        val_size,
        val_size_chosen,
        split_seed,
        val_split,
        num_classes,
        synthetic_size,
        image_size,
        tasks,
    )
    return DATASET_KINDS[name].load(request)


def load_data_for(
    settings: Settings, meta: WeightsMeta | None = None, checkpoint: Path | None = None, tasks: Tasks | None = None
) -> Data:
    """The dataset a command works on; for a checkpoint, its own dataset and split unless the user set
    one, and for a checkpoint inside a run folder, that run's data folder and download choice too."""
    d = settings.data
    chosen = d.model_fields_set
    run = run_data_settings(checkpoint)

    def from_meta(field: str) -> int:
        value = getattr(meta, field) if meta is not None else None
        return value if value is not None and field not in chosen else getattr(d, field)

    name = dataset_for(settings, meta)
    kind = DATASET_KINDS[name]
    data_dir = d.data_dir
    if "data_dir" not in chosen and run.get("data_dir"):
        data_dir = Path(run["data_dir"])
    val_size: int | None = from_meta("val_size")
    if kind.own_val_default and "val_size" not in chosen:  # a folder's recorded split, else its own share
        val_size = meta.val_size if meta is not None else None
    val_split = d.val_split
    if "val_split" not in chosen and meta is not None and meta.val_size is not None:
        val_split = meta.val_split or "random"  # a trained checkpoint's split; before it was recorded: random
    num_classes = meta.num_classes if meta is not None else None
    if num_classes is None and kind.allowed_classes is not None:
        num_classes = settings.num_classes
    return load_dataset(
        name,
        data_dir,
        download=d.download if "download" in chosen or "download" not in run else bool(run["download"]),
        val_size=val_size,
        val_size_chosen="val_size" in chosen,
        split_seed=from_meta("split_seed"),
        val_split=val_split,
        num_classes=num_classes,
        synthetic_size=from_meta("synthetic_size"),
        image_size=meta.image_size if meta is not None else settings.model.image_size,
        tasks=tasks,
    )


def settings_for_data(settings: Settings, data: Data) -> Settings:
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


def load_checked_data(settings: Settings, meta: WeightsMeta, path: Path, tasks: Tasks | None = None) -> Data:
    """The data a checkpoint is measured on, refused when its classes are not the checkpoint's."""
    dataset = dataset_for(settings, meta)
    if dataset != "folder":  # known before reading anything
        check_classes(meta, dataset, path)
    data = load_data_for(settings, meta, path, tasks)
    check_classes(meta, dataset, path, data)
    return data


def split_of(data: Data, split: str) -> ImageSet:
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


def check_classes(meta: WeightsMeta, dataset: str, path: Path, data: Data | None = None) -> None:
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
