"""The Typer app: parse options, build Settings, call one core function, render its result.

No torch logic lives here. Core modules are imported inside the commands, so that ``--help`` and
``--version`` answer without importing torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
import typer.core
from pydantic import BaseModel

from .. import __version__
from ..core.errors import CifarResnetError


class _Command(typer.core.TyperCommand):
    """Usage lines in the usual notation: CHECKPOINT required, [CHECKPOINT] optional (Typer writes a
    required argument as {CHECKPOINT})."""

    def collect_usage_pieces(self, ctx):  # click's hook for the usage line
        return [re.sub(r"^\{(.*)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


app = typer.Typer(
    name="cifar-resnet",
    help="Transfer learning with a torchvision-exact ResNet34 on CIFAR-10 and CIFAR-100.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

R = TypeVar("R", bound=BaseModel)


class DeviceName(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DatasetName(StrEnum):
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    synthetic = "synthetic"
    folder = "folder"


class StemName(StrEnum):
    imagenet = "imagenet"
    cifar = "cifar"


class Conv1Init(StrEnum):
    adapt = "adapt"
    reinit = "reinit"


class TensorListing(StrEnum):
    diff = "diff"
    all = "all"


# Shared options, defined once. Every setting defaults to None: only flags the user gives
# override the environment, the TOML file and the defaults.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DeviceOpt = Annotated[
    Optional[DeviceName], typer.Option("--device", help="auto picks cuda, then mps, then cpu. (default: auto)")
]


class OnnxRuntimeName(StrEnum):
    onnxruntime = "onnxruntime"
    openvino = "openvino"


OnnxRuntimeOpt = Annotated[
    Optional[OnnxRuntimeName],
    typer.Option(
        "--onnx-runtime",
        help="What runs an .onnx archive: onnxruntime, or openvino (pip extra: openvino). (default: onnxruntime)",
    ),
]
DatasetOpt = Annotated[
    Optional[DatasetName],
    typer.Option(
        "--dataset",
        help="Dataset the model is for; sets classes and class names. folder: your images in "
        "--data-dir DIR/train/<class>/ (see docs/folders.md). (default: cifar10)",
    ),
]
StemOpt = Annotated[
    Optional[StemName],
    typer.Option(
        "--stem", help="imagenet: torchvision's 7x7/2 conv + max pool; cifar: 3x3/1 conv, no pool. (default: imagenet)"
    ),
]
NumClassesOpt = Annotated[
    Optional[int],
    typer.Option("--num-classes", help="Head size: 10 or 100, any for folder. (default: from --dataset)"),
]
ImageSizeOpt = Annotated[
    Optional[int], typer.Option("--image-size", help="Input size in pixels, 16-512. (default: 32)")
]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed for every random draw. (default: 0)")]
# Accepted before the command (cifar-resnet --config F train) and after it (cifar-resnet train --config F).
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="TOML settings file. (default: ./cifar-resnet.toml when it exists)"),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of known errors (or CIFAR_RESNET_DEBUG=1).")]


@dataclass
class State:
    config: Path | None
    debug: bool


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cifar-resnet {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Transfer learning with a torchvision-exact ResNet34 on CIFAR-10 and CIFAR-100.

    Settings come from flags > CIFAR_RESNET_<SECTION>__<FIELD> environment variables > --config
    FILE.toml (or ./cifar-resnet.toml) > defaults. Results go to stdout (a table, or JSON with
    --json); progress, warnings and errors go to stderr.
    """
    env_debug = os.environ.get("CIFAR_RESNET_DEBUG", "").lower() in ("1", "true", "yes")
    ctx.obj = State(config=config, debug=debug or env_debug)


def _state(ctx: typer.Context) -> State:
    """--config and --debug, given before the command or after it (after wins for --config)."""
    state: State = ctx.obj
    return State(config=ctx.params.get("config") or state.config, debug=bool(ctx.params.get("debug")) or state.debug)


