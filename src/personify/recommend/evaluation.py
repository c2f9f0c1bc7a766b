"""Offline evaluation of every recommender at a temporal split, and the choice of model.

The protocol (docs/recommend.md):

1. split at T by arrival: training holds the interactions received at or before T (what a
   system running at T knew), the test the ones received after T (up to ``until``);
2. every recommender is fitted on the training interactions alone, in the same run;
3. test users are the users with interactions on both sides of T;
4. a test user's truth is the distinct items they interacted with after T, less the items
   they interacted with before T, which are also excluded from their recommendations; a
   test user left with no new item has nothing to find and is counted apart
   (``users_without_new_items``);
5. each recommender ranks k items per test user; hit rate, recall and NDCG at k are
   averaged over the test users (a user it ranks nothing for scores 0).

The best learned model by NDCG (then recall, then name) is ``chosen``.

Metrics, for a user with truth R and ranked list L (length <= k):
hit = 1 if L and R share an item; recall = |L & R| / |R|;
NDCG = DCG / IDCG with DCG = sum over ranks i (from 0) of L_i in R of 1 / log2(i + 2), and
IDCG the DCG of min(k, |R|) hits at the top (Jarvelin & Kekalainen 2002).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from personify.clock import format_timestamp
from personify.errors import ValidationError
from personify.lake.table import Lake
from personify.recommend.covisitation import CoVisitation
from personify.recommend.interactions import (
    DEFAULT_WEIGHTS,
    UNWEIGHTED,
    Interactions,
    moment_ms,
    read_interactions,
)
from personify.recommend.learned import Als, Bpr, Ease
from personify.recommend.popularity import Popularity
from personify.recommend.ranking import Ranked, Recommender

# the models trained on the lake, which the evaluation chooses among
LEARNED = ("ease", "als", "bpr")


def default_recommenders(seed: int = 7) -> list[Recommender]:
    """Every recommender, with its documented defaults: popularity, co-visitation, EASE,
    ALS, BPR."""
    return [Popularity(), CoVisitation(), Ease(), Als(seed=seed), Bpr(seed=seed)]


@dataclass(frozen=True, slots=True)
class UserScores:
    """One user's metrics at k."""

    hit: float
    recall: float
    ndcg: float


def score_user(ranked: Sequence[str], truth: Collection[str], k: int) -> UserScores:
    """Hit, recall and NDCG at ``k`` of one ranked list against one truth (module
    docstring); raises ``ValidationError`` on an empty truth."""
    if not truth:
        raise ValidationError("a user without truth cannot be scored", code="empty_truth")
    top = list(ranked)[:k]
    hits = [rank for rank, item in enumerate(top) if item in truth]
    dcg = sum(1.0 / math.log2(rank + 2) for rank in hits)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(truth))))
    return UserScores(
        hit=1.0 if hits else 0.0,
        recall=len(hits) / len(truth),
        ndcg=dcg / ideal,
    )


def mean_scores(
    rankings: Mapping[str, Sequence[str]], truths: Mapping[str, Collection[str]], k: int
) -> dict[str, float]:
    """Hit rate, recall and NDCG at ``k`` averaged over the users of ``truths`` (a user
    without a ranking scores 0)."""
    if not truths:
        return {"hit_rate": 0.0, "recall": 0.0, "ndcg": 0.0}
    scores = [score_user(rankings.get(user, ()), truth, k) for user, truth in truths.items()]
    count = len(scores)
    return {
        "hit_rate": sum(s.hit for s in scores) / count,
        "recall": sum(s.recall for s in scores) / count,
        "ndcg": sum(s.ndcg for s in scores) / count,
    }


@dataclass(frozen=True, slots=True)
class Split:
    """Training interactions, and each test user's truth (items new to them after T)."""

    train: Interactions
    test: Interactions
    truths: dict[str, set[str]]
    users_without_new_items: int


