"""Serving: the learned index trained on a real lake and stored in a real state database
(round trip, lineage), and ``RecommendationService``'s order of sources and fallbacks over
the worker's live counters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from personify.clock import FrozenClock
from personify.errors import NotFound, ValidationError
from personify.jobs.recommend import train_index
from personify.lake.table import Lake
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.recommend.index import RecommendationIndexer
from personify.recommend.interactions import read_interactions
from personify.recommend.learned import Ease
from personify.recommend.service import RecommendationService
from personify.recommend.stage import RecommendationStage
from personify.recommend.synthetic import SyntheticShop
from personify.segments.repository import SegmentRepository
from personify.segments.stage import SegmentStage
from personify.store.database import Database
from tests.lake.conftest import normalized
from tests.recommend.conftest import END, event
from tests.segments.conftest import postgres_database, sqlite_db, state_db

__all__ = ["postgres_database", "sqlite_db", "state_db"]

FEATURES = FeatureSet()
T = datetime(2025, 6, 1, tzinfo=UTC)
AT = T - timedelta(hours=3)
CAMPERS = {"trait": "hobby", "op": "eq", "value": "camping"}


def view(number: int, user: str, product: str, minutes: int = 0) -> dict[str, Any]:
    return event(
        number,
        "Product Viewed",
        AT + timedelta(minutes=minutes),
        userId=user,
        properties={"product_id": product},
    )


def order(number: int, user: str, *products: str) -> dict[str, Any]:
    lines = [{"product_id": p} for p in products]
    return event(number, "Order Completed", AT, userId=user, properties={"products": lines})


def apply(db: Database, events: list[dict[str, Any]]) -> None:
    clock = FrozenClock(T)
    segments = SegmentRepository(db, clock=clock)
    processor = ProfileProcessor(
        db,
        FEATURES,
        clock=clock,
        stages=[
            SegmentStage(segments, FEATURES, clock=clock),
            RecommendationStage(FEATURES, clock=clock),
        ],
    )
    processor.apply([view_event(e) for e in events])


@pytest.fixture
def shop_state(state_db: Database) -> Database:
    """Tents go with footprints (and are bought with them), stoves with pots; lamps are
    popular with everyone."""
    events = [
        view(1, "u1", "tent"),
        view(2, "u1", "footprint", 1),
        view(3, "u2", "tent"),
        view(4, "u2", "footprint", 1),
        view(5, "u3", "tent"),
        view(6, "u3", "stove", 1),
        view(7, "u4", "stove"),
        view(8, "u4", "pot", 1),
        *[view(10 + n, f"lamp-fan-{n}", "lamp") for n in range(10)],
        order(20, "u5", "tent", "footprint"),
    ]
    apply(state_db, events)
    return state_db


def test_an_unknown_user_gets_the_popular_items(shop_state: Database) -> None:
    service = RecommendationService(shop_state, clock=FrozenClock(T))
    found = service.recommend(None, limit=3, exclude_seen=True)
    assert [r.source for r in found] == ["popular"] * 3
    assert found[0].item_id == "lamp" and found[0].anchor is None
    # a view weighs 1 and an order line 5: tent (3 views, 1 order) outranks footprint (2, 1)
    assert [r.item_id for r in found[1:]] == ["tent", "footprint"]
    assert found[0].score > found[1].score > found[2].score
    assert service.recommend("nobody", limit=2, exclude_seen=True)[0].item_id == "lamp"


def test_a_user_without_an_index_gets_co_visited_items_with_their_anchor(
    shop_state: Database,
) -> None:
    apply(shop_state, [view(30, "newbie", "tent", 5)])
    service = RecommendationService(shop_state, clock=FrozenClock(T))
    found = service.recommend("newbie", limit=4, exclude_seen=True)
    assert found[0].item_id == "footprint"
    assert (found[0].source, found[0].anchor) == ("covisitation", "tent")
    assert found[1].item_id == "stove" and found[1].anchor == "tent"
    assert "tent" not in [r.item_id for r in found]
    # then the popular items fill the answer
    assert [(r.item_id, r.source) for r in found[2:]] == [("lamp", "popular"), ("pot", "popular")]
    # seen items may come back when not excluded; never twice
    kept = [r.item_id for r in service.recommend("newbie", limit=6, exclude_seen=False)]
    assert len(kept) == len(set(kept)) and "tent" in kept


def test_segment_popularity_comes_before_global_popularity(sqlite_db: Database) -> None:
    SegmentRepository(sqlite_db, clock=FrozenClock(T)).create("campers", condition=CAMPERS)
    camper = {"type": "identify", "userId": "c1", "traits": {"hobby": "camping"}}
    apply(
        sqlite_db,
        [
            normalized({**camper, "messageId": "i1", "timestamp": AT.isoformat()}),
            view(1, "c1", "tent"),
            *[view(10 + n, f"other-{n}", "lamp") for n in range(3)],
        ],
    )
    service = RecommendationService(sqlite_db, clock=FrozenClock(T))
    found = service.recommend(None, limit=2, exclude_seen=True, segments=["campers"])
    assert [(r.item_id, r.source) for r in found] == [
        ("tent", "segment_popular"),
        ("lamp", "popular"),
    ]


def test_seen_and_bought_items(shop_state: Database) -> None:
    service = RecommendationService(shop_state, clock=FrozenClock(T))
    assert service.bought_items("u5") == ["footprint", "tent"]
    assert service.seen_items("u1") == ["footprint", "tent"]
    assert service.bought_items("u1") == [] and service.seen_items("nobody") == []


def test_similar_items_are_co_visited_then_popular(shop_state: Database) -> None:
    service = RecommendationService(shop_state, clock=FrozenClock(T))
    found = service.similar("tent", limit=3)
    assert [(r.item_id, r.source, r.anchor) for r in found] == [
        ("footprint", "covisitation", "tent"),
        ("stove", "covisitation", "tent"),
        ("lamp", "popular", None),
    ]
    assert [r.source for r in service.similar("unknown", limit=2)] == ["popular"] * 2


def test_the_index_round_trip(
    shop: tuple[SyntheticShop, Lake], sqlite_db: Database, tmp_path: Path
) -> None:
    _, lake = shop
    indexer = RecommendationIndexer(sqlite_db, lake, clock=FrozenClock(END), model="ease", size=5)
    with pytest.raises(NotFound):
        indexer.latest()
    run = indexer.train()
    assert indexer.latest() == run
    assert run.model == "ease" and run.params == {"l2": 500.0, "max_items": 4000}
    assert run.lake_version == lake.version()
    assert run.metrics["chosenBy"] == "configuration"
    assert run.metrics["evaluation"]["testUsers"] > 100
    assert set(run.metrics["evaluation"]["recommenders"]) == {"ease"}

    interactions, _ = read_interactions(lake)
    model = Ease()
    model.fit(interactions)
    assert run.users == len(model.user_ids)
    user = model.user_ids[7]
    expected = model.recommend([user], 5)[0]
    service = RecommendationService(sqlite_db, clock=FrozenClock(END))
    found = service.recommend(user, limit=5, exclude_seen=False)
    assert [r.item_id for r in found] == list(expected.items)
    assert {r.source for r in found} == {"learned"}
    assert [r.score for r in found] == pytest.approx(list(expected.scores), abs=1e-6)
    similar = service.similar(model.item_ids[3], limit=5)
    assert [r.item_id for r in similar] == list(model.similar(model.item_ids[3], 5).items)
    assert {(r.source, r.anchor) for r in similar} == {("learned", model.item_ids[3])}


def test_auto_training_takes_the_evaluations_choice(
    shop: tuple[SyntheticShop, Lake], sqlite_db: Database
) -> None:
    _, lake = shop
    run = RecommendationIndexer(sqlite_db, lake, clock=FrozenClock(END), size=3).train()
    evaluation = run.metrics["evaluation"]
    assert run.metrics["chosenBy"] == "evaluation"
    assert set(evaluation["recommenders"]) == {"ease", "als", "bpr"}
    best = max(evaluation["recommenders"].items(), key=lambda kv: kv[1]["ndcg"])[0]
    assert run.model == best


def test_training_refuses_an_unknown_model_and_an_empty_lake(
    sqlite_db: Database, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(ValidationError) as refused:
        RecommendationIndexer(sqlite_db, lake, model="svd").train()
    assert refused.value.code == "invalid_model"
    with pytest.raises(ValidationError) as empty:
        RecommendationIndexer(sqlite_db, lake).train()
    assert empty.value.code == "no_interactions"


def test_the_train_job_prunes_decayed_counts_and_skips_an_empty_lake(
    shop_state: Database, tmp_path: Path
) -> None:
    # ten half-lives of popularity later, a single view is below the floor; co-visits (a
    # 30-day half-life) of two views are not yet
    later = FrozenClock(T + timedelta(days=14 * 10 + 1))
    indexer = RecommendationIndexer(shop_state, Lake(str(tmp_path / "lake")), clock=later)
    result = train_index(indexer, shop_state, later)
    assert result["skipped"] == "no_interactions"
    assert result["pruned"]["recommend_popularity"] > 0
    assert result["pruned"]["recommend_pairs"] == 0
    service = RecommendationService(shop_state, clock=later)
    # what is left of popularity: the items with more than one view's weight
    assert {r.item_id for r in service.recommend(None, limit=10, exclude_seen=False)} == {
        "lamp",
        "tent",
        "footprint",
        "stove",
    }
