"""``cifar-resnet predict``: classify the user's own image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, fail, run, show
from ..options import all_settings, with_settings


@app.command("predict", cls=Command)
@with_settings(*(p for p in all_settings() if p.startswith("predict.")), "onnx_runtime", "device")
def predict_cmd(
    ctx: typer.Context,
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="A .safetensors checkpoint or an archive from export (.pt, .pt2, .onnx)."),
    ],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGES", help="Image files and/or directories.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk directories recursively.")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the predictions to this CSV file.")] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Classify your own images (PNG, JPEG, BMP, WebP, anything Pillow reads).

    Preprocessing comes from the model's metadata: converted to RGB, resized to its input size,
    normalised with its mean/std. A file that cannot be read is reported in its row and the others
    are still classified; the exit code is 1 if any file failed.

    Examples:

      cifar-resnet predict runs/train/best.safetensors cat.jpg dog.png

      cifar-resnet predict exports/best.trace.pt photos/ --recursive --top-k 5 --csv predictions.csv

      cifar-resnet predict best.safetensors photos/ --json | jq '.predictions[].top[0].label'
    """
    from ...core.errors import CifarResnetError
    from ...measure.predict import predict_images
    from .. import render

    with render.TaskBars() as bars:
        result = run(
            ctx, flags, lambda s: predict_images(s, model, images, recursive=recursive, csv_path=csv, tasks=bars)
        )
    show(result, json, render.render_predict)
    if result.failed:
        where = 'each failed file\'s "error" field in the JSON' if json else "the error column"
        fail(
            ctx,
            CifarResnetError(
                f"{result.failed} of {len(result.predictions)} files could not be classified", f"see {where}"
            ),
        )
