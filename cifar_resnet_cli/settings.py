"""One settings object for every command.

Precedence, highest first: command-line flags (passed as init kwargs, only those the user set) >
environment ``CIFAR_RESNET_<SECTION>__<FIELD>`` > ``--config FILE.toml`` or ``./cifar-resnet.toml``
> the defaults below. Every flag is named after its field: ``model.image_size`` is
``--image-size``.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .data import ALLOWED_NUM_CLASSES, DEFAULT_NUM_CLASSES, Dataset
from .errors import ConfigError

ENV_PREFIX = "CIFAR_RESNET_"
DEFAULT_CONFIG = Path("cifar-resnet.toml")
Device = Literal["auto", "cpu", "cuda", "mps"]

_toml_file: ContextVar[Path | None] = ContextVar("cifar_resnet_toml_file", default=None)


class _Section(BaseModel):
    # A misspelt key in a TOML file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSettings(_Section):
    """Which dataset the model is for."""

    dataset: Dataset = Field("cifar10", description="cifar10, cifar100 or synthetic (offline stand-in)")


class ModelSettings(_Section):
    """The shape of the ResNet34."""

    stem: Literal["imagenet", "cifar"] = Field(
        "imagenet", description="imagenet: torchvision's 7x7/2 conv + max pool; cifar: 3x3/1 conv, no pool"
    )
    num_classes: Literal[10, 100] | None = Field(
        None, description="classes of the head; default: from the dataset (10 or 100)"
    )
    image_size: int = Field(32, ge=16, le=512, description="input height and width in pixels")
    conv1_init: Literal["adapt", "reinit"] = Field(
        "adapt",
        description="cifar stem only: adapt the pretrained 7x7 conv1 kernel to 3x3, or re-initialise it",
    )


class TrainSettings(_Section):
    """Training options used so far: the seed and feature extraction."""

    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for every random draw (head init, inputs)")
    freeze_backbone: bool = Field(False, description="feature extraction: train only fc, backbone frozen")


class ExportSettings(_Section):
    """TorchScript export. No options yet: the export command is not built."""


class BenchSettings(_Section):
    """Benchmarks. No options yet: the bench command is not built."""


class Settings(BaseSettings):
    """The resolved settings of one command."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    device: Device = Field("auto", description="auto picks cuda, then mps, then cpu")
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    bench: BenchSettings = Field(default_factory=BenchSettings)

    @model_validator(mode="after")
    def _classes_match_dataset(self) -> Settings:
        allowed = ALLOWED_NUM_CLASSES[self.data.dataset]
        if self.model.num_classes is not None and self.model.num_classes not in allowed:
            raise ValueError(
                f"num_classes {self.model.num_classes} does not fit dataset {self.data.dataset}, "
                f"which has {' or '.join(map(str, allowed))} classes"
            )
        return self

    @property
    def num_classes(self) -> int:
        """The head size: ``model.num_classes`` or the dataset's own."""
        return self.model.num_classes or DEFAULT_NUM_CLASSES[self.data.dataset]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _toml_file.get()
        if toml_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))


def option_names(loc: tuple[str | int, ...]) -> tuple[str, str, str]:
    """The flag, environment variable and TOML key of a setting, e.g. ``--image-size``."""
    flag = f"--{str(loc[-1]).replace('_', '-')}"
    env = ENV_PREFIX + "__".join(str(p) for p in loc).upper()
    toml = f"[{'.'.join(map(str, loc[:-1]))}] {loc[-1]}" if len(loc) > 1 else str(loc[-1])
    return flag, env, toml


def _origin(loc: tuple[str | int, ...], overrides: dict[str, Any], toml_file: Path | None) -> str:
    node: Any = overrides
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return "on the command line"
    env = option_names(loc)[1]
    if env in {k.upper() for k in os.environ}:
        return f"in the environment ({env})"
    return f"in {toml_file}" if toml_file is not None else ""


class InvalidSettingError(ConfigError):
    """A setting with a value outside what is allowed: the CLI turns it into a usage error (exit 2)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Resolve the settings: ``overrides`` (the flags) > environment > TOML > defaults.

    Without ``config``, ``./cifar-resnet.toml`` is read when it exists.
    """
    overrides = overrides or {}
    if config is not None and not config.is_file():
        raise ConfigError(f"config file {config} does not exist", "pass an existing TOML file to --config")
    toml_file = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    if toml_file is not None:
        try:
            tomllib.loads(toml_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {toml_file} is not valid TOML: {exc}", "fix the file") from None
    token = _toml_file.set(toml_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        if not loc:  # a cross-field check (model validator)
            raise InvalidSettingError(f"invalid settings: {err['msg'].removeprefix('Value error, ')}") from None
        where = _origin(loc, overrides, toml_file)
        flag, env, toml = option_names(loc)
        if err["type"] == "extra_forbidden":
            message = f"unknown setting {'.'.join(map(str, loc))} {where}".strip()
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            message = (f"{flag}{shown} {where}: {err['msg']} (set with {flag}, {env} or {toml} in TOML)").replace(
                "  ", " "
            )
        raise InvalidSettingError(message, option=flag) from None
    finally:
        _toml_file.reset(token)
