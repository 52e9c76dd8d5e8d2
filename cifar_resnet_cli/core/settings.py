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
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError
from .formats import ExportMethod, method_problem
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


def _cli(flag: str | None = None, *aliases: str) -> dict[str, Any]:
    """How a field shows on the command line when its flag is not its name: ``--out`` for ``out_dir``."""
    return {"flag": flag, "aliases": aliases} if flag else {"aliases": aliases}


class DataSettings(_Section):
    """Which dataset, where it lives, and how the validation split is held out."""

    dataset: Dataset = Field(
        "cifar10",
        description="Dataset; sets the classes and class names. synthetic: an offline stand-in; folder: your "
        "images in --data-dir DIR/train/<class>/ (docs/folders.md).",
    )
    data_dir: Path | None = Field(
        None,
        description="Dataset folder; for --dataset folder, the DIR with train/. Unset: ~/.cache/cifar-resnet/data.",
    )
    download: bool = Field(True, description="Download CIFAR through torchvision when it is missing.")
    val_size: int = Field(
        5000,
        ge=0,
        le=1_000_000,
        description="Training images held out for validation; a folder's val/ replaces it, and a folder "
        "without val/ holds out 10% of train/ unless this is set.",
    )
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the train/validation split.")
    val_split: Literal["stratified", "random"] = Field(
        "stratified",
        description="How validation is drawn from train: stratified (every class in proportion, so a small "
        "class cannot vanish from it) or random (how runs before 0.2 drew it; they resume with it).",
    )
    synthetic_size: int = Field(10_000, ge=100, le=200_000, description="Synthetic training images.")


class ModelSettings(_Section):
    """The shape of the ResNet34."""

    stem: Literal["imagenet", "cifar"] = Field(
        "imagenet", description="imagenet: torchvision's 7x7/2 conv + max pool; cifar: 3x3/1 conv, no pool."
    )
    num_classes: int | None = Field(
        None, ge=2, le=100_000, description="Head size: 10 or 100, any for folder. Unset: from --dataset."
    )
    image_size: int = Field(32, ge=16, le=512, description="Input height and width in pixels.")
    conv1_init: Literal["adapt", "reinit"] = Field(
        "adapt",
        description="cifar stem: resample the pretrained 7x7 conv1 to 3x3 (adapt) or re-initialise it (reinit).",
    )


