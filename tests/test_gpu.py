"""CUDA paths (``pytest -m gpu``; skipped without CUDA), and the GPU check script's dry run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from cifar_resnet_cli.core.devices import resolve_device
from cifar_resnet_cli.model.resnet import resnet34

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_eager_cuda_equals_cpu_in_fp32() -> None:
    torch.manual_seed(0)
    model = resnet34(num_classes=10).eval()
    x = torch.randn(8, 3, 32, 32)
    device = resolve_device("cuda")  # as every command does: it turns cuDNN's TF32 off
    with torch.inference_mode():
        cpu = model(x)
        gpu = model.to(device)(x.to(device)).cpu()
    # IEEE fp32 on both sides, differently ordered sums: rounding of about 1e-6 relative per layer. TF32
    # (10 mantissa bits) gave 4e-3 here on an H200, which this bound refuses.
    assert (gpu - cpu).abs().max() <= 1e-3 * max(1.0, float(cpu.abs().max()))
    assert torch.equal(gpu.argmax(1), cpu.argmax(1))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_train_on_cuda_with_amp_and_channels_last(cli, amp: str) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no native bf16")
    r = cli.json(
        "train",
        "--device",
        "cuda",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "600",
        "--val-size",
        "100",
        "--init",
        "none",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--amp",
        amp,
        "--channels-last",
    )
    assert r["device"].startswith("cuda") and r["history"][0]["train_loss"] == r["history"][0]["train_loss"]
    assert amp in r["precision"] or r["precision"].startswith("asked")


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path: Path) -> None:
    """The script a GPU machine runs first: every check on the CPU, small, the CUDA-only ones skipped."""
    env = {**os.environ, "GPU_CHECK_LOGS": str(tmp_path / "logs")}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("gpu_check: ") and " 0 failed" in lines[-1]
    verdicts = [line.split()[0] for line in lines[1:-1]]
    assert verdicts.count("PASS") == 6 and verdicts.count("SKIP") == 2 and "FAIL" not in verdicts
    assert any("Ctrl-C and resume" in line for line in lines)


def test_gpu_check_reports_failures_and_exits_non_zero(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": "false", "GPU_CHECK_LOGS": str(tmp_path / "logs")}  # every check fails
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1] == "gpu_check: 0 passed, 6 failed, 2 skipped"


def test_gpu_check_refuses_unknown_arguments() -> None:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr
