"""Interleaved timing rounds: speed ratios that hold when measured again.

Two pipelines timed one after the other (all of A, then all of B) pick up whatever the machine does
in between: another process, the CPU's clock, the page cache. Here each *round* times every
pipeline once, in the given order on even rounds and in reverse order on odd rounds (A B, B A, ...),
so a slow drift of the machine weighs on both sides alike. The ratio of each round is taken, and the
rounds go on until the ratios agree: the interquartile range of the per-round ratios within
``tolerance`` of their median, or ``max_rounds``, in which case the result says it is not stable.

The clock is a parameter (each pipeline returns what it measured), so the statistics are tested on
a fake timer.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measure:
    """The timed part of one pipeline's round: ``images`` processed in ``seconds``."""

    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, "type 7")."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class RatioStats:
    """Per-round ratios of one pipeline over the baseline, summarised."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    rounds: int
    tolerance: float

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = the middle half within 5%)."""
        return (self.q3 - self.q1) / self.median if self.median else float("inf")

    @property
    def stable(self) -> bool:
        return self.rounds >= 2 and self.spread <= self.tolerance


def ratio_stats(ratios: Sequence[float], tolerance: float = 0.05) -> RatioStats:
    if not ratios:
        raise ValueError("no rounds")
    return RatioStats(
        median=statistics.median(ratios),
        q1=quantile(ratios, 0.25),
        q3=quantile(ratios, 0.75),
        low=min(ratios),
        high=max(ratios),
        rounds=len(ratios),
        tolerance=tolerance,
    )


@dataclass
class Rounds:
    """Every pipeline's measures, round by round, and the ratios over the baseline."""

    baseline: str
    order: list[str]
    measures: dict[str, list[Measure]] = field(default_factory=dict)
    tolerance: float = 0.05

    def ratios(self, name: str) -> list[float]:
        base = self.measures[self.baseline]
        return [m.images_per_s / b.images_per_s for m, b in zip(self.measures[name], base, strict=True)]

    def stats(self, name: str) -> RatioStats:
        return ratio_stats(self.ratios(name), self.tolerance)

    def images_per_s(self, name: str) -> float:
        """The median over rounds of the pipeline's images/s."""
        return statistics.median(m.images_per_s for m in self.measures[name])

    @property
    def count(self) -> int:
        return len(self.measures[self.baseline]) if self.measures else 0

    @property
    def stable(self) -> bool:
        return all(self.stats(n).stable for n in self.order if n != self.baseline)


def interleave(
    pipelines: dict[str, Callable[[], Measure]],
    baseline: str,
    *,
    min_rounds: int = 3,
    max_rounds: int = 10,
    tolerance: float = 0.05,
    on_round: Callable[[Rounds], None] | None = None,
) -> Rounds:
    """Run rounds of every pipeline (order reversed every other round) until each ratio over
    ``baseline`` is stable within ``tolerance`` (and at least ``min_rounds`` were run), or
    ``max_rounds`` were run."""
    if baseline not in pipelines:
        raise ValueError(f"baseline {baseline!r} is not one of the pipelines")
    if not 1 <= min_rounds <= max_rounds:
        raise ValueError("need 1 <= min_rounds <= max_rounds")
    order = list(pipelines)
    result = Rounds(baseline=baseline, order=order, measures={n: [] for n in order}, tolerance=tolerance)
    for r in range(max_rounds):
        for name in order if r % 2 == 0 else reversed(order):
            result.measures[name].append(pipelines[name]())
        if on_round is not None:
            on_round(result)
        if r + 1 >= min_rounds and (len(order) == 1 or result.stable):
            break
    return result
