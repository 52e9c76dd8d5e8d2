from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from cifar_resnet_cli.core.errors import ConfigError
from cifar_resnet_cli.core.settings import InvalidSettingError, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar-resnet.toml"


def _toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings()
    assert (s.device, s.data.dataset, s.model.stem, s.model.image_size) == ("auto", "cifar10", "imagenet", 32)
    assert s.num_classes == 10
    assert load_settings(None, {"data": {"dataset": "cifar100"}}).num_classes == 100


def test_precedence_flag_over_env_over_toml_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _toml(tmp_path / "c.toml", '[model]\nimage_size = 64\nstem = "cifar"\n[train]\nseed = 5\n')
    s = load_settings(config)
    assert (s.model.image_size, s.model.stem, s.train.seed, s.model.conv1_init) == (64, "cifar", 5, "adapt")

    monkeypatch.setenv("CIFAR_RESNET_MODEL__IMAGE_SIZE", "48")
    s = load_settings(config)
    assert (s.model.image_size, s.model.stem) == (48, "cifar")  # env wins, TOML fills the rest

    s = load_settings(config, {"model": {"image_size": 96}})
    assert (s.model.image_size, s.model.stem, s.train.seed) == (96, "cifar", 5)  # flag wins


def test_precedence_through_the_cli(cli, tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", "[model]\nimage_size = 64\n")
    env = {"CIFAR_RESNET_MODEL__STEM": "cifar"}
    r = cli.json("--config", config, "inspect", "--depth", "1", env=env)
    assert (r["image_size"], r["stem"]) == (64, "cifar")
    r = cli.json("--config", config, "inspect", "--depth", "1", "--image-size", "40", "--stem", "imagenet", env=env)
    assert (r["image_size"], r["stem"]) == (40, "imagenet")


def test_config_and_debug_after_the_command(cli, tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", "[model]\nimage_size = 64\n")
    other = _toml(tmp_path / "d.toml", "[model]\nimage_size = 48\n")
    assert cli.json("inspect", "--depth", "1", "--config", config)["image_size"] == 64
    assert cli.json("--config", other, "inspect", "--depth", "1", "--config", config)["image_size"] == 64
    r = cli("eval", "missing.safetensors", "--debug")
    assert r.exit_code == 1 and "Traceback" in r.stderr and "does not exist" in r.err
    r = cli("eval", "missing.safetensors")
    assert r.exit_code == 1 and "Traceback" not in r.stderr


def test_config_prints_the_effective_settings_with_their_origins(cli, tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", "[model]\nimage_size = 64\n")
    r = cli("config", "--config", config, env={"CIFAR_RESNET_TRAIN__LR": "0.1"})
    assert r.exit_code == 0, r.stderr
    assert (
        f"image_size = 64  # file {config}" in r.stdout
        and "lr = 0.1  # environment (CIFAR_RESNET_TRAIN__LR)" in r.stdout
    )
    assert 'stem = "imagenet"  # default' in r.stdout and "# data_dir = (unset)  # default" in r.stdout
    saved = tmp_path / "effective.toml"
    saved.write_text(r.stdout)  # what it prints reads back as the same settings
    again = cli.json("config", "--config", saved)
    first = cli.json("config", "--config", config, env={"CIFAR_RESNET_TRAIN__LR": "0.1"})
    assert [(x["key"], x["value"]) for x in again["settings"]] == [(x["key"], x["value"]) for x in first["settings"]]


def test_local_cifar_resnet_toml_is_read(tmp_path: Path) -> None:
    _toml(tmp_path / "cifar-resnet.toml", '[data]\ndataset = "cifar100"\n')  # tests run in tmp_path
    assert load_settings().num_classes == 100


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("flag", "--image-size = 8 on the command line"),
        ("env", "in the environment (CIFAR_RESNET_MODEL__IMAGE_SIZE)"),
        ("toml", "c.toml"),
    ],
)
def test_invalid_value_names_option_and_origin(tmp_path: Path, monkeypatch, where: str, message: str) -> None:
    config = None
    overrides = {}
    if where == "flag":
        overrides = {"model": {"image_size": 8}}
    elif where == "env":
        monkeypatch.setenv("CIFAR_RESNET_MODEL__IMAGE_SIZE", "8")
    else:
        config = _toml(tmp_path / "c.toml", "[model]\nimage_size = 8\n")
    with pytest.raises(InvalidSettingError) as info:
        load_settings(config, overrides)
    assert message in info.value.message
    assert "greater than or equal to 16" in info.value.message
    assert "CIFAR_RESNET_MODEL__IMAGE_SIZE" in info.value.message and "--image-size" in info.value.message


def test_bad_config_files(cli, tmp_path: Path) -> None:
    typo = _toml(tmp_path / "typo.toml", "[model]\nstme = 'cifar'\n")
    r = cli("--config", typo, "inspect")
    assert r.exit_code == 2 and "unknown setting model.stme" in r.err

    broken = _toml(tmp_path / "broken.toml", "[model\n")
    r = cli("--config", broken, "inspect")
    assert r.exit_code == 1 and "not valid TOML" in r.err

    r = cli("--config", tmp_path / "absent.toml", "inspect")
    assert r.exit_code == 1 and "does not exist" in r.err

    r = cli("inspect", env={"CIFAR_RESNET_DEVICE": "tpu"})
    assert r.exit_code == 2 and "CIFAR_RESNET_DEVICE" in r.err


def test_example_toml_lists_every_setting_with_its_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    text = EXAMPLE.read_text(encoding="utf-8")
    defaults = Settings()
    for name in Settings.model_fields:
        section = getattr(defaults, name)
        if isinstance(section, BaseModel):
            assert f"[{name}]" in text
            for key in type(section).model_fields:
                assert f"{key} =" in text, f"{name}.{key} missing from {EXAMPLE.name}"
        else:
            assert f"{name} =" in text
    assert load_settings(EXAMPLE) == defaults
    assert set(data) <= set(Settings.model_fields)


def test_the_recipe_example_is_the_readmes_winning_recipe() -> None:
    recipe = load_settings(EXAMPLE.parent / "recipe_cifar10_scratch.toml")
    t = recipe.train
    assert (t.init, t.epochs, t.batch_size, t.lr, t.warmup_epochs, t.label_smoothing, t.schedule) == (
        "none",
        15,
        128,
        0.1,
        0.0,
        0.1,
        "onecycle",
    )
    assert (t.ema_decay, t.auto_augment, t.cutmix, t.amp) == (0.0, "none", 0.0, "auto")
    assert (recipe.data.val_size, recipe.model.stem, recipe.model.image_size) == (1000, "imagenet", 32)


def test_config_error_is_a_cifar_resnet_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(Path("/nonexistent/config.toml"))
