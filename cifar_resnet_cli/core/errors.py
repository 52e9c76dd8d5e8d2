"""Known failures. Each becomes one red line on stderr and exit code 1 (see DESIGN.md)."""

from __future__ import annotations


class CifarResnetError(Exception):
    """A failure the user can fix: a bad file, missing data, a failed verification.

    ``message`` says what went wrong; ``hint`` says what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(CifarResnetError):
    """Settings that cannot work together, or a configuration file that cannot be read."""


class CheckpointError(CifarResnetError):
    """A weights file that is missing, unreadable, or of another architecture."""


class DownloadError(CifarResnetError):
    """A download that failed (offline, unreachable, wrong checksum)."""


class VerificationError(CifarResnetError):
    """A numerical check that failed: parity with torchvision, a round trip, an export."""


class DeviceError(CifarResnetError):
    """A requested device that this machine does not have."""


class OutputError(CifarResnetError):
    """An output that cannot be written: a full disk, a read-only file system, no permission."""


class TrainingInterrupted(CifarResnetError):
    """Training stopped by a signal after saving a resumable state; exits 128 + the signal number."""

    def __init__(self, message: str, hint: str | None = None, *, signum: int = 2) -> None:
        super().__init__(message, hint)
        self.exit_code = 128 + signum


class TrainingDiverged(CifarResnetError):
    """The loss, a validation score or the weights became NaN or infinite."""
