"""What core code reports about long work, without knowing how it is shown.

Core functions take a :class:`Tasks` and call ``begin``/``advance``/``end`` around every step that
can take more than a moment (a split evaluated batch by batch, features extracted, a benchmark
variant compiled and timed, an archive verified); ``report.TaskBars`` draws them on stderr with
Rich, and :class:`NoTasks` ignores them. Core code never prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Tasks(Protocol):
    def begin(self, description: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def end(self) -> None: ...


class NoTasks:
    def begin(self, description: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def end(self) -> None: ...


@contextmanager
def task(tasks: Tasks | None, description: str, total: int | None = None) -> Iterator[Tasks]:
    """``with task(tasks, "evaluating", 10) as t: ... t.advance()``: begun, and ended however it exits."""
    tasks = tasks or NoTasks()
    tasks.begin(description, total)
    try:
        yield tasks
    finally:
        tasks.end()
