"""The training recipe: EMA, accumulation, clipping, early stopping, top-k checkpoints, --amp auto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run
from safetensors.torch import load_file
from test_train import TINY, _InterruptAt, _settings

from cifar_resnet_cli.core import devices
from cifar_resnet_cli.training import plan as plan_module
from cifar_resnet_cli.training import train as train_module
from cifar_resnet_cli.training.ema import WeightsEma, ema_decay_at
from cifar_resnet_cli.training.train import TrainingInterrupted, train


def test_ema_decay_warms_up_as_timm_and_averages_as_stated() -> None:
    assert ema_decay_at(0.999, 0) == 0.0  # the first update copies the weights
    assert ema_decay_at(0.999, 7) == pytest.approx(1 - 8 ** (-2 / 3))  # 0.75
    assert ema_decay_at(0.9, 10_000) == 0.9  # capped at --ema-decay
    model = torch.nn.Linear(3, 2)
    ema = WeightsEma(model, 0.5)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 0)
    assert torch.equal(ema.model.weight, model.weight)  # decay 0
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model, 100)  # decay min(0.5, ...) = 0.5
    assert torch.allclose(ema.model.weight, 0.5 * (before + 1) + 0.5 * (before + 3))


def test_resume_is_bit_identical_with_ema_and_batched_augmentation() -> None:
    kw = {
        "limit_batches": 3,
        "ema_decay": 0.9,
        "auto_augment": "trivialaugment",
        "random_erase": 0.5,
        "clip_grad": 5.0,
        "amp": "off",
    }
    straight = train(_settings(train={**kw, "name": "straight"}))
    with pytest.raises(TrainingInterrupted):
        train(_settings(train={**kw, "name": "split"}), _InterruptAt(epoch=2, step=1))
    run = Path("runs/split")
    train(train_module.settings_for_resume(run, {}), resume=run)
    assert_same_run(Path(straight.run_dir), run)
    assert straight.ema and (run / "last.ema.safetensors").is_file()
    # After one epoch, best.safetensors holds the EMA weights that validation scored, last the raw ones.
    one = Path(train(_settings(train={**kw, "epochs": 1, "name": "one"})).run_dir)
    best, raw = load_file(one / "best.safetensors"), load_file(one / "last.safetensors")
    ema = load_file(one / "last.ema.safetensors")
    assert not torch.equal(ema["fc.weight"], raw["fc.weight"])
    assert all(torch.equal(best[k], ema[k]) for k in ema)


@pytest.mark.numerics
def test_accumulation_equals_the_larger_batch() -> None:
    # A frozen backbone keeps BatchNorm in eval mode, so 4 batches of 15 compute what one batch of 60
    # does; only the order of floating-point sums differs (about 1e-7 relative per sum), which is far
    # below 1e-3 of the update, while a wrong loss scale (x4) would be the size of the update itself.
    common = {
        "freeze_backbone": True,
        "cache_features": False,
        "augment": True,
        "amp": "off",
        "epochs": 1,
        "lr": 0.5,
        "limit_batches": 3,
    }
    big = train(_settings(train={**common, "batch_size": 60, "name": "big"}))
    small = train(_settings(train={**common, "batch_size": 15, "accum_steps": 4, "name": "accum"}))
    assert big.steps_per_epoch == small.steps_per_epoch == 3
    a = load_file(Path(big.run_dir) / "last.safetensors")["fc.weight"]
    b = load_file(Path(small.run_dir) / "last.safetensors")["fc.weight"]
    assert float((a - b).norm()) < 1e-3 * float((a - _initial_fc()).norm())
    assert big.history[0].train_loss == pytest.approx(small.history[0].train_loss, rel=1e-5)


def _initial_fc() -> torch.Tensor:
    settings = _settings(train={"freeze_backbone": True})
    from cifar_resnet_cli.data.loading import load_dataset

    data = load_dataset("synthetic", Path("data"), download=False, val_size=200, split_seed=0, synthetic_size=600)
    return train_module.initial_model(settings, data).model.fc.weight.detach()


def test_clip_grad_bounds_every_update() -> None:
    kw = {
        "freeze_backbone": True,
        "amp": "off",
        "epochs": 1,
        "limit_batches": 4,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "lr": 1.0,
    }
    clipped = train(_settings(train={**kw, "clip_grad": 1e-3, "name": "clipped"}))
    free = train(_settings(train={**kw, "name": "free"}))
    w0 = _initial_fc()
    moved = float((load_file(Path(clipped.run_dir) / "last.safetensors")["fc.weight"] - w0).norm())
    assert moved <= 4 * 1.0 * 1e-3 * (1 + 1e-5)  # steps x lr x max norm (the bias is clipped jointly)
    assert float((load_file(Path(free.run_dir) / "last.safetensors")["fc.weight"] - w0).norm()) > 10 * moved


def test_patience_stops_and_top_k_keeps_the_k_best(cli) -> None:
    # A learning rate of 1e-9 cannot improve validation top-1, so --patience 1 stops after epoch 2.
    flat = cli.json(
        "train",
        *TINY,
        "--epochs",
        "5",
        "--freeze-backbone",
        "--no-augment",
        "--lr",
        "1e-9",
        "--patience",
        "1",
        "--name",
        "flat",
    )
    assert flat["stopped_early_epoch"] == 2 and len(flat["history"]) == 2 and flat["best_epoch"] == 1
    run = cli.json("train", *TINY, "--epochs", "4", "--keep-top-k", "2", "--name", "topk")
    rows = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    ranked = sorted(rows, key=lambda r: (-r["val_top1"], r["epoch"]))[:2]
    kept = sorted(p.name for p in (Path(run["run_dir"]) / "top").iterdir())
    assert kept == sorted(f"epoch-{r['epoch']:04d}.safetensors" for r in ranked)
    best = load_file(Path(run["run_dir"]) / "best.safetensors")
    top = load_file(Path(run["run_dir"]) / "top" / f"epoch-{run['best_epoch']:04d}.safetensors")
    assert all(torch.equal(best[k], top[k]) for k in best)


AMX = ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f"]


@pytest.mark.parametrize(
    ("flags", "device", "bf16_gpu", "ms", "steps", "expected", "says"),
    [
        (AMX, "cpu", None, (100, 40), 1000, ("bf16", True), "timed faster"),  # CIFAR stem on AMX: 2.6x
        (["avx512_bf16", "avx512f"], "cpu", None, (100, 52), 1000, ("bf16", True), "timed faster"),
        (AMX, "cpu", None, (100, 113), 1000, ("off", False), "not 5% faster"),  # ImageNet stem, 32 px, AMX
        (AMX, "cpu", None, (100, 96), 1000, ("off", False), "not 5% faster"),  # a tie goes to fp32
        (AMX, "cpu", None, (100, 40), 199, ("off", False), "too short"),  # a run too short to time
        (AMX, "cpu", None, None, 1000, ("off", False), "torchrun"),  # no timer: torchrun's processes
        (["avx512f"], "cpu", None, None, 1000, ("off", False), "emulated"),  # never timed: emulated bf16
        ([], "cpu", None, None, 1000, ("off", False), "emulated"),
        ([], "cuda", True, None, 1000, ("bf16", True), "natively"),
        ([], "cuda", False, None, 1000, ("fp16", True), "no native bf16"),
    ],
)
def test_amp_auto_choices(monkeypatch, flags, device, bf16_gpu, ms, steps, expected, says) -> None:
    monkeypatch.setattr(devices, "cpu_matrix_flags", lambda: flags)
    asked_for_emulation = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked_for_emulation.append(including_emulation)
        return bf16_gpu

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    timed = []

    def timer(amp: str, channels_last: bool) -> float:
        assert ms is not None, "this choice needs no timing"
        timed.append((amp, channels_last))
        return ms[amp == "bf16"] / 1e3

    given = None if ms is None and says == "torchrun" else timer
    chosen = devices.resolve_precision("auto", None, torch.device(device), timer=given, run_steps=steps)
    assert (chosen.amp, chosen.channels_last) == expected and chosen.reason.startswith("auto")
    assert says in chosen.reason, chosen.reason
    if timed:
        assert timed == [("off", False), ("bf16", True)] and f"{ms[0]} ms fp32 against {ms[1]} ms bf16" in chosen.reason
    assert asked_for_emulation in ([], [False])  # T4/V100 emulate bf16: those get fp16
    asked = devices.resolve_precision("off", True, torch.device(device))
    assert (asked.amp, asked.channels_last) == ("off", True) and "asked for" in asked.reason


def test_the_run_says_what_precision_it_chose(cli) -> None:
    run = cli.json("train", *TINY, "--epochs", "1", "--limit-batches", "1")
    settings = json.loads((Path(run["run_dir"]) / "settings.json").read_text())
    assert settings["train"]["amp"] == "off" and run["precision"].startswith("auto:")
    native = any(f in devices.cpu_matrix_flags() for f in ("amx_bf16", "avx512_bf16"))
    assert ("too short" if native else "emulated") in run["precision"]


def test_amp_auto_times_the_runs_own_model_and_records_the_choice(cli, monkeypatch) -> None:
    """A run long enough is timed in both precisions before epoch 1 (the timer faked here, so that load on
    the machine cannot flip the choice); settings.json keeps the choice, so resume computes as it started."""
    monkeypatch.setattr(devices, "cpu_matrix_flags", lambda: AMX)
    calls = []

    def fake_step_seconds(model, *, batch, image_size, num_classes, device, amp, channels_last):
        calls.append((type(model).__name__, batch, image_size, num_classes, amp, channels_last))
        return 0.1 if amp == "off" else 0.05

    monkeypatch.setattr(plan_module, "step_seconds", fake_step_seconds)
    monkeypatch.setattr(devices, "MIN_RUN_STEPS", 2)  # a real run that long would take minutes here
    run = cli.json("train", *TINY, "--epochs", "1", "--limit-batches", "2", "--batch-size", "16", "--name", "x")
    assert calls == [("ResNet", 16, 32, 10, "off", False), ("ResNet", 16, 32, 10, "bf16", True)]
    assert run["precision"].startswith("auto: bf16") and "100 ms fp32 against 50 ms bf16" in run["precision"]
    settings = json.loads((Path(run["run_dir"]) / "settings.json").read_text())
    assert (settings["train"]["amp"], settings["train"]["channels_last"]) == ("bf16", True)
    resumed = cli.json("train", "--resume", "runs/x", "--epochs", "2")
    assert len(calls) == 2 and resumed["precision"].startswith("asked for")  # the recorded choice, not re-timed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ema-decay", "1.0"], "ema_decay"),
        (["--ema-decay", "-0.1"], "ema_decay"),
        (["--no-ema-eval"], "--no-ema-eval applies with --ema-decay only"),
        (["--random-erase", "1.5"], "random_erase"),
        (["--auto-augment", "autoaugment"], "'autoaugment' is not one of"),
        (["--clip-grad", "0"], "clip_grad"),
        (["--accum-steps", "0"], "accum_steps"),
        (["--patience", "0"], "patience"),
        (["--keep-top-k", "-1"], "keep_top_k"),
        (["--amp", "fp8"], "'fp8' is not one of"),
    ],
)
def test_bad_recipe_options_are_one_clear_line(cli, args: list[str], message: str) -> None:
    r = cli("train", *TINY, *args)
    assert r.exit_code == 2 and message in r.err, r.stderr
    assert not Path("runs").exists()


def test_patience_without_validation_is_refused(cli) -> None:
    r = cli("train", *TINY, "--val-size", "0", "--patience", "2")
    assert r.exit_code == 1 and "--patience needs a validation split" in r.err
