"""The 95% intervals beside export's int8 agreement and accuracy drop, and beside eval's top-1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cifar_resnet_cli.core.intervals import Z95, paired_difference_interval, proportion_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"), [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 10, 0.0, 0.2775)]
)
def test_wilson_interval_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    """Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II."""
    assert proportion_interval(k, n) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(990, 1000), (7, 20), (1, 3), (500, 1000)])
def test_wilson_bounds_are_the_proportions_the_observation_is_z_errors_from(k: int, n: int) -> None:
    """The score interval's defining property: at each bound p, |k/n - p| = z sqrt(p (1 - p) / n)."""
    for p in proportion_interval(k, n):
        assert abs(k / n - p) == pytest.approx(Z95 * math.sqrt(p * (1 - p) / n), rel=1e-9)


def test_wilson_interval_at_the_edges() -> None:
    low, high = proportion_interval(1000, 1000)
    assert high == 1.0 and 0.995 < low < 0.997  # 0 failures in 1,000: not certainty
    assert proportion_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        proportion_interval(11, 10)


def test_paired_interval_matches_the_published_example() -> None:
    """Fagerland, Lydersen and Laake (2014), airway reactivity data: 1 pair improved only under the
    first condition, 7 only under the second, of 21; Tango's interval -0.517 to -0.026."""
    assert paired_difference_interval(1, 7, 21) == pytest.approx((-0.517, -0.026), abs=5e-4)


def _quartic_roots(n: int, b: int, c: int) -> list[float]:
    """The limits of Tango's interval in closed form: real roots of the quartic of Yang, Sun and Hardin
    (2012, Statistics in Medicine 31:4047), an independent route to the same numbers."""
    g = Z95**2
    m0 = n**2 * (n / g + 1) ** 2
    m1 = -n * (b - c) * (n / g + 1) * (4 * n / g + 1)
    m2 = 2 * n * (b - c) ** 2 * (3 * n / g + 2) / g - n**2 * ((b + c) / g + 1)
    m3 = n * (b - c) * (2 * (b + c) / g + 1) - (b - c) ** 3 * (4 * n / g + 1) / g
    m4 = (b - c) ** 2 * ((b - c) ** 2 / g - (b + c)) / g
    return [r.real for r in np.roots([m0, m1, m2, m3, m4]) if abs(r.imag) < 1e-9]


@pytest.mark.parametrize(("b", "c", "n"), [(13, 8, 1000), (12, 10, 1000), (3, 0, 300), (40, 5, 500), (1, 7, 21)])
def test_paired_interval_bounds_are_roots_of_the_closed_form(b: int, c: int, n: int) -> None:
    low, high = paired_difference_interval(b, c, n)
    assert low < (b - c) / n < high
    roots = _quartic_roots(n, b, c)
    for bound in (low, high):
        assert min(abs(bound - r) for r in roots) < 1e-9


def test_paired_interval_without_discordant_images_is_not_a_point() -> None:
    # No image changed its answer among 500: the drop is 0 but could be up to z^2 / (n + z^2) either way,
    # the same 0.76 points as the Wilson upper bound of 0 in 500 (not the single point 0).
    low, high = paired_difference_interval(0, 0, 500)
    assert high == pytest.approx(Z95**2 / (500 + Z95**2)) == pytest.approx(proportion_interval(0, 500)[1])
    assert low == pytest.approx(-high)
    # Five losses and no gains in 1,000: a drop, surely; the same counts in 10,000: a narrower interval.
    assert paired_difference_interval(5, 0, 1000)[0] > 0
    assert paired_difference_interval(5, 0, 10_000)[1] < paired_difference_interval(5, 0, 1000)[1]
    with pytest.raises(ValueError):
        paired_difference_interval(600, 500, 1000)
