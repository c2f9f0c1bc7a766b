"""Off-policy evaluation on simulated logs whose candidate policy's true value is known."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest

from personify.errors import ValidationError
from personify.experiments.offpolicy import (
    Estimate,
    LoggedDecision,
    evaluate_policy,
    logged_policy_value,
)

# the simulated world: four contexts, three actions, a conversion probability per pair
CONTEXTS = ["mobile", "desktop", "tablet", "tv"]
ACTIONS = ["hero", "banner", "video"]
CONTEXT_P = np.array([0.4, 0.3, 0.2, 0.1])
CONVERSION = np.array(
    [
        [0.10, 0.20, 0.05],
        [0.30, 0.10, 0.15],
        [0.05, 0.10, 0.40],
        [0.20, 0.20, 0.25],
    ]
)
# the logging policy: a bandit that explored, every action at least 15%
LOGGING = np.array(
    [
        [0.60, 0.25, 0.15],
        [0.15, 0.70, 0.15],
        [0.50, 0.30, 0.20],
        [0.34, 0.33, 0.33],
    ]
)
# the candidate: mostly the best action per context, a little of the others
CANDIDATE = np.array(
    [
        [0.10, 0.80, 0.10],
        [0.90, 0.05, 0.05],
        [0.00, 0.20, 0.80],
        [0.00, 0.00, 1.00],
    ]
)
TRUE_VALUE = float(CONTEXT_P @ (CANDIDATE * CONVERSION).sum(axis=1))
LOGGING_VALUE = float(CONTEXT_P @ (LOGGING * CONVERSION).sum(axis=1))


def candidate(context: str) -> Mapping[str, float]:
    row = CANDIDATE[CONTEXTS.index(context)]
    return {action: float(p) for action, p in zip(ACTIONS, row, strict=True) if p > 0}


def simulate(sets: int, rows: int, seed: int) -> list[list[LoggedDecision]]:
    """``sets`` independent logs of ``rows`` decisions each, drawn from the simulated world."""
    rng = np.random.default_rng(seed)
    contexts = rng.choice(len(CONTEXTS), size=(sets, rows), p=CONTEXT_P)
    # the logging policy's action by inverse CDF of its row for the context
    u = rng.random((sets, rows))
    actions = (u[..., None] > LOGGING.cumsum(axis=1)[contexts]).sum(axis=-1)
    actions = np.minimum(actions, len(ACTIONS) - 1)
    rewards = (rng.random((sets, rows)) < CONVERSION[contexts, actions]).astype(float)
    propensities = LOGGING[contexts, actions]
    return [
        [
            LoggedDecision(CONTEXTS[c], ACTIONS[a], float(r), float(p))
            for c, a, r, p in zip(contexts[s], actions[s], rewards[s], propensities[s], strict=True)
        ]
        for s in range(sets)
    ]


@pytest.fixture(scope="module")
def simulated_estimates() -> list[dict[str, Estimate]]:
    return [evaluate_policy(logs, candidate) for logs in simulate(200, 1_000, seed=17)]


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_the_95_percent_intervals_cover_the_true_value(
    simulated_estimates: list[dict[str, Estimate]], name: str
) -> None:
    covered = 0
    for estimates in simulated_estimates:
        estimate = estimates[name]
        assert estimate.error is None and estimate.ci is not None and estimate.n == 1_000
        low, high = estimate.ci
        assert low < estimate.value < high  # type: ignore[operator]
        covered += low <= TRUE_VALUE <= high
    assert covered / len(simulated_estimates) >= 0.90


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_the_estimates_centre_on_the_true_value(
    simulated_estimates: list[dict[str, Estimate]], name: str
) -> None:
    values = np.array([estimates[name].value for estimates in simulated_estimates], dtype=float)
    # the mean of 200 estimates is within four of its standard errors of the truth
    assert abs(values.mean() - TRUE_VALUE) < 4 * values.std(ddof=1) / math.sqrt(len(values))
    # and the candidate is clearly told apart from the logging policy
    assert abs(values.mean() - LOGGING_VALUE) > 0.05


def test_the_doubly_robust_interval_is_no_wider_than_ips(
    simulated_estimates: list[dict[str, Estimate]],
) -> None:
    def mean_width(name: str) -> float:
        widths = [e[name].ci[1] - e[name].ci[0] for e in simulated_estimates]  # type: ignore[index]
        return float(np.mean(widths))

    assert mean_width("dr") <= mean_width("ips")
    assert mean_width("snips") <= mean_width("ips")


def test_a_given_reward_model_is_used_and_a_true_one_narrows_the_interval() -> None:
    logs = simulate(1, 2_000, seed=3)[0]
    truth = {
        (context, action): float(CONVERSION[i, j])
        for i, context in enumerate(CONTEXTS)
        for j, action in enumerate(ACTIONS)
    }
    fitted = evaluate_policy(logs, candidate)["dr"]
    exact = evaluate_policy(logs, candidate, reward_model=truth)["dr"]
    assert exact.ci is not None and fitted.ci is not None
    assert exact.ci[1] - exact.ci[0] <= (fitted.ci[1] - fitted.ci[0]) * 1.01
    assert exact.ci[0] <= TRUE_VALUE <= exact.ci[1]
    # a model that knows nothing (every pair missing, so predicted 0) leaves DR equal to IPS
    empty = evaluate_policy(logs, candidate, reward_model={})
    assert empty["dr"] == empty["ips"]


def test_evaluating_the_logging_policy_itself_recovers_the_logged_value() -> None:
    logs = simulate(1, 3_000, seed=5)[0]

    def logging(context: str) -> Mapping[str, float]:
        row = LOGGING[CONTEXTS.index(context)]
        return dict(zip(ACTIONS, (float(p) for p in row), strict=True))

    logged = logged_policy_value(logs)
    assert logged.error is None and logged.ci is not None and logged.n == 3_000
    assert logged.value == pytest.approx(np.mean([row.reward for row in logs]))
    assert logged.ci[0] <= LOGGING_VALUE <= logged.ci[1]
    estimates = evaluate_policy(logs, logging)
    # every weight is 1: SNIPS is exactly the mean reward, IPS too
    assert estimates["snips"].value == pytest.approx(logged.value)
    assert estimates["ips"].value == pytest.approx(logged.value)
    assert estimates["ips"].ci == pytest.approx(logged.ci)


def test_doubly_robust_scores_each_half_with_the_model_fitted_on_the_other() -> None:
    # rows alternate between the halves: rows 0 and 2 are scored by the model of rows 1 and 3
    logs = [
        LoggedDecision("x", "a", 1.0, 0.5),
        LoggedDecision("x", "a", 0.0, 0.5),
        LoggedDecision("x", "b", 1.0, 0.5),
        LoggedDecision("x", "b", 1.0, 0.5),
    ]
    estimates = evaluate_policy(logs, lambda context: {"a": 1.0})
    # half 0 predicts a = 0 (row 1), half 1 predicts a = 1 (row 0); weights 2 for "a" rows:
    # contributions 0 + 2 (1 - 0), 1 + 2 (0 - 1), 0, 1, whose mean is 0.5 and sample sd sqrt(5/3)
    dr = estimates["dr"]
    assert dr.value == pytest.approx(0.5)
    half_width = 1.959963984540054 * math.sqrt(5 / 3 / 4)
    assert dr.ci == pytest.approx((0.5 - half_width, 0.5 + half_width))
    # IPS: contributions 2, 0, 0, 0; SNIPS: 2 / 4
    assert estimates["ips"].value == pytest.approx(0.5)
    assert estimates["snips"].value == pytest.approx(0.5)


def test_snips_interval_by_the_delta_method() -> None:
    logs = [
        LoggedDecision("x", "a", 1.0, 0.5),
        LoggedDecision("x", "b", 0.0, 0.5),
        LoggedDecision("x", "a", 0.0, 0.25),
        LoggedDecision("x", "b", 1.0, 0.75),
    ]
    snips = evaluate_policy(logs, lambda context: {"a": 1.0})["snips"]
    weights, rewards = np.array([2.0, 0.0, 4.0, 0.0]), np.array([1.0, 0.0, 0.0, 1.0])
    value = (weights * rewards).sum() / weights.sum()
    influence = weights * (rewards - value) / weights.mean()
    se = math.sqrt((influence**2).sum() / 3 / 4)
    assert snips.value == pytest.approx(1 / 3)
    assert snips.ci == pytest.approx(
        (value - 1.959963984540054 * se, value + 1.959963984540054 * se)
    )


def test_a_narrower_confidence_level_gives_a_narrower_interval() -> None:
    logs = simulate(1, 500, seed=9)[0]
    wide = evaluate_policy(logs, candidate, alpha=0.01)["ips"].ci
    narrow = evaluate_policy(logs, candidate, alpha=0.2)["ips"].ci
    assert wide is not None and narrow is not None
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


@pytest.mark.parametrize(
    ("logs", "code"),
    [
        ([], "NO_DATA"),
        (
            [LoggedDecision("x", "a", 1.0, 0.5), LoggedDecision("x", "b", 0.0, 0.0)],
            "ZERO_PROPENSITY",
        ),
        (
            [LoggedDecision("x", "a", 1.0, 0.5), LoggedDecision("x", "b", 0.0, 1.5)],
            "INVALID_PROPENSITY",
        ),
        (
            [LoggedDecision("x", "a", 1.0, 0.5), LoggedDecision("x", "b", 0.0, math.nan)],
            "INVALID_PROPENSITY",
        ),
        (
            [LoggedDecision("x", "a", math.inf, 0.5), LoggedDecision("x", "b", 0.0, 0.5)],
            "INVALID_REWARD",
        ),
        ([LoggedDecision("x", "a", 1.0, 0.5)], "TOO_FEW_ROWS"),
        (
            [LoggedDecision("x", "b", 1.0, 0.5), LoggedDecision("y", "b", 0.0, 0.5)],
            "NO_OVERLAP",
        ),
    ],
)
def test_degenerate_logs_give_error_codes(logs: list[LoggedDecision], code: str) -> None:
    estimates = evaluate_policy(logs, lambda context: {"a": 1.0})
    assert set(estimates) == {"ips", "snips", "dr"}
    for estimate in estimates.values():
        assert estimate == Estimate(None, None, len(logs), code)
    if code != "NO_OVERLAP":
        assert logged_policy_value(logs) == Estimate(None, None, len(logs), code)


@pytest.mark.parametrize(
    "policy",
    [
        lambda context: {"a": 0.5},
        lambda context: {"a": 1.5, "b": -0.5},
        lambda context: {"a": math.nan},
    ],
)
def test_a_policy_that_is_not_a_distribution_is_refused(policy: object) -> None:
    logs = [LoggedDecision("x", "a", 1.0, 0.5), LoggedDecision("x", "b", 0.0, 0.5)]
    with pytest.raises(ValidationError):
        evaluate_policy(logs, policy)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_alpha_outside_zero_one_is_refused(alpha: float) -> None:
    logs = [LoggedDecision("x", "a", 1.0, 0.5), LoggedDecision("x", "b", 0.0, 0.5)]
    with pytest.raises(ValidationError):
        evaluate_policy(logs, lambda context: {"a": 1.0}, alpha=alpha)
    with pytest.raises(ValidationError):
        logged_policy_value(logs, alpha=alpha)