def _overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """``{"model.stem": "cifar", "device": None}`` -> ``{"model": {"stem": "cifar"}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        if isinstance(value, Enum):
            value = value.value
        *sections, field = dotted.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[field] = value
    return nested


def _run(
    ctx: typer.Context,
    flags: dict[str, Any],
    core: Callable[[Any], R],
    *,
    settings_factory: Callable[[dict[str, Any]], Any] | None = None,
) -> R:
    """Resolve the settings and call ``core``; known errors become one line and exit 1."""
    from ..core.settings import InvalidSettingError, load_settings

    state: State = _state(ctx)
    try:
        overrides = _overrides(flags)
        settings = settings_factory(overrides) if settings_factory else load_settings(state.config, overrides)
        return core(settings)
    except InvalidSettingError as exc:
        raise typer.BadParameter(exc.message, ctx=ctx) from None
    except CifarResnetError as exc:
        _fail(ctx, exc)
    except KeyboardInterrupt:
        from . import render as report

        report.print_error(CifarResnetError("interrupted"))
        raise typer.Exit(130) from None
    except OSError as exc:  # a write we did not foresee failed (full disk, read-only): still one line
        from ..core.fileio import output_error

        _fail(ctx, output_error(exc, Path(exc.filename or "an output file")))


def _fail(ctx: typer.Context, exc: CifarResnetError) -> None:
    from . import render as report

    report.print_error(exc, debug=_state(ctx).debug)
    raise typer.Exit(exc.exit_code)


@app.command("inspect", cls=_Command)
def inspect_cmd(
    ctx: typer.Context,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    num_classes: NumClassesOpt = None,
    image_size: ImageSizeOpt = None,
    freeze_backbone: Annotated[
        Optional[bool],
        typer.Option(
            "--freeze-backbone/--no-freeze-backbone",
            help="Show the model as feature extraction trains it (only fc trainable).",
        ),
    ] = None,
    depth: Annotated[
        int,
        typer.Option(
            "--depth",
            min=1,
            max=3,
            show_default=False,
            help="Table rows: 1 stages, 2 blocks, 3 every layer. (default: 2)",
        ),
    ] = 2,
    tensors: Annotated[
        TensorListing,
        typer.Option(
            "--tensors",
            show_default=False,
            help="Tensor comparison: list only differing names, or all of them. (default: diff)",
        ),
    ] = TensorListing.diff,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Print the layer table of our ResNet34 and prove it matches torchvision's.

    Compares every parameter and buffer name and shape with torchvision.models.resnet34, then loads
    the same random weights into both and compares each stage's output and the logits in eval mode.
    Exits 1 if any difference exceeds 1e-6.

    Examples:

      cifar-resnet inspect

      cifar-resnet inspect --stem cifar --depth 3

      cifar-resnet inspect --json | jq .max_abs_diff
    """
    from ..core.errors import VerificationError
    from ..model.inspection import inspect_model
    from . import render as report

    flags = {
        "model.stem": stem,
        "data.dataset": dataset,
        "model.num_classes": num_classes,
        "model.image_size": image_size,
        "train.freeze_backbone": freeze_backbone,
        "train.seed": seed,
        "device": device,
    }
    result = _run(ctx, flags, lambda s: inspect_model(s, depth=depth))
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_inspect(result, tensors=tensors.value)
    if not result.passed:
        _fail(
            ctx,
            VerificationError(
                f"our ResNet34 differs from torchvision's by {result.max_abs_diff:.3g} "
                f"(tolerance {result.tolerance:g})",
                "this is a bug in model.py: the two must compute the same numbers",
            ),
        )


