"""The statistics of an experiment: frequentist, Bayesian and sequential comparisons of a
variant with control, CUPED, the sample-ratio-mismatch check and multiple-comparison
corrections.

Pure numpy/scipy. A comparison reduces each arm to its ``Moments`` (units, mean, per-unit
variance, unadjusted mean) and returns an ``Effect``; degenerate data (no units, zero
variance, a zero control mean for a relative effect, non-finite numbers) give an ``Effect``
whose ``error`` is an UPPERCASE code and whose numbers are NaN — nothing here raises on data.

The formulas follow GrowthBook's gbstats (0.8.0) so that the two engines agree on the same
sufficient statistics (``tests/experiments/golden/``, made by ``tools/gbstats_cases.py``):
relative effects are (μ_B - μ_A)/μ_A with delta-method variances, the Bayesian method is the
effect model with a flat prior, and the sequential method is the asymptotic confidence
sequence of Waudby-Smith et al. (2023). The array functions (``difference``,
``difference_variance``, ``welch_dof``, ``welch_p_value``, ``sequential_p_value``, …) take
numpy arrays so simulations can run thousands of experiments at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from personify.experiments.sufficient import CupedStatistic, RatioStatistic, SampleStatistic

__all__ = [
    "Effect",
    "Moments",
    "bayesian_test",
    "benjamini_hochberg",
    "cuped_moments",
    "cuped_theta",
    "difference",
    "difference_variance",
    "holm",
    "moments_of",
    "sequential_half_width",
    "sequential_p_value",
    "sequential_rho",
    "sequential_test",
    "srm_p_value",
    "welch_dof",
    "welch_p_value",
    "welch_test",
]

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike

NO_UNITS = "NO_UNITS"
ZERO_VARIANCE = "ZERO_VARIANCE"
ZERO_CONTROL_MEAN = "ZERO_CONTROL_MEAN"
NON_FINITE = "NON_FINITE"


@dataclass(frozen=True, slots=True)
class Moments:
    """What a comparison needs of one arm: units, the (possibly CUPED-adjusted) mean, its
    per-unit variance, and the unadjusted mean that relative effects divide by."""

    n: int
    mean: float
    variance: float
    baseline: float


@dataclass(frozen=True, slots=True)
class Effect:
    """A variant against control: the effect, its standard error and interval, and what the
    method adds (p-value and degrees of freedom, or chance to win and expected loss).
    ``error`` is an UPPERCASE code when the data were degenerate; the numbers are then NaN."""

    estimate: float
    standard_error: float
    ci_low: float
    ci_high: float
    p_value: float | None = None
    dof: float | None = None
    chance_to_win: float | None = None
    expected_loss: float | None = None
    error: str | None = None

    @property
    def is_significant(self) -> bool:
        """The interval excludes zero (always false for an error)."""
        return self.error is None and (self.ci_low > 0.0 or self.ci_high < 0.0)


def _failed(code: str) -> Effect:
    return Effect(math.nan, math.nan, math.nan, math.nan, error=code)


def _finite(effect: Effect) -> Effect:
    """``effect``, or a ``NON_FINITE`` error when overflow left a NaN or infinity in it."""
    numbers = [effect.estimate, effect.standard_error, effect.ci_low, effect.ci_high]
    numbers += [
        x
        for x in (effect.p_value, effect.dof, effect.chance_to_win, effect.expected_loss)
        if x is not None
    ]
    if all(math.isfinite(x) for x in numbers):
        return effect
    return _failed(NON_FINITE)


# --- arms -------------------------------------------------------------------------------


def moments_of(statistic: SampleStatistic | RatioStatistic | CupedStatistic) -> Moments:
    """The unadjusted moments of one arm (a ratio's variance by the delta method)."""
    mean = statistic.mean
    return Moments(statistic.n, mean, statistic.variance, mean)


def cuped_theta(control: CupedStatistic, variant: CupedStatistic) -> float:
    """CUPED's θ = cov(Y, X)/Var(X) over the pooled units of both arms (Deng, Xu, Kohavi &
    Walker 2013); 0 when either pooled variance is 0, which turns the adjustment off."""
    pooled = control + variant
    covariate_variance = pooled.covariate.variance
    if covariate_variance <= 0.0 or pooled.post.variance <= 0.0:
        return 0.0
    return pooled.covariance / covariate_variance


def cuped_moments(
    control: CupedStatistic, variant: CupedStatistic
) -> tuple[Moments, Moments, float, float]:
    """Both arms adjusted with the pooled θ: ``(control, variant, theta, variance_reduction)``.

    The variance reduction is 1 - Var(adjusted difference)/Var(unadjusted difference), the
    share of the absolute effect's variance that the covariate explained (0 when undefined).
    """
    theta = cuped_theta(control, variant)
    arms = []
    for arm in (control, variant):
        arms.append(
            Moments(arm.n, arm.adjusted_mean(theta), arm.adjusted_variance(theta), arm.post.mean)
        )
    reduction = 0.0
    if control.n > 0 and variant.n > 0:
        before = control.variance / control.n + variant.variance / variant.n
        after = arms[0].variance / control.n + arms[1].variance / variant.n
        if before > 0.0:
            reduction = 1.0 - after / before
    return arms[0], arms[1], theta, reduction


# --- formulas over arrays ---------------------------------------------------------------


def difference(
    mean_a: ArrayLike, baseline_a: ArrayLike, mean_b: ArrayLike, relative: bool
) -> FloatArray:
    """μ_B - μ_A, or (μ_B - μ_A)/(unadjusted) μ_A for a relative effect."""
    a = np.asarray(mean_a, dtype=np.float64)
    b = np.asarray(mean_b, dtype=np.float64)
    diff: FloatArray = b - a
    if relative:
        return diff / np.asarray(baseline_a, dtype=np.float64)
    return diff


def difference_variance(
    var_a: ArrayLike,
    baseline_a: ArrayLike,
    n_a: ArrayLike,
    var_b: ArrayLike,
    baseline_b: ArrayLike,
    n_b: ArrayLike,
    relative: bool,
) -> FloatArray:
    """The variance of the effect's estimate.

    Absolute: s²_A/n_A + s²_B/n_B. Relative, by the delta method on μ_B/μ_A - 1:
    s²_B/(μ_A²·n_B) + s²_A·μ_B²/(μ_A⁴·n_A).
    """
    va = np.asarray(var_a, dtype=np.float64)
    vb = np.asarray(var_b, dtype=np.float64)
    na = np.asarray(n_a, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    if not relative:
        result: FloatArray = va / na + vb / nb
        return result
    ma = np.asarray(baseline_a, dtype=np.float64)
    mb = np.asarray(baseline_b, dtype=np.float64)
    rel: FloatArray = vb / (ma**2 * nb) + va * mb**2 / (ma**4 * na)
    return rel


def welch_dof(var_a: ArrayLike, n_a: ArrayLike, var_b: ArrayLike, n_b: ArrayLike) -> FloatArray:
    """Welch-Satterthwaite degrees of freedom (Welch 1947) from per-unit variances."""
    va = np.asarray(var_a, dtype=np.float64)
    vb = np.asarray(var_b, dtype=np.float64)
    na = np.asarray(n_a, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    # nu = (s²_A/n_A + s²_B/n_B)² / (s⁴_A/(n_A²(n_A-1)) + s⁴_B/(n_B²(n_B-1)))
    numerator = (va / na + vb / nb) ** 2
    denominator = va**2 / (na**2 * (na - 1.0)) + vb**2 / (nb**2 * (nb - 1.0))
    dof: FloatArray = numerator / denominator
    return dof


def welch_p_value(estimate: ArrayLike, variance: ArrayLike, dof: ArrayLike) -> FloatArray:
    """Two-sided p-value of t = estimate/√variance on ``dof`` degrees of freedom."""
    t = np.abs(np.asarray(estimate, dtype=np.float64)) / np.sqrt(
        np.asarray(variance, dtype=np.float64)
    )
    # 2·P(T ≤ -|t|): the lower tail keeps precision for tiny p-values (1 - cdf would not)
    p: FloatArray = 2.0 * special.stdtr(np.asarray(dof, dtype=np.float64), -t)
    return p


def sequential_rho(alpha: float, tuning: float) -> float:
    """The mixture's rho for the tuning parameter (the total units at which the confidence
    sequence is tightest): rho² = (-2 ln alpha + ln(1 - 2 ln alpha))/tuning (Waudby-Smith
    et al. 2023, "Time-uniform central limit theory and asymptotic confidence sequences",
    eq. 161)."""
    log_alpha = math.log(alpha)
    return math.sqrt((-2.0 * log_alpha + math.log(1.0 - 2.0 * log_alpha)) / tuning)


def sequential_half_width(
    variance: ArrayLike, total_n: ArrayLike, alpha: float, tuning: float
) -> FloatArray:
    """Half width of the always-valid (1 - alpha) interval after ``total_n`` units of both arms.

    With V = N·Var(estimate): √V · √(2(N·rho² + 1)/(N²·rho²) · ln(√(N·rho² + 1)/alpha))
    (Waudby-Smith et al. 2023, eq. 9, the two-sided normal-mixture boundary).
    """
    n = np.asarray(total_n, dtype=np.float64)
    rho2 = sequential_rho(alpha, tuning) ** 2
    spread = n * np.asarray(variance, dtype=np.float64)
    growth = n * rho2 + 1.0
    width: FloatArray = np.sqrt(spread) * np.sqrt(
        2.0 * growth * np.log(np.sqrt(growth) / alpha) / (n * n * rho2)
    )
    return width


def sequential_p_value(
    estimate: ArrayLike, variance: ArrayLike, total_n: ArrayLike, alpha: float, tuning: float
) -> FloatArray:
    """Always-valid p-value: 1/e-value of the normal mixture, capped at 1.

    e = exp(rho²·N·Δ²/(2·V·(N·rho² + 1))) / √(N·rho² + 1) with V = Var(estimate)
    (Waudby-Smith et al. 2023, eq. 155); computed in logs so a large statistic cannot
    overflow. It is dual to ``sequential_half_width``: p < alpha exactly when the interval
    excludes 0.
    """
    n = np.asarray(total_n, dtype=np.float64)
    rho2 = sequential_rho(alpha, tuning) ** 2
    est = np.asarray(estimate, dtype=np.float64)
    growth = n * rho2 + 1.0
    statistic = est * est * n / np.asarray(variance, dtype=np.float64)
    log_p = 0.5 * np.log(growth) - rho2 * statistic / (2.0 * growth)
    p: FloatArray = np.exp(np.minimum(log_p, 0.0))
    return p


# --- comparisons ------------------------------------------------------------------------


def _degenerate(control: Moments, variant: Moments, relative: bool) -> str | None:
    """The error code of data no test can use, or ``None``."""
    if control.n <= 0 or variant.n <= 0:
        return NO_UNITS
    numbers = (control.mean, control.variance, variant.mean, variant.variance)
    if not all(math.isfinite(x) for x in (*numbers, control.baseline, variant.baseline)):
        return NON_FINITE
    if relative and (control.baseline == 0.0 or control.mean == 0.0):
        return ZERO_CONTROL_MEAN
    if control.variance <= 0.0 or variant.variance <= 0.0:
        return ZERO_VARIANCE
    return None


def _estimate(control: Moments, variant: Moments, relative: bool) -> tuple[float, float]:
    estimate = float(difference(control.mean, control.baseline, variant.mean, relative))
    variance = float(
        difference_variance(
            control.variance,
            control.baseline,
            control.n,
            variant.variance,
            variant.baseline,
            variant.n,
            relative,
        )
    )
    return estimate, variance


def _guarded(
    control: Moments, variant: Moments, relative: bool, compute: Callable[[], Effect]
) -> Effect:
    """``compute()`` unless the data are degenerate; overflow ends as ``NON_FINITE``."""
    error = _degenerate(control, variant, relative)
    if error is not None:
        return _failed(error)
    with np.errstate(all="ignore"):
        try:
            return _finite(compute())
        except (OverflowError, ZeroDivisionError, ValueError):
            return _failed(NON_FINITE)


def welch_test(
    control: Moments, variant: Moments, *, alpha: float = 0.05, relative: bool = False
) -> Effect:
    """Welch's two-sided t-test of variant against control, with a (1 - alpha) interval."""

    def compute() -> Effect:
        estimate, variance = _estimate(control, variant, relative)
        dof = float(welch_dof(control.variance, control.n, variant.variance, variant.n))
        se = math.sqrt(variance)
        width = float(special.stdtrit(dof, 1.0 - alpha / 2.0)) * se
        p_value = float(welch_p_value(estimate, variance, dof))
        return Effect(estimate, se, estimate - width, estimate + width, p_value, dof)

    return _guarded(control, variant, relative, compute)


def sequential_test(
    control: Moments,
    variant: Moments,
    *,
    alpha: float = 0.05,
    tuning: float = 5000.0,
    relative: bool = False,
) -> Effect:
    """The always-valid interval and p-value: safe to look at after every new unit."""

    def compute() -> Effect:
        estimate, variance = _estimate(control, variant, relative)
        total = control.n + variant.n
        width = float(sequential_half_width(variance, total, alpha, tuning))
        p_value = float(sequential_p_value(estimate, variance, total, alpha, tuning))
        se = math.sqrt(variance)
        return Effect(estimate, se, estimate - width, estimate + width, p_value)

    return _guarded(control, variant, relative, compute)


def bayesian_test(
    control: Moments,
    variant: Moments,
    *,
    alpha: float = 0.05,
    relative: bool = False,
    lower_is_better: bool = False,
) -> Effect:
    """The effect's posterior under a flat prior, Δ ~ N(estimate, Var(estimate)): chance to
    beat control, the expected loss of choosing the variant, a (1 - alpha) credible interval."""

    def compute() -> Effect:
        mu, variance = _estimate(control, variant, relative)
        sigma = math.sqrt(variance)
        z = mu / sigma
        above = float(special.ndtr(z))  # P(Δ > 0)
        below = float(special.ndtr(-z))
        density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        # E[max(Δ, 0)] = mu·Phi(z) + sd·phi(z) and E[max(-Δ, 0)] = sd·phi(z) - mu·Phi(-z) with
        # z = mu/sd: the truncated normal's means times the probability of each side
        gain = mu * above + sigma * density
        shortfall = sigma * density - mu * below
        chance = below if lower_is_better else above
        loss = gain if lower_is_better else shortfall
        width = float(special.ndtri(1.0 - alpha / 2.0)) * sigma
        return Effect(
            mu,
            sigma,
            mu - width,
            mu + width,
            chance_to_win=chance,
            expected_loss=max(loss, 0.0),
        )

    return _guarded(control, variant, relative, compute)


# --- the experiment as a whole ----------------------------------------------------------


def srm_p_value(observed: Sequence[float], weights: Sequence[float]) -> float:
    """Pearson's chi-square goodness-of-fit p-value of the observed units per variant against
    the expected split (weights need not sum to 1); 1 without units."""
    counts = np.asarray(observed, dtype=np.float64)
    shares = np.asarray(weights, dtype=np.float64)
    total = float(counts.sum())
    if total <= 0.0 or len(counts) < 2:
        return 1.0
    if np.any((shares <= 0.0) & (counts > 0.0)):
        return 0.0  # units in a variant that should get none: a mismatch for certain
    keep = shares > 0.0
    expected = shares[keep] / shares[keep].sum() * total
    chi2 = float((((counts[keep] - expected) ** 2) / expected).sum())
    dof = int(keep.sum()) - 1
    if dof < 1:
        return 1.0
    return float(special.chdtrc(dof, chi2))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the i-th smallest
    becomes max over j ≤ i of min(1, (m - j + 1)·p_(j)); controls the family-wise error rate."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (1995), in the order given: the i-th smallest
    becomes min over j ≥ i of min(1, m·p_(j)/j); controls the false discovery rate."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m - 1, -1, -1):
        index = order[rank]
        running = min(running, m * p_values[index] / (rank + 1))
        adjusted[index] = running
    return adjusted
