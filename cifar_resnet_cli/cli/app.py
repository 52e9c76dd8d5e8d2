"""The ``cifar-resnet`` program: the shared app with every command registered on it."""

from __future__ import annotations

from .commands import ablate, bench, compare, config, evaluate, export, inspect, lr_find, port, predict, train  # noqa: F401
from .common import app

__all__ = ["app", "main"]


def main() -> None:
    import warnings

    # torch >= 2.9 marks torch.jit as deprecated in favour of torch.export; TorchScript is still what
    # `export` is asked to write, and the warning on every command would only be noise.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
    app(prog_name="cifar-resnet")
