from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import squash

from cifar_resnet_cli.measure.ablate import AblateResult, ShortcutOnly, without_branches
from cifar_resnet_cli.model.resnet import resnet34
from cifar_resnet_cli.training.compare import CompareResult

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "600",
    "--val-size",
    "200",
    "--batch-size",
    "50",
    "--init",
    "none",
    "--epochs",
    "2",
    "--limit-batches",
    "4",
]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(cli) -> Path:
    return Path(cli.json("train", *TINY, "--name", "base")["run_dir"])


def test_shortcut_only_block_is_relu_of_the_shortcut() -> None:
    model = resnet34(num_classes=10).eval()
    x = torch.randn(2, 64, 8, 8)
    block = ShortcutOnly(model.layer1[1])
    assert torch.equal(block(x), torch.relu(x))
    down = model.layer2[0]
    y = torch.randn(2, 64, 8, 8)
    assert torch.equal(ShortcutOnly(down)(y), torch.relu(down.downsample(y)))
    with without_branches(model, ["layer3.2", "layer4.0"]):
        assert isinstance(model.layer3[2], ShortcutOnly) and isinstance(model.layer4[0], ShortcutOnly)
    assert not isinstance(model.layer3[2], ShortcutOnly)  # restored


def test_ablate_every_block_and_stage(cli, run: Path, tmp_path: Path) -> None:
    result = AblateResult.model_validate(
        cli.json("ablate", run / "best.safetensors", "--split", "val", "--limit", "100", "--plot", tmp_path / "a.png")
    )
    assert result.images == 100 and result.split == "val"
    blocks = [r for r in result.rows if r.kind == "block"]
    stages = [r for r in result.rows if r.kind == "stage"]
    assert len(blocks) == 16 and len(stages) == 4
    assert [r.drop for r in result.rows] == sorted((r.drop for r in result.rows), reverse=True)
    for r in result.rows:
        assert r.drop == pytest.approx(result.intact_top1 - r.top1)
    assert (tmp_path / "a.png").read_bytes().startswith(PNG)


def test_compare_lists_the_differing_settings(cli, run: Path, tmp_path: Path) -> None:
    other = Path(cli.json("train", *TINY, "--name", "adamw", "--optimizer", "adamw", "--lr", "0.001")["run_dir"])
    result = CompareResult.model_validate(cli.json("compare", run, other, "--plot", tmp_path / "c.png"))
    assert result.differing == ["train.lr", "train.optimizer"]
    assert {r.settings["train.optimizer"] for r in result.rows} == {"sgd", "adamw"}
    assert all(r.finished and r.epochs == 2 and r.test_top1 is not None for r in result.rows)
    vals = [r.best_val_top1 for r in result.rows]
    assert vals == sorted(vals, reverse=True)
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    by_name = CompareResult.model_validate(cli.json("compare", other, run, "--sort", "run"))
    assert [Path(r.run).name for r in by_name.rows] == ["adamw", "base"]
    r = cli("compare", tmp_path)
    assert r.exit_code == 1 and "not a run directory" in r.err


def test_train_draws_curves_and_eval_the_confusion_matrix(cli, run: Path, tmp_path: Path) -> None:
    assert (run / "curves.png").read_bytes().startswith(PNG)
    r = cli.json("eval", run / "best.safetensors", "--confusion-plot", tmp_path / "m.png")
    assert r["confusion_plot"] == str(tmp_path / "m.png") and (tmp_path / "m.png").read_bytes().startswith(PNG)
    table = cli("eval", run / "best.safetensors", "--confusion-plot", tmp_path / "n.png")
    assert "confusion plot" in table.stdout and "n.png" in squash(table.stdout).replace(" ", "")  # says where


def test_without_matplotlib_commands_work_and_say_how(cli, run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    r = cli("eval", run / "best.safetensors", "--confusion-plot", tmp_path / "m.png")
    assert r.exit_code == 0 and "cifar-resnet[plot]" in r.err and not (tmp_path / "m.png").exists()
    r = cli.json("train", *TINY, "--epochs", "1", "--name", "noplot")
    assert any("cifar-resnet[plot]" in w for w in r["warnings"]) and not Path("runs/noplot/curves.png").exists()


EXAMPLES = ["quickstart", "transfer_cifar10", "cifar100_mixing", "schedule_study", "ablation"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_run_on_synthetic(name: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATASET": "synthetic",
        "EPOCHS": "1",
        "WEIGHTS": "none",
        "BENCH_ITERS": "3",
        "ABLATE_LIMIT": "50",
        "BENCH_VARIANTS": "eager,trace",
        "OUT": str(tmp_path / "out"),
        "EXTRA_ARGS": "--synthetic-size 300 --val-size 100 --limit-batches 1 --batch-size 32",
        "SCHEDULES": "cosine onecycle",  # both optimizers, two schedules: the grid and compare, in 4 runs of 6
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "examples" / f"{name}.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "out" / "runs").iterdir())
    assert runs and all((r / "summary.json").is_file() for r in runs)
    expected_runs = {"quickstart": 1, "transfer_cifar10": 2, "cifar100_mixing": 3, "schedule_study": 4, "ablation": 1}
    assert len(runs) == expected_runs[name]
