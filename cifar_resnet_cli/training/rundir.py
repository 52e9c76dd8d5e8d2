"""Run directories: ``runs/<name>``, auto-numbered, every file written atomically."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..core.errors import CifarResnetError, OutputError
from ..core.fileio import atomic_write_bytes, check_output_dir, output_error

try:  # POSIX: an advisory lock that the kernel drops when the process dies, however it dies
    import fcntl
except ImportError:  # Windows has msvcrt's byte-range lock instead, dropped at exit as well
    fcntl = None
try:
    import msvcrt
except ImportError:
    msvcrt = None


def _try_lock(fd: int) -> None:
    """Lock ``fd`` without waiting; OSError when another process holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif msvcrt is not None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        raise CifarResnetError(
            "cannot lock the run folder: this platform has neither fcntl nor msvcrt", "train on Linux, macOS or Windows"
        )


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 64).decode(errors="replace").strip() or "unknown"
    except OSError:  # Windows: the holder's locked byte cannot be read
        return "unknown"


SETTINGS = "settings.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LAST = "last.safetensors"
LAST_STATE = "last.state.safetensors"
BEST = "best.safetensors"
LAST_EMA = "last.ema.safetensors"  # with --ema-decay: the averaged weights at the last checkpoint
TOP = "top"  # with --keep-top-k: top/epoch-NNNN.safetensors, the k best epochs
SUMMARY = "summary.json"
CURVES = "curves.png"
LOCK = ".lock"


def create_run_dir(root: Path, name: str) -> Path:
    """Make ``root/name``, or ``name2``, ``name3``, ... if it exists (``exp1-2`` for a name ending in a
    digit, so that it cannot be mistaken for ``exp12``); never reuses a directory."""
    if not name or "/" in name or name in (".", ".."):
        raise CifarResnetError(f"invalid run name {name!r}", "use a plain name such as cifar10-frozen")
    if root.exists() and not root.is_dir():
        raise OutputError(f"--runs-dir {root} is a file, not a folder", "pass a folder as --runs-dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create --runs-dir {root} ({exc.strerror or exc})", "pass a writable --runs-dir"
        ) from None
    check_output_dir(root, "--runs-dir")
    sep = "-" if name[-1].isdigit() else ""  # exp1, exp1-2 (not exp12); train, train2
    for i in range(1, 10_000):
        path = root / (name if i == 1 else f"{name}{sep}{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise output_error(exc, path, "create") from None
    raise CifarResnetError(f"too many runs named {name} in {root}")


def strict(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None, so that it is strict JSON (``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(strict(obj), indent=2, allow_nan=False) + "\n").encode())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(strict(r), allow_nan=False) + "\n" for r in rows).encode())


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """The per-epoch history as ``metrics.jsonl`` (one JSON object a line) and ``metrics.csv`` (one
    header row, one row an epoch; an empty cell for a missing value), both rewritten whole."""
    write_jsonl(run_dir / METRICS, rows)
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(strict(rows))
    atomic_write_bytes(run_dir / METRICS_CSV, buf.getvalue().encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CifarResnetError(f"{path} is missing", "is this a run directory made by `cifar-resnet train`?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CifarResnetError(f"{path} is not valid JSON ({exc})") from None


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a damaged line is named by file and number."""
    if not path.is_file():
        return []
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CifarResnetError(f"{path} is not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CifarResnetError(
                f"{path}, line {number}, is not valid JSON ({exc.msg})",
                "the file is damaged; resuming the run rewrites it from its checkpoint",
            ) from None
        if not isinstance(row, dict):
            raise CifarResnetError(f"{path}, line {number}, is not a JSON object")
        rows.append(row)
    return rows


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while a process trains in it; a second process is refused with the PID.

    An ``flock`` belongs to the open file: the kernel releases it when the process ends in any way
    (kill -9 included), so a stale lock cannot outlive its holder. The file is removed on release;
    a process that locked a file which was removed meanwhile tries again on the new one.
    """
    path = run_dir / LOCK
    while True:
        fd = _lock_file(path, run_dir)
        if os.fstat(fd).st_ino == _inode(path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        if fcntl is not None:  # POSIX: remove while still holding it, so no one locks a file about to vanish
            path.unlink(missing_ok=True)
            os.close(fd)  # releases the lock
        else:  # Windows cannot remove an open file
            os.close(fd)
            with suppress(OSError):
                path.unlink(missing_ok=True)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _lock_file(path: Path, run_dir: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise output_error(exc, path, "create the lock") from None
    try:
        _try_lock(fd)
    except CifarResnetError:
        os.close(fd)
        raise
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EACCES)):
            raise output_error(exc, path, "lock") from None
        raise CifarResnetError(
            f"{run_dir} is in use: process {holder} is training in it",
            "wait for it to finish, or stop it first (kill -TERM saves a resumable state)",
        ) from None
    return fd
