"""95% intervals for what ``export`` and ``eval`` measure on a finite set of images.

An int8 archive's top-1 agreement with fp32 and its accuracy drop are counts over about a thousand
validation images, so they carry sampling error of the same size as the goals they are held to
(10 of 1,000 images is 1.0 point); so does a checkpoint's top-1 on a test split. The intervals say
how far a figure could move on other images from the same distribution.

- :func:`proportion_interval` is the Wilson score interval (Wilson, 1927), which stays inside [0, 1]
  and keeps its coverage near 0 and 1, where an agreement of 99% lives (the normal approximation
  ``p +- z sqrt(p(1-p)/n)`` does not).
- :func:`paired_difference_interval`: the two models are scored on the *same* images, so their
  difference is judged by the images exactly one of them gets right (as in McNemar's test), with
  Tango's (1998) asymptotic score interval, one of those that Fagerland, Lydersen and Laake (2014)
  recommend for paired proportions. It stays sensible where simpler ones collapse: with no image
  changing its answer among 500, the drop's interval is +-0.76 points, not the single point 0.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def proportion_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``, as fractions."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(only_first: int, only_second: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Interval of accuracy(first) - accuracy(second) on the same ``n`` images, as fractions, from the
    images only the first gets right (``b``) and those only the second gets right (``c``).

    Tango's score statistic for a difference ``d``: ``(b - c - n d) / sqrt(n (2 q + d (1 - d)))``, with
    ``q`` the maximum-likelihood probability of "only the second" given ``d``; the interval is every
    ``d`` where it lies within +-z. The statistic falls as ``d`` rises, so each bound is found by bisection.
    """
    b, c = only_first, only_second
    if n <= 0 or min(b, c) < 0 or b + c > n:
        raise ValueError(f"need 0 <= {b} + {c} <= {n} images")

    def score(d: float) -> float:
        # q solves the likelihood equation under the constraint: 2n q^2 + B q + C = 0, its root in [0, 1].
        B = -b - c + (2 * n - b + c) * d
        C = -c * d * (1 - d)
        q = (math.sqrt(max(B * B - 8 * n * C, 0.0)) - B) / (4 * n)
        excess = b - c - n * d
        variance = n * (2 * q + d * (1 - d))
        if variance <= 0:
            return math.copysign(math.inf, excess) if excess else 0.0
        return excess / math.sqrt(variance)

    def root(low: float, high: float, target: float) -> float:
        for _ in range(100):  # 2^-100 of an interval of width 2: far below float resolution
            mid = (low + high) / 2
            low, high = (mid, high) if score(mid) > target else (low, mid)
        return (low + high) / 2

    estimate = (b - c) / n
    return root(-1.0, estimate, z), root(estimate, 1.0, -z)
