"""The issue's quality bar on generated data with planted co-purchase and taste structure:
item-to-item and the learned model beat popularity on NDCG@10, the chosen model is at least
as good as ALS in the same run, and the temporal split never leaks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from personify.errors import ValidationError
from personify.lake.table import Lake
from personify.recommend.evaluation import LEARNED, evaluate, evaluate_split, split
from personify.recommend.interactions import moment_ms, read_interactions
from personify.recommend.learned import Ease
from personify.recommend.popularity import Popularity
from personify.recommend.synthetic import SyntheticShop
from tests.recommend.conftest import AS_OF, END


@pytest.fixture(scope="module")
def result(shop: tuple[SyntheticShop, Lake]) -> dict[str, Any]:
    return evaluate(shop[1], AS_OF, k=10)


def test_item_to_item_and_the_learned_model_beat_popularity(result: dict[str, Any]) -> None:
    models = result["recommenders"]
    assert set(models) == {"popularity", "covisitation", "ease", "als", "bpr"}
    popularity = models["popularity"]["ndcg"]
    assert models["covisitation"]["ndcg"] > 1.3 * popularity
    chosen = result["chosen"]
    assert chosen in LEARNED
    assert models[chosen]["ndcg"] > 1.3 * popularity
    # the chosen one is the best learned model: at least as good as ALS
    assert models[chosen]["ndcg"] >= models["als"]["ndcg"]
    assert all(models[chosen]["ndcg"] >= models[name]["ndcg"] for name in LEARNED)


def test_the_result_reports_the_run(result: dict[str, Any]) -> None:
    assert result["k"] == 10
    assert result["as_of"] == "2025-06-16T00:00:00.000Z"
    assert result["events"] == ["Order Completed", "Product Added", "Product Viewed"]
    assert result["weights"] == {
        "Order Completed": 5.0,
        "Product Added": 3.0,
        "Product Viewed": 1.0,
    }
    assert result["lake_version"] == 0
    assert result["test_users"] > 300
    for metrics in result["recommenders"].values():
        assert 0.0 <= metrics["ndcg"] <= metrics["hit_rate"] <= 1.0
        assert 0.0 <= metrics["recall"] <= 1.0
        assert metrics["users_ranked"] <= result["test_users"]
        assert metrics["fit_seconds"] >= 0.0


def test_the_split_never_leaks(shop: tuple[SyntheticShop, Lake]) -> None:
    everything, _ = read_interactions(shop[1])
    cut_ms = moment_ms(AS_OF)
    cut = split(everything, cut_ms)
    # training holds nothing received after T, the test nothing received by it
    assert np.all(cut.train.received_ms <= cut_ms)
    assert np.all(cut.test.received_ms > cut_ms)
    assert len(cut.train) + len(cut.test) == len(everything)
    # a test user's truth is new to them: never in their training interactions
    before = cut.train.user_items()
    after = cut.test.user_items()
    for user, truth in cut.truths.items():
        assert truth and not truth & before[user]
        assert truth == after[user] - before[user]
    # every test user is on both sides
    assert set(cut.truths) <= set(before) & set(after)
    # and a model fitted on training never puts a user's training items in front of them
    model = Ease()
    model.fit(cut.train)
    users = sorted(cut.truths)
    for user, ranked in zip(users, model.recommend(users, 10), strict=True):
        assert not set(ranked.items) & before[user]


def test_the_same_run_gives_the_same_numbers(shop: tuple[SyntheticShop, Lake]) -> None:
    everything, _ = read_interactions(shop[1])
    first = evaluate_split(everything, AS_OF, recommenders=[Popularity(), Ease()])
    again = evaluate_split(everything, AS_OF, recommenders=[Popularity(), Ease()])
    for name in ("popularity", "ease"):
        for metric in ("hit_rate", "recall", "ndcg"):
            assert first["recommenders"][name][metric] == again["recommenders"][name][metric]
    assert first["chosen"] == "ease"
    # popularity alone: nothing learned to choose
    assert evaluate_split(everything, AS_OF, recommenders=[Popularity()])["chosen"] is None


def test_a_split_without_test_users_is_refused(shop: tuple[SyntheticShop, Lake]) -> None:
    with pytest.raises(ValidationError) as failure:
        evaluate(shop[1], END, k=10)
    assert failure.value.code == "no_test_users"
    with pytest.raises(ValidationError):
        evaluate(shop[1], AS_OF, until=AS_OF)