def split(interactions: Interactions, as_of_ms: int) -> Split:
    """The temporal split at ``as_of_ms`` by arrival (steps 1, 3 and 4 of the protocol)."""
    train = interactions.received_by(as_of_ms)
    test = interactions.received_after(as_of_ms)
    before = train.user_items()
    truths: dict[str, set[str]] = {}
    without_new = 0
    for user, items in sorted(test.user_items().items()):
        seen = before.get(user)
        if seen is None:
            continue
        new = items - seen
        if new:
            truths[user] = new
        else:
            without_new += 1
    return Split(train, test, truths, without_new)


def choose(results: Mapping[str, Mapping[str, float]], among: Sequence[str] = LEARNED) -> str:
    """The best of ``among`` by NDCG, then recall, then name; raises ``ValidationError``
    when none of them was evaluated."""
    candidates = [name for name in among if name in results]
    if not candidates:
        raise ValidationError("no learned model was evaluated", code="no_learned_model")
    return min(candidates, key=lambda n: (-results[n]["ndcg"], -results[n]["recall"], n))


def evaluate_split(
    interactions: Interactions,
    as_of: datetime,
    *,
    k: int = 10,
    recommenders: Sequence[Recommender] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Every recommender fitted before ``as_of`` and scored after it (the module's protocol),
    as one JSON-able dict. Raises ``ValidationError`` when k < 1 or nobody can be tested."""
    if k < 1:
        raise ValidationError("k must be at least 1", code="invalid_k")
    cut = split(interactions, moment_ms(as_of))
    if not cut.truths:
        raise ValidationError(
            f"no user interacted both before and after {format_timestamp(as_of)} with an item "
            "new to them: pick another --as-of",
            code="no_test_users",
        )
    models = list(recommenders) if recommenders is not None else default_recommenders()
    users = sorted(cut.truths)
    results: dict[str, dict[str, float]] = {}
    for model in models:
        started = clock()
        model.fit(cut.train)
        fitted = clock()
        ranked: list[Ranked] = model.recommend(users, k, exclude_seen=True)
        done = clock()
        metrics = mean_scores(
            {user: r.items for user, r in zip(users, ranked, strict=True)}, cut.truths, k
        )
        results[model.name] = {
            **metrics,
            "users_ranked": sum(1 for r in ranked if r.items),
            "fit_seconds": round(fitted - started, 3),
            "recommend_seconds": round(done - fitted, 3),
        }
    chosen = choose(results) if any(name in results for name in LEARNED) else None
    return {
        "as_of": format_timestamp(as_of),
        "k": k,
        "events": list(interactions.event_names),
        "test_users": len(cut.truths),
        "users_without_new_items": cut.users_without_new_items,
        "train": {
            "interactions": len(cut.train),
            "users": cut.train.user_count,
            "items": cut.train.item_count,
        },
        "test": {
            "interactions": len(cut.test),
            "users": cut.test.user_count,
            "items": cut.test.item_count,
            "truth_items_per_user": round(
                sum(len(t) for t in cut.truths.values()) / len(cut.truths), 3
            ),
        },
        "recommenders": results,
        "chosen": chosen,
    }


def evaluate(
    lake: Lake,
    as_of: datetime,
    *,
    k: int = 10,
    events: Sequence[str] | None = None,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    until: datetime | None = None,
    recommenders: Sequence[Recommender] | None = None,
) -> dict[str, Any]:
    """``evaluate_split`` on the lake's interactions received by ``until`` (all when None),
    with the lake version read and the weights used."""
    if until is not None and until <= as_of:
        raise ValidationError("--until must be after --as-of", code="invalid_window")
    interactions, version = read_interactions(lake, until=until, weights=weights, events=events)
    result = evaluate_split(interactions, as_of, k=k, recommenders=recommenders)
    used = {name: weights.get(name, UNWEIGHTED) for name in interactions.event_names}
    return {
        **result,
        "until": format_timestamp(until) if until is not None else None,
        "lake_version": version,
        "weights": used,
    }
