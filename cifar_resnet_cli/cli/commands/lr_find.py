"""``cifar-resnet lr-find``: the learning-rate range test, from the settings train would use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show
from ..options import with_settings
from .train import TRAIN_SETTINGS


@app.command("lr-find", cls=Command)
@with_settings(*TRAIN_SETTINGS)
def lr_find_cmd(
    ctx: typer.Context,
    start_lr: Annotated[float, typer.Option("--start-lr", help="The first learning rate.")] = 1e-6,
    end_lr: Annotated[
        float, typer.Option("--end-lr", help="The last learning rate (if the loss has not diverged).")
    ] = 10.0,
    plot: Annotated[
        Path, typer.Option("--plot", help="PNG of the smoothed loss against the learning rate (needs matplotlib).")
    ] = Path("lr-find.png"),
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Find a learning rate: the range test (Smith 2017) over a few hundred steps from these settings.

    Trains from the run's own starting point (data, model, --init, --freeze-backbone, optimiser,
    augmentation) while the learning rate grows exponentially from --start-lr to --end-lr, one step
    each, and stops once the smoothed loss exceeds 4x its minimum. Suggests the rate of steepest
    descent of the smoothed loss (and the rate at its minimum / 10). Writes no checkpoint and no run
    folder. train --lr auto runs it first.

    Examples:

      cifar-resnet lr-find --dataset cifar10 --freeze-backbone

      cifar-resnet lr-find --dataset folder --data-dir photos --optimizer adamw --json | jq .suggested_lr
    """
    from ...training.lr_find import lr_find
    from .. import render

    with render.TaskBars() as bars:
        result = run(ctx, flags, lambda s: lr_find(s, start_lr=start_lr, end_lr=end_lr, plot=plot, tasks=bars))
    show(result, json, render.render_lr_find)
