"""Shared fixtures: random-initialised torchvision checkpoints saved as real .pth files, a CLI runner."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from cifar_resnet_cli.cli.app import app
from cifar_resnet_cli.model.inspection import randomise_batchnorm

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n N` (make test), N workers share the cores: one thread each, for this process and
    # every command a test starts. Two OpenMP pools of 2 threads on 2 cores spin against each other and
    # run several times slower than one thread each.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the user's environment, ./cifar-resnet.toml or torch hub cache."""
    import os

    for key in list(os.environ):
        if key.startswith("CIFAR_RESNET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _save_torchvision(arch: str, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    randomise_batchnorm(model, torch.Generator().manual_seed(seed))  # non-trivial BN statistics
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def resnet34_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised torchvision ResNet34 (1000 classes) saved as a real .pth state dict."""
    return _save_torchvision("resnet34", tmp_path_factory.mktemp("pth") / "resnet34.pth", seed=1)


@pytest.fixture(scope="session")
def resnet18_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_torchvision("resnet18", tmp_path_factory.mktemp("pth") / "resnet18.pth", seed=2)


def squash(text: str) -> str:
    """Rich's help and error panels wrap text: drop the box drawing and join the lines."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


class Cli:
    """Runs the Typer app in-process, stdout and stderr kept apart."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str | Path, env: dict[str, str] | None = None):
        result = self.runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
        result.err = squash(result.stderr)  # stderr as one line, for substring checks
        return result

    def json(self, *args: str | Path, env: dict[str, str] | None = None) -> dict:
        result = self(*args, "--json", env=env)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli() -> Cli:
    return Cli()


def write_cifar10(folder: Path, *, train_per_batch: int = 40, test: int = 50, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the official python-version layout (pickled dicts, protocol 2)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)

    def batch(n: int, label: str) -> dict:
        return {
            "batch_label": label,
            "labels": [int(i % 10) for i in range(n)],
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }

    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch(train_per_batch, f"training batch {i} of 5"), 2))
    (root / "test_batch").write_bytes(pickle.dumps(batch(test, "testing batch 1 of 1"), 2))
    from cifar_resnet_cli.core.kinds import CIFAR10_CLASSES

    meta = {"num_cases_per_batch": train_per_batch, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, 2))
    return folder


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "cifar-data")


MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


def assert_fp32_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Logits of the same fp32 model on the same batch, computed by another route (TorchScript,
    a frozen graph with BatchNorm folded into the convolutions).

    Both routes are exact up to rounding, but may add in another order: a sum of K products in fp32
    then differs by about sqrt(K) x 2^-24 of its magnitude, at most 68 x 6e-8 = 4e-6 for K = 4608
    (3x3x512, ResNet34's widest fan-in), and the errors of 36 layers add up to about 1.5e-4 of the
    activation scale. We allow 1e-4 of the largest |logit| (at least 1), the rule `export` itself
    verifies with; measured differences are about 6e-7 of it, and a wrong operation gives O(1).
    """
    allowed = 1e-4 * max(1.0, float(expected.abs().max()))
    diff = float((out.float() - expected.float()).abs().max())
    assert diff <= allowed, f"max |diff| {diff:.3g} > {allowed:.3g}"


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same training: checkpoint weights, optimiser state and progress
    bit for bit, every metrics row but its timing fields, and last/best weights; no leftovers."""
    from cifar_resnet_cli.model.weights import read_weights
    from cifar_resnet_cli.training import rundir
    from cifar_resnet_cli.training.checkpoint import read_generation

    ga, gb = read_generation(a), read_generation(b)
    assert ga.weights.keys() == gb.weights.keys()
    assert all(torch.equal(ga.weights[k], gb.weights[k]) for k in ga.weights), "weights differ"
    assert (ga.ema is None) == (gb.ema is None)
    assert ga.ema is None or all(torch.equal(ga.ema[k], gb.ema[k]) for k in ga.ema), "EMA weights differ"
    assert ga.optimizer_tensors.keys() == gb.optimizer_tensors.keys() and ga.optimizer_tensors
    assert all(torch.equal(ga.optimizer_tensors[k], gb.optimizer_tensors[k]) for k in ga.optimizer_tensors)
    assert (ga.progress.epoch, ga.progress.global_step, ga.progress.best_epoch, ga.progress.best_top1) == (
        gb.progress.epoch,
        gb.progress.global_step,
        gb.progress.best_epoch,
        gb.progress.best_top1,
    )

    def rows(run: Path) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")}
            for r in rundir.read_jsonl(run / rundir.METRICS)
        ]

    assert rows(a) == rows(b) and [r["epoch"] for r in rows(b)] == list(range(1, len(rows(b)) + 1))
    for name in (rundir.LAST, rundir.BEST):
        ta, tb = read_weights(a / name)[0], read_weights(b / name)[0]
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert not list(b.glob(".*.tmp")) and not (b / rundir.LOCK).exists()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` keeps an ``xdist_group`` on one worker by tagging its node ids; where the
    installed pytest and pytest-xdist cannot (pytest 9.2 with xdist 3.8), each worker would build the
    shared fixtures again and the suite would only be slower: say so instead."""
    if getattr(config.option, "loadgroup", False):
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(
                f"pytest-xdist did not group {lost[0]} and {len(lost) - 1} more tests: install pytest < 9.2 "
                "(pyproject's dev extra pins it)"
            )
