"""The 95% intervals export stores beside an int8 archive's agreement and accuracy drop."""

from __future__ import annotations

import math

import pytest

from cifar_resnet_cli.intervals import Z95, paired_difference_interval, proportion_interval


@pytest.mark.parametrize(("k", "n", "low", "high"), [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                                     (0, 10, 0.0, 0.2775)])  # fmt: skip
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


def test_paired_difference_comes_from_the_images_only_one_model_gets_right() -> None:
    # 12 images only fp32 gets right, 10 only int8, of 1,000: drop 0.2 points, and the 22 discordant
    # images decide how sure that is; the same counts among 10,000 images give a ten times narrower interval.
    low, high = paired_difference_interval(12, 10, 1000)
    wide_low, wide_high = paired_difference_interval(12, 10, 10_000)
    assert low < 0.002 < high and high - low == pytest.approx(10 * (wide_high - wide_low))
    # At each bound, the share of the discordant images that favour the first model is a Wilson bound.
    for bound, share in zip((low, high), proportion_interval(12, 22), strict=True):
        assert (bound * 1000 / 22 + 1) / 2 == pytest.approx(share)
    even_low, even_high = paired_difference_interval(7, 7, 500)
    assert even_low == pytest.approx(-even_high) and even_high > 0
    assert paired_difference_interval(0, 0, 1000) == (0.0, 0.0)
    assert paired_difference_interval(5, 0, 1000)[0] > 0  # five losses and no gains: a drop, surely
    with pytest.raises(ValueError):
        paired_difference_interval(600, 500, 1000)
