"""Summable sufficient statistics of an experiment's metric, one per variant.

Each is a frozen dataclass whose ``+`` merges two disjoint sets of units (partitions of the
lake, days, the cells of a multivariate test that share a factor's level): every field is a
plain sum over units, so addition is exact, associative and commutative. The field names are
snake_case and match GrowthBook's gbstats so results can be cross-checked on the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

__all__ = ["CupedStatistic", "RatioStatistic", "SampleStatistic", "Statistic", "statistic_type"]


def _sample_variance(n: int, total: float, squares: float) -> float:
    """Unbiased sample variance from (n, Σx, Σx²); 0 when it is undefined (n ≤ 1)."""
    if n <= 1:
        return 0.0
    # Σ(x - x̄)² = Σx² - (Σx)²/n, divided by n - 1 (Bessel's correction)
    value = (squares - total * total / n) / (n - 1)
    if not math.isfinite(value):
        return math.nan  # the sums overflowed: no variance rather than a false zero
    return max(value, 0.0)


def _sample_covariance(n: int, sum_x: float, sum_y: float, sum_xy: float) -> float:
    """Unbiased sample covariance from (n, Σx, Σy, Σxy); 0 when n ≤ 1."""
    if n <= 1:
        return 0.0
    return (sum_xy - sum_x * sum_y / n) / (n - 1)


class _Summable:
    """Field-wise addition and the JSON mapping shared by every statistic."""

    kind: ClassVar[str]

    def __add__(self, other: object) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        values = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return type(self)(**values)

    @classmethod
    def zero(cls) -> Self:
        """The statistic of no units (the identity of ``+``)."""
        return cls(**{f.name: (0 if f.name == "n" else 0.0) for f in fields(cls)})  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Build from the JSON shape (snake_case keys, extra keys ignored); a field that is
        missing raises ``KeyError``, so validate first (``analysis.validate_request`` does)."""
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            raw = data[f.name]
            values[f.name] = int(raw) if f.name == "n" else float(raw)
        return cls(**values)

    def as_mapping(self) -> dict[str, int | float]:
        """The JSON shape: every field under its own name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SampleStatistic(_Summable):
    """Units, Σx and Σx² of a per-unit value (a conversion is a 0/1 value: ``sum_squares = sum``)."""

    kind: ClassVar[str] = "mean"

    n: int
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        """x̄ (NaN without units)."""
        return self.sum / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """Unbiased per-unit variance s² (0 when n ≤ 1)."""
        return _sample_variance(self.n, self.sum, self.sum_squares)


@dataclass(frozen=True, slots=True)
class RatioStatistic(_Summable):
    """A ratio metric Σ numerator / Σ denominator over units (revenue per session), with the
    sums needed by the delta method."""

    kind: ClassVar[str] = "ratio"

    n: int
    sum: float
    sum_squares: float
    denominator_sum: float
    denominator_sum_squares: float
    main_denominator_sum_product: float

    @property
    def numerator(self) -> SampleStatistic:
        """The per-unit numerator alone."""
        return SampleStatistic(self.n, self.sum, self.sum_squares)

    @property
    def denominator(self) -> SampleStatistic:
        """The per-unit denominator alone."""
        return SampleStatistic(self.n, self.denominator_sum, self.denominator_sum_squares)

    @property
    def covariance(self) -> float:
        """Sample covariance of numerator and denominator per unit."""
        return _sample_covariance(
            self.n, self.sum, self.denominator_sum, self.main_denominator_sum_product
        )

    @property
    def mean(self) -> float:
        """Σ numerator / Σ denominator (NaN when the denominator sums to 0)."""
        return self.sum / self.denominator_sum if self.denominator_sum != 0 else math.nan

    @property
    def variance(self) -> float:
        """Per-unit variance of the ratio by the delta method (0 when it is undefined).

        For R = M̄/D̄: Var ≈ s²_M/μ_D² - 2·cov(M,D)·μ_M/μ_D³ + μ_M²·s²_D/μ_D⁴ (the first-order
        Taylor expansion of M̄/D̄; Deng, Knoblich & Lu 2018, "Applying the delta method in
        metric analytics"); divide by n for the variance of the ratio itself.
        """
        if self.n <= 1 or self.denominator_sum == 0:
            return 0.0
        mean_m = self.sum / self.n
        mean_d = self.denominator_sum / self.n
        value = (
            self.numerator.variance / (mean_d * mean_d)
            - 2.0 * self.covariance * mean_m / (mean_d * mean_d * mean_d)
            + mean_m * mean_m * self.denominator.variance / (mean_d * mean_d * mean_d * mean_d)
        )
        return max(value, 0.0)  # NaN (overflowed sums) stays NaN: max keeps its first argument


@dataclass(frozen=True, slots=True)
class CupedStatistic(_Summable):
    """A per-unit value with a pre-exposure covariate: the sums CUPED needs (Deng et al. 2013)."""

    kind: ClassVar[str] = "cuped"

    n: int
    sum: float
    sum_squares: float
    covariate_sum: float
    covariate_sum_squares: float
    main_covariate_sum_product: float

    @property
    def post(self) -> SampleStatistic:
        """The metric alone, unadjusted."""
        return SampleStatistic(self.n, self.sum, self.sum_squares)

    @property
    def covariate(self) -> SampleStatistic:
        """The pre-exposure covariate alone."""
        return SampleStatistic(self.n, self.covariate_sum, self.covariate_sum_squares)

    @property
    def covariance(self) -> float:
        """Sample covariance of metric and covariate per unit."""
        return _sample_covariance(
            self.n, self.sum, self.covariate_sum, self.main_covariate_sum_product
        )

    @property
    def mean(self) -> float:
        """The unadjusted mean of the metric (NaN without units)."""
        return self.post.mean

    @property
    def variance(self) -> float:
        """The unadjusted per-unit variance of the metric."""
        return self.post.variance

    def adjusted_mean(self, theta: float) -> float:
        """Ȳ - θ·X̄, the CUPED-adjusted mean."""
        return self.post.mean - theta * self.covariate.mean

    def adjusted_variance(self, theta: float) -> float:
        """Var(Y - θX) = s²_Y + θ²·s²_X - 2θ·cov(Y, X), per unit."""
        if self.n <= 1:
            return 0.0
        value = (
            self.post.variance
            + theta * theta * self.covariate.variance
            - 2.0 * theta * self.covariance
        )
        return max(value, 0.0)


Statistic = SampleStatistic | RatioStatistic | CupedStatistic


def statistic_type(metric_type: str, cuped: bool) -> type[Statistic]:
    """The statistic class a metric of ``metric_type`` (``mean``/``ratio``) uses."""
    if metric_type == "ratio":
        return RatioStatistic
    return CupedStatistic if cuped else SampleStatistic
