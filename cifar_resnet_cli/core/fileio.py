"""Atomic writes and hashing: a file is either complete or absent, never half-written."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from .errors import CifarResnetError, OutputError

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "no permission to write there: write elsewhere or change its permissions",
    errno.EPERM: "no permission to write there: write elsewhere or change its permissions",
    errno.ENOTDIR: "a file stands where a folder is expected: choose another path",
    errno.EISDIR: "a folder stands where a file is expected: give a file name",
}
TEMP_SUFFIX = ".tmp"


def output_error(exc: OSError, path: Path, action: str = "write") -> OutputError:
    """One line for an OSError while writing ``path``: what failed, and what to do."""
    reason = exc.strerror or str(exc)
    return OutputError(
        f"cannot {action} {path}: {reason}", _HINTS.get(exc.errno or 0, "check that the place is writable")
    )


def check_output_dir(folder: Path, what: str = "output folder") -> None:
    """Prove ``folder`` accepts a file now, before long work starts: make and remove a temporary file."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write into {what} {folder}: it is a file, not a folder", "choose a folder")
    try:
        fd, tmp = temporary_beside(folder / "probe")
    except OSError as exc:
        raise output_error(exc, folder, "write into") from None
    os.close(fd)
    Path(tmp).unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path: Path, *, force: bool, what: str = "output") -> None:
    """Refuse an output path whose directory is missing or not writable, or which exists without ``force``."""
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {path.parent} is a file, not a folder", "choose another path")
    if not path.parent.is_dir():
        raise CifarResnetError(
            f"cannot write {what} {path}: directory {path.parent} does not exist",
            f"create it first (mkdir -p {path.parent})",
        )
    if path.is_dir():
        raise CifarResnetError(f"cannot write {what} {path}: it is a directory", "give a file name")
    if path.exists() and not force:
        raise CifarResnetError(f"{what} {path} already exists", "pass --force to overwrite it")
    check_output_dir(path.parent)


def temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s directory (so the final rename is atomic), with the
    permissions a plain ``open`` would give (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    return fd, tmp


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed writer left in ``folder`` (``.NAME.XXXX.tmp``).

    Only call this where no other process writes (a locked run folder)."""
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    On any failure the temporary file is removed and ``path`` is untouched; an OSError (full disk,
    read-only file system) becomes an :class:`OutputError`."""
    try:
        fd, tmp = temporary_beside(path)
    except OSError as exc:
        raise output_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise output_error(exc, path) from None
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
