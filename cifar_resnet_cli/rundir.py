"""Run directories: ``runs/<name>``, auto-numbered, every file written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CifarResnetError
from .fileio import atomic_write_bytes

SETTINGS = "settings.json"
METRICS = "metrics.jsonl"
LAST = "last.safetensors"
LAST_STATE = "last.state.safetensors"
BEST = "best.safetensors"
SUMMARY = "summary.json"
CURVES = "curves.png"


def create_run_dir(root: Path, name: str) -> Path:
    """Make ``root/name``, or ``name2``, ``name3``, ... if it exists (never reuses a directory)."""
    if not name or "/" in name or name in (".", ".."):
        raise CifarResnetError(f"invalid run name {name!r}", "use a plain name such as cifar10-frozen")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CifarResnetError(f"cannot create {root} ({exc})", "pass a writable --runs-dir") from None
    for i in range(1, 10_000):
        path = root / (name if i == 1 else f"{name}{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CifarResnetError(f"too many runs named {name} in {root}")


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CifarResnetError(f"{path} is missing", "is this a run directory made by `cifar-resnet train`?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CifarResnetError(f"{path} is not valid JSON ({exc})") from None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
