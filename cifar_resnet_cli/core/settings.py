"""One settings object for every command.

Precedence, highest first: command-line flags (passed as init kwargs, only those the user set) >
environment ``CIFAR_RESNET_<SECTION>__<FIELD>`` > ``--config FILE.toml`` or ``./cifar-resnet.toml``
> the defaults below. Every flag is named after its field: ``model.image_size`` is
``--image-size``.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError
from .kinds import ALLOWED_NUM_CLASSES, DEFAULT_NUM_CLASSES, Dataset

ENV_PREFIX = "CIFAR_RESNET_"
DEFAULT_CONFIG = Path("cifar-resnet.toml")
Device = Literal["auto", "cpu", "cuda", "mps"]

_toml_file: ContextVar[Path | None] = ContextVar("cifar_resnet_toml_file", default=None)
_init_only: ContextVar[bool] = ContextVar("cifar_resnet_init_only", default=False)


_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|m|min|minutes?)?\s*$")


def parse_checkpoint_every(value: str) -> tuple[int | None, float | None]:
    """``"200"`` -> (200 steps, None); ``"5m"`` -> (None, 300 s); ``"0"`` -> (None, None): epoch ends only."""
    if str(value).strip().lower() in ("0", "off", "epoch"):
        return None, None
    match = _EVERY.match(str(value).lower())
    if match is None:
        raise ValueError(f"{value!r}: give steps (200), minutes (5m), or 0 for epoch ends only")
    number, unit = float(match.group(1)), match.group(2) or "steps"
    if number <= 0:
        return None, None
    if unit.startswith("step"):
        if number != int(number):
            raise ValueError(f"{value!r}: a number of steps is a whole number")
        return int(number), None
    return None, number * 60


class _Section(BaseModel):
    # A misspelt key in a TOML file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSettings(_Section):
    """Which dataset, where it lives, and how the validation split is held out."""

    dataset: Dataset = Field(
        "cifar10", description="cifar10, cifar100, synthetic (offline stand-in) or folder (DIR/train/<class>/*.jpg)"
    )
    data_dir: Path | None = Field(
        None, description="dataset folder; default ~/.cache/cifar-resnet/data (folder: required, the DIR)"
    )
    download: bool = Field(True, description="download CIFAR through torchvision when it is missing")
    val_size: int = Field(
        5000,
        ge=0,
        le=1_000_000,
        description="training images held out for validation (folder without val/: default 10% of train)",
    )
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the train/validation split")
    synthetic_size: int = Field(10_000, ge=100, le=200_000, description="synthetic training images")


class ModelSettings(_Section):
    """The shape of the ResNet34."""

    stem: Literal["imagenet", "cifar"] = Field(
        "imagenet", description="imagenet: torchvision's 7x7/2 conv + max pool; cifar: 3x3/1 conv, no pool"
    )
    num_classes: int | None = Field(
        None, ge=2, le=100_000, description="classes of the head; default: from the dataset (10, 100, folders)"
    )
    image_size: int = Field(32, ge=16, le=512, description="input height and width in pixels")
    conv1_init: Literal["adapt", "reinit"] = Field(
        "adapt",
        description="cifar stem only: adapt the pretrained 7x7 conv1 kernel to 3x3, or re-initialise it",
    )


class TrainSettings(_Section):
    """Training: initialisation, mode, optimisation, augmentation, speed, output."""

    init: str = Field("imagenet", description="imagenet (ported and cached), none (scratch), or FILE.safetensors")
    freeze_backbone: bool = Field(False, description="feature extraction: train only fc, backbone frozen")
    backbone_lr_scale: float = Field(1.0, gt=0, le=10, description="backbone learning rate = lr x this")
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536, description="images per optimisation step")
    lr: float = Field(0.05, gt=0, le=10, description="peak learning rate")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW beta1)")
    nesterov: bool = Field(True, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="not applied to BatchNorm and biases")
    schedule: Literal["cosine", "onecycle", "step", "multistep", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, le=1000, description="linear warm-up, stepped per iteration")
    step_size: int | None = Field(None, ge=1, description="step schedule: epochs per decay (default epochs/3)")
    milestones: list[int] | None = Field(None, description="multistep schedule: epochs (default 50%, 75%)")
    gamma: float = Field(0.1, gt=0, le=1, description="step/multistep decay factor")
    augment: bool = Field(True, description="random crop (padding 1/8 of the side, 4 px at 32) and horizontal flip")
    cutmix: float = Field(0.0, ge=0, le=4, description="CutMix Beta alpha; 0 = off")
    mixup: float = Field(0.0, ge=0, le=4, description="MixUp Beta alpha; 0 = off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability that a batch is mixed")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    auto_augment: Literal["none", "trivialaugment", "randaugment"] = Field(
        "none", description="per-image TrivialAugment (wide) or RandAugment (2 ops, magnitude 9), on the device"
    )
    random_erase: float = Field(0.0, ge=0, le=1, description="probability of erasing a random box of each image")
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="EMA of the weights (e.g. 0.999), decay warmed up as timm does; 0 = off"
    )
    ema_eval: bool = Field(True, description="with EMA: validate and select the best checkpoint with the EMA weights")
    clip_grad: float | None = Field(None, gt=0, le=1e6, description="clip the global gradient norm to this")
    accum_steps: int = Field(
        1, ge=1, le=1024, description="gradient accumulation: each step is this many batches (batch x this)"
    )
    patience: int | None = Field(
        None, ge=1, le=10_000, description="early stopping: epochs without a better validation top-1"
    )
    keep_top_k: int = Field(0, ge=0, le=1000, description="also keep the k best epochs' weights in RUN_DIR/top/")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="autocast: auto (bf16 where native, else fp32/fp16), off, bf16 (CPU/CUDA), fp16 (CUDA)"
    )
    channels_last: bool | None = Field(None, description="channels-last memory format; unset: with reduced precision")
    compile: bool = Field(False, description="torch.compile the model (compiles first; gradients within ~1% of eager)")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms")
    limit_batches: int | None = Field(None, ge=1, description="at most this many steps per epoch")
    cache_features: bool = Field(True, description="frozen backbone, no augmentation: compute features once")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for every random draw")
    sync_bn: bool = Field(False, description="torchrun: BatchNorm statistics over the global batch")
    dist_timeout: float = Field(600.0, gt=0, le=86_400, description="torchrun: seconds before a stuck rank fails")
    tensorboard: bool | None = Field(
        None, description="TensorBoard event files in RUN_DIR/tensorboard; unset: on when tensorboard is installed"
    )
    log_interval: int = Field(
        50, ge=0, le=1_000_000, description="without a terminal: a log line every N steps; 0 = off"
    )
    checkpoint_every: str = Field(
        "5m", description="also save a resumable state inside epochs: every N steps (200) or minutes (5m); 0 = off"
    )
    runs_dir: Path = Field(Path("runs"), description="where run directories are made")
    name: str | None = Field(None, description="run directory name (auto-numbered); default train")

    @field_validator("checkpoint_every")
    @classmethod
    def _valid_every(cls, v: str) -> str:
        parse_checkpoint_every(v)
        return v.strip()


class EvalSettings(_Section):
    """Evaluation of a checkpoint."""

    split: Literal["test", "val"] = "test"
    batch_size: int = Field(512, ge=1, le=65_536)
    tta: bool = Field(False, description="average the predictions of the image and its mirror")


Variant = Literal["eager", "trace", "script", "frozen", "compile", "aoti", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "fp16"]
ExportPrecision = Literal["fp32", "bf16", "fp16", "int8"]
Layout = Literal["nchw", "nhwc"]


class ExportSettings(_Section):
    """Archives (TorchScript, AOTInductor, ONNX) and their verification."""

    methods: list[Literal["trace", "script", "frozen", "aoti", "onnx", "all"]] = Field(
        ["trace", "script"], min_length=1, description="all: every kind that can be made here for the dtype"
    )
    dtype: ExportPrecision = Field("fp32", description="weights and compute dtype inside the archive")
    channels_last: bool = False
    example_batch: int = Field(2, ge=1, le=4096, description="batch size of the tracing example")
    verify_batch: int = Field(5, ge=1, le=4096, description="batch size of the verification (must differ)")
    atol: float | None = Field(None, gt=0, description="max |diff| allowed, relative to the largest logit")
    min_agreement: float | None = Field(None, ge=0, le=1, description="top-1 agreement required")
    calibration_images: int = Field(
        1024, ge=1, le=100_000, description="int8: training images that set the activation ranges"
    )
    max_accuracy_drop: float = Field(
        1.0, ge=0, le=100, description="int8: top-1 points it may lose on the held-out images"
    )
    weight_rounding: Literal["nearest", "gptq"] = Field(
        "nearest", description="int8: weights rounded to nearest, or by GPTQ (error-compensating)"
    )
    max_float_layers: int = Field(
        8, ge=0, le=64, description="int8: layers that may stay in float to bring the drop within budget; 0 = refuse"
    )
    out_dir: Path = Field(Path("exports"), description="where archives are written")

    @model_validator(mode="after")
    def _method_fits_dtype(self) -> ExportSettings:
        named = set(self.methods) - {"all"}
        if self.dtype == "int8" and named - {"onnx"}:
            raise ValueError(
                "int8 archives are ONNX files (static QDQ quantization by ONNX Runtime): use "
                f"--method onnx, not {', '.join(sorted(named - {'onnx'}))}"
            )
        if "onnx" in named and self.dtype in ("bf16", "fp16"):
            raise ValueError(
                f"ONNX archives are fp32 or int8, not {self.dtype}: ONNX Runtime's CPU provider has no "
                "bf16/fp16 convolutions (OpenVINO runs an fp32 ONNX file in bf16 by itself)"
            )
        if self.channels_last and (self.dtype == "int8" or "onnx" in named):
            raise ValueError(
                "--channels-last applies to TorchScript and aoti archives; ONNX runtimes pick the layout themselves"
            )
        return self


class BenchSettings(_Section):
    """Benchmark variants, precisions, layouts, batch sizes and repetitions."""

    variants: list[Variant] = Field(["eager", "trace", "script", "frozen", "compile"], min_length=1)
    dtypes: list[ExportPrecision] = Field(["fp32"], min_length=1, description="int8: the ONNX runtimes only")
    layouts: list[Layout] = Field(["nchw"], min_length=1)
    batch_sizes: list[Annotated[int, Field(ge=1, le=65_536)]] = Field([1, 64], min_length=1)
    warmup: int = Field(10, ge=0, le=10_000, description="untimed calls after the cold start")
    iters: int = Field(50, ge=3, le=100_000, description="timed calls")
    peak_matmul: int = Field(
        2048, ge=0, le=16_384, description="n of the n x n matmul per dtype that measures the device's limit; 0: skip"
    )


class Settings(BaseSettings):
    """The resolved settings of one command."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    device: Device = Field("auto", description="auto picks cuda, then mps, then cpu")
    onnx_runtime: Literal["onnxruntime", "openvino"] = Field(
        "onnxruntime", description="what runs .onnx archives in eval and predict, and verifies them in export"
    )
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    bench: BenchSettings = Field(default_factory=BenchSettings)

    @model_validator(mode="after")
    def _classes_match_dataset(self) -> Settings:
        allowed = ALLOWED_NUM_CLASSES[self.data.dataset]
        if self.model.num_classes is not None and allowed is not None and self.model.num_classes not in allowed:
            raise ValueError(
                f"num_classes {self.model.num_classes} does not fit dataset {self.data.dataset}, "
                f"which has {' or '.join(map(str, allowed))} classes"
            )
        t = self.train
        if not t.ema_eval and t.ema_decay == 0:
            raise ValueError("--no-ema-eval applies with --ema-decay only")
        if t.milestones is not None and t.schedule != "multistep":
            raise ValueError("--milestones applies to --schedule multistep only")
        if t.step_size is not None and t.schedule != "step":
            raise ValueError("--step-size applies to --schedule step only")
        if t.milestones is not None and (sorted(t.milestones) != t.milestones or min(t.milestones, default=1) < 1):
            raise ValueError("--milestones must be increasing epochs, each at least 1")
        return self

    @property
    def num_classes(self) -> int:
        """The head size: ``model.num_classes`` or the dataset's own (an image folder's: see
        :func:`cifar_resnet_cli.data.loading.settings_for_data`)."""
        if self.model.num_classes is None and self.data.dataset not in DEFAULT_NUM_CLASSES:
            raise ConfigError(
                "--dataset folder: the number of classes comes from the folder's class folders",
                "pass --num-classes N (the number of class folders in DIR/train/)",
            )
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
        if _init_only.get():
            return (init_settings,)
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


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_settings(
    config: Path | None = None, overrides: dict[str, Any] | None = None, *, base: dict[str, Any] | None = None
) -> Settings:
    """Resolve the settings: ``overrides`` (the flags) > environment > TOML > defaults.

    Without ``config``, ``./cifar-resnet.toml`` is read when it exists. With ``base`` (the saved
    settings of a run being resumed), the result is ``overrides`` over ``base`` alone: the
    environment and TOML files are not consulted.
    """
    overrides = overrides or {}
    toml_file = None
    if base is None:
        if config is not None and not config.is_file():
            raise ConfigError(f"config file {config} does not exist", "pass an existing TOML file to --config")
        toml_file = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        if toml_file is not None:
            try:
                tomllib.loads(toml_file.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"config file {toml_file} is not valid TOML: {exc}", "fix the file") from None
    tokens = (_toml_file.set(toml_file), _init_only.set(base is not None))
    try:
        return Settings(**(_deep_merge(base, overrides) if base is not None else overrides))
    except ValidationError as exc:
        raise _invalid(exc, overrides, toml_file) from None
    finally:
        _toml_file.reset(tokens[0])
        _init_only.reset(tokens[1])


