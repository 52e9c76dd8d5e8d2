"""``cifar-resnet compare``: run directories side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show

SortKey = Literal["best_val_top1", "test_top1", "time_s", "images_per_s", "run"]


@app.command("compare", cls=Command)
def compare_cmd(
    ctx: typer.Context,
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run directories made by train.")],
    sort: Annotated[
        SortKey, typer.Option("--sort", help="Order of the rows (metrics: highest first).")
    ] = "best_val_top1",
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Learning curves of every run in one PNG (needs matplotlib).")
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Compare run directories: the settings that differ, best validation and test top-1, time, speed.

    Examples:

      cifar-resnet compare runs/*

      cifar-resnet compare runs/sgd runs/adamw --sort test_top1 --plot curves.png
    """
    from ...training.compare import compare_runs
    from .. import render

    result = run(ctx, {}, lambda s: compare_runs(runs, sort=sort, plot=plot))
    show(result, json, render.render_compare)
