"""Each recommender on the generated shop: what it ranks, what it leaves out, that it finds
the planted bundles and tastes, and that the learned ones repeat themselves for a seed."""

from __future__ import annotations

import numpy as np
import pytest

from personify.errors import NotFound, ValidationError
from personify.lake.table import Lake
from personify.recommend.covisitation import CoVisitation
from personify.recommend.interactions import Interactions, read_interactions
from personify.recommend.learned import Als, Bpr, Ease
from personify.recommend.popularity import Popularity
from personify.recommend.ranking import NOTHING, Recommender, top_k
from personify.recommend.synthetic import SyntheticShop

ALL = [Popularity, CoVisitation, Ease, Als, Bpr]


@pytest.fixture(scope="module")
def interactions(shop: tuple[SyntheticShop, Lake]) -> Interactions:
    found, _ = read_interactions(shop[1])
    return found


@pytest.fixture(scope="module")
def fitted(interactions: Interactions) -> dict[str, Recommender]:
    models: dict[str, Recommender] = {}
    for kind in ALL:
        model = kind()
        model.fit(interactions)
        models[model.name] = model
    return models


def test_users_are_the_shoppers_signed_up_or_not(
    shop: tuple[SyntheticShop, Lake], interactions: Interactions
) -> None:
    shoppers = shop[0].shoppers
    # anonymous browsing before a sign-up belongs to the shopper: one profile each
    signed_up = {e["userId"] for e in shop[0].events if e["type"] == "identify"}
    for user in interactions.user_ids:
        assert user in signed_up or user.startswith("device-")
    assert len(interactions.user_ids) <= len(shoppers)
    assert not {shoppers[u].anonymous_id for u in signed_up} & set(interactions.user_ids)


@pytest.mark.parametrize("name", ["popularity", "covisitation", "ease", "als", "bpr"])
def test_recommendations_leave_out_what_was_seen_and_what_was_asked(
    name: str, fitted: dict[str, Recommender], interactions: Interactions
) -> None:
    model = fitted[name]
    seen = interactions.user_items()
    users = list(interactions.user_ids[:50])
    ranked = model.recommend(users, 10)
    assert all(0 < len(r.items) <= 10 for r in ranked)
    for user, result in zip(users, ranked, strict=True):
        assert not set(result.items) & seen[user]
        assert len(set(result.items)) == len(result.items)
        assert list(result.scores) == sorted(result.scores, reverse=True)
    # asked to leave out the first choice, the second comes first
    first = ranked[0].items[0]
    again = model.recommend(users[:1], 10, exclude={users[0]: [first]})[0]
    assert first not in again.items and again.items[0] == ranked[0].items[1]
    # with what was seen allowed back, the best can only score higher
    unfiltered = model.recommend(users[:1], 10, exclude_seen=False)[0]
    assert unfiltered.scores[0] >= ranked[0].scores[0]
    assert model.recommend(["nobody"], 5) == [NOTHING]
    with pytest.raises(ValidationError):
        model.recommend(users, 0)
    similar = model.similar(first, 5)
    assert first not in similar.items and 0 < len(similar.items) <= 5
    with pytest.raises(NotFound):
        model.similar("no-such-item", 5)


@pytest.mark.parametrize("name", ["covisitation", "ease", "als"])
def test_similar_items_find_the_planted_bundles(
    name: str, fitted: dict[str, Recommender], shop: tuple[SyntheticShop, Lake]
) -> None:
    partner = shop[0].partner
    found = sum(partner[item] in fitted[name].similar(item, 5).items for item in partner)
    # most bundles are found (a chance hit among 200 items is 2.5%)
    assert found / len(partner) > {"covisitation": 0.9, "ease": 0.9, "als": 0.5}[name]


def test_learned_models_repeat_for_a_seed(interactions: Interactions) -> None:
    for kind in (Als, Bpr):
        first, second, other = kind(seed=3), kind(seed=3), kind(seed=4)
        for model in (first, second, other):
            model.fit(interactions)
        assert np.array_equal(first.item_factors, second.item_factors)
        assert not np.array_equal(first.item_factors, other.item_factors)
        users = list(interactions.user_ids[:20])
        assert first.recommend(users, 10) == second.recommend(users, 10)


def test_popularity_per_group_follows_the_group_tastes(
    fitted: dict[str, Recommender], shop: tuple[SyntheticShop, Lake]
) -> None:
    popularity = fitted["popularity"]
    assert isinstance(popularity, Popularity)
    shoppers = shop[0].shoppers
    groups = {u: s.tastes[0] for u, s in shoppers.items() if len(s.tastes) == 1}
    category = {p["product_id"]: p["category"] for p in shop[0].products}
    tops = popularity.top_by_group(groups, 10)
    assert set(tops) <= set(groups.values())
    for group, ranked in tops.items():
        inside = sum(category[item] == group for item in ranked.items)
        assert inside >= 7, (group, ranked.items)
    overall = popularity.top(10)
    assert len(overall.items) == 10
    assert popularity.recommend(["nobody"], 3) == [NOTHING]


def test_ease_models_only_the_most_touched_items(interactions: Interactions) -> None:
    capped = Ease(max_items=30)
    capped.fit(interactions)
    reach = np.diff(interactions.matrix().tocsc().indptr)
    kept = {interactions.item_ids[i] for i in np.argsort(-reach, kind="stable")[:30]}
    for ranked in capped.recommend(list(interactions.user_ids[:100]), 10):
        assert set(ranked.items) <= kept


def test_covisitation_names_the_anchor_of_a_recommendation(
    fitted: dict[str, Recommender], interactions: Interactions
) -> None:
    model = fitted["covisitation"]
    assert isinstance(model, CoVisitation)
    user = interactions.user_ids[0]
    best = model.recommend([user], 1)[0].items[0]
    anchors = model.anchors(user, best)
    assert anchors and {item for item, _ in anchors} <= interactions.user_items()[user]
    assert [w for _, w in anchors] == sorted((w for _, w in anchors), reverse=True)
    assert model.anchors("nobody", best) == []


def test_top_k_keeps_ties_in_index_order() -> None:
    scores = np.array([1.0, 3.0, 3.0, -np.inf, 3.0, 2.0])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 10).tolist() == [1, 2, 4, 5, 0]
    assert top_k(np.full(3, -np.inf), 2).tolist() == []