class TrainSettings(_Section):
    """Training: initialisation, mode, optimisation, augmentation, speed, output."""

    init: str = Field(
        "imagenet",
        description="imagenet (ImageNet weights, ported on the fly and cached), none (from scratch, residual "
        "branches zeroed), or FILE.safetensors from `port`.",
    )
    freeze_backbone: bool = Field(
        False,
        description="Feature extraction (only fc trains, BatchNorm statistics fixed); off: fine-tune every layer.",
    )
    backbone_lr_scale: float = Field(1.0, gt=0, le=10, description="Backbone learning rate = lr x this.")
    epochs: int = Field(10, ge=1, le=10_000, description="Epochs in all (raise it on --resume to train longer).")
    batch_size: int = Field(
        128,
        ge=1,
        le=65_536,
        description="Images per optimisation step, all processes together: under torchrun each of N "
        "processes takes 1/N of it.",
        json_schema_extra=_cli(None, "-b"),
    )
    lr: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = Field(
        0.05, description="Peak learning rate, or auto: the range test (lr-find) first, its suggestion taken."
    )
    lr_find_steps: int = Field(
        200, ge=10, le=100_000, description="Steps of the learning-rate range test (lr-find, and --lr auto)."
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="SGD with momentum, or AdamW.", json_schema_extra=_cli(None, "--opt")
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum / AdamW beta1.")
    nesterov: bool = Field(True, description="Nesterov momentum (SGD).")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="Not applied to BatchNorm and biases.")
    schedule: Literal["cosine", "onecycle", "step", "multistep", "constant"] = Field(
        "cosine", description="Learning-rate schedule, stepped per iteration.", json_schema_extra=_cli(None, "--sched")
    )
    warmup_epochs: float = Field(0.0, ge=0, le=1000, description="Linear warm-up, stepped per iteration.")
    step_size: int | None = Field(
        None, ge=1, description="step schedule: epochs per decay. Unset: a third of the epochs."
    )
    milestones: list[int] | None = Field(
        None, description="multistep schedule: epochs, e.g. 30,60,80. Unset: at 50% and 75%."
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step/multistep decay factor.")
    augment: bool = Field(True, description="Random crop (padding 1/8 of the side: 4 px at 32) and horizontal flip.")
    cutmix: float = Field(0.0, ge=0, le=4, description="CutMix Beta alpha, e.g. 1.0; 0 = off.")
    mixup: float = Field(0.0, ge=0, le=4, description="MixUp Beta alpha, e.g. 0.2; 0 = off.")
    mix_prob: float = Field(1.0, ge=0, le=1, description="Probability that a batch is mixed.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing, e.g. 0.1.")
    class_weights: Literal["none", "balanced"] = Field(
        "none",
        description="Loss weights per class: balanced = n / (classes x n_class) from the training split's counts "
        "(scikit-learn's rule), applied to every class a mixed or smoothed target holds.",
    )
    sampler: Literal["uniform", "balanced"] = Field(
        "uniform",
        description="Which images an epoch draws: uniform (each once), or balanced (as many as the training "
        "split holds, drawn with replacement so that every class is equally likely).",
    )
    select_by: Literal["top1", "balanced"] = Field(
        "top1",
        description="Validation score that picks best.safetensors (and --patience, --keep-top-k): top-1, or "
        "balanced accuracy (the mean per-class recall).",
    )
    auto_augment: Literal["none", "trivialaugment", "randaugment"] = Field(
        "none", description="Per-image TrivialAugment (wide) or RandAugment (2 ops, magnitude 9), on the device."
    )
    random_erase: float = Field(
        0.0, ge=0, le=1, description="Probability of erasing a random box of each image, e.g. 0.25."
    )
    ema_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Keep an EMA of the weights, e.g. 0.999 (decay warmed up as timm does); 0 = off.",
    )
    ema_eval: bool = Field(
        True, description="With --ema-decay: validate and pick best.safetensors with the EMA weights."
    )
    clip_grad: float | None = Field(
        None, gt=0, le=1e6, description="Clip the global gradient norm to this, e.g. 1.0. Unset: no clipping."
    )
    accum_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="Gradient accumulation: one step = this many batches of --batch-size; the learning rate "
        "applies to their sum.",
    )
    patience: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Stop after this many epochs without a better validation top-1. Unset: never.",
    )
    keep_top_k: int = Field(0, ge=0, le=1000, description="Also keep the k best epochs' weights in RUN_DIR/top/.")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast: auto = on a CPU with AMX or AVX-512 bf16, bf16 if a few timed steps of this run "
        "show it 5% faster than fp32; bf16 on GPUs that compute it natively, fp16 on older GPUs; else off. "
        "Or bf16, fp16 (CUDA), off.",
    )
    channels_last: bool | None = Field(None, description="NHWC memory format. Unset: on with bf16/fp16, off in fp32.")
    compile: bool = Field(
        False, description="torch.compile the model: compiles first; gradients within ~1% of eager's."
    )
    deterministic: bool = Field(False, description="Deterministic algorithms only (slower).")
    limit_batches: int | None = Field(None, ge=1, description="At most this many steps per epoch.")
    cache_features: bool = Field(True, description="Frozen backbone without augmentation: compute the features once.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for every random draw.")
    sync_bn: bool = Field(False, description="torchrun: BatchNorm statistics over the global batch.")
    dist_timeout: float = Field(600.0, gt=0, le=86_400, description="torchrun: seconds before a stuck rank fails.")
    tensorboard: bool | None = Field(
        None,
        description="TensorBoard event files in RUN_DIR/tensorboard (tensorboard --logdir runs). Unset: on when "
        "the tensorboard package is installed.",
    )
    log_interval: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="When stderr is not a terminal (a log file, a batch job): a plain progress line every N "
        "steps; 0 = epoch lines only.",
    )
    checkpoint_every: str = Field(
        "5m",
        description="Also save a resumable state inside epochs: every N steps (200) or minutes (5m); 0 = at "
        "epoch ends only. Bounds what a kill -9 or power cut can lose.",
    )
    runs_dir: Path = Field(Path("runs"), description="Where run directories are made.")
    name: str | None = Field(None, description="Run directory name, auto-numbered. Unset: train.")

    @field_validator("checkpoint_every")
    @classmethod
    def _valid_every(cls, v: str) -> str:
        parse_checkpoint_every(v)
        return v.strip()


