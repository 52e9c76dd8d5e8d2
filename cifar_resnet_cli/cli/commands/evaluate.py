"""``cifar-resnet eval``: top-1 with its interval, top-5, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show
from ..options import Use, with_settings

ON_ITS_DATA = Use("data.dataset", help="Dataset to measure on.", default_text="the checkpoint's")


@app.command("eval", cls=Command)
@with_settings(
    ON_ITS_DATA, "data.data_dir", "data.download", "eval.split", "eval.batch_size", "eval.tta", "onnx_runtime", "device"
)
def eval_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path,
        typer.Argument(metavar="CHECKPOINT", help="A .safetensors checkpoint (from train or port), or an archive."),
    ],
    confusion: Annotated[
        Optional[Path], typer.Option("--confusion", help="Write the confusion matrix to this CSV file.")
    ] = None,
    confusion_plot: Annotated[
        Optional[Path],
        typer.Option("--confusion-plot", help="Draw the confusion matrix into this PNG (needs matplotlib)."),
    ] = None,
    per_class_csv: Annotated[
        Optional[Path],
        typer.Option("--per-class-csv", help="Write per-class support, precision, recall and F1 to this CSV file."),
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Measure a checkpoint: top-1 (95% interval), top-5, loss, balanced accuracy, per-class P/R/F1, confusion.

    Normalisation and input size come from the checkpoint's metadata; its classes must fit the
    dataset. --split val uses the validation split the checkpoint was selected on.

    Examples:

      cifar-resnet eval runs/train/best.safetensors

      cifar-resnet eval runs/train/best.safetensors --tta --confusion confusion.csv

      cifar-resnet eval runs/train/best.safetensors --json | jq .top1
    """
    from ...measure.evaluate import evaluate_checkpoint
    from .. import render

    with render.TaskBars() as bars:
        result = run(
            ctx,
            flags,
            lambda s: evaluate_checkpoint(
                s,
                checkpoint,
                confusion=confusion,
                confusion_plot=confusion_plot,
                per_class_csv_path=per_class_csv,
                tasks=bars,
            ),
        )
    show(result, json, render.render_eval)
