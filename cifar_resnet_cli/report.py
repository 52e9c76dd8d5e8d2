"""The only module that talks to Rich: result tables on stdout, messages and progress on stderr."""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .inspection import InspectResult
    from .port import PortResult

out = Console(soft_wrap=False)
err = Console(stderr=True, soft_wrap=True)


def _flops(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _shape(shape: list[int] | None) -> str:
    if shape is None:
        return "-"
    return "x".join(map(str, shape)) if shape else "scalar"


def _diff(value: float, tolerance: float) -> Text:
    return Text(f"{value:.3g}", style="green" if value <= tolerance else "bold red")


def print_json(result: BaseModel) -> None:
    """The result as JSON on stdout, nothing else, so that `| jq` works."""
    sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    sys.stdout.flush()


def print_error(error: Exception, *, debug: bool = False) -> None:
    """One red line on stderr (the traceback too with --debug)."""
    if debug:
        err.print("".join(traceback.format_exception(error)), style="dim", markup=False, highlight=False)
    message = getattr(error, "message", str(error))
    hint = getattr(error, "hint", None)
    line = Text("Error: ", style="bold red")
    line.append(message, style="red")
    if hint:
        line.append(f" — {hint}", style="yellow")
    err.print(line)


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(Text("Warning: ", style="bold yellow") + Text(warning, style="yellow"))


def render_inspect(result: InspectResult, *, tensors: str = "diff") -> None:
    title = (
        f"ResNet34, {result.stem} stem, {result.num_classes} classes, "
        f"{result.image_size}x{result.image_size} input, {result.device}"
    )
    layers = Table(title=title, title_justify="left")
    for col, justify in (
        ("layer", "left"),
        ("type", "left"),
        ("output", "right"),
        ("params", "right"),
        ("trainable", "left"),
        ("FLOPs", "right"),
    ):
        layers.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in result.layers:
        indent = "  " * row.name.count(".")
        layers.add_row(
            indent + row.name,
            row.type,
            _shape(row.output_shape),
            f"{row.params:,}",
            row.status,
            _flops(row.flops) if row.flops else "-",
        )
    frozen = result.total_params - result.trainable_params
    layers.add_section()
    layers.add_row(
        "total",
        "",
        "",
        f"{result.total_params:,}",
        f"{result.trainable_params:,}",
        _flops(result.total_flops),
    )
    out.print(layers)
    out.print(
        f"Trainable {result.trainable_params:,}, frozen {frozen:,}. FLOPs: torch.utils.flop_counter "
        "(convolutions and matmuls, 2 per multiply-add), batch 1."
    )

    names = Table(title="Parameters and buffers against torchvision.models.resnet34", title_justify="left")
    names.add_column("tensor", overflow="fold")
    names.add_column("kind")
    names.add_column("ours", justify="right")
    names.add_column("torchvision", justify="right")
    names.add_column("match")
    shown = [t for t in result.tensors if tensors == "all" or not t.same]
    for t in shown:
        names.add_row(
            t.name,
            t.kind,
            _shape(t.ours),
            _shape(t.torchvision),
            Text("same", style="green") if t.same else Text("differs", style="bold yellow"),
        )
    if shown:
        out.print(names)
    out.print(
        f"Names and shapes: {result.tensors_same} of {len(result.tensors)} tensors identical"
        + (f"; differing: {', '.join(result.tensors_differing)}" if result.tensors_differing else "")
        + (" (--tensors all lists every one)" if tensors != "all" else "")
    )
    out.print(
        f"Parameters: ours {result.total_params:,}, torchvision {result.torchvision_params:,} "
        f"(difference {result.total_params - result.torchvision_params:+,})"
    )
    render_parity(result.parity, result.tolerance, "Numerical parity with torchvision (same weights, eval mode)")


def render_parity(rows: list, tolerance: float, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("output")
    table.add_column("shape", justify="right")
    table.add_column("max |diff|", justify="right")
    for row in rows:
        table.add_row(row.name, _shape(row.shape), _diff(row.max_abs_diff, tolerance))
    out.print(table)
    worst = max(r.max_abs_diff for r in rows)
    verdict = Text("PASS", style="bold green") if worst <= tolerance else Text("FAIL", style="bold red")
    out.print(Text(f"max |diff| {worst:.3g} (tolerance {tolerance:g}): ") + verdict)


def render_port(result: PortResult) -> None:
    table = Table(title=f"Ported to {result.out}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    source_style = "green" if result.pretrained else "bold red"
    table.add_row("source", Text(result.source, style=source_style))
    table.add_row("source sha256", result.source_sha256)
    table.add_row(
        "target", f"{result.dataset}, {result.num_classes} classes, {result.stem} stem, {result.image_size} px"
    )
    table.add_row("tensors copied", str(result.copied))
    for action in result.changed:
        table.add_row(
            f"tensor {action.action}",
            f"{action.name}: {_shape(action.source_shape)} -> {_shape(action.target_shape)}",
        )
    table.add_row("conv1", result.conv1)
    table.add_row("output sha256", result.output_sha256)
    table.add_row("output size", f"{result.output_bytes / 2**20:.1f} MiB")
    table.add_row("round trip", f"reloaded into a fresh model: logits max |diff| {result.roundtrip_max_abs_diff:g}")
    out.print(table)
    render_parity(
        result.parity,
        result.tolerance,
        f"Backbone parity with torchvision holding the source weights ({result.device})",
    )