def _invalid(exc: ValidationError, overrides: dict[str, Any], toml_file: Path | None) -> InvalidSettingError:
    """The first validation error as one message naming the option, its origin and the rule."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if isinstance(p, str))  # list items: name the list
    if not loc:  # a cross-field check (model validator)
        return InvalidSettingError(f"invalid settings: {err['msg'].removeprefix('Value error, ')}")
    where = _origin(loc, overrides, toml_file)
    flag, env, toml = option_names(loc)
    if err["type"] == "extra_forbidden":
        return InvalidSettingError(f"unknown setting {'.'.join(map(str, loc))} {where}".strip(), option=flag)
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    message = f"{flag}{shown} {where}: {err['msg']} (set with {flag}, {env} or {toml} in TOML)"
    return InvalidSettingError(message.replace("  ", " "), option=flag)


class SettingValue(BaseModel):
    section: str | None  # None for top-level settings (device)
    key: str
    value: Any
    origin: str  # "default", "environment (NAME)", "file PATH", or "command line"


class ConfigResult(BaseModel):
    """The effective settings, each with where its value came from (``cifar-resnet config``)."""

    config_file: str | None
    settings: list[SettingValue]


def describe_settings(config: Path | None = None) -> ConfigResult:
    """Resolve the settings as every command does (without flags) and say where each value came from."""
    settings = load_settings(config)
    toml_file = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    in_file = tomllib.loads(toml_file.read_text(encoding="utf-8")) if toml_file is not None else {}
    env = {k.upper() for k in os.environ}
    rows = []
    for name, value in settings.model_dump(mode="json").items():
        section, items = (name, value.items()) if isinstance(value, dict) else (None, [(name, value)])
        for key, v in items:
            loc = (section, key) if section else (key,)
            env_name = option_names(loc)[1]
            if env_name in env:
                origin = f"environment ({env_name})"
            elif (in_file.get(section, {}) if section else in_file).get(key) is not None:
                origin = f"file {toml_file}"
            else:
                origin = "default"
            rows.append(SettingValue(section=section, key=key, value=v, origin=origin))
    return ConfigResult(config_file=str(toml_file) if toml_file else None, settings=rows)
