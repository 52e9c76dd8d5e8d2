"""95% intervals for what ``export`` measures on a finite set of held-out images.

An int8 archive's top-1 agreement with fp32 and its accuracy drop are counts over about a thousand
validation images, so they carry sampling error of the same size as the goals they are held to
(10 of 1,000 images is 1.0 point): the intervals say how far the figure could move on other images
from the same distribution.

- :func:`proportion_interval` is the Wilson score interval (Wilson, 1927), which stays inside [0, 1]
  and keeps its coverage near 0 and 1, where an agreement of 99% lives (the normal approximation
  ``p +- z sqrt(p(1-p)/n)`` does not).
- :func:`paired_difference_interval`: the two models are scored on the *same* images, so only the
  images exactly one of them gets right carry information about their difference (as in McNemar's
  test). Given those ``m`` discordant images, the number that only the first gets right is binomial;
  its Wilson interval maps linearly onto the difference. Conditional on ``m``: with no discordant
  images the interval is the single point 0.
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
    images only the first gets right and those only the second gets right."""
    m = only_first + only_second
    if n <= 0 or m > n or min(only_first, only_second) < 0:
        raise ValueError(f"need 0 <= {only_first} + {only_second} <= {n} images")
    if m == 0:
        return 0.0, 0.0
    low, high = proportion_interval(only_first, m, z)
    return (2 * low - 1) * m / n, (2 * high - 1) * m / n
