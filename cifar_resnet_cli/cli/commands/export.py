"""``cifar-resnet export``: archives (TorchScript, AOTInductor, ONNX fp32/int8), each verified."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..common import CheckpointArg, Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show
from ..options import all_settings, with_settings

INT8_ONLY = (
    "export.calibration_images",
    "export.max_accuracy_drop",
    "export.weight_rounding",
    "export.max_float_layers",
)


@app.command("export", cls=Command)
@with_settings(*(p for p in all_settings() if p.startswith("export.")), "data.data_dir", "onnx_runtime", "device")
def export_cmd(
    ctx: typer.Context,
    checkpoint: CheckpointArg,
    freeze: Annotated[
        bool, typer.Option("--freeze", help="Also write the frozen archive (same as --method frozen).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing archives.")] = False,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Write archives (TorchScript, AOTInductor .pt2, ONNX fp32/int8) and verify each against eager PyTorch.

    Each is saved, loaded back with its runtime's own loader (torch.jit.load, aoti_load_package, ONNX
    Runtime) and compared with the eager model on a batch of another size; one that fails is not
    kept. An int8 archive is calibrated on the checkpoint's training images and scored on its
    validation split: its accuracy drop and top-1 agreement with fp32 are stored and printed with
    95% intervals (on 1,000 images, about a point wide). The checkpoint's metadata travels in the
    archive (extra file cifar_resnet.json; ONNX metadata_props "cifar_resnet"), with the run's data
    folder, so that eval of an archive kept elsewhere reads the same data without --data-dir.

    Examples:

      cifar-resnet export runs/train/best.safetensors

      cifar-resnet export runs/train/best.safetensors --method frozen --dtype bf16 --channels-last

      cifar-resnet export best.safetensors --method onnx --dtype int8 --data-dir data

      cifar-resnet export best.safetensors --method onnx --dtype int8 --onnx-runtime openvino

      cifar-resnet export best.safetensors --method all --out exports --json | jq '.archives[].path'
    """
    from ...core.settings import option_names
    from ...deploy.export import export_model
    from .. import render

    if flags["export.methods"] or freeze:
        chosen = list(flags["export.methods"] or [])
        methods = ["all"] if "all" in chosen else chosen
        if freeze and "frozen" not in methods and methods != ["all"]:
            methods.append("frozen")
        flags["export.methods"] = methods
    int8_only = [option_names(tuple(p.split(".")))[0] for p in INT8_ONLY if flags[p] is not None]

    def core(settings):
        if int8_only and settings.export.dtype != "int8":
            verb = "applies" if len(int8_only) == 1 else "apply"
            raise typer.BadParameter(
                f"{', '.join(int8_only)} only {verb} to int8 archives; this export is "
                f"{settings.export.dtype} (add --dtype int8)",
                ctx=ctx,
            )
        return export_model(settings, checkpoint, force=force, tasks=bars)

    with render.TaskBars(keep=True) as bars:
        result = run(ctx, flags, core)
    show(result, json, render.render_export)
