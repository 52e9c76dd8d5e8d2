"""``cifar-resnet inspect``: the layer table and the proof of parity with torchvision."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, fail, run, show
from ..options import with_settings


@app.command("inspect", cls=Command)
@with_settings(
    "model.stem",
    "data.dataset",
    "model.num_classes",
    "model.image_size",
    "train.freeze_backbone",
    "train.seed",
    "device",
)
def inspect_cmd(
    ctx: typer.Context,
    depth: Annotated[
        int, typer.Option("--depth", min=1, max=3, help="Table rows: 1 stages, 2 blocks, 3 every layer.")
    ] = 2,
    tensors: Annotated[
        Literal["diff", "all"],
        typer.Option("--tensors", help="Tensor comparison: list only differing names, or all of them."),
    ] = "diff",
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Print the layer table of our ResNet34 and prove it matches torchvision's.

    Compares every parameter and buffer name and shape with torchvision.models.resnet34, then loads
    the same random weights into both and compares each stage's output and the logits in eval mode.
    Exits 1 if any difference exceeds 1e-6.

    Examples:

      cifar-resnet inspect

      cifar-resnet inspect --stem cifar --depth 3

      cifar-resnet inspect --json | jq .max_abs_diff
    """
    from ...core.errors import VerificationError
    from ...model.inspection import inspect_model
    from .. import render

    result = run(ctx, flags, lambda s: inspect_model(s, depth=depth))
    show(result, json, lambda r: render.render_inspect(r, tensors=tensors))
    if not result.passed:
        fail(
            ctx,
            VerificationError(
                f"our ResNet34 differs from torchvision's by {result.max_abs_diff:.3g} "
                f"(tolerance {result.tolerance:g})",
                "this is a bug in model/resnet.py: the two must compute the same numbers",
            ),
        )
