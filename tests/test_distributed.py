"""torchrun on the CPU: gloo, 2 processes, loopback only, synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cifar_resnet_cli.model.resnet import resnet34
from cifar_resnet_cli.training.distributed import SyncBatchNorm2d

COMMON = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "600",
    "--val-size",
    "150",
    "--batch-size",
    "48",
    "--init",
    "none",
    "--no-augment",
    "--lr",
    "0.05",
]


def _launch(args: list[str], cwd: Path, nproc: int) -> dict:
    """Run `train` under torchrun (nproc > 1) or as one plain process; return its --json result."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache"), "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "cifar_resnet_cli",
        ]
    else:
        launcher = [sys.executable, "-m", "cifar_resnet_cli"]
    proc = subprocess.run(
        [*launcher, "train", *args, "--json"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.numerics
def test_two_processes_compute_what_one_does(tmp_path: Path) -> None:
    """Same global batch, --sync-bn, no augmentation: one optimisation step on 2 processes equals one on 1.

    One step, because a random-initialised ResNet34 is ill-conditioned in float32 (its own float32
    gradients differ from float64 ones by a few percent): any summation-order difference grows from
    the second step on, on one process as on two.
    """
    # fp32: the comparison is of summation orders; under bf16 it would compare bf16 roundings.
    args = [*COMMON, "--epochs", "1", "--limit-batches", "1", "--sync-bn", "--amp", "off"]
    one = _launch([*args, "--name", "one"], tmp_path, 1)
    two = _launch([*args, "--name", "two"], tmp_path, 2)
    assert two["processes"] == 2 and one["processes"] == 1
    a, b = load_file(tmp_path / "runs/one/last.safetensors"), load_file(tmp_path / "runs/two/last.safetensors")
    torch.manual_seed(0)
    init = resnet34(num_classes=10, zero_init_residual=True).state_dict()  # --init none --seed 0
    weights = [k for k in a if a[k].is_floating_point() and "running" not in k]
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in weights).sqrt()
    update = sum(((a[k] - init[k]) ** 2).sum() for k in weights).sqrt()
    assert update > 0 and diff / update < 1e-3
    for k in a:
        if "running" in k:  # BatchNorm statistics of the global batch, on every rank
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert one["history"][0]["train_loss"] == pytest.approx(two["history"][0]["train_loss"], rel=1e-5)
    # Only one run directory per launch, written by rank 0.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]


def test_every_sample_once_and_evaluation_totals(tmp_path: Path) -> None:
    r = _launch([*COMMON, "--epochs", "1", "--batch-size", "64", "--freeze-backbone"], tmp_path, 2)
    epoch = r["history"][0]
    assert epoch["train_samples"] == r["train_images"] == 450  # 600 - 150, each seen exactly once
    assert epoch["val_samples"] == r["val_images"] == 150
    assert r["feature_cache"] and r["mode"] == "feature extraction"


def test_resume_under_torchrun_and_across_launchers(tmp_path: Path) -> None:
    args = [*COMMON, "--limit-batches", "2", "--schedule", "constant", "--sync-bn"]
    straight = _launch([*args, "--epochs", "2", "--name", "straight"], tmp_path, 2)
    _launch([*args, "--epochs", "1", "--name", "split"], tmp_path, 2)
    resumed = _launch(["--resume", "runs/split", "--epochs", "2"], tmp_path, 2)
    assert resumed["resumed_from_epoch"] == 1
    a = load_file(tmp_path / "runs/straight/last.safetensors")
    b = load_file(tmp_path / "runs/split/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]
    # A run saved under torchrun continues on one process.
    single = _launch(["--resume", "runs/split", "--epochs", "3"], tmp_path, 1)
    assert single["resumed_from_epoch"] == 2 and single["processes"] == 1 and len(single["history"]) == 3


def test_sync_batchnorm_is_batchnorm_on_one_process() -> None:
    torch.manual_seed(0)
    bn, sync = torch.nn.BatchNorm2d(4), SyncBatchNorm2d(4)
    x = torch.randn(6, 4, 3, 3)
    assert torch.equal(bn(x), sync(x))
    assert torch.equal(bn.running_var, sync.running_var)
