"""Off-policy evaluation: how a candidate policy would have done, estimated from logged decisions.

Every logged decision holds its context x, the action a the logging policy took, the reward r
it got and the propensity p = P(a | x) with which the logging policy chose it (``bandits.choose``
returns it). For a candidate policy pi with weights w = pi(a | x) / p:

* **IPS**, inverse propensity scoring (Horvitz & Thompson 1952): mean(w r). Unbiased whenever
  p > 0 wherever pi > 0; its variance grows with the weights.
* **SNIPS**, self-normalised IPS (Swaminathan & Joachims 2015, "The self-normalized estimator
  for counterfactual learning"): sum(w r) / sum(w). Slightly biased, consistent, and usually
  far less variable; its interval comes from the delta method.
* **DR**, doubly robust (Dudik, Langford & Li 2011, "Doubly robust policy evaluation and
  learning"): mean(sum_a pi(a | x) q(x, a) + w (r - q(x, a))) with a reward model q. Unbiased
  if either the propensities or q are right, and the better q, the smaller the variance. Without
  a given model, q is the mean reward per (context, action) in the logs, cross-fitted (in the
  manner of Chernozhukov et al. 2018, "Double/debiased machine learning"): the rows are split
  into two halves (alternate rows) and each half is scored with the model fitted on the other,
  so no row's own reward enters its own prediction.

Every interval is the normal approximation over the per-row contributions, mean +- z s / sqrt(n).
Degenerate logs never raise: the estimate carries an error code and no numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from personify.errors import ValidationError

__all__ = [
    "Estimate",
    "LoggedDecision",
    "evaluate_policy",
    "logged_policy_value",
]

Vector = np.ndarray[Any, np.dtype[np.float64]]
Indices = np.ndarray[Any, np.dtype[np.intp]]

ESTIMATORS = ("ips", "snips", "dr")

# how far a policy's probabilities may sum away from 1 (rounding of the caller's arithmetic)
_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One logged decision: context, action taken, reward got, and P(action | context)."""

    context: str
    action: str
    reward: float
    propensity: float


@dataclass(frozen=True, slots=True)
class Estimate:
    """A policy value with its interval, or an error code (then value and ci are None).

    Error codes: ``NO_DATA`` (no logs), ``TOO_FEW_ROWS`` (one row has no variance),
    ``ZERO_PROPENSITY`` (a logged action with propensity 0: the log cannot be reweighted),
    ``INVALID_PROPENSITY`` (a propensity over 1 or not a number), ``INVALID_REWARD`` (a reward
    not finite), ``NO_OVERLAP`` (the candidate never takes a logged action in its context).
    """

    value: float | None
    ci: tuple[float, float] | None
    n: int
    error: str | None = None


def logged_policy_value(logs: Sequence[LoggedDecision], *, alpha: float = 0.05) -> Estimate:
    """The logging policy's own value: the plain mean reward, with its interval."""
    _check_alpha(alpha)
    error = _log_error(logs)
    if error is not None:
        return Estimate(None, None, len(logs), error)
    rewards = np.fromiter((row.reward for row in logs), dtype=np.float64, count=len(logs))
    return _mean_estimate(rewards, alpha)