@app.command("port", cls=_Command)
def port_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", "--output", help="The .safetensors file to write.")],
    weights: Annotated[
        Optional[str],
        typer.Option(
            "--weights",
            help="torchvision weights to download (IMAGENET1K_V1), or 'none' for random "
            "weights (tests and demos). (default: IMAGENET1K_V1)",
        ),
    ] = None,
    from_file: Annotated[
        Optional[Path],
        typer.Option(
            "--from", help="A torchvision ResNet34 state dict (.pth), read with weights_only=True. Works offline."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    dataset: DatasetOpt = None,
    num_classes: NumClassesOpt = None,
    stem: StemOpt = None,
    image_size: ImageSizeOpt = None,
    conv1_init: Annotated[
        Optional[Conv1Init],
        typer.Option(
            "--conv1-init",
            help="cifar stem: resample the pretrained 7x7 conv1 to 3x3 (adapt) or "
            "re-initialise it (reinit). (default: adapt)",
        ),
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Port ImageNet-pretrained torchvision ResNet34 weights to a verified .safetensors file.

    The head is replaced for the dataset's classes; with --stem cifar, conv1 is adapted or
    re-initialised. The backbone is checked against torchvision holding the same source weights,
    and the file is read back before it is kept. Nothing is written if a check fails.

    Examples:

      cifar-resnet port --out resnet34-cifar10.safetensors

      cifar-resnet port --from resnet34.pth --stem cifar --dataset cifar100 --out w.safetensors

      cifar-resnet port --weights none --dataset synthetic --out random.safetensors
    """
    from ..model.port import port_weights
    from . import render as report

    if weights is not None and from_file is not None:
        raise typer.BadParameter(
            "give either --weights or --from, not both", ctx=ctx, param_hint="'--weights' / '--from'"
        )
    if weights is None and from_file is None:
        weights = "IMAGENET1K_V1"
    flags = {
        "data.dataset": dataset,
        "model.num_classes": num_classes,
        "model.stem": stem,
        "model.image_size": image_size,
        "model.conv1_init": conv1_init,
        "train.seed": seed,
        "device": device,
    }
    result = _run(ctx, flags, lambda s: port_weights(s, out=out, weights=weights, from_file=from_file, force=force))
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_port(result)


class InitChoice(StrEnum):
    imagenet = "imagenet"
    none = "none"


class Optim(StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(StrEnum):
    cosine = "cosine"
    onecycle = "onecycle"
    step = "step"
    multistep = "multistep"
    constant = "constant"


class Amp(StrEnum):
    auto = "auto"
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


class AutoAugment(StrEnum):
    none = "none"
    trivialaugment = "trivialaugment"
    randaugment = "randaugment"


class Split(StrEnum):
    test = "test"
    val = "val"


DataDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        help="Dataset folder; for --dataset folder, the DIR with train/. (default: ~/.cache/cifar-resnet/data)",
    ),
]
DownloadOpt = Annotated[
    Optional[bool],
    typer.Option("--download/--no-download", help="Download CIFAR through torchvision if missing. (default: on)"),
]
ValSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--val-size",
        help="Training images held out for validation; a folder's val/ replaces it. "
        "(default: 5000; folder without val/: 10% of train)",
    ),
]


def _opt(flag: str, help: str, *aliases: str, **kw: Any) -> Any:
    """An option with its help; ``aliases`` are the other spellings people know (``-b``, ``--opt``)."""
    return typer.Option(flag, *aliases, help=help, **kw)


@app.command("train", cls=_Command)
def train_cmd(
    ctx: typer.Context,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = None,
    val_size: ValSizeOpt = None,
    synthetic_size: Annotated[
        Optional[int], _opt("--synthetic-size", "Synthetic training images. (default: 10000)")
    ] = None,
    init: Annotated[
        Optional[str],
        _opt(
            "--init",
            "imagenet (ImageNet weights, ported on the fly and cached), none (from scratch), or "
            "FILE.safetensors from `port`. (default: imagenet)",
        ),
    ] = None,
    stem: StemOpt = None,
    image_size: ImageSizeOpt = None,
    freeze_backbone: Annotated[
        Optional[bool],
        _opt(
            "--freeze-backbone/--no-freeze-backbone",
            "Feature extraction (only fc trains, BatchNorm statistics fixed) or "
            "fine-tuning of every layer (--no-freeze-backbone). (default: fine-tuning)",
        ),
    ] = None,
    backbone_lr_scale: Annotated[
        Optional[float], _opt("--backbone-lr-scale", "Backbone learning rate = lr x this. (default: 1.0)")
    ] = None,
    epochs: Annotated[
        Optional[int], _opt("--epochs", "Epochs in all (raise it on --resume to train longer). (default: 10)")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        _opt(
            "--batch-size",
            "Images per optimisation step, all processes together: under torchrun "
            "each of N processes takes 1/N of it. (default: 128)",
            "-b",
        ),
    ] = None,
    lr: Annotated[Optional[float], _opt("--lr", "Peak learning rate. (default: 0.05)")] = None,
    optimizer: Annotated[
        Optional[Optim], _opt("--optimizer", "SGD with momentum, or AdamW. (default: sgd)", "--opt")
    ] = None,
    momentum: Annotated[Optional[float], _opt("--momentum", "SGD momentum / AdamW beta1. (default: 0.9)")] = None,
    nesterov: Annotated[Optional[bool], _opt("--nesterov/--no-nesterov", "Nesterov momentum. (default: on)")] = None,
    weight_decay: Annotated[
        Optional[float], _opt("--weight-decay", "Not applied to BatchNorm and biases. (default: 5e-4)")
    ] = None,
    schedule: Annotated[
        Optional[Schedule],
        _opt("--schedule", "Learning-rate schedule, stepped per iteration. (default: cosine)", "--sched"),
    ] = None,
    warmup_epochs: Annotated[Optional[float], _opt("--warmup-epochs", "Linear warm-up. (default: 0)")] = None,
    step_size: Annotated[Optional[int], _opt("--step-size", "step: epochs per decay. (default: epochs/3)")] = None,
    milestones: Annotated[
        Optional[str], _opt("--milestones", "multistep: epochs, e.g. 30,60,80. (default: 50%,75%)")
    ] = None,
    gamma: Annotated[Optional[float], _opt("--gamma", "step/multistep decay factor. (default: 0.1)")] = None,
    augment: Annotated[
        Optional[bool],
        _opt("--augment/--no-augment", "Random crop (padding 1/8 of the side: 4 px at 32) and flip. (default: on)"),
    ] = None,
    cutmix: Annotated[Optional[float], _opt("--cutmix", "CutMix Beta alpha, e.g. 1.0; 0 = off. (default: 0)")] = None,
    mixup: Annotated[Optional[float], _opt("--mixup", "MixUp Beta alpha, e.g. 0.2; 0 = off. (default: 0)")] = None,
    mix_prob: Annotated[Optional[float], _opt("--mix-prob", "Probability a batch is mixed. (default: 1.0)")] = None,
    label_smoothing: Annotated[Optional[float], _opt("--label-smoothing", "e.g. 0.1. (default: 0)")] = None,
    auto_augment: Annotated[
        Optional[AutoAugment],
        _opt("--auto-augment", "Per-image TrivialAugment (wide) or RandAugment (2 ops, magnitude 9). (default: none)"),
    ] = None,
    random_erase: Annotated[
        Optional[float],
        _opt("--random-erase", "Probability of erasing a random box per image, e.g. 0.25. (default: 0)"),
    ] = None,
    ema_decay: Annotated[
        Optional[float],
        _opt(
            "--ema-decay",
            "Keep an EMA of the weights, e.g. 0.999 (decay warmed up as timm does); 0 = off. (default: 0)",
        ),
    ] = None,
    ema_eval: Annotated[
        Optional[bool],
        _opt(
            "--ema-eval/--no-ema-eval",
            "With --ema-decay: validate and pick best.safetensors with the EMA weights. (default: on)",
        ),
    ] = None,
    clip_grad: Annotated[
        Optional[float], _opt("--clip-grad", "Clip the global gradient norm to this, e.g. 1.0. (default: off)")
    ] = None,
    accum_steps: Annotated[
        Optional[int],
        _opt(
            "--accum-steps",
            "Gradient accumulation: one step = this many batches of --batch-size; the learning "
            "rate applies to their sum. (default: 1)",
        ),
    ] = None,
    patience: Annotated[
        Optional[int],
        _opt("--patience", "Stop after this many epochs without a better validation top-1. (default: off)"),
    ] = None,
    keep_top_k: Annotated[
        Optional[int], _opt("--keep-top-k", "Also keep the k best epochs' weights in RUN_DIR/top/. (default: 0)")
    ] = None,
    amp: Annotated[
        Optional[Amp],
        _opt(
            "--amp",
            "Autocast: auto = on a CPU with AMX or AVX-512 bf16, bf16 if a few timed steps of this run show it "
            "5% faster than fp32; bf16 on GPUs that compute it natively, fp16 on older GPUs; else off. Or bf16, "
            "fp16 (CUDA), off. (default: auto)",
        ),
    ] = None,
    channels_last: Annotated[
        Optional[bool],
        _opt("--channels-last/--no-channels-last", "NHWC memory format. (default: on with bf16/fp16, off in fp32)"),
    ] = None,
    compile: Annotated[
        Optional[bool],
        _opt("--compile/--no-compile", "torch.compile the model: compiles first; gradients within ~1% of eager's."),
    ] = None,
    deterministic: Annotated[
        Optional[bool],
        _opt("--deterministic/--no-deterministic", "Deterministic algorithms only (slower)."),
    ] = None,
    limit_batches: Annotated[Optional[int], _opt("--limit-batches", "At most this many steps per epoch.")] = None,
    cache_features: Annotated[
        Optional[bool],
        _opt(
            "--cache-features/--no-cache-features",
            "Frozen backbone without augmentation: compute features once. (default: on)",
        ),
    ] = None,
    seed: SeedOpt = None,
    sync_bn: Annotated[
        Optional[bool], _opt("--sync-bn/--no-sync-bn", "torchrun: BatchNorm statistics over the global batch.")
    ] = None,
    dist_timeout: Annotated[
        Optional[float], _opt("--dist-timeout", "torchrun: seconds before a stuck rank fails. (default: 600)")
    ] = None,
    tensorboard: Annotated[
        Optional[bool],
        _opt(
            "--tensorboard/--no-tensorboard",
            "TensorBoard event files in RUN_DIR/tensorboard (tensorboard --logdir runs). "
            "(default: on when the tensorboard package is installed)",
        ),
    ] = None,
    log_interval: Annotated[
        Optional[int],
        _opt(
            "--log-interval",
            "When stderr is not a terminal (a log file, a batch job): a plain progress line every N steps; "
            "0 = epoch lines only. (default: 50)",
        ),
    ] = None,
    checkpoint_every: Annotated[
        Optional[str],
        _opt(
            "--checkpoint-every",
            "Also save a resumable state inside epochs: every N steps (200) or minutes (5m); 0 = at epoch ends "
            "only. Bounds what a kill -9 or power cut can lose. (default: 5m)",
        ),
    ] = None,
    runs_dir: Annotated[Optional[Path], _opt("--runs-dir", "Where run directories go. (default: runs)")] = None,
    name: Annotated[Optional[str], _opt("--name", "Run directory name, auto-numbered. (default: train)")] = None,
    resume: Annotated[
        Optional[Path],
        _opt(
            "--resume",
            "Continue RUN_DIR exactly where it stopped; only --epochs, --device, --checkpoint-every, "
            "--log-interval and --tensorboard may change.",
        ),
    ] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Train the ResNet34 on CIFAR: feature extraction (--freeze-backbone) or fine-tuning.

    Writes a run directory (settings.json, metrics.jsonl, best/last .safetensors, resume state,
    summary.json). The best checkpoint is chosen on the validation split; the test set is scored
    once at the end. Ctrl-C or SIGTERM saves a resumable state after the current step (exit 130 or
    143); a checkpoint is also saved every --checkpoint-every, so kill -9 loses at most that much.

    Examples:

      cifar-resnet train --dataset cifar10 --freeze-backbone

      cifar-resnet train --dataset cifar100 --stem cifar --image-size 32 --cutmix 1.0 --epochs 30

      cifar-resnet train --dataset synthetic --init none --epochs 2 --val-size 1000

      cifar-resnet train --resume runs/train --epochs 20

      torchrun --nproc-per-node 8 -m cifar_resnet_cli train --dataset cifar100 --batch-size 1024 --sync-bn
    """
    from ..training.train import settings_for_resume, train
    from . import render as report

    parsed_milestones = None
    if milestones is not None:
        try:
            parsed_milestones = [int(m) for m in milestones.split(",") if m.strip()]
        except ValueError:
            raise typer.BadParameter(
                f"{milestones!r}: give epochs like 30,60,80", param_hint="'--milestones'"
            ) from None
    flags = {
        "data.dataset": dataset,
        "data.data_dir": data_dir,
        "data.download": download,
        "data.val_size": val_size,
        "data.synthetic_size": synthetic_size,
        "train.init": init,
        "model.stem": stem,
        "model.image_size": image_size,
        "train.freeze_backbone": freeze_backbone,
        "train.backbone_lr_scale": backbone_lr_scale,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.optimizer": optimizer,
        "train.momentum": momentum,
        "train.nesterov": nesterov,
        "train.weight_decay": weight_decay,
        "train.schedule": schedule,
        "train.warmup_epochs": warmup_epochs,
        "train.step_size": step_size,
        "train.milestones": parsed_milestones,
        "train.gamma": gamma,
        "train.augment": augment,
        "train.cutmix": cutmix,
        "train.mixup": mixup,
        "train.mix_prob": mix_prob,
        "train.label_smoothing": label_smoothing,
        "train.auto_augment": auto_augment,
        "train.random_erase": random_erase,
        "train.ema_decay": ema_decay,
        "train.ema_eval": ema_eval,
        "train.clip_grad": clip_grad,
        "train.accum_steps": accum_steps,
        "train.patience": patience,
        "train.keep_top_k": keep_top_k,
        "train.amp": amp,
        "train.channels_last": channels_last,
        "train.compile": compile,
        "train.deterministic": deterministic,
        "train.limit_batches": limit_batches,
        "train.cache_features": cache_features,
        "train.seed": seed,
        "train.sync_bn": sync_bn,
        "train.dist_timeout": dist_timeout,
        "train.tensorboard": tensorboard,
        "train.log_interval": log_interval,
        "train.checkpoint_every": checkpoint_every,
        "train.runs_dir": runs_dir,
        "train.name": name,
        "device": device,
    }
    progress = report.TrainProgressBar()  # stderr, so it never mixes with --json on stdout
    factory = (lambda o: settings_for_resume(resume, o)) if resume is not None else None

    def run(settings):
        progress.log_interval = settings.train.log_interval
        return train(settings, progress, resume=resume)

    result = _run(ctx, flags, run, settings_factory=factory)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 alone reports
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_train(result)


@app.command("eval", cls=_Command)
def eval_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path,
        typer.Argument(metavar="CHECKPOINT", help="A .safetensors checkpoint (from train or port), or an archive."),
    ],
    dataset: Annotated[
        Optional[DatasetName], typer.Option("--dataset", help="Dataset to evaluate on. (default: the checkpoint's)")
    ] = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = None,
    split: Annotated[
        Optional[Split], _opt("--split", "test, or the validation split held out in training. (default: test)")
    ] = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", "Images per batch. (default: 512)", "-b")] = None,
    tta: Annotated[Optional[bool], _opt("--tta/--no-tta", "Average with the mirrored image. (default: off)")] = None,
    confusion: Annotated[Optional[Path], _opt("--confusion", "Write the confusion matrix to this CSV file.")] = None,
    confusion_plot: Annotated[
        Optional[Path], _opt("--confusion-plot", "Draw the confusion matrix into this PNG (needs matplotlib).")
    ] = None,
    onnx_runtime: OnnxRuntimeOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Measure a checkpoint: top-1 (with its 95% interval), top-5, loss, per-class accuracy, confusion matrix.

    Normalisation and input size come from the checkpoint's metadata; its classes must fit the
    dataset. --split val uses the validation split the checkpoint was selected on.

    Examples:

      cifar-resnet eval runs/train/best.safetensors

      cifar-resnet eval runs/train/best.safetensors --tta --confusion confusion.csv

      cifar-resnet eval runs/train/best.safetensors --json | jq .top1
    """
    from ..measure.evaluate import evaluate_checkpoint
    from . import render as report

    flags = {
        "data.dataset": dataset,
        "data.data_dir": data_dir,
        "data.download": download,
        "eval.split": split,
        "eval.batch_size": batch_size,
        "eval.tta": tta,
        "onnx_runtime": onnx_runtime,
        "device": device,
    }
    with report.TaskBars() as bars:
        result = _run(
            ctx,
            flags,
            lambda s: evaluate_checkpoint(
                s, checkpoint, confusion=confusion, confusion_plot=confusion_plot, tasks=bars
            ),
        )
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_eval(result)


class ExportMethod(StrEnum):
    trace = "trace"
    script = "script"
    frozen = "frozen"
    aoti = "aoti"
    onnx = "onnx"
    all = "all"


class ExportPrecisionName(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"


class PrecisionName(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def _csv_list(value: str | None, option: str, cast: Callable[[str], Any] = str) -> list[Any] | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list", param_hint=f"'{option}'") from None


@app.command("export", cls=_Command)
def export_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="A .safetensors checkpoint (from train or port).")
    ],
    method: Annotated[
        Optional[list[ExportMethod]],
        _opt(
            "--method",
            "trace, script, frozen (TorchScript; frozen = scripted + torch.jit.freeze + optimize_for_inference), "
            "aoti (torch.export + AOTInductor .pt2), onnx, or all (every kind that can be made here for the "
            "dtype); repeat for several. (default: trace and script)",
        ),
    ] = None,
    freeze: Annotated[bool, _opt("--freeze", "Also write the frozen archive (same as --method frozen).")] = False,
    dtype: Annotated[
        Optional[ExportPrecisionName],
        _opt(
            "--dtype",
            "Weights and compute inside the archive; input stays float32. int8: ONNX only, statically quantized "
            "on training images and scored on the validation split. (default: fp32)",
        ),
    ] = None,
    channels_last: Annotated[
        Optional[bool],
        _opt("--channels-last/--no-channels-last", "NHWC inside TorchScript and aoti archives. (default: off)"),
    ] = None,
    out: Annotated[
        Optional[Path],
        _opt("--out", "Folder for the archives, made when missing. (default: exports)", "-o", "--output"),
    ] = None,
    example_batch: Annotated[Optional[int], _opt("--example-batch", "Tracing example batch size. (default: 2)")] = None,
    verify_batch: Annotated[
        Optional[int], _opt("--verify-batch", "Verification batch size, not the example's. (default: 5)")
    ] = None,
    atol: Annotated[
        Optional[float],
        _opt(
            "--atol",
            "Allowed max |diff| against eager, relative to the largest logit. (default: 1e-4 fp32, 5e-2 bf16/fp16; "
            "int8: 0.1, only to pick the images whose top-1 must agree)",
        ),
    ] = None,
    min_agreement: Annotated[
        Optional[float],
        _opt("--min-agreement", "Required top-1 agreement with eager. (default: 1.0 fp32, 0.9 bf16/fp16, 0.95 int8)"),
    ] = None,
    calibration_images: Annotated[
        Optional[int],
        _opt("--calibration-images", "int8: training images that set the activation ranges. (default: 1024)"),
    ] = None,
    weight_rounding: Annotated[
        Optional[str],
        _opt(
            "--weight-rounding",
            "int8: nearest, or gptq (each weight's rounding error compensated by the weights not yet rounded, "
            "on the calibration images; slower, and within the noise of nearest on our models). (default: nearest)",
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float],
        _opt(
            "--max-accuracy-drop",
            "int8: top-1 points the archive may lose against fp32 on the held-out images, else nothing is "
            "written. (default: 1.0)",
        ),
    ] = None,
    max_float_layers: Annotated[
        Optional[int],
        _opt(
            "--max-float-layers",
            "int8: past the drop budget, keep at most this many of the most sensitive layers in float (ranked on "
            "part of the held-out images, the drop reported on the rest); 0 refuses instead. (default: 8)",
        ),
    ] = None,
    onnx_runtime: Annotated[
        Optional[OnnxRuntimeName],
        typer.Option(
            "--onnx-runtime",
            help="What loads .onnx archives back to verify them and scores int8 on the held-out images: "
            "onnxruntime, or openvino (pip extra: openvino; the runtime you will deploy with: their int8 "
            "kernels differ). (default: onnxruntime)",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    force: Annotated[bool, _opt("--force", "Overwrite existing archives.")] = False,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Write archives (TorchScript, AOTInductor .pt2, ONNX fp32/int8) and verify each against eager PyTorch.

    Each is saved, loaded back with its runtime's own loader (torch.jit.load, aoti_load_package, ONNX
    Runtime) and compared with the eager model on a batch of another size; one that fails is not
    kept. An int8 archive is calibrated on the checkpoint's training images and scored on its
    validation split: its accuracy drop and top-1 agreement with fp32 are stored and printed with
    95% intervals (on 1,000 images, about a point wide). The checkpoint's metadata travels in the
    archive (extra file cifar_resnet.json; ONNX metadata_props "cifar_resnet"), with the run's data
    folder, so that eval of an archive kept elsewhere reads the same data without --data-dir.

    Examples:

      cifar-resnet export runs/train/best.safetensors

      cifar-resnet export runs/train/best.safetensors --method frozen --dtype bf16 --channels-last

      cifar-resnet export best.safetensors --method onnx --dtype int8 --data-dir data

      cifar-resnet export best.safetensors --method onnx --dtype int8 --onnx-runtime openvino

      cifar-resnet export best.safetensors --method all --out exports --json | jq '.archives[].path'
    """
    from ..deploy.export import export_model
    from . import render as report

    methods = None
    if method or freeze:
        chosen = [m.value for m in method or []]
        methods = ["all"] if "all" in chosen else chosen
        if freeze and "frozen" not in methods and methods != ["all"]:
            methods.append("frozen")
    flags = {
        "export.methods": methods,
        "export.dtype": dtype,
        "export.channels_last": channels_last,
        "export.out_dir": out,
        "export.example_batch": example_batch,
        "export.verify_batch": verify_batch,
        "export.atol": atol,
        "export.min_agreement": min_agreement,
        "export.calibration_images": calibration_images,
        "export.max_accuracy_drop": max_accuracy_drop,
        "export.weight_rounding": weight_rounding,
        "export.max_float_layers": max_float_layers,
        "data.data_dir": data_dir,
        "device": device,
        "onnx_runtime": onnx_runtime,
    }
    int8_only = [
        flag
        for flag, value in (
            ("--calibration-images", calibration_images),
            ("--max-accuracy-drop", max_accuracy_drop),
            ("--weight-rounding", weight_rounding),
            ("--max-float-layers", max_float_layers),
        )
        if value is not None
    ]

    def core(settings):
        if int8_only and settings.export.dtype != "int8":
            verb = "applies" if len(int8_only) == 1 else "apply"
            raise typer.BadParameter(
                f"{', '.join(int8_only)} only {verb} to int8 archives; this export is "
                f"{settings.export.dtype} (add --dtype int8)",
                ctx=ctx,
            )
        return export_model(settings, checkpoint, force=force, tasks=bars)

    with report.TaskBars(keep=True) as bars:
        result = _run(ctx, flags, core)
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_export(result)


@app.command("bench", cls=_Command)
def bench_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="CHECKPOINT",
            help="A .safetensors checkpoint, or an archive from `export` (timed alone, exactly as shipped); "
            "without one, a random-initialised model.",
        ),
    ] = None,
    variants: Annotated[
        Optional[str],
        _opt(
            "--variants",
            "Comma-separated: eager, trace, script, frozen, compile; aoti (AOTInductor .pt2), onnxruntime, "
            "openvino (an ONNX file; pip extras onnx, openvino). (default: eager, trace, script, frozen, compile)",
        ),
    ] = None,
    dtypes: Annotated[
        Optional[str],
        _opt("--dtypes", "Comma-separated: fp32, bf16, fp16 (CUDA), int8 (onnxruntime, openvino). (default: fp32)"),
    ] = None,
    layouts: Annotated[
        Optional[str], _opt("--layouts", "Comma-separated: nchw, nhwc (channels-last). (default: nchw)")
    ] = None,
    channels_last: Annotated[bool, _opt("--channels-last", "Shorthand for --layouts nhwc.")] = False,
    batch_sizes: Annotated[Optional[str], _opt("--batch-sizes", "Comma-separated. (default: 1,64)")] = None,
    image_size: ImageSizeOpt = None,
    stem: StemOpt = None,
    warmup: Annotated[Optional[int], _opt("--warmup", "Untimed calls after the first. (default: 10)")] = None,
    iters: Annotated[Optional[int], _opt("--iters", "Timed calls per variant. (default: 50)")] = None,
    peak_matmul: Annotated[
        Optional[int],
        _opt(
            "--peak-matmul",
            "n of the n x n matmul per dtype that measures the device's limit; 0 skips. (default: 2048)",
        ),
    ] = None,
    csv: Annotated[Optional[Path], _opt("--csv", "Also write every timing to this CSV file.")] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Time eager, traced, scripted, frozen, compiled and deployed variants side by side.

    Same input and warm-up for every variant; the first call is reported as cold start (compile
    time for compile), the time to write a deployed variant's file as build s; median, p90 and
    spread over --iters calls; speed-up over eager fp32; and each variant's output against eager
    fp32, so a fast but wrong variant shows as wrong. The device's limit is measured after the
    timings (an n x n matmul per dtype): each row's share of it is in % peak. An archive from
    export is timed alone, as shipped (an ONNX file by each installed runtime).

    Examples:

      cifar-resnet bench --image-size 224 --batch-sizes 1 --dtypes fp32,bf16 --layouts nchw,nhwc

      cifar-resnet bench --image-size 224 --batch-sizes 1 --variants eager,aoti,onnxruntime,openvino --dtypes fp32,int8

      cifar-resnet bench runs/train/best.safetensors --batch-sizes 1,64 --csv bench.csv

      cifar-resnet bench --device cuda --dtypes fp32,fp16 --json | jq '.fastest_correct["1"].variant'
    """
    from ..measure.bench import benchmark
    from . import render as report

    layout_list = _csv_list(layouts, "--layouts")
    if channels_last:
        layout_list = ["nhwc"] if layout_list is None else sorted(set(layout_list) | {"nhwc"})
    flags = {
        "bench.variants": _csv_list(variants, "--variants"),
        "bench.dtypes": _csv_list(dtypes, "--dtypes"),
        "bench.layouts": layout_list,
        "bench.batch_sizes": _csv_list(batch_sizes, "--batch-sizes", int),
        "model.image_size": image_size,
        "model.stem": stem,
        "bench.warmup": warmup,
        "bench.iters": iters,
        "bench.peak_matmul": peak_matmul,
        "device": device,
    }
    with report.TaskBars(keep=True) as bars:  # each variant's build (compile) and timing as its own line
        result = _run(ctx, flags, lambda s: benchmark(s, checkpoint, csv_path=csv, tasks=bars))
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_bench(result)


class ResizeMode(StrEnum):
    crop = "crop"
    stretch = "stretch"


@app.command("predict", cls=_Command)
def predict_cmd(
    ctx: typer.Context,
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="A .safetensors checkpoint or an archive from export (.pt, .pt2, .onnx)."),
    ],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGES", help="Image files and/or directories.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk directories recursively.")] = False,
    top_k: Annotated[int, _opt("--top-k", "Classes shown per image. (default: 3)", min=1, show_default=False)] = 3,
    resize: Annotated[
        ResizeMode,
        _opt(
            "--resize",
            "crop: keep the aspect ratio and crop the centre; stretch: resize both sides. (default: crop)",
            show_default=False,
        ),
    ] = ResizeMode.crop,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", "-b", help="Images per forward pass. (default: 64)", min=1, show_default=False),
    ] = 64,
    csv: Annotated[Optional[Path], _opt("--csv", "Also write the predictions to this CSV file.")] = None,
    onnx_runtime: OnnxRuntimeOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Classify your own images (PNG, JPEG, BMP, WebP, anything Pillow reads).

    Preprocessing comes from the model's metadata: converted to RGB, resized to its input size,
    normalised with its mean/std. A file that cannot be read is reported in its row and the others
    are still classified; the exit code is 1 if any file failed.

    Examples:

      cifar-resnet predict runs/train/best.safetensors cat.jpg dog.png

      cifar-resnet predict exports/best.trace.pt photos/ --recursive --top-k 5 --csv predictions.csv

      cifar-resnet predict best.safetensors photos/ --json | jq '.predictions[].top[0].label'
    """
    from ..core.errors import CifarResnetError
    from ..measure.predict import predict_images
    from . import render as report

    flags = {"device": device, "onnx_runtime": onnx_runtime}
    with report.TaskBars() as bars:
        result = _run(
            ctx,
            flags,
            lambda s: predict_images(
                s,
                model,
                images,
                recursive=recursive,
                top_k=top_k,
                resize=resize.value,
                batch_size=batch_size,
                csv_path=csv,
                tasks=bars,
            ),
        )
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_predict(result)
    if result.failed:
        where = 'each failed file\'s "error" field in the JSON' if json else "the error column"
        _fail(
            ctx,
            CifarResnetError(
                f"{result.failed} of {len(result.predictions)} files could not be classified", f"see {where}"
            ),
        )


