"""Long work shows itself: every long step is reported to a Tasks sink, and drawn on a terminal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from cifar_resnet_cli.cli import render as report
from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.deploy.export import export_model
from cifar_resnet_cli.measure.ablate import ablate
from cifar_resnet_cli.measure.bench import benchmark
from cifar_resnet_cli.measure.evaluate import evaluate_checkpoint
from cifar_resnet_cli.measure.predict import predict_images
from cifar_resnet_cli.training.train import NullProgress, train


class Recorder(NullProgress):
    """Records every step begun, with its total and how far it advanced."""

    def __init__(self) -> None:
        self.steps: list[list] = []  # [description, total, advanced, ended]

    def begin(self, description: str, total: int | None = None) -> None:
        self.steps.append([description, total, 0, False])

    def advance(self, n: int = 1) -> None:
        self.steps[-1][2] += n

    def end(self) -> None:
        self.steps[-1][3] = True

    def assert_complete(self) -> None:
        assert self.steps and all(ended for *_, ended in self.steps)
        assert all(done == total for _, total, done, _ in self.steps if total is not None), self.steps


SYNTH = {"data": {"dataset": "synthetic", "synthetic_size": 600, "val_size": 200}}


@pytest.fixture
def checkpoint(cli, tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    assert cli("port", "--weights", "none", "--dataset", "synthetic", "--out", path).exit_code == 0
    return path


def test_eval_export_bench_and_ablate_report_each_long_step(checkpoint: Path, tmp_path: Path) -> None:
    sections = {
        "eval": {"batch_size": 50},
        "bench": {"variants": ["eager", "trace"], "batch_sizes": [1, 2], "warmup": 0, "iters": 3},
        "export": {"methods": ["trace", "frozen"], "out_dir": str(tmp_path / "x")},
    }
    settings = load_settings(None, {**SYNTH, **sections})
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not an image")  # counted too: every file is accounted for
    cases = [
        (lambda r: evaluate_checkpoint(settings, checkpoint, tasks=r), ["eval test (120 images)"]),
        (
            lambda r: export_model(settings, checkpoint, tasks=r),
            ["trace fp32 archive: write, load back, verify", "frozen fp32 archive: write, load back, verify"],
        ),
        (
            lambda r: benchmark(settings, checkpoint, tasks=r),
            ["eager fp32 nchw: build, warm up, time", "trace fp32 nchw: build, warm up, time"],
        ),
        (lambda r: ablate(settings, checkpoint, limit=20, tasks=r), ["ablation: 21 evaluations of 20 images"]),
        (lambda r: predict_images(settings, checkpoint, [images], tasks=r), ["classifying 3 images"]),
    ]
    for run, expected in cases:
        recorder = Recorder()
        run(recorder)
        recorder.assert_complete()
        assert [d for d, *_ in recorder.steps] == expected


def test_feature_caching_validation_and_test_are_reported(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            **SYNTH,
            "train": {
                "init": "none",
                "epochs": 2,
                "batch_size": 50,
                "freeze_backbone": True,
                "augment": False,
                "limit_batches": 2,
            },
        },
    )
    recorder = Recorder()
    result = train(settings, recorder)
    recorder.assert_complete()
    names = [d for d, *_ in recorder.steps]
    assert names[:2] == ["extracting training features (400 images)", "extracting validation features (200 images)"]
    assert names[-1] == "test, best checkpoint (120 images)"
    assert result.feature_extraction_s > 0 and result.train_time_s >= result.feature_extraction_s


def test_task_bars_draw_on_a_terminal_and_stay_silent_in_a_file(monkeypatch) -> None:
    for terminal in (True, False):
        buf = io.StringIO()
        monkeypatch.setattr(report, "err", Console(file=buf, force_terminal=terminal, width=100))
        with report.TaskBars(keep=True) as bars:
            bars.begin("trace fp32 nchw: build, warm up, time", 2)
            bars.advance(2)
            bars.end()
        assert ("trace fp32 nchw: build, warm up, time" in buf.getvalue()) == terminal
        assert ("2/2" in buf.getvalue()) == terminal
