"""Churn and lifetime-value metrics against values worked out by hand on small arrays, and
degenerate inputs answered with error codes rather than exceptions."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from personify.predict.metrics import (
    churn_metrics,
    clv_metrics,
    cumulative_gains,
    population_stability_index,
    reliability_curve,
)


def test_a_perfect_ranking_has_auc_one_and_a_reversed_one_zero() -> None:
    churned = np.array([0, 0, 1, 1])
    rising = np.array([0.1, 0.2, 0.8, 0.9])
    perfect = churn_metrics(churned, rising)
    reversed_ = churn_metrics(churned, rising[::-1])
    assert perfect["roc_auc"] == 1.0
    assert perfect["pr_auc"] == 1.0
    assert reversed_["roc_auc"] == 0.0
    # average precision of the reversed order: the churners come 3rd and 4th, so the
    # precision at each is 1/3 and 2/4
    assert reversed_["pr_auc"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert "error" not in perfect


def test_constant_half_on_balanced_labels() -> None:
    result = churn_metrics(np.array([0, 1, 0, 1]), np.full(4, 0.5))
    assert result["users"] == 4
    assert result["churn_rate"] == 0.5
    assert result["brier"] == pytest.approx(0.25)
    assert result["log_loss"] == pytest.approx(math.log(2))
    assert result["roc_auc"] == 0.5


def test_brier_and_log_loss_by_hand() -> None:
    churned = np.array([1, 0, 1])
    probability = np.array([0.9, 0.2, 0.6])
    result = churn_metrics(churned, probability)
    assert result["brier"] == pytest.approx((0.1**2 + 0.2**2 + 0.4**2) / 3)
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6)) / 3
    assert result["log_loss"] == pytest.approx(expected)


def test_log_loss_is_finite_for_a_confident_wrong_answer() -> None:
    result = churn_metrics(np.array([1, 0]), np.array([0.0, 1.0]))
    # clipped to [1e-15, 1 - 1e-15]: each user costs about -ln(1e-15), not infinity (the
    # upper bound, in floating point, leaves 1 - (1 - 1e-15) slightly under 1e-15)
    expected = -(math.log(1e-15) + math.log(1 - (1 - 1e-15))) / 2
    assert result["log_loss"] == pytest.approx(expected)
    assert result["log_loss"] == pytest.approx(-math.log(1e-15), rel=1e-4)


def test_reliability_bins() -> None:
    churned = np.array([0, 1, 0, 1, 1, 0, 1])
    probability = np.array([0.0, 0.05, 0.3, 0.35, 0.95, 1.0, 0.999])
    table = churn_metrics(churned, probability)["reliability"]
    assert [row["bin"] for row in table] == list(range(10))
    assert sum(row["users"] for row in table) == len(churned)
    assert table[0]["lower"] == 0.0
    assert table[0]["upper"] == 0.1
    assert table[9]["upper"] == 1.0
    # 0.0 and 0.05 in the first bin; 0.3 sits on a bound and goes up, with 0.35
    assert table[0] == {
        "bin": 0,
        "lower": 0.0,
        "upper": 0.1,
        "users": 2,
        "mean_predicted": pytest.approx(0.025),
        "observed_rate": 0.5,
    }
    assert table[3]["users"] == 2
    assert table[3]["mean_predicted"] == pytest.approx(0.325)
    # the last bin also holds p == 1
    assert table[9]["users"] == 3
    assert table[9]["observed_rate"] == pytest.approx(2 / 3)
    empty = table[5]
    assert empty["users"] == 0
    assert empty["mean_predicted"] is None
    assert empty["observed_rate"] is None


def test_reliability_curve_with_other_bin_counts() -> None:
    table = reliability_curve(np.array([0, 1, 1]), np.array([0.2, 0.6, 0.7]), bins=2)
    assert [(row["lower"], row["upper"], row["users"]) for row in table] == [
        (0.0, 0.5, 1),
        (0.5, 1.0, 2),
    ]
    assert table[1]["observed_rate"] == 1.0


def test_one_class_is_an_error_code_and_keeps_what_it_can() -> None:
    result = churn_metrics(np.array([1, 1, 1]), np.array([0.9, 0.8, 0.5]))
    assert result["error"] == "ONE_CLASS"
    assert result["roc_auc"] is None
    assert result["pr_auc"] is None
    assert result["churn_rate"] == 1.0
    assert result["brier"] == pytest.approx((0.01 + 0.04 + 0.25) / 3)
    assert result["log_loss"] is not None


def test_no_users_is_an_error_code() -> None:
    result = churn_metrics(np.array([]), np.array([]))
    assert result["users"] == 0
    assert result["error"] == "NO_USERS"
    for key in ("churn_rate", "roc_auc", "pr_auc", "brier", "log_loss"):
        assert result[key] is None
    assert sum(row["users"] for row in result["reliability"]) == 0


def test_churn_results_are_plain_json() -> None:
    result = churn_metrics(np.array([0, 1, 1, 0]), np.array([0.3, 0.6, 0.9, 0.1]))
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize(
    ("churned", "probability", "message"),
    [
        ([0, 1, 1], [0.5, 0.5], "same length"),
        ([0, 1], [0.5, float("nan")], "non-finite"),
        ([0, 1], [0.5, 1.5], r"\[0, 1\]"),
        ([0, 2], [0.5, 0.5], "only 0 and 1"),
    ],
)
def test_caller_mistakes_raise(churned: list[int], probability: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        churn_metrics(np.array(churned), np.array(probability))


def test_clv_errors_by_hand() -> None:
    revenue = np.array([0.0, 10.0, 5.0, 0.0])
    expected_revenue = np.array([1.0, 8.0, 6.0, 0.5])
    orders = np.array([0.0, 2.0, 1.0, 0.0])
    expected_orders = np.array([0.5, 1.0, 1.0, 0.0])
    result = clv_metrics(revenue, expected_revenue, orders, expected_orders)
    assert result["users"] == 4
    # absolute errors 1, 2, 1, 0.5; squared 1, 4, 1, 0.25
    assert result["revenue_mae"] == pytest.approx(4.5 / 4)
    assert result["revenue_rmse"] == pytest.approx(math.sqrt(6.25 / 4))
    assert result["orders_mae"] == pytest.approx(1.5 / 4)
    assert result["total_revenue"] == 15.0
    assert result["predicted_total_revenue"] == 15.5
    assert "error" not in result
    assert json.loads(json.dumps(result)) == result


def test_spearman_of_a_monotone_transform_is_one() -> None:
    revenue = np.array([3.0, 1.0, 20.0, 7.0, 0.5])
    result = clv_metrics(revenue, np.log1p(revenue) * 4, np.ones(5), np.ones(5))
    assert result["spearman"] == pytest.approx(1.0)
    reversed_ = clv_metrics(revenue, -revenue, np.ones(5), np.ones(5))
    assert reversed_["spearman"] == pytest.approx(-1.0)


def test_top_decile_share() -> None:
    # 20 users: the top decile is the 2 highest predictions, users 4 and 11, who spent
    # 30 + 10 of a total 100
    revenue = np.full(20, 60.0 / 18)
    revenue[4], revenue[11] = 30.0, 10.0
    predicted = np.arange(20, dtype=np.float64)
    predicted[4], predicted[11] = 100.0, 90.0
    result = clv_metrics(revenue, predicted, np.zeros(20), np.zeros(20))
    assert result["total_revenue"] == pytest.approx(100.0)
    assert result["top_decile_revenue_share"] == pytest.approx(0.4)


def test_top_decile_takes_ceil_of_a_tenth_and_breaks_ties_by_input_order() -> None:
    # 11 users: ceil(11 / 10) = 2 users; all predictions tie, so the first two are taken
    revenue = np.array([5.0, 3.0] + [1.0] * 9)
    result = clv_metrics(revenue, np.ones(11), np.zeros(11), np.zeros(11))
    assert result["top_decile_revenue_share"] == pytest.approx(8.0 / 17.0)


def test_constant_predictions_and_zero_revenue_are_error_codes() -> None:
    constant = clv_metrics(np.array([1.0, 4.0]), np.array([2.0, 2.0]), np.zeros(2), np.zeros(2))
    assert constant["error"] == "CONSTANT"
    assert constant["spearman"] is None
    assert constant["revenue_mae"] == pytest.approx(1.5)
    nothing = clv_metrics(np.zeros(3), np.array([1.0, 2.0, 3.0]), np.zeros(3), np.zeros(3))
    assert nothing["error"] == "CONSTANT"
    assert nothing["top_decile_revenue_share"] is None
    assert nothing["total_revenue"] == 0.0


def test_clv_with_no_users() -> None:
    empty = np.array([])
    result = clv_metrics(empty, empty, empty, empty)
    assert result["users"] == 0
    assert result["error"] == "NO_USERS"
    assert all(value is None for key, value in result.items() if key not in ("users", "error"))


def test_clv_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="expected_orders=2"):
        clv_metrics(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(2))


def test_cumulative_gains_by_hand() -> None:
    churned = np.array([0, 1, 0, 1])
    score = np.array([0.1, 0.9, 0.3, 0.2])
    curve = cumulative_gains(churned, score, points=4)
    # targeted by score: 0.9 (churner), 0.3, 0.2 (churner), 0.1
    assert curve == [(0.0, 0.0), (0.25, 0.5), (0.5, 0.5), (0.75, 1.0), (1.0, 1.0)]


def test_cumulative_gains_of_revenue_and_defaults() -> None:
    revenue = np.array([1.0, 2.0, 3.0, 4.0])
    curve = cumulative_gains(revenue, revenue)
    assert len(curve) == 21
    assert curve[0] == (0.0, 0.0)
    assert curve[-1] == (1.0, 1.0)
    assert curve[10] == pytest.approx((0.5, 0.7))
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(curve))


def test_tied_scores_give_the_expected_gain_of_a_random_order() -> None:
    curve = cumulative_gains(np.array([1, 1, 0, 0]), np.full(4, 0.5), points=4)
    assert curve == [(0.0, 0.0), (0.25, 0.25), (0.5, 0.5), (0.75, 0.75), (1.0, 1.0)]


def test_cumulative_gains_with_nothing_to_capture_is_empty() -> None:
    assert cumulative_gains(np.zeros(3), np.array([0.1, 0.2, 0.3])) == []
    assert cumulative_gains(np.array([]), np.array([])) == []


def test_psi_of_identical_and_shifted_samples() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(size=5000)
    assert population_stability_index(reference, reference) == pytest.approx(0.0, abs=1e-12)
    same = population_stability_index(reference, rng.normal(size=5000))
    assert same is not None
    assert same < 0.1
    shifted = population_stability_index(reference, rng.normal(loc=1.0, size=5000))
    assert shifted is not None
    assert shifted > 0.25


def test_psi_bins_few_distinct_values_and_missing_ones() -> None:
    # a binary feature gets two bins (0 and 1) plus the NaN bin, not ten
    reference = np.array([0.0] * 50 + [1.0] * 50)
    current = np.array([0.0] * 40 + [1.0] * 40 + [np.nan] * 20)
    psi = population_stability_index(reference, current)
    e = np.array([0.5, 0.5, 1e-4])
    a = np.array([0.4, 0.4, 0.2])
    assert psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    # an empty bin counts with the floor, so the answer stays finite
    moved = population_stability_index(reference, np.ones(10))
    assert moved is not None
    assert math.isfinite(moved)
    assert moved > 0.25


def test_psi_of_an_empty_sample_is_none() -> None:
    assert population_stability_index(np.array([]), np.array([1.0, 2.0])) is None
    assert population_stability_index(np.array([1.0, 2.0]), np.array([])) is None