@app.command("ablate", cls=_Command)
def ablate_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A .safetensors checkpoint (from train).")],
    split: Annotated[Optional[Split], _opt("--split", "Images to measure on. (default: test)")] = None,
    limit: Annotated[Optional[int], _opt("--limit", "Use only the first N images, for a quick look.", min=1)] = None,
    plot: Annotated[Optional[Path], _opt("--plot", "Bar chart of the drops (PNG, needs matplotlib).")] = None,
    dataset: Annotated[
        Optional[DatasetName], typer.Option("--dataset", help="Dataset to measure on. (default: the checkpoint's)")
    ] = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", "Images per batch. (default: 512)", "-b")] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Remove each residual block's branch (then each stage's) and measure what top-1 loses.

    A block without its residual branch passes relu(shortcut(x)): the identity, or the 1x1
    downsample where the shape changes. Results are sorted by the drop against the intact model.

    Examples:

      cifar-resnet ablate runs/train/best.safetensors --split val --limit 1000

      cifar-resnet ablate runs/train/best.safetensors --plot ablation.png --json | jq '.rows[0]'
    """
    from ..measure.ablate import ablate
    from . import render as report

    flags = {
        "eval.split": split,
        "data.dataset": dataset,
        "data.data_dir": data_dir,
        "data.download": download,
        "eval.batch_size": batch_size,
        "device": device,
    }
    with report.TaskBars() as bars:
        result = _run(ctx, flags, lambda s: ablate(s, checkpoint, limit=limit, plot=plot, tasks=bars))
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_ablate(result)


class SortKey(StrEnum):
    best_val_top1 = "best_val_top1"
    test_top1 = "test_top1"
    time_s = "time_s"
    images_per_s = "images_per_s"
    run = "run"


@app.command("compare", cls=_Command)
def compare_cmd(
    ctx: typer.Context,
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run directories made by train.")],
    sort: Annotated[
        SortKey,
        _opt("--sort", "Order of the rows (metrics: highest first). (default: best_val_top1)", show_default=False),
    ] = SortKey.best_val_top1,
    plot: Annotated[
        Optional[Path], _opt("--plot", "Learning curves of every run in one PNG (needs matplotlib).")
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    json: JsonOpt = False,
) -> None:
    """Compare run directories: the settings that differ, best validation and test top-1, time, speed.

    Examples:

      cifar-resnet compare runs/*

      cifar-resnet compare runs/sgd runs/adamw --sort test_top1 --plot curves.png
    """
    from ..training.compare import compare_runs
    from . import render as report

    result = _run(ctx, {}, lambda s: compare_runs(runs, sort=sort.value, plot=plot))
    report.print_warnings(result.warnings)
    if json:
        report.print_json(result)
    else:
        report.render_compare(result)


@app.command("config", cls=_Command)
def config_cmd(ctx: typer.Context, config: ConfigOpt = None, debug: DebugOpt = False, json: JsonOpt = False) -> None:
    """Print the effective settings as TOML, with where each value came from.

    Every command resolves its settings the same way: flags > CIFAR_RESNET_<SECTION>__<FIELD>
    environment variables > --config FILE.toml (or ./cifar-resnet.toml) > defaults. The output can be
    saved and passed back with --config.

    Examples:

      cifar-resnet config > my.toml

      CIFAR_RESNET_TRAIN__LR=0.1 cifar-resnet config --config my.toml --json | jq '.settings[] | select(.key == "lr")'
    """
    from ..core.settings import describe_settings
    from . import render as report

    result = _run(ctx, {}, lambda _s: describe_settings(_state(ctx).config))
    if json:
        report.print_json(result)
    else:
        report.render_config(result)


def main() -> None:
    import warnings

    # torch >= 2.9 marks torch.jit as deprecated in favour of torch.export; TorchScript is still what
    # `export` is asked to write, and the warning on every command would only be noise.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
    app(prog_name="cifar-resnet")
