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
    from ..model.inspection import InspectResult
    from ..model.port import PortResult

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
        layers.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
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
    table.add_column("value", overflow="fold")
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


# ---------------------------------------------------------------------------------------------
# train and eval
# ---------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


class TaskBars:
    """Long steps as progress lines on stderr (what, bar, done/total, elapsed, ETA); nothing at all when
    stderr is not a terminal. ``keep`` leaves each finished step's line on screen. Use as a context
    manager, so that the display (and the terminal cursor) is restored however the command ends."""

    def __init__(self, *, keep: bool = False) -> None:
        from rich import progress as rp

        self._progress = rp.Progress(
            rp.SpinnerColumn(),
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TimeElapsedColumn(),
            rp.TimeRemainingColumn(),
            console=err,
            transient=not keep,
            disable=not err.is_terminal,
        )
        self._keep = keep
        self._started = False
        self._current = None

    def _ensure_started(self) -> None:
        if not self._started:
            self._progress.start()
            self._started = True

    def begin(self, description: str, total: int | None = None) -> None:
        self._ensure_started()
        self._current = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._current is not None:
            self._progress.advance(self._current, n)

    def end(self) -> None:
        if self._current is None:
            return
        if self._keep:
            self._progress.stop_task(self._current)
        else:
            self._progress.remove_task(self._current)
        self._current = None

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False

    def __enter__(self) -> TaskBars:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class TrainProgressBar(TaskBars):
    """Training on stderr: on a terminal, one bar per epoch (loss, top-1, lr, images/s, ETA) and a bar
    for each long step (feature extraction, validation, test); in a log file or batch job, a plain
    line every ``log_interval`` steps (timm's convention) and never a control code. A line per epoch
    in both."""

    def __init__(self, log_interval: int = 50) -> None:
        super().__init__()
        self._task = None
        self._label = ""
        self._epochs = 0
        self.log_interval = log_interval

    def start(self, *, run_dir: str, epochs: int, first_epoch: int, steps: int) -> None:
        self._epochs = epochs
        err.print(f"[bold]run[/bold] {run_dir}: epochs {first_epoch}..{epochs}, {steps} steps each")
        err.print(
            f"{'epoch':>5} {'lr':>9} {'train loss':>10} {'train top-1':>11} {'val loss':>9} "
            f"{'val top-1':>9} {'img/s':>7} {'time':>7}"
        )
        self._ensure_started()

    def step(self, *, epoch: int, step: int, steps: int, loss: float, top1: float, lr: float, ips: float) -> None:
        label = f"{epoch}/{self._epochs}"
        if not err.is_terminal:
            if self.log_interval and (step % self.log_interval == 0 or step == steps):
                err.print(
                    f"epoch {label} step {step}/{steps} loss {loss:.4f} top-1 {top1:.2%} lr {lr:.3e} {ips:.0f} img/s",
                    highlight=False,
                    markup=False,
                )
            return
        text = f"[bold]epoch {label}[/bold]  loss {loss:.4f}  top-1 {top1:.1%}  lr {lr:.2e}  {ips:.0f} img/s"
        if self._task is None or self._label != label:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._label = label
            self._task = self._progress.add_task(text, total=steps)
        self._progress.update(self._task, completed=step, description=text)

    def epoch_end(self, m) -> None:
        val_loss = "-" if m.val_loss is None else f"{m.val_loss:.4f}"
        star = " *" if m.best else ""
        self._progress.console.print(
            f"{m.epoch:>5} {m.lr:>9.2e} {m.train_loss:>10.4f} {_pct(m.train_top1):>11} {val_loss:>9} "
            f"{_pct(m.val_top1):>9} {m.images_per_s:>7.0f} {m.epoch_time_s:>6.1f}s{star}",
            highlight=False,
        )

    def note(self, message: str) -> None:
        self._progress.console.print(Text(message, style="yellow"))

    def stop(self) -> None:
        self.close()


_TRAIN_COLUMNS = ("epoch", "train loss", "train top-1", "val loss", "val top-1", "img/s", "time", "lr", "val top-5")


