"""Typer options made from the settings model: one declaration per setting (core/settings.py).

Each setting's flag, type, choices, default, help and environment variable come from its pydantic
field, so ``--help``, completion, the TOML keys and the real defaults cannot drift apart. A command
names the settings it takes; :func:`with_settings` adds them to its signature and hands the command
the flags the user gave on the command line as ``{"section.field": value}``; the others are None, so
the environment, the TOML file and the defaults still apply beneath them. The default in ``--help`` is
the field's own.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import typer
from pydantic.fields import FieldInfo
from rich.markup import escape
from typer._click.core import ParameterSource

from ..core.settings import PANELS, Settings, option_names, setting_field

_PREFIX = "setting__"  # parameter names of generated options: setting__train__lr


@dataclass(frozen=True)
class Use:
    """A setting as one command shows it, where the command's meaning differs from the field's."""

    path: str
    help: str | None = None  # replaces the field's description
    default_text: str | None = None  # what "unset" means here, e.g. "the checkpoint's"


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _list_parser(item: Any, flag: str) -> Callable[[str], list[Any]]:
    """``"eager,trace"`` -> ``["eager", "trace"]``, each checked against the choices or cast to int."""
    choices = get_args(item) if get_origin(item) is Literal else None
    cast = int if item is int else str

    def parse(value: str) -> list[Any]:
        out = []
        for part in (p.strip() for p in str(value).split(",")):
            if not part:
                continue
            try:
                parsed = cast(part)
            except ValueError:
                raise typer.BadParameter(f"{part!r} is not a whole number", param_hint=f"'{flag}'") from None
            if choices is not None and parsed not in choices:
                raise typer.BadParameter(
                    f"{part!r} is not one of {', '.join(map(str, choices))}", param_hint=f"'{flag}'"
                )
            out.append(parsed)
        return out

    return parse


def _number_or_word(value: str) -> float | str:
    """A setting that is a number or a word (``--lr 0.1``, ``--lr auto``): the number as a number, so
    that an error shows it as one."""
    try:
        return float(value)
    except ValueError:
        return value


def _help(field: FieldInfo, loc: tuple[str, ...], use: Use) -> str:
    text = use.help or field.description or ""
    return f"{text} {escape('[env var: ' + option_names(loc)[1] + ']')}".strip()  # not Rich markup


def _option(use: Use) -> tuple[str, Any, Any]:
    """The parameter name, annotation and default of one generated option."""
    loc = tuple(use.path.split("."))
    field = setting_field(loc)
    flag = option_names(loc)[0]
    flags = [flag, *(field.json_schema_extra or {}).get("aliases", ())]  # type: ignore[union-attr]
    kind = _strip_optional(field.annotation)
    default = field.get_default(call_default_factory=True)
    common: dict[str, Any] = {
        "help": _help(field, loc, use),
        "show_default": use.default_text if use.default_text is not None else default is not None,
        "rich_help_panel": PANELS.get(loc[0], "Settings") if len(loc) > 1 else "Settings",
    }
    if kind is bool:
        option = typer.Option(f"{flag}/--no-{flag.removeprefix('--')}", *flags[1:], **common)
        annotation: Any = Optional[bool]
    elif get_origin(kind) is list:
        item = get_args(kind)[0]
        item = _strip_optional(get_args(item)[0] if get_origin(item) is Annotated else item)
        choices = get_args(item) if get_origin(item) is Literal else None
        metavar = f"[{'|'.join(map(str, choices))}],..." if choices else "N,..."
        option = typer.Option(
            *flags,
            parser=_list_parser(item, flag),
            metavar=metavar,
            autocompletion=(lambda: list(choices)) if choices else None,
            **common,
        )
        annotation = Optional[list[Any]]
    else:
        metavar, parts = None, []
        if get_origin(kind) in (Union, types.UnionType):  # e.g. a number or "auto": pydantic parses the text
            parts = [_strip_optional(get_args(a)[0]) if get_origin(a) is Annotated else a for a in get_args(kind)]
            metavar = "|".join(
                "|".join(map(str, get_args(p))) if get_origin(p) is Literal else p.__name__.upper() for p in parts
            )
        numeric = metavar is not None and any(p in (int, float) for p in parts)
        option = typer.Option(*flags, metavar=metavar, parser=_number_or_word if numeric else None, **common)
        annotation = Optional[kind if kind in (int, float, str, Path) or get_origin(kind) is Literal else str]
    if use.default_text is not None:
        default = None
    elif isinstance(default, Path):
        default = str(default)
    return _PREFIX + "__".join(loc), Annotated[annotation, option], default


def with_settings(*uses: str | Use) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add these settings (``"train.lr"`` or :class:`Use`) to a command as options; the command gets
    the ones the user gave as ``flags={"train.lr": 0.1}`` (lists flattened, unset ones left out)."""
    chosen = [u if isinstance(u, Use) else Use(u) for u in uses]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        hints = get_type_hints(command, include_extras=True)  # the command module's string annotations, resolved
        own = [p.replace(annotation=hints[n]) for n, p in signature.parameters.items() if n != "flags"]
        made = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
            for name, ann, default in map(_option, chosen)
        ]
        paths = {_PREFIX + "__".join(u.path.split(".")): u.path for u in chosen}

        def wrapper(**kwargs: Any) -> Any:
            ctx = kwargs["ctx"]
            flags = {}
            for name, path in paths.items():
                value = kwargs.pop(name)
                if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
                    value = None  # the default shown in --help: the settings' own default applies beneath
                if isinstance(value, list):  # each --variants a,b gave a list: one list in all
                    value = [v for part in value for v in (part if isinstance(part, list) else [part])]
                flags[path] = value
            return command(**kwargs, flags=flags)

        wrapper.__name__ = command.__name__
        wrapper.__doc__ = command.__doc__
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*own, *made]]  # click passes kwargs
        wrapper.__signature__ = signature.replace(parameters=keyword)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def all_settings() -> list[str]:
    """Every setting's dotted path, in declaration order (for tests and the docs)."""
    paths = []
    for name, field in Settings.model_fields.items():
        sub = _strip_optional(field.annotation)
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            paths += [f"{name}.{f}" for f in sub.model_fields]
        else:
            paths.append(name)
    return paths
