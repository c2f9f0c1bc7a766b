"""Thompson-sampling bandits: traffic shares among content variants, learned from their rewards.

**Allocation.** Each arm's share is the posterior probability that it is the best arm
(Thompson 1933; probability matching as in Scott 2010, "A modern Bayesian look at the
multi-armed bandit"), estimated from ``draws`` joint draws of the arms' posteriors: the share
of draws in which an arm's draw is the largest (ties split evenly). Then every share is
floored at ``min_share`` so that no arm ever stops being explored, and the rest is
renormalised; the shares sum to 1 and the same inputs and seed give the same shares.

* binary rewards (clicked, converted): Beta(1 + successes, 1 + failures), the conjugate
  posterior under a uniform prior;
* continuous rewards (revenue): the posterior of the arm's mean is Normal, from a weak prior
  worth one observation at the pooled mean and variance of all arms, updated with the arm's
  sample mean and variance (the normal-normal update with the variance plugged in; Gelman et
  al., "Bayesian Data Analysis", 3rd ed., section 2.5). An arm without data draws from the
  prior itself.

**Contexts.** ``allocate_by_context`` runs one allocation per context, a segment key; a user's
context is the first listed segment they belong to (``context_of``), ``"*"`` when none. A
context with fewer than ``min_context_n`` observations borrows strength from the others: its
prior is the other contexts' evidence scaled down to ``min_context_n - n`` pseudo-observations
(the data-dependent prior of empirical Bayes, cf. Gelman et al. chapter 5). A new segment so
starts out following the pooled allocation, and its own data take over smoothly: at
``min_context_n`` observations the borrowed weight reaches zero.

``choose`` maps a uniform number to an arm and returns its allocation probability: the
propensity that the decision logs so that ``offpolicy`` can evaluate other policies later.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import numpy as np

from personify.errors import ValidationError

__all__ = [
    "POOLED_CONTEXT",
    "ArmStatistics",
    "allocate",
    "allocate_by_context",
    "choose",
    "context_of",
]

POOLED_CONTEXT = "*"

Reward = Literal["binary", "continuous"]
Vector = np.ndarray[Any, np.dtype[np.float64]]

# the weak prior of a continuous arm's mean is worth this many observations
_PRIOR_OBSERVATIONS = 1.0


@dataclass(frozen=True, slots=True)
class ArmStatistics:
    """An arm's summable rewards: count, sum and sum of squares (binary: sum = successes)."""

    arm: str
    n: int
    reward_sum: float
    reward_sum_squares: float

    def __add__(self, other: ArmStatistics) -> ArmStatistics:
        """The statistics of both partitions together; the arms must be the same."""
        if not isinstance(other, ArmStatistics):
            return NotImplemented
        if other.arm != self.arm:
            raise ValidationError(f"cannot add statistics of arm {other.arm!r} to arm {self.arm!r}")
        return ArmStatistics(
            self.arm,
            self.n + other.n,
            self.reward_sum + other.reward_sum,
            self.reward_sum_squares + other.reward_sum_squares,
        )


def allocate(
    arms: Sequence[ArmStatistics],
    *,
    reward: Reward,
    min_share: float = 0.05,
    draws: int = 10_000,
    seed: int | str = 0,
) -> dict[str, float]:
    """Each arm's traffic share by Thompson sampling, floored at ``min_share``, summing to 1.

    Raises ``ValidationError`` for no arms, duplicate arms, impossible statistics, or
    ``min_share * len(arms) > 1``.
    """
    names = _arm_names(arms)
    _check_settings(len(names), reward=reward, min_share=min_share, draws=draws)
    n, total, squares = _columns(arms, names, reward=reward)
    zeros = np.zeros(len(names))
    shares = _thompson(
        n, total, squares, (zeros, zeros, zeros), reward=reward, draws=draws, rng=_rng(seed, "")
    )
    return dict(zip(names, _floor_shares(shares, min_share), strict=True))