def render_train(result) -> None:
    """The epochs (the columns that fit the terminal, most important first; all of them in --json and
    metrics.csv), then the summary."""
    shown = _TRAIN_COLUMNS if out.width >= 100 else _TRAIN_COLUMNS[:7]
    table = Table(title=f"Training run {result.run_dir}", title_justify="left")
    for col in shown:
        table.add_column(col, justify="right", no_wrap=True)
    for m in result.history:
        cells = {
            "epoch": f"{m.epoch}{' *' if m.best else ''}",
            "lr": f"{m.lr:.2e}",
            "train loss": f"{m.train_loss:.4g}",
            "train top-1": _pct(m.train_top1),
            "val loss": "-" if m.val_loss is None else f"{m.val_loss:.4g}",
            "val top-1": _pct(m.val_top1),
            "val top-5": _pct(m.val_top5),
            "img/s": f"{m.images_per_s:.0f}",
            "time": f"{m.epoch_time_s:.1f} s",
        }
        table.add_row(*[cells[c] for c in shown])
    out.print(table)
    summary = Table(show_header=False, title="Summary (* = best on validation)", title_justify="left")
    summary.add_column("what")
    summary.add_column("value", overflow="fold")
    data = f"{result.dataset}{' (SYNTHETIC)' if result.synthetic else ''}: {result.train_images} train, "
    data += f"{result.val_images} val, {result.test_images} test"
    summary.add_row("data", data)
    if result.class_counts:  # the training split, per class: an imbalance shows here first
        counts = ", ".join(f"{name} {n}" for name, n in result.class_counts.items())
        balance = [f"--class-weights {result.class_weights}"] if result.class_weights != "none" else []
        balance += [f"--sampler {result.sampler}"] if result.sampler != "uniform" else []
        summary.add_row("train images per class", counts + (f" ({', '.join(balance)})" if balance else ""))
    summary.add_row("mode", f"{result.mode} from {result.init}")
    if result.precision:
        summary.add_row("precision", result.precision)
    if result.stopped_early_epoch is not None:
        summary.add_row("early stop", f"after epoch {result.stopped_early_epoch} of {result.epochs} (--patience)")
    if result.feature_cache_note:
        summary.add_row("feature cache", result.feature_cache_note)
    ema = ", EMA weights" if result.ema else ""
    summary.add_row("best validation top-1", f"{_pct(result.best_val_top1)} (epoch {result.best_epoch}{ema})")
    if result.best_val_balanced_accuracy is not None:
        chosen = ", chose the best epoch" if result.select_by == "balanced" else ""
        summary.add_row("validation balanced acc.", f"{_pct(result.best_val_balanced_accuracy)}{chosen}")
    if result.test_loss is None:
        summary.add_row("test top-1 / top-5", "none: this data has no test set")
    else:
        summary.add_row(
            "test top-1 / top-5",
            f"{_pct(result.test_top1)} / {_pct(result.test_top5)} (best checkpoint, loss {result.test_loss:.4f})",
        )
    extraction = f" (feature extraction {result.feature_extraction_s:.1f} s of it)" if result.feature_cache else ""
    summary.add_row("time", f"{result.train_time_s:.1f} s training{extraction}, {result.total_time_s:.1f} s in all")
    summary.add_row("throughput", f"{result.images_per_s:.0f} images/s ({result.device})")
    summary.add_row("checkpoints", f"{result.best_checkpoint}, {result.last_checkpoint}")
    out.print(summary)


