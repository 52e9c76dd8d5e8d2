from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import squash

from cifar_resnet_cli import __version__
from cifar_resnet_cli.model.inspection import InspectResult

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [[], ["inspect"], ["port"]])
def test_help_for_every_command(cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert "Usage: cifar-resnet" in result.stdout
    if command:
        assert "Examples" in result.stdout and "--json" in result.stdout


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"cifar-resnet {__version__}"


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "cifar_resnet_cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cifar-resnet {__version__}"


def test_inspect_json_is_pure_json_and_parses_into_its_model(cli) -> None:
    result = cli("inspect", "--json")
    assert result.exit_code == 0
    parsed = InspectResult.model_validate_json(result.stdout)
    assert parsed.max_abs_diff == 0.0 and parsed.passed
    assert "1x1" in result.stderr  # warnings go to stderr, not into the JSON stream
    assert json.loads(result.stdout)["warnings"] == parsed.warnings


def test_inspect_table_on_stdout(cli) -> None:
    result = cli("inspect", "--stem", "cifar", "--tensors", "all")
    assert result.exit_code == 0
    assert "layer4.2" in result.stdout and "PASS" in result.stdout
    assert "conv1.weight" in result.stdout and "layer4.2.bn2.running_var" in result.stdout


def test_device_cuda_without_cuda_is_one_clear_line(cli) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("inspect", "--device", "cuda")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: --device cuda") and "--device cpu" in result.stderr


def test_debug_shows_the_traceback(cli, tmp_path: Path) -> None:
    quiet = cli("port", "--from", tmp_path / "nope.pth", "--out", tmp_path / "w.safetensors")
    loud = cli(
        "port", "--from", tmp_path / "nope.pth", "--out", tmp_path / "w.safetensors", env={"CIFAR_RESNET_DEBUG": "1"}
    )
    assert quiet.exit_code == loud.exit_code == 1
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert "Traceback" in cli("--debug", "port", "--from", tmp_path / "nope.pth", "--out", tmp_path / "w").stderr


def test_every_train_flag_reaches_the_settings(cli, monkeypatch) -> None:
    """No flag is accepted and ignored: each one changes the resolved settings."""
    from cifar_resnet_cli.core.settings import Settings
    from cifar_resnet_cli.training import train as train_module

    seen = {}

    class Stop(Exception):
        pass

    def capture(settings, progress=None, *, resume=None):
        seen["settings"] = settings
        raise Stop

    monkeypatch.setattr(train_module, "train", capture)
    flags = {
        "--dataset": "cifar100",
        "--data-dir": "/d",
        "--val-size": "7",
        "--synthetic-size": "300",
        "--init": "none",
        "--stem": "cifar",
        "--image-size": "64",
        "--backbone-lr-scale": "0.1",
        "--epochs": "3",
        "--batch-size": "16",
        "--lr": "0.2",
        "--optimizer": "adamw",
        "--momentum": "0.8",
        "--weight-decay": "0.01",
        "--schedule": "multistep",
        "--warmup-epochs": "0.5",
        "--milestones": "1,2",
        "--gamma": "0.5",
        "--cutmix": "1.0",
        "--mixup": "0.2",
        "--mix-prob": "0.5",
        "--label-smoothing": "0.1",
        "--amp": "bf16",
        "--limit-batches": "5",
        "--seed": "9",
        "--dist-timeout": "30",
        "--runs-dir": "r",
        "--name": "x",
        "--device": "cpu",
    }
    switches = [
        "--freeze-backbone",
        "--no-nesterov",
        "--no-augment",
        "--channels-last",
        "--compile",
        "--deterministic",
        "--no-cache-features",
        "--sync-bn",
        "--no-download",
    ]
    args = [a for kv in flags.items() for a in kv] + switches
    with pytest.raises(Stop):
        cli("train", *args)
    s = seen["settings"].model_dump(mode="json")
    defaults = Settings().model_dump(mode="json")
    changed = {f"{sec}.{k}" for sec, v in s.items() if isinstance(v, dict) for k in v if v[k] != defaults[sec][k]}
    changed |= {k for k, v in s.items() if not isinstance(v, dict) and v != defaults[k]}
    field = {f.lstrip("-").replace("-", "_") for f in flags} | {
        s.removeprefix("--no-").removeprefix("--").replace("-", "_") for s in switches
    }
    assert {c.split(".")[-1] for c in changed} >= field, field - {c.split(".")[-1] for c in changed}


def test_help_shows_each_settings_real_default_and_environment_variable(cli) -> None:
    from cifar_resnet_cli.core.settings import Settings

    text = squash(cli("train", "--help", env={"COLUMNS": "200"}).stdout)
    assert f"[default: {Settings().train.lr}]" in text and "[env var: CIFAR_RESNET_TRAIN__LR]" in text
    bench = squash(cli("bench", "--help", env={"COLUMNS": "200"}).stdout)
    assert "[eager|trace|script|frozen|compile|aoti|onnxruntime|openvino]" in bench  # the choices of a list


def test_familiar_spellings_and_one_default_notation(cli) -> None:
    from typer.main import get_command

    from cifar_resnet_cli.cli.app import app

    group = get_command(app)
    train = group.commands["train"]
    names = {o for p in train.params for o in (*p.opts, *p.secondary_opts)}
    assert {"-b", "--opt", "--sched", "--no-freeze-backbone"} <= names
    assert {"-o", "--output"} <= {o for p in group.commands["export"].params for o in p.opts}
    assert {"-o", "--output"} <= {o for p in group.commands["port"].params for o in p.opts}
    for name in ("inspect", "port", "train", "eval", "export", "bench", "predict", "ablate", "compare", "config"):
        text = squash(cli(name, "--help").stdout)
        assert "(default:" not in text, name  # one notation, Typer's own: "[default: x]", from the settings
        assert "<bool>" not in text, name  # a flag takes no value
        assert "{" not in text.split("Usage:")[1].split(" ")[3], name  # CHECKPOINT, not {checkpoint}
    assert "Usage: cifar-resnet eval [OPTIONS] CHECKPOINT" in squash(cli("eval", "--help").stdout)
    assert "--install-completion" in cli("--help").stdout


def test_tables_fit_80_columns_without_cutting_values(cli, tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    for args in (["inspect", "--depth", "3"], ["port", "--weights", "none", "--dataset", "synthetic", "--out", out]):
        r = cli(*args)  # the test runner's console is 80 columns wide
        assert r.exit_code == 0 and "…" not in r.stdout, args


def test_every_setting_is_an_option_of_some_command_and_no_default_is_written_by_hand() -> None:
    from typer.main import get_command

    from cifar_resnet_cli.cli.app import app
    from cifar_resnet_cli.cli.options import all_settings
    from cifar_resnet_cli.core.settings import option_names

    group = get_command(app)
    flags = {o for c in group.commands.values() for p in c.params for o in p.opts}
    missing = [p for p in all_settings() if option_names(tuple(p.split(".")))[0] not in flags]
    assert not missing, f"settings no command takes: {missing}"
    package = Path(__file__).resolve().parents[1] / "cifar_resnet_cli"
    by_hand = [str(f) for f in package.rglob("*.py") if "(default:" in f.read_text(encoding="utf-8")]
    assert not by_hand, by_hand
