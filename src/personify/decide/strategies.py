"""Ranking strategies: one small protocol, one class per strategy (docs/decide.md).

A strategy gets a placement's eligible candidates and what is known of the user, and returns
them ranked, each with its score and the probability with which it is shown at its place
(1.0 for a deterministic ranking; a random one says its odds, so that exposures can be
re-weighted later: off-policy evaluation). It may also set candidates aside with a reason
(the prediction strategy keeps an offer for the users the prediction names), which the trace
shows beside the eligibility's exclusions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple, Protocol

import xxhash

from personify.decide.snapshot import Candidate, PlacementSpec
from personify.segments.conditions import resolve_path
from personify.segments.operators import MISSING

__all__ = [
    "STRATEGIES",
    "AffinityStrategy",
    "PredictionStrategy",
    "PriorityStrategy",
    "RandomStrategy",
    "Ranked",
    "Ranking",
    "RecommendationStrategy",
    "Strategy",
    "UserView",
    "bucket",
]


@dataclass(frozen=True, slots=True)
class UserView:
    """What the engine knows of the user: nothing for an unknown or unconsented one."""

    profile_id: str | None
    traits: Mapping[str, Any] = field(default_factory=dict)
    features: Mapping[str, Any] = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    predictions: Mapping[str, Any] | None = None
    # the recommender's items for the user, best first: id -> (score, source, anchor)
    recommended: Mapping[str, tuple[float, str, str | None]] = field(default_factory=dict)

    @property
    def affinities(self) -> Mapping[str, Mapping[str, float]]:
        """Decayed affinity scores per dimension and value (``features.affinities``)."""
        found = self.features.get("affinities")
        return found if isinstance(found, Mapping) else {}


class Ranked(NamedTuple):
    """A candidate at its place: score, and the probability it was chosen there (a tuple:
    a decision makes one for every eligible candidate of every placement)."""

    candidate: Candidate
    score: float
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Ranking:
    """A strategy's answer: the ranked candidates, those it set aside (id, reason), and
    whether the user is in the placement's control group (served the default)."""

    ranked: list[Ranked]
    excluded: list[tuple[str, str]] = field(default_factory=list)
    control: bool = False


class Strategy(Protocol):
    """Ranks a placement's eligible candidates for one user."""

    name: str

    def rank(
        self,
        candidates: Sequence[Candidate],
        user: UserView,
        placement: PlacementSpec,
        *,
        unit: str,
        limit: int,
        rng: random.Random,
    ) -> Ranking:
        """The candidates in the order to show them (``unit``: the user's stable id)."""
        ...


def bucket(*parts: str) -> float:
    """A stable number in [0, 1) from ``parts`` (xxh3: the same everywhere, every run)."""
    return xxhash.xxh3_64_intdigest("\x1f".join(parts).encode()) / 2.0**64


_ORDER = attrgetter("order")
_ID = attrgetter("id")
_FIRST = itemgetter(0)


def _by_priority(candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=_ORDER)


class PriorityStrategy:
    """Highest priority first; ties by id."""

    name = "priority"

    def rank(
        self,
        candidates: Sequence[Candidate],
        user: UserView,
        placement: PlacementSpec,
        *,
        unit: str,
        limit: int,
        rng: random.Random,
    ) -> Ranking:
        """Sorted by priority."""
        return Ranking([Ranked(c, float(c.priority)) for c in _by_priority(candidates)])


class AffinityStrategy:
    """The items whose tags (and ``fields.category``) the user engages with most: the sum of
    the user's decayed affinity scores for those values, in one dimension (``params.dimension``)
    or all. Priority breaks ties; a user without affinities gets the priority order."""

    name = "affinity"

    def rank(
        self,
        candidates: Sequence[Candidate],
        user: UserView,
        placement: PlacementSpec,
        *,
        unit: str,
        limit: int,
        rng: random.Random,
    ) -> Ranking:
        """Sorted by affinity, then priority."""
        dimension = placement.params.get("dimension")
        scores: dict[str, float] = {}
        for name, values in user.affinities.items():
            if dimension is not None and name != dimension:
                continue
            for value, score in values.items():
                scores[value] = scores.get(value, 0.0) + float(score)
        ordered = _by_priority(candidates)
        if not scores:
            return Ranking([Ranked(c, 0.0) for c in ordered])
        get, nothing = scores.get, repeat(0.0)
        scored = [(sum(map(get, c.values, nothing)), c) for c in ordered]
        # stable: equal scores keep the priority order
        scored.sort(key=_FIRST, reverse=True)
        return Ranking([Ranked(c, round(score, 6)) for score, c in scored])