def allocate_by_context(
    stats: Mapping[str, Sequence[ArmStatistics]],
    *,
    reward: Reward,
    min_share: float = 0.05,
    draws: int = 10_000,
    seed: int | str = 0,
    min_context_n: int = 100,
) -> dict[str, dict[str, float]]:
    """One Thompson allocation per context, rare contexts shrunk towards the pooled one.

    ``stats`` maps a context (a segment key) to its arms' statistics; an input ``"*"`` holds
    the decisions for users in no listed context. The answer has every input context and
    always ``"*"``, allocated over all the data pooled, for users in no listed context; every
    allocation covers the union of the arms (an arm missing from a context has no data there).
    Each context draws from its own stream of the seed, so the answer does not depend on the
    mapping's order.
    """
    if min_context_n < 0:
        raise ValidationError(f"min_context_n must be >= 0, got {min_context_n}")
    names: list[str] = []
    seen: set[str] = set()
    for context, arms in stats.items():
        for name in _arm_names(arms, allow_empty=True, where=f" in context {context!r}"):
            if name not in seen:
                seen.add(name)
                names.append(name)
    if not names:
        raise ValidationError("no arms to allocate among")
    _check_settings(len(names), reward=reward, min_share=min_share, draws=draws)

    columns = {context: _columns(arms, names, reward=reward) for context, arms in stats.items()}
    zeros = np.zeros(len(names))
    pooled_n, pooled_sum, pooled_squares = zeros.copy(), zeros.copy(), zeros.copy()
    for n, total, squares in columns.values():
        pooled_n += n
        pooled_sum += total
        pooled_squares += squares

    answer: dict[str, dict[str, float]] = {}
    for context, (n, total, squares) in columns.items():
        if context == POOLED_CONTEXT:
            continue
        prior = (zeros, zeros, zeros)
        observed = float(n.sum())
        others_n = pooled_n - n
        if observed < min_context_n and others_n.sum() > 0:
            # the other contexts' evidence, scaled to min_context_n - observed pseudo-observations
            # (never more than it holds), so that the prior fades out as the context's own data
            # reach min_context_n; the context's own rows are left out so they count once
            scale = min(1.0, (min_context_n - observed) / float(others_n.sum()))
            prior = (
                others_n * scale,
                (pooled_sum - total) * scale,
                (pooled_squares - squares) * scale,
            )
        shares = _thompson(
            n, total, squares, prior, reward=reward, draws=draws, rng=_rng(seed, context)
        )
        answer[context] = dict(zip(names, _floor_shares(shares, min_share), strict=True))

    shares = _thompson(
        pooled_n,
        pooled_sum,
        pooled_squares,
        (zeros, zeros, zeros),
        reward=reward,
        draws=draws,
        rng=_rng(seed, POOLED_CONTEXT),
    )
    answer[POOLED_CONTEXT] = dict(zip(names, _floor_shares(shares, min_share), strict=True))
    return answer


def choose(allocation: Mapping[str, float], u: float) -> tuple[str, float]:
    """The arm that a uniform ``u`` in [0, 1) falls on, by cumulative share, and its share.

    The share is the propensity to log with the decision. Raises ``ValidationError`` for an
    ``u`` outside [0, 1) or an allocation that is empty, negative or does not sum to 1.
    """
    if not (0.0 <= u < 1.0):
        raise ValidationError(f"u must be in [0, 1), got {u}")
    arms = list(allocation.items())
    if not arms:
        raise ValidationError("the allocation is empty")
    if any(not math.isfinite(p) or p < 0 for _, p in arms):
        raise ValidationError("allocation probabilities must be finite and >= 0")
    if abs(math.fsum(p for _, p in arms) - 1.0) > 1e-9:
        raise ValidationError("allocation probabilities must sum to 1")
    for (arm, p), cumulative in zip(arms, accumulate(p for _, p in arms), strict=True):
        if u < cumulative:
            return arm, p
    # rounding left the running sum a hair under 1 and u above it: the last arm that can be chosen
    arm, p = next((arm, p) for arm, p in reversed(arms) if p > 0)
    return arm, p


def context_of(segments: Collection[str], contexts: Sequence[str]) -> str:
    """The first of ``contexts`` that the user is a member of, else ``"*"``."""
    return next((context for context in contexts if context in segments), POOLED_CONTEXT)


def _arm_names(
    arms: Sequence[ArmStatistics], *, allow_empty: bool = False, where: str = ""
) -> list[str]:
    names = [arm.arm for arm in arms]
    if not names and not allow_empty:
        raise ValidationError("no arms to allocate among")
    if len(set(names)) != len(names):
        raise ValidationError(f"duplicate arms{where}: {sorted(names)}")
    return names


def _check_settings(arm_count: int, *, reward: str, min_share: float, draws: int) -> None:
    if reward not in ("binary", "continuous"):
        raise ValidationError(f"reward must be 'binary' or 'continuous', got {reward!r}")
    if not (math.isfinite(min_share) and min_share >= 0):
        raise ValidationError(f"min_share must be >= 0, got {min_share}")
    if min_share * arm_count > 1:
        raise ValidationError(
            f"min_share {min_share} for {arm_count} arms asks for more than all the traffic"
        )
    if draws < 1:
        raise ValidationError(f"draws must be >= 1, got {draws}")


