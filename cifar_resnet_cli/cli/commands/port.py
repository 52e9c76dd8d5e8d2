"""``cifar-resnet port``: torchvision's ImageNet weights into a verified .safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show
from ..options import with_settings


@app.command("port", cls=Command)
@with_settings(
    "data.dataset",
    "model.num_classes",
    "model.stem",
    "model.image_size",
    "model.conv1_init",
    "train.seed",
    "device",
)
def port_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", "--output", help="The .safetensors file to write.")],
    weights: Annotated[
        Optional[str],
        typer.Option(
            "--weights",
            help="torchvision weights to download, or 'none' for random weights (tests and demos).",
            show_default="IMAGENET1K_V1",
        ),
    ] = None,
    from_file: Annotated[
        Optional[Path],
        typer.Option(
            "--from", help="A torchvision ResNet34 state dict (.pth), read with weights_only=True. Works offline."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Port ImageNet-pretrained torchvision ResNet34 weights to a verified .safetensors file.

    The head is replaced for the dataset's classes; with --stem cifar, conv1 is adapted or
    re-initialised. The backbone is checked against torchvision holding the same source weights,
    and the file is read back before it is kept. Nothing is written if a check fails.

    Examples:

      cifar-resnet port --out resnet34-cifar10.safetensors

      cifar-resnet port --from resnet34.pth --stem cifar --dataset cifar100 --out w.safetensors

      cifar-resnet port --weights none --dataset synthetic --out random.safetensors
    """
    from ...model.port import port_weights
    from .. import render

    if weights is not None and from_file is not None:
        raise typer.BadParameter(
            "give either --weights or --from, not both", ctx=ctx, param_hint="'--weights' / '--from'"
        )
    if weights is None and from_file is None:
        weights = "IMAGENET1K_V1"
    result = run(ctx, flags, lambda s: port_weights(s, out=out, weights=weights, from_file=from_file, force=force))
    show(result, json, render.render_port)
