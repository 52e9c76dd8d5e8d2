"""Pictures: learning curves, ablation drops, confusion matrices (matplotlib, an optional extra).

Each function writes one PNG atomically. Without matplotlib they raise :class:`PlotUnavailable`,
which commands turn into a warning that says how to get the pictures.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import CifarResnetError
from ..core.fileio import atomic_write_bytes

INSTALL_HINT = "pip install 'cifar-resnet[plot]' (matplotlib) to get the pictures"


class PlotUnavailable(CifarResnetError):
    pass


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("matplotlib is not installed", INSTALL_HINT) from None
    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Loss, accuracy and learning rate by epoch, one line (or pair of lines) per run."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (name, history) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["train_loss"] for h in history], color=colour, label=f"{name} · training")
        if any(h.get("val_loss") is not None for h in history):
            loss_ax.plot(
                epochs, [h["val_loss"] for h in history], color=colour, linestyle="--", label=f"{name} · validation"
            )
            acc_ax.plot(epochs, [100 * h["val_top1"] for h in history], color=colour, label=f"{name} · validation")
        acc_ax.plot(
            epochs,
            [100 * h["train_top1"] for h in history],
            color=colour,
            linestyle=":",
            alpha=0.7,
            label=f"{name} · training",
        )
        lr_ax.plot(epochs, [h["lr"] for h in history], color=colour, label=name)
    loss_ax.set(title="loss (solid: training, dashed: validation)", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="top-1 accuracy", xlabel="epoch", ylabel="%")
    lr_ax.set(title="learning rate (end of epoch)", xlabel="epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize=7)
    loss_ax.set_yscale("log")
    _save(fig, path)


def plot_ablation(names: Sequence[str], drops: Sequence[float], baseline: float, path: Path) -> None:
    """Horizontal bars: top-1 lost when each block's (or stage's) residual branch is removed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(names) + 1.5))
    ax.barh(list(names)[::-1], [100 * d for d in drops][::-1], color="C3")
    ax.set(
        xlabel="top-1 drop (percentage points)", title=f"Residual branch removed (intact top-1 {100 * baseline:.2f}%)"
    )
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], names: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix (true class by row)."""
    plt = _pyplot()
    import numpy as np

    m = np.asarray(confusion, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= 20:
        ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if m[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if m[i, j] > 0.5 else "black",
                    )
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (rows sum to 1)")
    _save(fig, path)


def plot_lr_find(lrs: Sequence[float], smoothed: Sequence[float], suggested: float, path: Path) -> None:
    """The range test: smoothed loss against the learning rate (log scale), the suggestion marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(lrs, smoothed, color="C0", label="training loss (smoothed)")
    ax.axvline(suggested, color="C3", linestyle="--", label=f"suggested lr {suggested:.2g} (steepest descent)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    low = min(smoothed)
    ax.set_ylim(low - 0.05 * abs(low), min(max(smoothed), 4 * low) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
