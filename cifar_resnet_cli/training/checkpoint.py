"""Checkpoints of a training run: at every instant, one complete and consistent generation on disk.

The unit of a checkpoint is ``last.state.safetensors``: the weights, the optimiser state, the RNG,
the progress (epoch, step, the unfinished epoch's sums, the best score) and the metrics history of
every finished epoch, in ONE file written atomically (temporary file, fsync, rename). A kill or a
full disk at any instant leaves either the previous generation or the new one, never a mixture.
``last.safetensors``, ``best.safetensors``, ``last.ema.safetensors``, ``top/`` and ``metrics.jsonl``/``.csv``
are derived from it, written after it, and rewritten from it when the run resumes, so that none of them
can disagree with it for long. With an EMA of the weights (``--ema-decay``) the generation holds both;
``best`` and ``top/`` hold the weights that validation scored (the EMA ones unless ``--no-ema-eval``).

Also here: when to checkpoint inside an epoch, and SIGINT/SIGTERM handling (finish the step, save,
exit 130 / 143). The run folder's lock is :func:`rundir.locked`.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..core.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from ..core.fileio import atomic_write_bytes
from ..model.weights import WeightsMeta, check_tensors, nonfinite_tensors, read_weights, save_weights, tensor_digest
from . import rundir
from .sinks import MetricsSinks

STATE_FORMAT = "2"  # 2: weights, optimiser, progress and history in one file (1 held no weights)
_HEADER_KEYS = ("progress", "history", "param_groups", "optim_scalars", "scaler", "weights_meta")


@dataclass
class Progress:
    """Where a run stands at a checkpoint."""

    epoch: int  # epochs finished
    step_in_epoch: int  # steps done in the next epoch; 0 at an epoch end
    global_step: int
    best_top1: float
    best_epoch: int
    partial: dict[str, float] | None = None  # the unfinished epoch's sums over all ranks
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics rows of the finished epochs

    def where(self) -> str:
        return f"epoch {self.epoch}" if not self.step_in_epoch else f"epoch {self.epoch + 1}, step {self.step_in_epoch}"


@dataclass
class Generation:
    """A checkpoint read back: everything an exact resume needs."""

    weights: dict[str, torch.Tensor]
    meta: WeightsMeta
    progress: Progress
    optimizer_tensors: dict[str, torch.Tensor]
    header: dict[str, Any]
    rng: torch.Tensor
    ema: dict[str, torch.Tensor] | None = None


def state_bytes(
    weights: dict[str, torch.Tensor],
    meta: WeightsMeta,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    ema: dict[str, torch.Tensor] | None = None,
) -> bytes:
    """One generation as safetensors bytes, with a digest of every tensor in its header."""
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors.update({f"ema.{k}": v for k, v in (ema or {}).items()})
    tensors["rng.torch"] = torch.get_rng_state()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    fields = {**asdict(progress)}
    history = fields.pop("history")
    header = {
        "format_version": STATE_FORMAT,
        "progress": fields,
        "history": history,
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "weights_meta": meta.to_header(),
    }
    text = {k: v if isinstance(v, str) else json.dumps(rundir.strict(v), allow_nan=False) for k, v in header.items()}
    text["tensors_sha256"] = tensor_digest(tensors)
    return st_save(tensors, metadata=text)


def read_generation(run_dir: Path) -> Generation:
    """The run's checkpoint, checked: readable, this format, digest right, weights finite."""
    path = run_dir / rundir.LAST_STATE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: {run_dir} has no checkpoint to resume from",
            "start a new run (a run killed before its first checkpoint has none)",
        )
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        raw = json.loads(data[8 : 8 + n].decode("utf-8")).get("__metadata__") or {}
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable resume state ({exc})", "start a new run") from None
    if raw.get("format_version") != STATE_FORMAT:
        raise CheckpointError(
            f"{path} has resume-state format {raw.get('format_version')}, this version reads {STATE_FORMAT}",
            "resume it with the version that made it, or start a new run",
        )
    if "tensors_sha256" not in raw or any(k not in raw for k in _HEADER_KEYS):
        raise CheckpointError(f"{path} is damaged: its header is incomplete", "start a new run")
    check_tensors(tensors, raw["tensors_sha256"], path)
    try:
        header = {k: json.loads(raw[k]) for k in _HEADER_KEYS}
        progress = Progress(**header["progress"], history=header["history"])
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged: its header cannot be read ({exc})", "start a new run") from None
    meta = WeightsMeta.from_header(header["weights_meta"], path)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    ema = {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")} or None
    return Generation(weights, meta, progress, optim, header, tensors["rng.torch"], ema)


def restore_optimizer(optimizer: torch.optim.Optimizer, gen: Generation) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in gen.optimizer_tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in gen.header["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    saved = gen.header["param_groups"]
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in saved] != [len(g["params"]) for g in current]:
        raise CheckpointError("the saved optimizer state does not fit this model's trainable parameters")
    chosen = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": saved})
    for group, impl in zip(optimizer.param_groups, chosen, strict=True):
        group.update(impl)  # the implementation is this device's choice, not the saved run's
        for param in group["params"]:
            _match_layout(optimizer.state.get(param, {}), param)


def _match_layout(entry: dict[str, Any], param: torch.Tensor) -> None:
    """Give the parameter's memory layout back to its state tensors (saved contiguous).

    torch's fused SGD/AdamW kernels walk a parameter and its state as flat storage: a momentum
    buffer in NCHW beside a channels-last weight pairs the wrong elements, silently (torch 2.14).
    """
    for key, value in entry.items():
        if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
            entry[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def meta_at(template: WeightsMeta, progress: Progress) -> WeightsMeta:
    return template.model_copy(update={"trained_epochs": progress.epoch, "trained_steps": progress.global_step})


class Checkpointer:
    """Saves generations of one run (rank 0 writes; every rank checks) and names the last good one."""

    def __init__(
        self,
        run_dir: Path,
        template: WeightsMeta,
        *,
        write: bool,
        sinks: MetricsSinks | None = None,
        best_from_ema: bool = False,
        keep_top_k: int = 0,
    ) -> None:
        self.run_dir, self.template, self.write = run_dir, template, write
        self.sinks = sinks or MetricsSinks(run_dir, tensorboard=False)
        self.best_from_ema, self.keep_top_k = best_from_ema, keep_top_k
        self.committed: Progress | None = None

    def last_good(self) -> str:
        if self.committed is None:
            return "none was saved yet"
        return f"{self.run_dir / rundir.LAST} ({self.committed.where()})"

    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        progress: Progress,
        ema: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Commit a generation, then derive last, best, top-k and metrics.jsonl from it.

        Non-finite weights or optimiser state are never written: the run stops with the last good
        checkpoint named instead.
        """
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        bad = (
            nonfinite_tensors(weights)
            or nonfinite_tensors(ema or {})
            or [
                f"optimizer state {i}"
                for i, s in optimizer.state_dict()["state"].items()
                if nonfinite_tensors({k: v for k, v in s.items() if isinstance(v, torch.Tensor)})
            ]
        )
        if bad:
            raise TrainingDiverged(
                f"the weights became non-finite ({', '.join(bad[:3])}) by {progress.where()}; they were not saved; "
                f"last good checkpoint: {self.last_good()}",
                "lower --lr, add --warmup-epochs or --label-smoothing, or turn off --amp fp16",
            )
        meta = meta_at(self.template, progress)
        if self.write:
            data = state_bytes(weights, meta, optimizer, scaler, progress, ema)
            atomic_write_bytes(self.run_dir / rundir.LAST_STATE, data)  # the commit
        self.committed = progress
        if self.write:
            self._derive(weights, ema, meta, progress, only_stale=False)

    def repair(self, gen: Generation) -> list[str]:
        """After a kill between the commit and the derived files: rewrite whichever is stale."""
        self.committed = gen.progress
        if not self.write:
            return []
        return self._derive(gen.weights, gen.ema, meta_at(self.template, gen.progress), gen.progress, only_stale=True)

    def _derive(
        self,
        weights: dict[str, torch.Tensor],
        ema: dict[str, torch.Tensor] | None,
        meta: WeightsMeta,
        p: Progress,
        *,
        only_stale: bool,
    ) -> list[str]:
        scored = ema if ema is not None and self.best_from_ema else weights  # what validation measured
        epoch_end = p.step_in_epoch == 0 and p.epoch > 0
        wanted = [(rundir.LAST, weights), *([(rundir.LAST_EMA, ema)] if ema is not None else [])]
        if epoch_end and p.best_epoch == p.epoch:
            wanted.append((rundir.BEST, scored))
        if epoch_end and p.epoch in self.top_epochs(p):
            wanted.append((f"{rundir.TOP}/epoch-{p.epoch:04d}.safetensors", scored))
        written = []
        for name, tensors in wanted:
            if not (only_stale and self._holds(name, p)):
                (self.run_dir / name).parent.mkdir(exist_ok=True)
                save_weights(self.run_dir / name, tensors, meta)
                written.append(name)
        self._prune_top(p)
        self.sinks.write(p.history)
        return written

    def top_epochs(self, p: Progress) -> list[int]:
        """The ``keep_top_k`` best finished epochs by the validation score (--select-by; the later ones
        without validation)."""
        if not self.keep_top_k:
            return []
        rows = [(_score(h) if _score(h) is not None else h["epoch"], -h["epoch"], h["epoch"]) for h in p.history]
        return [epoch for *_, epoch in sorted(rows, reverse=True)[: self.keep_top_k]]

    def _prune_top(self, p: Progress) -> None:
        folder = self.run_dir / rundir.TOP
        if not self.keep_top_k or not folder.is_dir():
            return
        keep = {f"epoch-{e:04d}.safetensors" for e in self.top_epochs(p)}
        for file in folder.glob("epoch-*.safetensors"):
            if file.name not in keep:
                file.unlink(missing_ok=True)

    def _holds(self, name: str, progress: Progress) -> bool:
        try:
            return read_weights(self.run_dir / name)[1].trained_steps == progress.global_step
        except CheckpointError:
            return False


class CheckpointClock:
    """When to save inside an epoch: every N steps, or every M seconds (rank 0's clock decides)."""

    def __init__(self, every_steps: int | None, every_s: float | None, clock: Callable[[], float]) -> None:
        self.every_steps, self.every_s, self.clock = every_steps, every_s, clock
        self.reset()

    def reset(self) -> None:
        self.steps, self.since = 0, self.clock()

    def tick(self) -> bool:
        self.steps += 1
        if self.every_steps is not None and self.steps >= self.every_steps:
            return True
        return self.every_s is not None and self.clock() - self.since >= self.every_s


@dataclass
class StopRequest:
    """Set by the first SIGINT or SIGTERM; the loop saves after the current step and stops."""

    signum: int | None = None
    resume_hint: str = "resume it with cifar-resnet train --resume RUN_DIR"

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def stop_on_signals(note: Callable[[str], None]) -> Iterator[StopRequest]:
    """SIGINT (Ctrl-C) and SIGTERM (batch schedulers, docker stop) ask for a clean stop; a second
    one stops at once, leaving the last checkpoint as it was."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, _frame: Any) -> None:
        if request.signum is not None:
            raise TrainingInterrupted(
                f"stopped at once by a second {signal.Signals(signum).name}; the last checkpoint is intact",
                request.resume_hint,
                signum=signum,
            )
        request.signum = signum
        note(f"{request.name}: saving a resumable state after this step (send it again to stop at once)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _score(row: dict) -> float | None:
    """An epoch's selection score: ``val_score`` (top-1 or balanced accuracy), else, in runs from before
    it was recorded, top-1."""
    return row.get("val_score") if row.get("val_score") is not None else row.get("val_top1")
