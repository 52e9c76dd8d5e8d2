"""What every command shares: the Typer app, the options that are not settings, and the one path from
flags to settings to a core function to stdout (a Rich table, or JSON with ``--json``).

No torch logic lives here. Core modules are imported inside the commands, so that ``--help`` and
``--version`` answer without importing torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
import typer.core
from pydantic import BaseModel

from ..core.errors import CifarResnetError


class Command(typer.core.TyperCommand):
    """Usage lines in the usual notation (CHECKPOINT required, [CHECKPOINT] optional: Typer writes a
    required argument as {CHECKPOINT}), and flags without a value column (Typer shows ``<bool>``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.help:  # Typer keeps a docstring's line breaks: rejoin each prose paragraph, keep examples
            paragraphs = self.help.split("\n\n")
            self.help = "\n\n".join(p if p.startswith(" ") else " ".join(p.split("\n")) for p in paragraphs)

    def collect_usage_pieces(self, ctx):  # click's hook for the usage line
        return [re.sub(r"^\{(.*)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # a flag takes no value: Typer's help would print <bool>
        return params


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

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
# Accepted before the command (cifar-resnet --config F train) and after it (cifar-resnet train --config F).
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--config", help="TOML settings file.", show_default="./cifar-resnet.toml when it exists", metavar="FILE"
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of known errors (or CIFAR_RESNET_DEBUG=1).")]
CheckpointArg = Annotated[
    Path, typer.Argument(metavar="CHECKPOINT", help="A .safetensors checkpoint (from train or port).")
]


@dataclass
class State:
    config: Path | None
    debug: bool


def state(ctx: typer.Context) -> State:
    """--config and --debug, given before the command or after it (after wins for --config)."""
    before: State = ctx.obj
    return State(config=ctx.params.get("config") or before.config, debug=bool(ctx.params.get("debug")) or before.debug)


def nested(flags: dict[str, Any]) -> dict[str, Any]:
    """``{"model.stem": "cifar", "device": None}`` -> ``{"model": {"stem": "cifar"}}``."""
    out: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        *sections, field = dotted.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[field] = value
    return out


def run(
    ctx: typer.Context,
    flags: dict[str, Any],
    core: Callable[[Any], R],
    *,
    settings_factory: Callable[[dict[str, Any]], Any] | None = None,
) -> R:
    """Resolve the settings and call ``core``; known errors become one line and exit 1."""
    from ..core.settings import InvalidSettingError, load_settings

    try:
        overrides = nested(flags)
        settings = settings_factory(overrides) if settings_factory else load_settings(state(ctx).config, overrides)
        return core(settings)
    except InvalidSettingError as exc:
        raise typer.BadParameter(exc.message, ctx=ctx) from None
    except CifarResnetError as exc:
        fail(ctx, exc)
    except KeyboardInterrupt:
        from . import render

        render.print_error(CifarResnetError("interrupted"))
        raise typer.Exit(130) from None
    except OSError as exc:  # a write we did not foresee failed (full disk, read-only): still one line
        from ..core.fileio import output_error

        fail(ctx, output_error(exc, Path(exc.filename or "an output file")))


def fail(ctx: typer.Context, exc: CifarResnetError) -> None:
    from . import render

    render.print_error(exc, debug=state(ctx).debug)
    raise typer.Exit(exc.exit_code)


def show(result: Any, json: bool, table: Callable[[Any], None]) -> None:
    """A command's result on stdout: its warnings on stderr, then JSON or the command's table."""
    from . import render

    render.print_warnings(getattr(result, "warnings", []))
    if json:
        render.print_json(result)
    else:
        table(result)


def version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"cifar-resnet {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    show_version: Annotated[
        bool, typer.Option("--version", callback=version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Transfer learning with a torchvision-exact ResNet34 on CIFAR-10 and CIFAR-100.

    Settings come from flags > CIFAR_RESNET_<SECTION>__<FIELD> environment variables > --config
    FILE.toml (or ./cifar-resnet.toml) > defaults. Results go to stdout (a table, or JSON with
    --json); progress, warnings and errors go to stderr.
    """
    env_debug = os.environ.get("CIFAR_RESNET_DEBUG", "").lower() in ("1", "true", "yes")
    ctx.obj = State(config=config, debug=debug or env_debug)