class EvalSettings(_Section):
    """Evaluation of a checkpoint."""

    split: Literal["test", "val"] = Field(
        "test", description="test, or the validation split the checkpoint was selected on."
    )
    batch_size: int = Field(512, ge=1, le=65_536, description="Images per batch.", json_schema_extra=_cli(None, "-b"))
    tta: bool = Field(False, description="Average the predictions of the image and its mirror.")


Variant = Literal["eager", "trace", "script", "frozen", "compile", "aoti", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "fp16"]
ExportPrecision = Literal["fp32", "bf16", "fp16", "int8"]
Layout = Literal["nchw", "nhwc"]


class ExportSettings(_Section):
    """Archives (TorchScript, AOTInductor, ONNX) and their verification."""

    methods: list[ExportMethod] = Field(
        ["trace", "script"],
        min_length=1,
        description="trace, script, frozen (TorchScript; frozen = scripted + torch.jit.freeze + "
        "optimize_for_inference), aoti (torch.export + AOTInductor .pt2), onnx, or all (every kind that can be "
        "made here for the dtype); comma-separated or repeated.",
        json_schema_extra=_cli("--method"),
    )
    dtype: ExportPrecision = Field(
        "fp32",
        description="Weights and compute inside the archive; input stays float32. int8: ONNX only, statically "
        "quantized on training images and scored on the validation split.",
    )
    channels_last: bool = Field(False, description="NHWC inside TorchScript and aoti archives.")
    example_batch: int = Field(2, ge=1, le=4096, description="Tracing example batch size.")
    verify_batch: int = Field(5, ge=1, le=4096, description="Verification batch size, not the example's.")
    atol: float | None = Field(
        None,
        gt=0,
        description="Allowed max |diff| against eager, relative to the largest logit. Unset: 1e-4 fp32, 5e-2 "
        "bf16/fp16; int8: 0.1, only to pick the images whose top-1 must agree.",
    )
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Required top-1 agreement with eager. Unset: 1.0 fp32, 0.9 bf16/fp16, 0.95 int8.",
    )
    calibration_images: int = Field(
        1024, ge=1, le=100_000, description="int8: training images that set the activation ranges."
    )
    max_accuracy_drop: float = Field(
        1.0,
        ge=0,
        le=100,
        description="int8: top-1 points the archive may lose against fp32 on the held-out images, else nothing "
        "is written.",
    )
    weight_rounding: Literal["nearest", "gptq"] = Field(
        "nearest",
        description="int8: nearest, or gptq (each weight's rounding error compensated by the weights not yet "
        "rounded, on the calibration images; slower, and within the noise of nearest on our models).",
    )
    max_float_layers: int = Field(
        8,
        ge=0,
        le=64,
        description="int8: past the drop budget, keep at most this many of the most sensitive layers in float "
        "(ranked on part of the held-out images, the drop reported on the rest); 0 refuses instead.",
    )
    out_dir: Path = Field(
        Path("exports"),
        description="Folder for the archives, made when missing.",
        json_schema_extra=_cli("--out", "-o", "--output"),
    )

    @model_validator(mode="after")
    def _method_fits_dtype(self) -> ExportSettings:
        problem = method_problem(list(self.methods), self.dtype, self.channels_last)
        if problem:
            raise ValueError(problem)
        return self