def render_eval(result) -> None:
    per = Table(
        title=f"{result.checkpoint} on {result.dataset} {result.split} ({result.images} images)", title_justify="left"
    )
    per.add_column("class")
    per.add_column("images", justify="right")
    per.add_column("correct", justify="right")
    per.add_column("recall", justify="right")
    per.add_column("precision", justify="right")
    per.add_column("F1", justify="right")
    weakest = min(result.per_class, key=lambda c: c.recall if c.total else 2.0, default=None)
    for c in result.per_class:
        row = [c.name, str(c.total), str(c.correct), _pct(c.recall), _pct(c.precision), _pct(c.f1)]
        per.add_row(*row, style="bold red" if c is weakest and len(result.per_class) > 1 else None)
    out.print(per)
    summary = Table(show_header=False)
    summary.add_column("what")
    summary.add_column("value", overflow="fold")  # paths fold at 80 columns instead of ending in an ellipsis
    top1 = _pct(result.top1)
    if result.top1_ci95 is not None:  # how far the figure could move on other images like these
        top1 += f" (95% interval {_pct(result.top1_ci95[0])} to {_pct(result.top1_ci95[1])})"
    summary.add_row("top-1", top1)
    summary.add_row("top-5", _pct(result.top5))
    if result.balanced_accuracy is not None:  # a weak class shows here where top-1 averages it away
        summary.add_row("balanced accuracy", f"{_pct(result.balanced_accuracy)} (mean per-class recall)")
        summary.add_row("macro F1", _pct(result.macro_f1))
    summary.add_row("loss", f"{result.loss:.4f}")
    summary.add_row("flip TTA", "on" if result.tta else "off")
    summary.add_row("speed", f"{result.images_per_s:.0f} images/s, {result.time_s:.2f} s ({result.device})")
    if result.confusion_csv:
        summary.add_row("confusion matrix", result.confusion_csv)
    if result.confusion_plot:
        summary.add_row("confusion plot", result.confusion_plot)
    if result.per_class_csv:
        summary.add_row("per-class CSV", result.per_class_csv)
    out.print(summary)


# ---------------------------------------------------------------------------------------------
# export and bench
# ---------------------------------------------------------------------------------------------


_LOADERS = {
    "torchscript": "torch.jit.load",
    "aoti": "torch._inductor.aoti_load_package",
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
}
_METADATA_PLACES = {
    "torchscript": "extra file cifar_resnet.json",
    "aoti": "extra/cifar_resnet.json in the package",
    "onnx": 'metadata_props "cifar_resnet"',
}


def render_export(result) -> None:
    table = Table(title=f"Archives from {result.checkpoint}", title_justify="left")
    table.add_column("archive", overflow="fold")
    table.add_column("method")
    table.add_column("precision")
    table.add_column("size", justify="right")
    table.add_column("max |diff| (allowed)", justify="right")
    table.add_column("top-1 agree", justify="right")
    for a in result.archives:
        g = a.agreement
        allowed = f"{g.allowed:.3g}" if a.held_out is None else "reported"
        table.add_row(
            a.path,
            a.method,
            f"{a.dtype} {'nhwc' if a.channels_last else 'nchw'}",
            f"{a.bytes / 2**20:.1f} MiB",
            f"{g.max_abs_diff:.3g} ({allowed})",
            Text(f"{g.top1_agreement:.0%}", style="green"),
        )
    out.print(table)
    for kind in dict.fromkeys(a.kind for a in result.archives):
        first = next(a for a in result.archives if a.kind == kind)
        loader = _LOADERS[first.runtime if kind == "onnx" else kind]
        where = _METADATA_PLACES[kind]
        out.print(f"{kind}: verified after a plain {loader} on {first.verified_on}; metadata: {where}.")
    for a in result.archives:
        if a.held_out is None:
            out.print(
                f"{a.method} {a.dtype}: a batch of {result.verify_batch} (made from {result.example_batch}), "
                f"{result.image_size} px, against eager fp32."
            )
            continue
        h = a.held_out
        out.print(
            f"{a.method} int8: calibrated on {h.calibration_images} training images, weights rounded "
            f"{'by GPTQ' if h.weight_rounding == 'gptq' else 'to nearest'}; on {h.images} held-out "
            f"({h.split}) images top-1 {h.fp32_top1:.2f}% fp32 -> {h.int8_top1:.2f}% int8 in {h.runtime}, drop "
            f"{h.accuracy_drop:.2f} points (allowed {h.max_accuracy_drop:g}), top-1 agreement {h.top1_agreement:.1%}."
        )
        if h.top1_agreement_ci95 is not None and h.accuracy_drop_ci95 is not None:
            (a_low, a_high), (d_low, d_high) = h.top1_agreement_ci95, h.accuracy_drop_ci95
            out.print(
                f"  {h.flipped} of {h.images} images changed their answer ({h.fp32_only_correct} now wrong, "
                f"{h.int8_only_correct} now right); 95% intervals for images like these: agreement "
                f"{a_low:.1%} to {a_high:.1%}, drop {d_low:.2f} to {d_high:.2f} points."
            )
        if h.fallback is not None:
            _print_fallback(h)


