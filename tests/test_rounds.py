"""Interleaved rounds (cifar_resnet_cli.measure.timing) on a fake timer, the machine limits, and one tiny
real round of benchmarks/train_throughput.py (no time asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_resnet_cli.measure.machine import matmul_rate, model_flops
from cifar_resnet_cli.measure.timing import Measure, interleave, quantile, ratio_stats

ROOT = Path(__file__).resolve().parents[1]


def test_quantile_is_numpys_linear_interpolation() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0]
    for q in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert quantile(values, q) == pytest.approx(float(torch.quantile(torch.tensor(values), q)))
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_ratio_stats_median_iqr_and_stability() -> None:
    s = ratio_stats([2.0, 2.1, 1.9, 2.0, 2.05], tolerance=0.05)
    assert s.median == 2.0 and s.low == 1.9 and s.high == 2.1
    assert (s.q1, s.q3) == (2.0, 2.05)
    assert s.spread == pytest.approx(0.025) and s.stable
    wide = ratio_stats([1.0, 2.0, 3.0], tolerance=0.05)
    assert wide.spread == pytest.approx(0.5) and not wide.stable
    assert not ratio_stats([2.0], tolerance=0.05).stable  # one round says nothing about the spread


class FakePipeline:
    """Returns preset (images, seconds) per call and records the order of calls."""

    def __init__(self, name: str, seconds: list[float], log: list[str], images: int = 100) -> None:
        self.name, self.seconds, self.log, self.images = name, list(seconds), log, images

    def __call__(self) -> Measure:
        self.log.append(self.name)
        return Measure(self.images, self.seconds.pop(0))


def test_interleave_alternates_order_and_takes_per_round_ratios() -> None:
    log: list[str] = []
    pipes = {"a": FakePipeline("a", [1.0, 2.0, 1.0], log), "b": FakePipeline("b", [0.5, 1.0, 0.5], log)}
    r = interleave(pipes, "a", min_rounds=3, max_rounds=3)
    assert log == ["a", "b", "b", "a", "a", "b"]  # A B, B A, A B: drift weighs on both sides
    # round 2 is twice as slow for both: the ratio does not move, where pooled times would hide it
    assert r.ratios("b") == [2.0, 2.0, 2.0]
    assert r.stats("b").median == 2.0 and r.stable and r.count == 3
    assert r.images_per_s("a") == 100.0  # median of 100, 50, 100


def test_interleave_stops_when_stable_and_says_when_not() -> None:
    steady = {"a": FakePipeline("a", [1.0] * 10, []), "b": FakePipeline("b", [0.5, 0.51, 0.49] + [0.5] * 7, [])}
    assert interleave(steady, "a", min_rounds=3, max_rounds=10).count == 3
    noisy_b = [0.5, 1.0, 0.25, 0.9, 0.3, 0.8, 0.35, 0.7]
    noisy = {"a": FakePipeline("a", [1.0] * 8, []), "b": FakePipeline("b", noisy_b, [])}
    r = interleave(noisy, "a", min_rounds=3, max_rounds=8)
    assert r.count == 8 and not r.stable
    assert r.stats("b").low == pytest.approx(1.0) and r.stats("b").high == pytest.approx(4.0)


def test_interleave_rejects_a_missing_baseline_and_bad_round_counts() -> None:
    pipes = {"a": FakePipeline("a", [1.0], [])}
    with pytest.raises(ValueError, match="baseline"):
        interleave(pipes, "b")
    with pytest.raises(ValueError):
        interleave(pipes, "a", min_rounds=3, max_rounds=2)


def test_model_flops_counts_forward_and_backward() -> None:
    # torchvision's published figure for ResNet34 at 224 px: 3.66 GMACs = 7.33 GFLOP per image
    assert model_flops("imagenet", 224, training=False) / 1e9 == pytest.approx(7.33, abs=0.01)
    fwd, both = model_flops("cifar", 32, training=False), model_flops("cifar", 32, training=True)
    assert 2.9 < both / fwd < 3.0  # backward = 2x forward, less the first conv's input gradient


def test_matmul_rate_is_a_positive_rate() -> None:
    rate = matmul_rate("fp32", torch.device("cpu"), n=128, min_seconds=0.0, min_calls=3)
    assert rate.gflops > 0 and rate.calls == 3 and rate.n == 128


@pytest.mark.slow
def test_one_tiny_real_round_of_the_training_benchmark(cifar10_dir: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "train_throughput.py"),
        "--data-dir",
        str(cifar10_dir),
        "--configs",
        "imagenet-stem-32px",
        "--variants",
        "ours-unfused",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--min-rounds",
        "1",
        "--max-rounds",
        "1",
        "--workers",
        "0",
        "--matmul-size",
        "128",
        "--profile",
        "1",
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    env, [config] = result["environment"], result["results"]
    assert set(env["matmul_gflops"]) == {"fp32", "bf16"} and env["cpu"]
    assert config["rounds"] == 1 and config["gflop_per_training_image"] == pytest.approx(0.44, abs=0.01)
    rows = {r["pipeline"]: r for r in config["rows"]}
    assert set(rows) == {"conventional", "ours", "ours-unfused"}
    assert rows["conventional"]["ratio_median"] == 1.0 and rows["ours"]["images_per_s"] > 0
    assert config["profile"] and all(p["self_ms_per_step"] >= 0 for p in config["profile"])