def evaluate_policy(
    logs: Sequence[LoggedDecision],
    policy: Callable[[str], Mapping[str, float]],
    *,
    alpha: float = 0.05,
    reward_model: Mapping[tuple[str, str], float] | None = None,
) -> dict[str, Estimate]:
    """The candidate ``policy``'s value by IPS, SNIPS and DR, each with a 1 - alpha interval.

    ``policy(context)`` gives the candidate's probability of each action in that context
    (actions left out have probability 0). ``reward_model`` maps (context, action) to a
    predicted reward for DR; a pair it lacks is predicted 0, which keeps DR unbiased and only
    costs variance. Raises ``ValidationError`` for an ``alpha`` outside (0, 1) or a policy
    whose probabilities are negative or do not sum to 1; problems of the logs are error codes.
    """
    _check_alpha(alpha)
    n = len(logs)
    error = _log_error(logs)
    if error is not None:
        return {name: Estimate(None, None, n, error) for name in ESTIMATORS}

    context_names = sorted({row.context for row in logs})
    context_index = {name: i for i, name in enumerate(context_names)}
    choices = {context: _policy_choices(policy, context) for context in context_names}
    action_names = sorted(
        {row.action for row in logs} | {a for choice in choices.values() for a in choice}
    )
    action_index = {name: i for i, name in enumerate(action_names)}
    # pi[c, a]: the candidate's probability of action a in context c
    pi = np.zeros((len(context_names), len(action_names)))
    for context, choice in choices.items():
        for action, probability in choice.items():
            pi[context_index[context], action_index[action]] = probability

    contexts = np.fromiter((context_index[row.context] for row in logs), dtype=np.intp, count=n)
    actions = np.fromiter((action_index[row.action] for row in logs), dtype=np.intp, count=n)
    rewards = np.fromiter((row.reward for row in logs), dtype=np.float64, count=n)
    propensities = np.fromiter((row.propensity for row in logs), dtype=np.float64, count=n)

    weights = pi[contexts, actions] / propensities
    if not weights.any():
        return {name: Estimate(None, None, n, "NO_OVERLAP") for name in ESTIMATORS}

    # IPS (Horvitz & Thompson 1952): each row contributes w r
    ips = _mean_estimate(weights * rewards, alpha)

    # SNIPS (Swaminathan & Joachims 2015): V = sum(w r) / sum(w); by the delta method its
    # variance is Var(w (r - V)) / (n mean(w)^2)
    mean_weight = float(weights.mean())
    snips_value = float((weights * rewards).sum() / weights.sum())
    influence = weights * (rewards - snips_value) / mean_weight
    snips = _interval(snips_value, influence, alpha)

    # DR (Dudik, Langford & Li 2011): the model's expectation under pi, corrected by the
    # weighted residual of the action actually taken
    if reward_model is None:
        half, models = _cross_fitted_means(contexts, actions, rewards, pi.shape)
    else:
        half = np.zeros(n, dtype=np.intp)
        models = np.array(
            [[[reward_model.get((c, a), 0.0) for a in action_names] for c in context_names]],
            dtype=np.float64,
        ).reshape((1, *pi.shape))
    # each row's predicted reward of every action, from the model it was not fitted on
    q = models[half, contexts]
    direct = (pi[contexts] * q).sum(axis=1)
    dr_terms = direct + weights * (rewards - q[np.arange(n), actions])
    dr = _mean_estimate(dr_terms, alpha)
    return {"ips": ips, "snips": snips, "dr": dr}


def _policy_choices(policy: Callable[[str], Mapping[str, float]], context: str) -> dict[str, float]:
    choice = {action: float(p) for action, p in policy(context).items()}
    if any(not math.isfinite(p) or p < 0 for p in choice.values()):
        raise ValidationError(f"the policy's probabilities in context {context!r} must be >= 0")
    if abs(math.fsum(choice.values()) - 1.0) > _SUM_TOLERANCE:
        raise ValidationError(f"the policy's probabilities in context {context!r} must sum to 1")
    return choice


def _cross_fitted_means(
    contexts: Indices, actions: Indices, rewards: Vector, shape: tuple[int, int]
) -> tuple[Indices, Vector]:
    """Each row's half (0 or 1), and per half the mean reward of each (context, action) in the
    other half: ``models[h]`` is fitted on the rows not in half h.

    A pair the other half never logged falls back to the action's mean over all contexts
    there, then to that half's overall mean reward.
    """
    n = len(rewards)
    context_count, action_count = shape
    half: Indices = np.arange(n, dtype=np.intp) % 2
    models = []
    for fitted_on in (1, 0):
        rows = half == fitted_on
        cells = contexts[rows] * action_count + actions[rows]
        count = np.bincount(cells, minlength=context_count * action_count).reshape(shape)
        total = np.bincount(
            cells, weights=rewards[rows], minlength=context_count * action_count
        ).reshape(shape)
        overall = float(rewards[rows].mean())
        action_n, action_sum = count.sum(axis=0), total.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            by_action = np.where(action_n > 0, action_sum / action_n, overall)
            models.append(np.where(count > 0, total / count, by_action[None, :]))
    return half, np.stack(models)


def _mean_estimate(contributions: Vector, alpha: float) -> Estimate:
    return _interval(float(contributions.mean()), contributions - contributions.mean(), alpha)


def _interval(value: float, centred: Vector, alpha: float) -> Estimate:
    """``value`` +- z sqrt(sum(centred^2) / (n - 1)) / sqrt(n): the normal approximation."""
    n = len(centred)
    z = float(norm.ppf(1 - alpha / 2))
    half_width = z * math.sqrt(float((centred**2).sum()) / (n - 1) / n)
    return Estimate(value, (value - half_width, value + half_width), n, None)


def _log_error(logs: Sequence[LoggedDecision]) -> str | None:
    if not logs:
        return "NO_DATA"
    propensities = np.fromiter((row.propensity for row in logs), dtype=np.float64, count=len(logs))
    if np.isnan(propensities).any() or (propensities > 1).any():
        return "INVALID_PROPENSITY"
    if (propensities <= 0).any():
        return "ZERO_PROPENSITY"
    if not all(math.isfinite(row.reward) for row in logs):
        return "INVALID_REWARD"
    if len(logs) < 2:
        return "TOO_FEW_ROWS"
    return None


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValidationError(f"alpha must be in (0, 1), got {alpha}")
