"""A/A simulation: peeking daily at experiments with no true effect.

Thousands of simulated experiments where both arms draw from the same distribution, looked at
after each of 14 days. An experiment is a false positive when *any* look is significant at
alpha = 0.05. The always-valid sequential p-value keeps that rate at or below alpha; the
naive Welch t-test repeated at every look does not (while at a single, final look it is
calibrated, which shows the inflation comes from the peeking alone).

Monte-Carlo margin: the observed rate of E experiments has standard error
sqrt(alpha(1 - alpha)/E); the sequential rate may exceed alpha by at most 3 of those. The
naive rate must be at least twice alpha (the theory for 14 looks gives roughly 0.15-0.25).
The simulation is vectorised over experiments and looks through the statistics module's array
functions, and seeded, so it is deterministic and runs in well under a second.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from personify.experiments.statistics import (
    difference,
    difference_variance,
    sequential_p_value,
    welch_dof,
    welch_p_value,
)
from personify.experiments.sufficient import SampleStatistic

ALPHA = 0.05
LOOKS = 14
TUNING = 5000.0
Array = npt.NDArray[np.float64]


def simulate(scenario: str, experiments: int, daily: int, seed: int) -> tuple[Array, Array, Array]:
    """Cumulative (n, Σx, Σx²) per arm, experiment and look: arrays of shape (2, E, LOOKS)."""
    rng = np.random.default_rng(seed)
    if scenario == "conversion":
        # 0/1 conversions: the daily sum is binomial and Σx² = Σx
        sums = rng.binomial(daily, 0.08, size=(2, experiments, LOOKS)).astype(np.float64)
        squares = sums
    else:
        values = rng.lognormal(2.0, 0.8, size=(2, experiments, LOOKS, daily))  # skewed revenue
        sums = values.sum(axis=3)
        squares = (values * values).sum(axis=3)
    n = np.broadcast_to(daily * np.arange(1.0, LOOKS + 1), sums.shape)
    return n, sums.cumsum(axis=2), squares.cumsum(axis=2)


def false_positive_rates(
    scenario: str, experiments: int, daily: int, seed: int
) -> dict[str, float]:
    n, sums, squares = simulate(scenario, experiments, daily, seed)
    means = sums / n
    variances = (squares - sums * sums / n) / (n - 1.0)  # what SampleStatistic.variance computes
    probe = SampleStatistic(int(n[0, 0, 3]), float(sums[0, 0, 3]), float(squares[0, 0, 3]))
    assert variances[0, 0, 3] == pytest.approx(probe.variance, rel=1e-12)

    estimate = difference(means[0], means[0], means[1], relative=False)
    variance = difference_variance(
        variances[0], means[0], n[0], variances[1], means[1], n[1], relative=False
    )
    naive = welch_p_value(estimate, variance, welch_dof(variances[0], n[0], variances[1], n[1]))
    always_valid = sequential_p_value(estimate, variance, n[0] + n[1], ALPHA, TUNING)
    return {
        "naive_any_look": float(np.mean((naive < ALPHA).any(axis=1))),
        "naive_final_look": float(np.mean(naive[:, -1] < ALPHA)),
        "sequential_any_look": float(np.mean((always_valid < ALPHA).any(axis=1))),
    }


@pytest.mark.parametrize(
    ("scenario", "experiments", "daily"),
    [("conversion", 4000, 200), ("revenue", 1000, 100)],
)
def test_peeking_daily(scenario: str, experiments: int, daily: int) -> None:
    rates = false_positive_rates(scenario, experiments, daily, seed=20240917)
    margin = 3.0 * math.sqrt(ALPHA * (1.0 - ALPHA) / experiments)
    assert rates["sequential_any_look"] <= ALPHA + margin, rates
    assert rates["naive_any_look"] >= 2.0 * ALPHA, rates
    # a single look is fine for the t-test: the inflation is the peeking's
    assert abs(rates["naive_final_look"] - ALPHA) <= margin, rates
