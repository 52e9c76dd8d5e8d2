"""Atomic writes and hashing: a file is either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import CifarResnetError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path: Path, *, force: bool, what: str = "output") -> None:
    """Refuse an output path whose directory is missing, or which exists without ``force``."""
    if not path.parent.is_dir():
        raise CifarResnetError(
            f"cannot write {what} {path}: directory {path.parent} does not exist",
            f"create it first (mkdir -p {path.parent})",
        )
    if path.is_dir():
        raise CifarResnetError(f"cannot write {what} {path}: it is a directory", "give a file name")
    if path.exists() and not force:
        raise CifarResnetError(f"{what} {path} already exists", "pass --force to overwrite it")


def temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s directory (so the final rename is atomic), with the
    permissions a plain ``open`` would give (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
