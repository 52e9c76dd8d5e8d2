"""``cifar-resnet ablate``: what top-1 loses without each residual branch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..common import CheckpointArg, Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show
from ..options import Use, with_settings
from .evaluate import ON_ITS_DATA


@app.command("ablate", cls=Command)
@with_settings(
    Use("eval.split", help="Images to measure on."),
    ON_ITS_DATA,
    "data.data_dir",
    "data.download",
    "eval.batch_size",
    "device",
)
def ablate_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointArg,
    limit: Annotated[
        Optional[int], typer.Option("--limit", min=1, help="Use only the first N images, for a quick look.")
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Bar chart of the drops (PNG, needs matplotlib).")
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Remove each residual block's branch (then each stage's) and measure what top-1 loses.

    A block without its residual branch passes relu(shortcut(x)): the identity, or the 1x1
    downsample where the shape changes. Results are sorted by the drop against the intact model.

    Examples:

      cifar-resnet ablate runs/train/best.safetensors --split val --limit 1000

      cifar-resnet ablate runs/train/best.safetensors --plot ablation.png --json | jq '.rows[0]'
    """
    from ...measure.ablate import ablate
    from .. import render

    with render.TaskBars() as bars:
        result = run(ctx, flags, lambda s: ablate(s, checkpoint, limit=limit, plot=plot, tasks=bars))
    show(result, json, render.render_ablate)
