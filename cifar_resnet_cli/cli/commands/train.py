"""``cifar-resnet train``: feature extraction or fine-tuning, into a run directory that resumes exactly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show
from ..options import all_settings, with_settings

# Every data, model and training setting is a train option.
TRAIN_SETTINGS = [p for p in all_settings() if p.split(".")[0] in ("data", "model", "train")] + ["device"]


@app.command("train", cls=Command)
@with_settings(*TRAIN_SETTINGS)
def train_cmd(
    ctx: typer.Context,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="Continue RUN_DIR exactly where it stopped; only --epochs, --device, --checkpoint-every, "
            "--log-interval and --tensorboard may change.",
        ),
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Train the ResNet34 on CIFAR: feature extraction (--freeze-backbone) or fine-tuning.

    Writes a run directory (settings.json, metrics.jsonl, best/last .safetensors, resume state,
    summary.json). The best checkpoint is chosen on the validation split; the test set is scored
    once at the end. Ctrl-C or SIGTERM saves a resumable state after the current step (exit 130 or
    143); a checkpoint is also saved every --checkpoint-every, so kill -9 loses at most that much.

    Examples:

      cifar-resnet train --dataset cifar10 --freeze-backbone

      cifar-resnet train --dataset cifar100 --stem cifar --image-size 32 --cutmix 1.0 --epochs 30

      cifar-resnet train --dataset synthetic --init none --epochs 2 --val-size 1000

      cifar-resnet train --resume runs/train --epochs 20

      torchrun --nproc-per-node 8 -m cifar_resnet_cli train --dataset cifar100 --batch-size 1024 --sync-bn
    """
    from ...training.train import settings_for_resume, train
    from .. import render

    progress = render.TrainProgressBar()  # stderr, so it never mixes with --json on stdout
    factory = (lambda o: settings_for_resume(resume, o)) if resume is not None else None

    def core(settings):
        progress.log_interval = settings.train.log_interval
        return train(settings, progress, resume=resume)

    result = run(ctx, flags, core, settings_factory=factory)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 alone reports
    show(result, json, render.render_train)
