"""``predict``: classify the user's own images with a checkpoint or an exported archive.

Preprocessing comes from the model's metadata (input size, mean, std), never from guesses; it is the
same code as training's (:func:`augment.fit_image`, then :func:`augment.preprocess`). A file that
cannot be read is reported in its own row; the others are still classified.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel

from ..core.devices import device_description, resolve_device
from ..core.errors import CheckpointError, CifarResnetError
from ..core.fileio import atomic_write_bytes, check_writable
from ..core.progress import Tasks, task
from ..core.settings import Settings
from ..data.augment import fit_image, preprocess
from ..data.images import ImageReadError, image_extensions, read_image
from ..model.archives import load_for_inference
from .evaluate import ranked


class Guess(BaseModel):
    label: str
    index: int
    probability: float


class Prediction(BaseModel):
    file: str
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    top: list[Guess] = []
    error: str | None = None


class PredictResult(BaseModel):
    model: str
    image_size: int
    resize: str
    device: str
    predictions: list[Prediction]
    failed: int
    csv: str | None
    warnings: list[str]


def collect(inputs: list[Path], recursive: bool) -> list[Path]:
    """Files as given, and the image files of directories (walked with ``recursive``)."""
    extensions = image_extensions()
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = item.rglob("*") if recursive else item.glob("*")
            files += sorted(p for p in found if p.is_file() and p.suffix.lower() in extensions)
        elif item.exists():
            files.append(item)
        else:
            raise CifarResnetError(f"{item} does not exist", "give image files or directories")
    if not files:
        raise CifarResnetError(
            f"no images found in {', '.join(map(str, inputs))}",
            "Pillow-readable files (.png, .jpg, .bmp, .webp, ...); --recursive walks subdirectories",
        )
    return files


def _batches(items: list[tuple[int, torch.Tensor]], size: int) -> Iterator[list[tuple[int, torch.Tensor]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_images(
    settings: Settings,
    model_path: Path,
    inputs: list[Path],
    *,
    recursive: bool = False,
    csv_path: Path | None = None,
    tasks: Tasks | None = None,
) -> PredictResult:
    """Classify images (top-k, resize and batch size from ``settings.predict``); unreadable files get an
    error in their row."""
    top_k, resize, batch_size = settings.predict.top_k, settings.predict.resize, settings.predict.batch_size
    if csv_path is not None:
        check_writable(csv_path, force=True, what="--csv file")
    device = resolve_device(settings.device)
    model, meta = load_for_inference(model_path, device, runtime=settings.onnx_runtime)
    if not meta.class_names or len(meta.class_names) != meta.num_classes:
        raise CheckpointError(f"{model_path} does not name its {meta.num_classes} classes", "re-export it")
    files = collect(inputs, recursive)
    k = min(top_k, meta.num_classes)

    predictions = [Prediction(file=str(f)) for f in files]
    ready: list[tuple[int, torch.Tensor]] = []
    for i, path in enumerate(files):
        try:
            image, width, height, mode = read_image(path, meta.image_size)
        except ImageReadError as exc:  # each unreadable file becomes a row
            predictions[i].error = str(exc)
            continue
        predictions[i].width, predictions[i].height, predictions[i].mode = width, height, mode
        ready.append((i, fit_image(image, meta.image_size, resize)))

    with task(tasks, f"classifying {len(files)} images", len(files)) as bar, torch.inference_mode():
        bar.advance(len(files) - len(ready))  # the unreadable ones
        for batch in _batches(ready, batch_size):
            x = preprocess(torch.stack([t for _, t in batch]).to(device), meta.mean, meta.std, meta.image_size)
            probs = model(x).float().softmax(1)
            values, indices = ranked(probs, k)
            for (i, _), v, idx in zip(batch, values.tolist(), indices.tolist(), strict=True):
                predictions[i].top = [
                    Guess(label=meta.class_names[j], index=j, probability=p) for p, j in zip(v, idx, strict=True)
                ]
            bar.advance(len(batch))

    if csv_path is not None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", "rank", "label", "index", "probability", "error"])
        for p in predictions:
            if p.error:
                writer.writerow([p.file, "", "", "", "", p.error])
            for rank, g in enumerate(p.top, 1):
                writer.writerow([p.file, rank, g.label, g.index, f"{g.probability:.6f}", ""])
        atomic_write_bytes(csv_path, buf.getvalue().encode())
    warnings = []
    if meta.dataset == "synthetic":
        warnings.append("this model was trained on SYNTHETIC data: its classes are not real objects")
    return PredictResult(
        model=str(model_path),
        image_size=meta.image_size,
        resize=resize,
        device=device_description(device),
        predictions=predictions,
        failed=sum(p.error is not None for p in predictions),
        csv=str(csv_path) if csv_path else None,
        warnings=warnings,
    )
