"""The ranking strategies on hand-made candidates and users: priority, affinity, prediction,
random with its control group; and locale matching."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from personify.decide.engine import locale_matches
from personify.decide.snapshot import Candidate, PlacementSpec
from personify.decide.strategies import STRATEGIES, UserView, bucket


def item(
    item_id: str, *, priority: int = 0, tags: tuple[str, ...] = (), **fields: Any
) -> Candidate:
    return Candidate(
        id=item_id,
        version=1,
        type="banner",
        fields=fields,
        tags=tags,
        placements=("hero",),
        variants=(),
        priority=priority,
        start=None,
        end=None,
        locale=None,
        segments=(),
        condition=None,
        frequency_cap=None,
        category=fields.get("category"),
        values=frozenset((*tags, fields["category"]) if "category" in fields else tags),
    )


def placement(strategy: str, **params: Any) -> PlacementSpec:
    return PlacementSpec("hero", None, strategy, params, 1)


def ids(strategy: str, candidates: list[Candidate], user: UserView, **params: Any) -> list[str]:
    ranking = STRATEGIES[strategy].rank(
        candidates, user, placement(strategy, **params), unit="u1", limit=1, rng=random.Random(1)
    )
    return [r.candidate.id for r in ranking.ranked]


def test_priority_orders_by_priority_then_id() -> None:
    found = ids(
        "priority",
        [item("b", priority=1), item("a", priority=1), item("c", priority=5)],
        UserView(None),
    )
    assert found == ["c", "a", "b"]


def test_affinity_follows_the_users_engagement() -> None:
    shoes, socks, hats = (
        item("shoes", tags=("shoes",)),
        item("socks", category="socks"),
        item("hats", priority=9, tags=("hats",)),
    )
    fan = UserView(
        "p1",
        features={
            "affinities": {"product_category": {"socks": 2.0, "shoes": 5.0}, "tag": {"socks": 0.5}}
        },
    )
    assert ids("affinity", [hats, socks, shoes], fan) == ["shoes", "socks", "hats"]
    # one dimension only: the tag dimension knows socks alone
    assert ids("affinity", [hats, socks, shoes], fan, dimension="tag") == ["socks", "hats", "shoes"]
    # nobody's affinities: the priority order
    assert ids("affinity", [socks, hats, shoes], UserView(None)) == ["hats", "shoes", "socks"]


def test_prediction_keeps_the_offer_for_the_users_it_names() -> None:
    offer, plain = item("retention-offer", tags=("retention",)), item("new-in", priority=3)
    params = {"prediction": "churn.probability", "op": "gt", "value": 0.7, "tag": "retention"}
    risky = UserView("p1", predictions={"churn": {"probability": 0.9}})
    safe = UserView("p2", predictions={"churn": {"probability": 0.2}})
    assert ids("prediction", [plain, offer], risky, **params) == ["retention-offer", "new-in"]
    assert ids("prediction", [plain, offer], safe, **params) == ["new-in"]
    ranking = STRATEGIES["prediction"].rank(
        [plain, offer],
        UserView("p3"),
        placement("prediction", **params),
        unit="p3",
        limit=1,
        rng=random.Random(0),
    )
    assert ranking.excluded == [("retention-offer", "prediction_not_met")]


def test_random_has_a_stable_control_group_and_says_its_odds() -> None:
    candidates = [item(f"i{n}") for n in range(4)]
    strategy = STRATEGIES["random"]
    spec = placement("random", controlPercent=25)
    in_control = 0
    firsts: Counter[str] = Counter()
    for n in range(2000):
        ranking = strategy.rank(
            candidates, UserView(None), spec, unit=f"user-{n}", limit=2, rng=random.Random(n)
        )
        again = strategy.rank(
            candidates, UserView(None), spec, unit=f"user-{n}", limit=2, rng=random.Random(n + 1)
        )
        assert ranking.control == again.control  # the same user, the same group, every time
        if ranking.control:
            in_control += 1
            assert ranking.ranked == []
        else:
            assert {r.probability for r in ranking.ranked} == {0.5}
            firsts[ranking.ranked[0].candidate.id] += 1
    assert 400 < in_control < 600  # 25% of 2,000
    assert all(300 < count < 450 for count in firsts.values()), firsts


def test_bucket_is_stable_and_uniform() -> None:
    assert bucket("a", "b") == bucket("a", "b") != bucket("a", "c")
    values = [bucket("x", str(n)) for n in range(10_000)]
    assert min(values) >= 0.0 and max(values) < 1.0
    assert abs(sum(values) / len(values) - 0.5) < 0.01


def test_locale_matching() -> None:
    assert locale_matches("en-GB", None)
    assert locale_matches("en-GB", "en") and locale_matches("en_gb", "en-GB")
    assert not locale_matches("en", "en-GB")
    assert not locale_matches("fr-FR", "en")
    assert not locale_matches(None, "en")
