"""The classic probabilistic baseline for churn and lifetime value: BG/NBD for how often and
how long a customer buys, Gamma-Gamma for how much they spend per order.

Both read transactions only, summarised per customer at a cut-off T (``summarise``):

* ``frequency`` x: repeat purchases (orders after the first);
* ``recency`` t_x: time from the first order to the last (0 without repeats);
* ``age`` T: time from the first order to the cut-off;
* ``monetary`` m_x: the mean value of the repeat orders (0 without repeats).

**BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy way"). While active,
a customer buys as a Poisson process of rate lambda, lambda ~ Gamma(r, alpha) across customers; after each
purchase they drop out with probability p, p ~ Beta(a, b). The likelihood of (x, t_x, T) is
the paper's equation 6; the parameters maximise its sum (scipy's L-BFGS-B on log-parameters).
It gives the expected number of purchases in (T, T + t] given the history (equation 10), the
probability of being alive at T, and so a churn probability: the chance of no purchase in
(T, T + t]: ``1 - P(alive) + P(alive) ((alpha + T) / (alpha + T + t)) ** (r + x)`` (dropped out by
T, or alive and buying none: a customer drops out only right after a purchase, and an alive
one's rate is Gamma(r + x, alpha + T) given the history).

**Gamma-Gamma** (Fader & Hardie 2013, "The Gamma-Gamma model of monetary value"). A
customer's order values are Gamma(p, nu), nu ~ Gamma(q, gamma) across customers, independent of
their purchase process. Fitted by maximum likelihood on customers with repeats; the expected
order value given x orders averaging m_x is ``(gamma + m_x x) p / (p x + q - 1)``.

Expected revenue in (T, T + t] = expected purchases x expected order value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

from personify.errors import ValidationError

__all__ = [
    "BgNbd",
    "CustomerSummary",
    "GammaGamma",
    "fit_bg_nbd",
    "fit_gamma_gamma",
    "summarise",
]

Vector = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True, slots=True)
class CustomerSummary:
    """Every customer's frequency, recency, age and mean repeat order value (same order)."""

    frequency: Vector
    recency: Vector
    age: Vector
    monetary: Vector


def summarise(orders: Sequence[Sequence[tuple[float, float]]], cut_off: float) -> CustomerSummary:
    """Each customer's summary at ``cut_off`` from their orders, ``(time, value)`` pairs in
    any unit of time (days, weeks); orders after the cut-off are left out. A customer with no
    order by then is summarised as age 0 (and fits nothing)."""
    frequency, recency, age, monetary = [], [], [], []
    for customer in orders:
        known = sorted((t, v) for t, v in customer if t <= cut_off)
        if not known:
            frequency.append(0.0)
            recency.append(0.0)
            age.append(0.0)
            monetary.append(0.0)
            continue
        first = known[0][0]
        repeats = known[1:]
        frequency.append(float(len(repeats)))
        recency.append(float(known[-1][0] - first))
        age.append(float(cut_off - first))
        monetary.append(float(np.mean([v for _, v in repeats])) if repeats else 0.0)
    return CustomerSummary(
        np.array(frequency), np.array(recency), np.array(age), np.array(monetary)
    )


def _check(summary: CustomerSummary) -> None:
    x, t_x, t = summary.frequency, summary.recency, summary.age
    if not (len(x) == len(t_x) == len(t)) or len(x) == 0:
        raise ValidationError("no customers to fit", code="no_customers")
    if (x < 0).any() or (t_x < 0).any() or (t_x > t + 1e-9).any():
        raise ValidationError(
            "each customer needs 0 <= recency <= age and frequency >= 0",
            code="invalid_summary",
        )


@dataclass(frozen=True, slots=True)
class BgNbd:
    """A fitted BG/NBD model (module docstring): r, alpha, a, b, and the fit's log-likelihood."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")

    def expected_purchases(self, t: Vector | float) -> Vector:
        """E[X(t)]: the expected purchases of a new customer in (0, t] (equation 9)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        t = np.asarray(t, dtype=np.float64)
        z = t / (alpha + t)
        return np.asarray(
            (a + b - 1) / (a - 1) * (1 - ((alpha / (alpha + t)) ** r) * hyp2f1(r, b, a + b - 1, z))
        )

    def p_alive(self, x: Vector, t_x: Vector, age: Vector) -> Vector:
        """P(alive at T | x, t_x, T): 1 for a customer without repeats."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, age = (np.asarray(v, dtype=np.float64) for v in (x, t_x, age))
        ratio = (a / (b + x - 1)) * ((alpha + age) / (alpha + t_x)) ** (r + x)
        alive = 1.0 / (1.0 + np.where(x > 0, ratio, 0.0))
        return np.asarray(alive)

    def conditional_expected_purchases(
        self, t: float, x: Vector, t_x: Vector, age: Vector
    ) -> Vector:
        """E[Y(t) | x, t_x, T]: expected purchases in (T, T + t] given the history
        (equation 10)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, age = (np.asarray(v, dtype=np.float64) for v in (x, t_x, age))
        z = t / (alpha + age + t)
        head = (a + b + x - 1) / (a - 1)
        tail = 1 - ((alpha + age) / (alpha + age + t)) ** (r + x) * hyp2f1(
            r + x, b + x, a + b + x - 1, z
        )
        gone = np.where(x > 0, (a / (b + x - 1)) * ((alpha + age) / (alpha + t_x)) ** (r + x), 0.0)
        return np.asarray(head * tail / (1 + gone))

    def churn_probability(self, t: float, x: Vector, t_x: Vector, age: Vector) -> Vector:
        """The probability of no purchase in (T, T + t]: dropped out by T, or alive and buying
        none (Poisson with the posterior Gamma(r + x, alpha + T) rate)."""
        x, age = np.asarray(x, dtype=np.float64), np.asarray(age, dtype=np.float64)
        alive = self.p_alive(x, t_x, age)
        none_if_alive = ((self.alpha + age) / (self.alpha + age + t)) ** (self.r + x)
        return np.asarray(1.0 - alive + alive * none_if_alive)

    def score(self, summary: CustomerSummary) -> float:
        """The log-likelihood of the customers' histories under these parameters."""
        keep = summary.age > 0
        params = np.array([self.r, self.alpha, self.a, self.b])
        return float(
            _bg_nbd_log_likelihood(
                params, summary.frequency[keep], summary.recency[keep], summary.age[keep]
            ).sum()
        )

    def to_dict(self) -> dict[str, float]:
        """The parameters as JSON."""
        return {
            "r": self.r,
            "alpha": self.alpha,
            "a": self.a,
            "b": self.b,
            "logLikelihood": self.log_likelihood,
        }