def _print_fallback(h) -> None:
    f = h.fallback
    out.print(
        f"  Fallback: every layer in int8 lost {f.all_int8_drop:.2f} points, so {len(h.float_layers)} "
        f"layer{'s' if len(h.float_layers) != 1 else ''} stayed in float: {', '.join(h.float_layers)} (ranked on "
        f"{f.ranking_images} other held-out images; all-int8 lost {f.all_int8_drop_on_report:.2f} points on the "
        f"{h.images} reported here). Speed in {h.runtime}, ms per {f.timing_batch} images: fp32 {f.ms['fp32']:.2f}, "
        f"all int8 {f.ms['int8']:.2f}, this file {f.ms['mixed']:.2f} ({f.ms['fp32'] / f.ms['mixed']:.2f}x fp32)."
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


# Columns of the bench table, most important first; a narrow terminal shows the first ones that fit.
_BENCH_COLUMNS = (
    "variant",
    "median ms",
    "images/s",
    "speed-up (IQR)",
    "top-1 agree",
    "output",
    "max |diff|",
    "p90 ms",
    "cold start s",
    "Average Inference Time (seconds)",
    "% peak",
    "build s",
)
_BENCH_WIDTHS = {80: 6, 100: 7, 120: 9}  # terminal width -> columns shown (all of them above 120)


def _bench_cells(t) -> dict[str, object]:
    name = f"{t.variant} {t.dtype} {t.layout}"
    if t.error:
        return {"variant": name, "output": Text(f"failed: {t.error}", style="red")}
    checked = t.correct is not None  # an archive timed alone has no eager reference
    if t.baseline:
        speed = "1.00 (baseline)"
    elif t.speedup is None:
        speed = "-"
    else:
        speed = f"{t.speedup:.2f} ({t.speedup_low:.2f}-{t.speedup_high:.2f})"
    verdict = (
        (Text("ok", style="green") if t.correct else Text("WRONG", style="bold red"))
        if checked
        else (Text("not compared", style="dim"))
    )
    return {
        "variant": name,
        "median ms": _ms(t.median_s),
        "images/s": f"{t.images_per_s:.1f}",
        "speed-up (IQR)": speed,
        "top-1 agree": f"{t.top1_agreement:.0%}" if checked else "-",
        "output": verdict,
        "max |diff|": f"{t.max_abs_diff:.2g}" if checked else "-",
        "p90 ms": _ms(t.p90_s),
        "cold start s": f"{t.cold_start_s:.3f}",
        "Average Inference Time (seconds)": f"{t.mean_s:.4f}",
        "% peak": "-" if t.share_of_peak is None else f"{t.share_of_peak:.0%}",
        "build s": "-" if t.build_s is None else f"{t.build_s:.1f}",
    }


def render_bench(result) -> None:
    """One table per device and batch size; as many columns as the terminal shows without cutting a
    number (the long form is in --json and --csv)."""
    env = result.environment
    flags = ", ".join(env.cpu_flags) or "no AMX or AVX-512"
    out.print(
        f"torch {env.torch} | {env.device} | {env.threads} threads | {env.cpu} ({flags}) | python {env.python} | "
        f"warm-up {env.warmup}, {env.iters} timed calls",
        highlight=False,
    )
    if env.matmul_gflops:
        rates = ", ".join(f"{d} {g:.0f}" for d, g in env.matmul_gflops.items())
        out.print(
            f"device limit: {env.matmul_n}x{env.matmul_n} matmul {rates} GFLOP/s; the model: "
            f"{env.gflop_per_image:.2f} GFLOP per image (forward); % peak = images/s x that / the rate "
            "of the row's dtype",
            highlight=False,
        )
    shown = next((n for width, n in sorted(_BENCH_WIDTHS.items()) if out.width <= width), len(_BENCH_COLUMNS))
    columns = _BENCH_COLUMNS[:shown]
    groups: dict[tuple[str, int, int], list] = {}
    for t in result.timings:
        groups.setdefault((t.device, t.batch_size, t.image_size), []).append(t)
    for (device, batch, size), rows in groups.items():
        table = Table(title=f"{device}, batch {batch}, {size}x{size}", title_justify="left")
        for col in columns:
            table.add_column(
                col,
                justify="left" if col in ("variant", "output") else "right",
                no_wrap=col not in ("variant", "output"),
            )
        for t in rows:
            cells = _bench_cells(t)
            table.add_row(*[cells.get(col, "-") for col in columns])
        out.print(table)
        if str(batch) in result.fastest_correct:
            out.print(
                f"fastest correct at batch {batch}: {result.fastest_correct[str(batch)].describe()}", highlight=False
            )
    if len(columns) < len(_BENCH_COLUMNS):
        out.print(
            f"(more columns in a wider terminal, or with --json / --csv: {', '.join(_BENCH_COLUMNS[shown:])})",
            highlight=False,
            style="dim",
        )
    if result.csv:
        out.print(f"CSV: {result.csv}")


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------


def render_predict(result) -> None:
    table = Table(
        title=f"{result.model} ({result.image_size} px, {result.resize}, {result.device})", title_justify="left"
    )
    table.add_column("file", overflow="fold")
    table.add_column("size")
    table.add_column("top classes")
    for p in result.predictions:
        if p.error:
            table.add_row(p.file, "-", Text(f"error: {p.error}", style="red"))
            continue
        guesses = ", ".join(f"{g.label} {g.probability:.1%}" for g in p.top)
        table.add_row(p.file, f"{p.width}x{p.height} {p.mode}", guesses)
    out.print(table)
    if result.csv:
        out.print(f"CSV: {result.csv}")


# ---------------------------------------------------------------------------------------------
# ablate and compare
# ---------------------------------------------------------------------------------------------


def render_ablate(result) -> None:
    title = (
        f"Residual branches removed: {result.checkpoint} on {result.dataset} {result.split} "
        f"({result.images} images), intact top-1 {_pct(result.intact_top1)}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("removed")
    table.add_column("kind")
    table.add_column("top-1", justify="right")
    table.add_column("drop (points)", justify="right")
    for r in result.rows:
        table.add_row(r.name, r.kind, _pct(r.top1), f"{100 * r.drop:+.2f}")
    out.print(table)
    if result.plot:
        out.print(f"plot: {result.plot}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def render_compare(result) -> None:
    table = Table(title=f"Runs, sorted by {result.sort}", title_justify="left")
    table.add_column("run", overflow="fold")
    for key in result.differing:
        table.add_column(key.split(".", 1)[-1])
    for col in ("best val top-1", "test top-1", "epochs done", "time", "img/s"):
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row(
            r.run,
            *[_fmt(r.settings.get(k)) for k in result.differing],
            f"{_pct(r.best_val_top1)} (ep {r.best_epoch})" if r.best_epoch else _pct(r.best_val_top1),
            _pct(r.test_top1),
            str(r.epochs),
            "-" if r.time_s is None else f"{r.time_s:.1f} s",
            "-" if r.images_per_s is None else f"{r.images_per_s:.0f}",
        )
    out.print(table)
    if not result.differing:
        out.print("The runs have the same settings (apart from names and paths).")
    if result.plot:
        out.print(f"plot: {result.plot}")


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(result) -> None:
    """The effective settings as TOML that ``--config`` reads back; each value's origin as a comment."""
    lines = [f"# effective settings; config file: {result.config_file or 'none'}"]
    section = None
    for s in result.settings:
        if s.section != section:
            section = s.section
            lines += ["", f"[{section}]"]
        if s.value is None:  # TOML has no null: an unset value stays a comment
            lines.append(f"# {s.key} = (unset)  # {s.origin}")
        else:
            lines.append(f"{s.key} = {_toml_value(s.value)}  # {s.origin}")
    out.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def render_lr_find(result) -> None:
    table = Table(show_header=False, title="Learning-rate range test", title_justify="left")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("suggested lr", f"{result.suggested_lr:.3g} (steepest descent of the smoothed loss)")
    table.add_row("minimum / 10", f"{result.min_loss_lr_div10:.3g}")
    stopped = ", stopped: the loss diverged" if result.stopped_early else ""
    table.add_row("steps", f"{result.steps} from {result.start_lr:g} to {result.lrs[-1]:.3g}{stopped}")
    if result.plot:
        table.add_row("plot", result.plot)
    table.add_row("device", result.device)
    out.print(table)