_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


class PredictionStrategy:
    """Items tagged ``params.tag`` (a retention offer, say) are for the users whose
    prediction ``params.prediction`` passes the threshold (``op``, ``value``): for them they
    come first, for everyone else they are set aside (``prediction_not_met``). The rest keep
    the priority order. A user without the prediction counts as not passing."""

    name = "prediction"

    def rank(
        self,
        candidates: Sequence[Candidate],
        user: UserView,
        placement: PlacementSpec,
        *,
        unit: str,
        limit: int,
        rng: random.Random,
    ) -> Ranking:
        """Tagged items first for the users the prediction names, absent for the others."""
        params = placement.params
        tag = str(params.get("tag"))
        value = (
            resolve_path(user.predictions, tuple(str(params.get("prediction", "")).split(".")))
            if user.predictions is not None
            else MISSING
        )
        passes = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and _COMPARE[params.get("op", "gt")](float(value), float(params.get("value", 0)))
        )
        ranked: list[Ranked] = []
        excluded: list[tuple[str, str]] = []
        tagged = [c for c in _by_priority(candidates) if tag in c.tags]
        others = [c for c in _by_priority(candidates) if tag not in c.tags]
        if passes:
            ranked.extend(Ranked(c, 1.0 + c.priority / 1e7) for c in tagged)
        else:
            excluded.extend((c.id, "prediction_not_met") for c in tagged)
        ranked.extend(Ranked(c, c.priority / 1e7) for c in others)
        return Ranking(ranked, excluded)


class RecommendationStrategy:
    """The recommender's order (``personify.recommend.service``: the learned index, then
    co-visitation with what the user viewed, then popular items in their segments and
    overall), optionally from one source (``params.source``); the placement's own items the
    recommender did not name come after, by priority. Candidates are the placement's items
    and every published item the recommender names."""

    name = "recommendations"

    def rank(
        self,
        candidates: Sequence[Candidate],
        user: UserView,
        placement: PlacementSpec,
        *,
        unit: str,
        limit: int,
        rng: random.Random,
    ) -> Ranking:
        """Recommended items first, in the recommender's order."""
        source = placement.params.get("source", "auto")
        order = {
            item_id: (place, facts)
            for place, (item_id, facts) in enumerate(user.recommended.items())
            if source == "auto" or facts[1] == source
        }
        chosen = sorted((c for c in candidates if c.id in order), key=lambda c: order[c.id][0])
        rest = _by_priority([c for c in candidates if c.id not in order])
        ranked = [Ranked(c, round(order[c.id][1][0], 6)) for c in chosen]
        ranked.extend(Ranked(c, 0.0) for c in rest)
        return Ranking(ranked)


class RandomStrategy:
    """A uniformly random order, with a persistent control group: a user whose stable bucket
    for the placement falls under ``params.controlPercent`` (10) is always served the
    placement's default, so that what personalization adds can be measured against it."""

    name = "random"

    def rank(
        self,
        candidates: Sequence[Candidate],
        user: UserView,
        placement: PlacementSpec,
        *,
        unit: str,
        limit: int,
        rng: random.Random,
    ) -> Ranking:
        """A shuffled order, or the control group's empty ranking."""
        share = float(placement.params.get("controlPercent", 10)) / 100.0
        if bucket("control", placement.id, unit) < share:
            return Ranking([], control=True)
        order = sorted(candidates, key=_ID)
        rng.shuffle(order)
        count = len(order)
        # each shown item had `limit` chances in `count` to be among the shown
        probability = min(1.0, limit / count) if count else 1.0
        return Ranking([Ranked(c, 0.0, probability) for c in order])


STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy
    for strategy in (
        PriorityStrategy(),
        AffinityStrategy(),
        PredictionStrategy(),
        RecommendationStrategy(),
        RandomStrategy(),
    )
}