def _columns(
    arms: Sequence[ArmStatistics], names: Sequence[str], *, reward: str
) -> tuple[Vector, Vector, Vector]:
    """The arms' (n, sum, sum of squares) as vectors in ``names`` order (zeros where absent)."""
    index = {name: i for i, name in enumerate(names)}
    n, total, squares = np.zeros(len(names)), np.zeros(len(names)), np.zeros(len(names))
    for arm in arms:
        values = (arm.n, arm.reward_sum, arm.reward_sum_squares)
        if not all(math.isfinite(v) for v in values):
            raise ValidationError(f"arm {arm.arm!r}: statistics must be finite")
        if arm.n < 0 or arm.reward_sum_squares < 0:
            raise ValidationError(f"arm {arm.arm!r}: n and the sum of squares must be >= 0")
        if reward == "binary" and not (0 <= arm.reward_sum <= arm.n):
            raise ValidationError(
                f"arm {arm.arm!r}: binary successes must be between 0 and n, got "
                f"{arm.reward_sum} of {arm.n}"
            )
        if arm.n == 0 and (arm.reward_sum != 0 or arm.reward_sum_squares != 0):
            raise ValidationError(f"arm {arm.arm!r}: rewards without observations")
        i = index[arm.arm]
        n[i], total[i], squares[i] = values
    return n, total, squares


def _thompson(
    n: Vector,
    total: Vector,
    squares: Vector,
    prior: tuple[Vector, Vector, Vector],
    *,
    reward: str,
    draws: int,
    rng: np.random.Generator,
) -> Vector:
    """The probability that each arm is best: the share of joint posterior draws it wins."""
    prior_n, prior_sum, prior_squares = prior
    n, total, squares = n + prior_n, total + prior_sum, squares + prior_squares
    arm_count = len(n)
    if reward == "binary":
        # Beta(1 + successes, 1 + failures): the uniform prior updated (conjugate Beta-Bernoulli)
        samples = rng.beta(1.0 + total, 1.0 + n - total, size=(draws, arm_count))
    else:
        samples = rng.normal(*_normal_posterior(n, total, squares), size=(draws, arm_count))
    best = samples.max(axis=1, keepdims=True)
    wins = (samples == best).astype(np.float64)
    # a tie (equal posteriors with zero spread) is split evenly among the tied arms
    shares: Vector = (wins / wins.sum(axis=1, keepdims=True)).mean(axis=0)
    return shares


def _normal_posterior(n: Vector, total: Vector, squares: Vector) -> tuple[Vector, Vector]:
    """Mean and standard deviation of each arm's Normal posterior of its mean reward."""
    all_n = float(n.sum())
    prior_mean = float(total.sum()) / all_n if all_n > 0 else 0.0
    prior_variance = float(squares.sum()) / all_n - prior_mean**2 if all_n > 1 else 0.0
    # without any spread in the data there is no scale to learn from: unit variance
    if not prior_variance > 0:
        prior_variance = 1.0
    k = _PRIOR_OBSERVATIONS
    with np.errstate(divide="ignore", invalid="ignore"):
        deviations = np.where(n > 0, np.maximum(squares - total**2 / n, 0.0), 0.0)
    # normal-normal update with the variance plugged in (Gelman et al., BDA3 section 2.5): the
    # prior counts as k observations at the pooled mean and variance; the arm's variance is
    # the prior's pooled with the arm's sum of squared deviations
    mean = (k * prior_mean + total) / (k + n)
    variance = (k * prior_variance + deviations) / (k + n)
    return mean, np.sqrt(variance / (k + n))


def _floor_shares(shares: Vector, min_share: float) -> list[float]:
    """The shares with none under ``min_share``, the rest scaled in proportion, summing to 1."""
    arm_count = len(shares)
    floored = np.zeros(arm_count, dtype=bool)
    result = np.full(arm_count, min_share)
    # water-filling: an arm whose scaled share falls under the floor is fixed at the floor and
    # the remaining mass is spread again over the others, in proportion to their posterior
    # probability; at most one pass per arm
    while True:
        free = ~floored
        mass = 1.0 - min_share * float(floored.sum())
        weight = float(shares[free].sum())
        if weight > 0:
            scaled = shares[free] * (mass / weight)
        else:
            scaled = np.full(int(free.sum()), mass / int(free.sum()))
        under = scaled < min_share
        if under.all():
            # the floors take all the mass (``min_share`` is 1 / arms, up to rounding): every
            # arm keeps the floor, and the rounding goes to the largest below
            break
        if not under.any():
            result[free] = scaled
            break
        floored[np.flatnonzero(free)[under]] = True
    values = [float(v) for v in result]
    # the rounding left over goes to the largest share, so that the shares sum to exactly 1
    largest = max(range(arm_count), key=values.__getitem__)
    for _ in range(4):
        residual = 1.0 - math.fsum(values)
        if residual == 0:
            break
        values[largest] += residual
    return values


def _rng(seed: int | str, stream: str) -> np.random.Generator:
    """A generator for (seed, stream): the same everywhere, independent across streams."""
    digest = hashlib.blake2b(
        f"{type(seed).__name__}:{seed}\x00{stream}".encode(), digest_size=16
    ).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))