class BenchSettings(_Section):
    """Benchmark variants, precisions, layouts, batch sizes and repetitions."""

    variants: list[Variant] = Field(
        ["eager", "trace", "script", "frozen", "compile"],
        min_length=1,
        description="What to time: eager, trace, script, frozen, compile; aoti (AOTInductor .pt2), onnxruntime, "
        "openvino (an ONNX file; pip extras onnx, openvino).",
    )
    dtypes: list[ExportPrecision] = Field(
        ["fp32"], min_length=1, description="fp32, bf16, fp16 (CUDA), int8 (onnxruntime, openvino)."
    )
    layouts: list[Layout] = Field(["nchw"], min_length=1, description="nchw, nhwc (channels-last).")
    batch_sizes: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(
        [1, 64], min_length=1, description="Batch sizes to time."
    )
    warmup: int = Field(10, ge=0, le=10_000, description="Untimed calls after the first.")
    iters: int = Field(50, ge=3, le=100_000, description="Timed calls per variant.")
    peak_matmul: int = Field(
        2048,
        ge=0,
        le=16_384,
        description="n of the n x n matmul per dtype that measures the device's limit; 0 skips.",
    )


class PredictSettings(_Section):
    """Classifying the user's own images."""

    top_k: int = Field(3, ge=1, le=1000, description="Classes shown per image.")
    resize: Literal["crop", "stretch"] = Field(
        "crop", description="crop: keep the aspect ratio and crop the centre; stretch: resize both sides."
    )
    batch_size: int = Field(
        64, ge=1, le=65_536, description="Images per forward pass.", json_schema_extra=_cli(None, "-b")
    )


class Settings(BaseSettings):
    """The resolved settings of one command."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    device: Device = Field("auto", description="auto picks cuda, then mps, then cpu.")
    onnx_runtime: Literal["onnxruntime", "openvino"] = Field(
        "onnxruntime",
        description="What runs .onnx archives (eval, predict) and verifies and scores them (export): onnxruntime, "
        "or openvino (pip extra: openvino; the runtime you deploy with: their int8 kernels differ).",
    )
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    bench: BenchSettings = Field(default_factory=BenchSettings)
    predict: PredictSettings = Field(default_factory=PredictSettings)

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


# The help panel each section's options are listed under.
PANELS = {
    "data": "Data",
    "model": "Model",
    "train": "Training",
    "eval": "Evaluation",
    "export": "Export",
    "bench": "Benchmark",
    "predict": "Prediction",
}


def setting_field(loc: tuple[str | int, ...]) -> FieldInfo:
    """The pydantic field of a setting, e.g. ``("train", "lr")``."""
    model: Any = Settings
    for part in loc[:-1]:
        model = model.model_fields[str(part)].annotation
    return model.model_fields[str(loc[-1])]


def option_names(loc: tuple[str | int, ...]) -> tuple[str, str, str]:
    """The flag, environment variable and TOML key of a setting, e.g. ``--image-size``: the flag is
    the field's name unless the field declares another (``json_schema_extra={"flag": ...}``)."""
    try:
        extra = setting_field(loc).json_schema_extra
    except (KeyError, AttributeError):
        extra = None
    declared = extra.get("flag") if isinstance(extra, dict) else None
    flag = str(declared) if declared else f"--{str(loc[-1]).replace('_', '-')}"
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


def _field_loc(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    """The setting an error is about: list indices and union branches (``constrained-float``) dropped."""
    out: list[str] = []
    model: Any = Settings
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            if out and not isinstance(part, str):
                continue
            if out:
                break
            continue
        out.append(part)
        model = fields[part].annotation
    return tuple(out)


def _invalid(exc: ValidationError, overrides: dict[str, Any], toml_file: Path | None) -> InvalidSettingError:
    """The first validation error as one message naming the option, its origin and the rule."""
    err = exc.errors()[0]
    raw = tuple(p for p in err["loc"] if isinstance(p, str))
    loc = raw if err["type"] == "extra_forbidden" else _field_loc(err["loc"])
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
