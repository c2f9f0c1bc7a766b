"""The BG/NBD and Gamma-Gamma baseline on data simulated from the models themselves: the
fits recover the parameters, and the papers' conditional expectations match what the
simulated customers then really do."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from personify.errors import ValidationError
from personify.predict.baseline import (
    BgNbd,
    CustomerSummary,
    GammaGamma,
    fit_bg_nbd,
    fit_gamma_gamma,
    summarise,
)

# the CDNOW estimates of both papers (weeks, dollars)
TRUE_BG = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)
TRUE_GG = GammaGamma(p=6.25, q=3.74, gamma=15.44)
HOLDOUT = 39.0


def simulate(
    customers: int, seed: int
) -> tuple[list[list[tuple[float, float]]], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Customers drawn from both models: their orders (time, value) over their first
    27-39 weeks plus a 39-week holdout, each one's cut-off, and each one's true mean order
    value (p / nu)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(TRUE_BG.r, 1 / TRUE_BG.alpha, customers)
    drop = rng.beta(TRUE_BG.a, TRUE_BG.b, customers)
    nu = rng.gamma(TRUE_GG.q, 1 / TRUE_GG.gamma, customers)
    cut_offs = rng.uniform(27, 39, customers)
    orders = []
    for i in range(customers):
        scale = 1 / nu[i]
        mine = [(0.0, float(rng.gamma(TRUE_GG.p, scale)))]
        now = 0.0
        end = cut_offs[i] + HOLDOUT
        while True:
            now += rng.exponential(1 / lam[i])
            if now > end:
                break
            mine.append((now, float(rng.gamma(TRUE_GG.p, scale))))
            # after each repeat purchase the customer drops out with probability p
            if rng.random() < drop[i]:
                break
        orders.append(mine)
    return orders, cut_offs, TRUE_GG.p / nu


def summaries(
    orders: list[list[tuple[float, float]]], cut_offs: np.ndarray[Any, Any]
) -> tuple[CustomerSummary, np.ndarray[Any, Any]]:
    """Each customer's summary at their own cut-off, and their purchases in the holdout."""
    parts = [summarise([o], c) for o, c in zip(orders, cut_offs, strict=True)]
    summary = CustomerSummary(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in CustomerSummary.__slots__)
    )
    later = np.array(
        [
            sum(1 for t, _ in o if c < t <= c + HOLDOUT)
            for o, c in zip(orders, cut_offs, strict=True)
        ],
        dtype=np.float64,
    )
    return summary, later


@pytest.fixture(scope="module")
def shop() -> tuple[CustomerSummary, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    orders, cut_offs, true_value = simulate(20_000, seed=7)
    summary, later = summaries(orders, cut_offs)
    return summary, later, true_value


def test_bg_nbd_recovers_its_parameters(shop: Any) -> None:
    summary, _, _ = shop
    fitted = fit_bg_nbd(summary)
    assert fitted.r == pytest.approx(TRUE_BG.r, rel=0.15)
    assert fitted.alpha == pytest.approx(TRUE_BG.alpha, rel=0.2)
    assert fitted.a == pytest.approx(TRUE_BG.a, rel=0.35)
    assert fitted.b == pytest.approx(TRUE_BG.b, rel=0.5)
    # the fit is a maximum: the true parameters are no more likely
    assert fitted.log_likelihood == pytest.approx(fitted.score(summary))
    assert fitted.log_likelihood >= TRUE_BG.score(summary) - 1e-6


def test_conditional_expectations_match_what_customers_then_do(shop: Any) -> None:
    summary, later, _ = shop
    x, t_x, age = summary.frequency, summary.recency, summary.age
    expected = TRUE_BG.conditional_expected_purchases(HOLDOUT, x, t_x, age)
    # overall, and for customers of each number of repeats
    assert expected.mean() == pytest.approx(later.mean(), rel=0.05)
    for low, high in ((0, 0), (1, 1), (2, 3), (4, 1_000)):
        inside = (x >= low) & (x <= high)
        assert inside.sum() > 300
        assert expected[inside].mean() == pytest.approx(later[inside].mean(), rel=0.12), (low, high)
    churn = TRUE_BG.churn_probability(HOLDOUT, x, t_x, age)
    assert churn.mean() == pytest.approx((later == 0).mean(), abs=0.015)
    alive = TRUE_BG.p_alive(x, t_x, age)
    assert ((alive > 0) & (alive <= 1)).all()
    assert (alive[x == 0] == 1).all()


def test_unconditional_expectation_of_a_new_customer() -> None:
    orders, _, _ = simulate(20_000, seed=8)
    # every customer observed from their first order for 39 weeks
    counts = np.array([sum(1 for t, _ in o if 0 < t <= 39.0) for o in orders])
    assert float(TRUE_BG.expected_purchases(39.0)) == pytest.approx(counts.mean(), rel=0.05)
    # nothing happens in no time, and more time never means fewer purchases
    assert float(TRUE_BG.expected_purchases(0.0)) == pytest.approx(0.0, abs=1e-12)
    steps = TRUE_BG.expected_purchases(np.array([1.0, 10.0, 50.0, 200.0]))
    assert (np.diff(steps) > 0).all()


def test_gamma_gamma_recovers_its_parameters_and_expected_values(shop: Any) -> None:
    summary, _, true_value = shop
    fitted = fit_gamma_gamma(summary)
    assert fitted.p == pytest.approx(TRUE_GG.p, rel=0.25)
    assert fitted.q == pytest.approx(TRUE_GG.q, rel=0.25)
    assert fitted.gamma == pytest.approx(TRUE_GG.gamma, rel=0.35)
    repeaters = summary.frequency > 0
    expected = TRUE_GG.expected_order_value(summary.frequency, summary.monetary)
    # the conditional expectation of a customer's order value, against their true mean value
    assert expected[repeaters].mean() == pytest.approx(true_value[repeaters].mean(), rel=0.03)
    error = np.abs(expected[repeaters] - true_value[repeaters]).mean()
    naive = np.abs(summary.monetary[repeaters] - true_value[repeaters]).mean()
    assert error < naive  # shrinking towards the population beats a customer's own mean
    # without repeats: the population mean, gamma p / (q - 1)
    population = TRUE_GG.gamma * TRUE_GG.p / (TRUE_GG.q - 1)
    assert float(TRUE_GG.expected_order_value(0.0, 0.0)) == pytest.approx(population)


def test_summaries_and_bad_input() -> None:
    summary = summarise(
        [[(0.0, 10.0), (3.0, 20.0), (5.0, 40.0), (12.0, 99.0)], [], [(4.0, 5.0)]], 10.0
    )
    assert summary.frequency.tolist() == [2.0, 0.0, 0.0]
    assert summary.recency.tolist() == [5.0, 0.0, 0.0]
    assert summary.age.tolist() == [10.0, 0.0, 6.0]
    assert summary.monetary.tolist() == [30.0, 0.0, 0.0]
    with pytest.raises(ValidationError) as caught:
        fit_gamma_gamma(summary)
    assert caught.value.code == "no_customers"
    bad = CustomerSummary(np.array([1.0]), np.array([5.0]), np.array([3.0]), np.array([1.0]))
    with pytest.raises(ValidationError) as caught:
        fit_bg_nbd(bad)
    assert caught.value.code == "invalid_summary"
