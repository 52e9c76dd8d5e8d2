"""``compare``: run directories side by side: the settings that differ and what they gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..core.errors import CifarResnetError
from ..measure.plots import PlotUnavailable, plot_curves
from . import rundir

# Labels, not experimental choices: never shown as "differing".
_IGNORED = {"train.name", "train.runs_dir", "data.data_dir", "device"}
SORT_KEYS = ("best_val_top1", "test_top1", "time_s", "images_per_s", "run")


class RunRow(BaseModel):
    run: str
    settings: dict[str, Any]  # only the settings that differ between the runs
    best_val_top1: float | None
    best_epoch: int | None
    test_top1: float | None
    epochs: int
    time_s: float | None
    images_per_s: float | None
    finished: bool


class CompareResult(BaseModel):
    differing: list[str]
    rows: list[RunRow]
    sort: str
    plot: str | None
    warnings: list[str]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def compare_runs(run_dirs: list[Path], *, sort: str = "best_val_top1", plot: Path | None = None) -> CompareResult:
    """Read each run's settings, metrics and summary; tabulate the differences."""
    if sort not in SORT_KEYS:
        raise CifarResnetError(f"unknown sort key {sort!r}", f"choose one of {', '.join(SORT_KEYS)}")
    runs = []
    for path in run_dirs:
        if not (path / rundir.SETTINGS).is_file():
            raise CifarResnetError(f"{path} is not a run directory (no {rundir.SETTINGS})", "pass runs/<name> folders")
        settings = _flatten(rundir.read_json(path / rundir.SETTINGS))
        history = rundir.read_jsonl(path / rundir.METRICS)
        summary = rundir.read_json(path / rundir.SUMMARY) if (path / rundir.SUMMARY).is_file() else None
        runs.append((path, settings, history, summary))
    keys = sorted({k for _, s, _, _ in runs for k in s} - _IGNORED)
    differing = [k for k in keys if len({repr(s.get(k)) for _, s, _, _ in runs}) > 1]

    rows = []
    for path, settings, history, summary in runs:
        vals = [h["val_top1"] for h in history if h.get("val_top1") is not None]
        best = max(vals) if vals else None
        rows.append(
            RunRow(
                run=str(path),
                settings={k: settings.get(k) for k in differing},
                best_val_top1=best,
                best_epoch=next((h["epoch"] for h in history if h.get("val_top1") == best), None) if vals else None,
                test_top1=summary["test_top1"] if summary else None,
                epochs=len(history),
                time_s=summary["train_time_s"] if summary else sum(h["epoch_time_s"] for h in history),
                images_per_s=summary["images_per_s"] if summary else None,
                finished=summary is not None,
            )
        )
    if sort == "run":
        rows.sort(key=lambda r: r.run)
    else:
        rows.sort(key=lambda r: (getattr(r, sort) is None, -(getattr(r, sort) or 0.0)))
    warnings = [f"{r.run} has not finished (no summary.json): no test top-1" for r in rows if not r.finished]
    plotted = None
    if plot is not None:
        try:
            plot_curves({Path(r).name: h for r, _, h, _ in runs}, plot)
            plotted = str(plot)
        except PlotUnavailable as exc:
            warnings.append(f"no plot: {exc}")
    return CompareResult(differing=differing, rows=rows, sort=sort, plot=plotted, warnings=warnings)
