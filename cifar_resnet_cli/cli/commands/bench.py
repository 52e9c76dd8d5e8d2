"""``cifar-resnet bench``: every variant and runtime timed side by side, each checked against eager."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show
from ..options import all_settings, with_settings


@app.command("bench", cls=Command)
@with_settings(*(p for p in all_settings() if p.startswith("bench.")), "model.image_size", "model.stem", "device")
def bench_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="CHECKPOINT",
            help="A .safetensors checkpoint, or an archive from `export` (timed alone, exactly as shipped); "
            "without one, a random-initialised model.",
        ),
    ] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Shorthand for --layouts nhwc.")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write every timing to this CSV file.")] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Time eager, traced, scripted, frozen, compiled and deployed variants side by side.

    Same input and warm-up for every variant; the first call is reported as cold start (compile
    time for compile), the time to write a deployed variant's file as build s; median, p90 and
    spread over --iters calls; speed-up over eager fp32; and each variant's output against eager
    fp32, so a fast but wrong variant shows as wrong. The device's limit is measured after the
    timings (an n x n matmul per dtype): each row's share of it is in % peak. An archive from
    export is timed alone, as shipped (an ONNX file by each installed runtime).

    Examples:

      cifar-resnet bench --image-size 224 --batch-sizes 1 --dtypes fp32,bf16 --layouts nchw,nhwc

      cifar-resnet bench --image-size 224 --batch-sizes 1 --variants eager,aoti,onnxruntime,openvino --dtypes fp32,int8

      cifar-resnet bench runs/train/best.safetensors --batch-sizes 1,64 --csv bench.csv

      cifar-resnet bench --device cuda --dtypes fp32,fp16 --json | jq '.fastest_correct["1"].variant'
    """
    from ...measure.bench import benchmark
    from .. import render

    if channels_last:
        layouts = flags["bench.layouts"]
        flags["bench.layouts"] = ["nhwc"] if layouts is None else sorted(set(layouts) | {"nhwc"})
    with render.TaskBars(keep=True) as bars:  # each variant's build (compile) and timing as its own line
        result = run(ctx, flags, lambda s: benchmark(s, checkpoint, csv_path=csv, tasks=bars))
    show(result, json, render.render_bench)