def _bg_nbd_log_likelihood(params: Vector, x: Vector, t_x: Vector, age: Vector) -> Vector:
    """Each customer's log-likelihood (Fader, Hardie & Lee 2005, equation 6)."""
    r, alpha, a, b = params
    base = (
        betaln(a, b + x)
        - betaln(a, b)
        + gammaln(r + x)
        - gammaln(r)
        + r * np.log(alpha)
        - (r + x) * np.log(alpha + age)
    )
    # the second term exists only for customers with repeats
    with np.errstate(divide="ignore"):
        extra = (
            betaln(a + 1, b + x - 1)
            - betaln(a, b)
            + gammaln(r + x)
            - gammaln(r)
            + r * np.log(alpha)
            - (r + x) * np.log(alpha + t_x)
        )
    return np.asarray(np.where(x > 0, np.logaddexp(base, extra), base))


def fit_bg_nbd(summary: CustomerSummary) -> BgNbd:
    """The BG/NBD parameters that maximise the likelihood of every customer's (x, t_x, T)."""
    _check(summary)
    keep = summary.age > 0
    x, t_x, age = summary.frequency[keep], summary.recency[keep], summary.age[keep]
    if len(x) < 2:
        raise ValidationError("BG/NBD needs at least 2 customers with history", code="no_customers")
    scale = float(np.mean(age)) or 1.0

    def objective(log_params: Vector) -> float:
        params = np.exp(log_params)
        return -float(np.sum(_bg_nbd_log_likelihood(params, x, t_x, age)))

    start = np.log([1.0, scale, 1.0, 1.0])
    found = minimize(objective, start, method="L-BFGS-B", bounds=[(-10, 10)] * 4)
    r, alpha, a, b = np.exp(found.x)
    return BgNbd(float(r), float(alpha), float(a), float(b), -float(found.fun))


@dataclass(frozen=True, slots=True)
class GammaGamma:
    """A fitted Gamma-Gamma model (module docstring): p, q, gamma, and the log-likelihood."""

    p: float
    q: float
    gamma: float
    log_likelihood: float = float("nan")

    def expected_order_value(self, x: Vector, monetary: Vector) -> Vector:
        """E[Z | x orders averaging m_x]; the population mean ``gamma p / (q - 1)`` for x = 0."""
        x, m = np.asarray(x, dtype=np.float64), np.asarray(monetary, dtype=np.float64)
        p, q, gamma = self.p, self.q, self.gamma
        return np.asarray((gamma + m * x) * p / (p * x + q - 1))

    def to_dict(self) -> dict[str, float]:
        """The parameters as JSON."""
        return {"p": self.p, "q": self.q, "gamma": self.gamma, "logLikelihood": self.log_likelihood}


def _gamma_gamma_log_likelihood(params: Vector, x: Vector, m: Vector) -> Vector:
    """Each customer's log-likelihood of their mean order value given x orders (Fader &
    Hardie 2013, equation 3: the density of the mean of x Gamma(p, nu) values, nu integrated
    out)."""
    p, q, gamma = params
    return np.asarray(
        gammaln(p * x + q)
        - gammaln(p * x)
        - gammaln(q)
        + q * np.log(gamma)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(gamma + m * x)
    )


def fit_gamma_gamma(summary: CustomerSummary) -> GammaGamma:
    """The Gamma-Gamma parameters that maximise the likelihood of the customers' mean repeat
    order values (customers with repeats and a positive mean only)."""
    _check(summary)
    keep = (summary.frequency > 0) & (summary.monetary > 0)
    x, m = summary.frequency[keep], summary.monetary[keep]
    if len(x) < 2:
        raise ValidationError(
            "Gamma-Gamma needs at least 2 customers with repeat orders of some value",
            code="no_customers",
        )

    def objective(log_params: Vector) -> float:
        return -float(np.sum(_gamma_gamma_log_likelihood(np.exp(log_params), x, m)))

    start = np.log([1.0, 2.0, float(np.mean(m))])
    found = minimize(objective, start, method="L-BFGS-B", bounds=[(-10, 12)] * 3)
    p, q, gamma = np.exp(found.x)
    return GammaGamma(float(p), float(q), float(gamma), -float(found.fun))
