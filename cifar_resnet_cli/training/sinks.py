"""Where per-epoch metrics go: ``metrics.jsonl`` and ``metrics.csv`` always, TensorBoard event files
(``RUN_DIR/tensorboard``) when the ``tensorboard`` package is installed.

The checkpoint calls :meth:`MetricsSinks.write` with the whole history after every commit, so every
sink says what the checkpoint says. TensorBoard files can only be appended to: a process that
writes them first purges what an earlier process logged (a run stopped between two writes, say)
and logs the history again, so that after any interruption they hold each epoch once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from . import rundir

TENSORBOARD_DIR = "tensorboard"
# Scalar names as timm and Lightning users know them; the global step is the epoch.
SCALARS = {
    "train_loss": "train/loss",
    "train_top1": "train/top1",
    "val_loss": "val/loss",
    "val_top1": "val/top1",
    "val_top5": "val/top5",
    "lr": "lr",
    "images_per_s": "throughput/images_per_s",
    "epoch_time_s": "time/epoch_s",
}


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_enabled(choice: bool | None) -> bool:
    """``--tensorboard`` / ``--no-tensorboard``; unset: on when the package is installed."""
    if choice is None:
        return tensorboard_available()
    if choice and not tensorboard_available():
        raise ConfigError(
            "--tensorboard needs the tensorboard package",
            "pip install 'cifar-resnet[tensorboard]', or pass --no-tensorboard",
        )
    return choice


class MetricsSinks:
    def __init__(self, run_dir: Path, *, tensorboard: bool) -> None:
        self.run_dir, self.tensorboard = run_dir, tensorboard
        self._writer: Any = None
        self._logged = 0

    def write(self, history: list[dict[str, Any]]) -> None:
        rundir.write_metrics(self.run_dir, history)
        if not self.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=1)
        for row in history[self._logged :]:
            for key, name in SCALARS.items():
                if row.get(key) is not None:
                    self._writer.add_scalar(name, row[key], global_step=row["epoch"])
        self._logged = len(history)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
