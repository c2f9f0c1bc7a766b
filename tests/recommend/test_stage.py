"""The worker's live recommendation counters (``RecommendationStage``) through the real
``ProfileProcessor`` on a real state database: they equal the offline counts over the same
events, decay with time, keep popularity per segment, skip profiles without consent, and
remember each profile's recent items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock
from personify.profiles.batch import ProfileBatch, StagedProfile
from personify.profiles.events import datetime_ms, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.recommend.covisitation import CoVisitation
from personify.recommend.interactions import read_interactions
from personify.recommend.popularity import Popularity
from personify.recommend.stage import (
    EVERYONE,
    RecommendationStage,
    decayed_at,
    event_items,
    read_recent,
)
from personify.recommend.synthetic import generate_shop
from personify.recommend.tables import (
    recommend_items,
    recommend_pairs,
    recommend_popularity,
    recommend_profiles,
)
from personify.segments.repository import SegmentRepository
from personify.segments.stage import SegmentStage, open_memberships
from personify.store.database import Database
from tests.lake.conftest import normalized, write_lake
from tests.postgres import fresh_schema
from tests.recommend.conftest import END, arrived, event
from tests.segments.conftest import postgres_database, sqlite_db, state_db

__all__ = ["postgres_database", "sqlite_db", "state_db"]

FEATURES = FeatureSet()
T = datetime(2025, 6, 1, tzinfo=UTC)
CAMPERS = {"trait": "hobby", "op": "eq", "value": "camping"}
VIEWERS = {"event": "Product Viewed", "within": "3d", "count": {"op": "gte", "value": 2}}
BUYERS = {"event": "Order Completed", "within": "7d", "count": {"op": "gte", "value": 1}}


def run(
    db: Database,
    events: list[dict[str, Any]],
    clock: FrozenClock,
    batch: int = 200,
    *,
    segments: Mapping[str, Any] | None = None,
    between: Sequence[Any] = (),
) -> None:
    """``events`` through a processor with the recommendation stage, in batches; with
    ``segments`` (key -> condition, created first), the segment stage and the stages
    ``between`` run before it."""
    stages: list[Any] = []
    if segments:
        repository = SegmentRepository(db, clock=clock)
        for key, condition in segments.items():
            repository.create(key, condition=condition)
        stages = [SegmentStage(repository, FEATURES, clock=clock), *between]
    stages.append(RecommendationStage(FEATURES, clock=clock))
    processor = ProfileProcessor(db, FEATURES, clock=clock, stages=stages)
    for start in range(0, len(events), batch):
        processor.apply([view_event(e) for e in events[start : start + batch]])


def popularity(db: Database, segment: str = EVERYONE) -> dict[str, float]:
    c = recommend_popularity.c
    with db.connect() as conn:
        rows = conn.execute(sa.select(c.item_id, c.score).where(c.segment_key == segment))
        return {str(item): float(score) for item, score in rows}


def view(number: int, at: datetime, product: str, **ids: Any) -> dict[str, Any]:
    return event(
        number,
        "Product Viewed",
        at,
        properties={"product_id": product},
        **(ids or {"userId": "u1"}),
    )


def test_event_items_reads_product_id_sku_and_order_lines() -> None:
    assert event_items({"properties": {"product_id": "p1", "sku": "s1"}}) == ["p1"]
    assert event_items({"properties": {"sku": 12}}) == ["12"]
    lines = [{"product_id": "b"}, {"sku": "a"}, {"product_id": "b"}, {"name": "x"}, "junk"]
    assert event_items({"properties": {"products": lines}}) == ["a", "b"]
    assert event_items({"properties": {"product_id": "x" * 201}}) == []
    assert event_items({"properties": None}) == []


def test_live_counts_equal_the_offline_counts_over_the_same_events(
    state_db: Database, tmp_path: Path
) -> None:
    shop = generate_shop(END, users=60, items=40, days=30)
    events = [normalized(e, received_at=arrived(e)) for e in shop.events]
    lake = write_lake(tmp_path / "lake", events)
    interactions, _ = read_interactions(lake)
    as_of = interactions.latest_ms()
    clock = FrozenClock(datetime.fromtimestamp(as_of / 1000, UTC))
    run(state_db, events, clock, batch=97)

    offline = Popularity()
    offline.fit(interactions)
    live = popularity(state_db)
    expected = {
        item: float(count)
        for item, count in zip(interactions.item_ids, offline.counts, strict=True)
        if count > 0
    }
    assert set(live) == set(expected)
    for item, count in expected.items():
        assert decayed_at(live[item], as_of, 14.0) == pytest.approx(count, rel=1e-9)

    covisits = CoVisitation()
    covisits.fit(interactions)
    with state_db.connect() as conn:
        items = conn.execute(sa.select(recommend_items)).all()
        pairs = conn.execute(sa.select(recommend_pairs)).all()
    assert {row.kind for row in items} == {"viewed", "bought"}
    position = {item: n for n, item in enumerate(interactions.item_ids)}
    for kind, counts in covisits.counts.items():
        live_items = {r.item_id: decayed_at(r.score, as_of, 30.0) for r in items if r.kind == kind}
        offline_items = {
            interactions.item_ids[n]: float(v) for n, v in enumerate(counts.items) if v > 0
        }
        assert live_items.keys() == offline_items.keys()
        for item, value in offline_items.items():
            assert live_items[item] == pytest.approx(value, rel=1e-9)
        live_pairs = [r for r in pairs if r.kind == kind]
        assert len(live_pairs) == counts.pairs.nnz > 0
        for r in live_pairs:
            expected_pair = counts.pairs[position[r.item_id], position[r.other_id]]
            assert decayed_at(r.score, as_of, 30.0) == pytest.approx(expected_pair, rel=1e-9)


def test_counts_decay_with_event_time_and_pairs_respect_the_window(sqlite_db: Database) -> None:
    clock = FrozenClock(T)
    events = [
        view(1, T - timedelta(days=14), "old"),
        view(2, T - timedelta(minutes=5), "a"),
        view(3, T - timedelta(minutes=1), "b"),
        # two days later than "b": outside the viewed window, no pair with it
        view(4, T + timedelta(days=2), "c"),
    ]
    run(sqlite_db, events, clock, batch=2)
    live = popularity(sqlite_db)
    now = datetime_ms(T)
    # a view weighs 1, halved per 14 days of age
    assert decayed_at(live["old"], now, 14.0) == pytest.approx(0.5)
    assert decayed_at(live["a"], now, 14.0) == pytest.approx(2 ** (-5 / (14 * 24 * 60)))
    # an event after the moment it is applied counts as of that moment, not boosted
    assert decayed_at(live["c"], now, 14.0) == pytest.approx(1.0)
    with sqlite_db.connect() as conn:
        pairs = {(r.item_id, r.other_id) for r in conn.execute(sa.select(recommend_pairs))}
    assert pairs == {("a", "b"), ("b", "a")}


def test_popularity_per_segment_follows_open_memberships(sqlite_db: Database) -> None:
    clock = FrozenClock(T)
    segments = SegmentRepository(sqlite_db, clock=clock)
    segments.create("campers", condition=CAMPERS)
    segment_stage = SegmentStage(segments, FEATURES, clock=clock)
    stage = RecommendationStage(FEATURES, clock=clock)
    processor = ProfileProcessor(sqlite_db, FEATURES, clock=clock, stages=[segment_stage, stage])
    at = T - timedelta(hours=1)
    camper = {"type": "identify", "userId": "c1", "traits": {"hobby": "camping"}}
    processor.apply(
        [
            view_event(normalized({**camper, "messageId": "i1", "timestamp": at.isoformat()})),
            view_event(view(2, at, "tent", userId="c1")),
            view_event(view(3, at, "tent", userId="c1")),
            view_event(view(4, at, "lamp", userId="other")),
        ]
    )
    assert popularity(sqlite_db, "campers").keys() == {"tent"}
    assert popularity(sqlite_db).keys() == {"tent", "lamp"}
    ratio = popularity(sqlite_db, "campers")["tent"] / popularity(sqlite_db)["lamp"]
    assert ratio == pytest.approx(2.0)


class _HandedOver:
    """A stage between the segment stage and the recommendation stage: checks that the
    memberships handed over in the batch are the open stays in the table, and with
    ``drop`` takes them away, so that the recommendation stage reads the table."""

    name = "handed-over"

    def __init__(self, *, drop: bool) -> None:
        self.drop = drop
        self.checked = 0

    def counters(self, conn: sa.Connection) -> tuple[()]:
        return ()

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        assert batch.memberships is not None
        stays = open_memberships(conn, [p.profile_id for p in profiles])
        for p in profiles:
            assert set(batch.memberships[p.index]) == set(stays.get(p.profile_id, {}))
            self.checked += len(batch.memberships[p.index])
        if self.drop:
            batch.memberships = None


def test_popularity_per_segment_is_the_same_from_the_handed_over_memberships(
    tmp_path: Path,
) -> None:
    shop = generate_shop(END, users=80, items=30, days=10)
    events = [normalized(e, received_at=arrived(e)) for e in shop.events]
    tables: list[Sequence[Any]] = []
    for drop in (False, True):
        db = Database(f"sqlite:///{tmp_path / f'state-{drop}.db'}")
        checker = _HandedOver(drop=drop)
        browsers = {"not": {"segment": "buyers"}}
        run(
            db,
            events,
            FrozenClock(END),
            113,
            segments={"viewers": VIEWERS, "buyers": BUYERS, "browsers": browsers},
            between=[checker],
        )
        assert checker.checked > 0
        with db.connect() as conn:
            tables.append(
                conn.execute(
                    sa.select(recommend_popularity).order_by(
                        recommend_popularity.c.segment_key, recommend_popularity.c.item_id
                    )
                ).all()
            )
        db.dispose()
    handed, read = tables
    assert {row.segment_key for row in handed} >= {"", "viewers", "buyers", "browsers"}
    # the same sums, to the bit
    assert handed == read


def test_profiles_without_consent_count_nowhere_and_are_forgotten(sqlite_db: Database) -> None:
    clock = FrozenClock(T)
    at = T - timedelta(hours=1)
    run(sqlite_db, [view(1, at, "p1", userId="u1"), view(2, at, "p2", userId="u2")], clock)
    with sqlite_db.connect() as conn:
        assert read_recent(conn, ["u1"])["u1"].seen() == ["p1"]
    denied = {"consent": {"categoryPreferences": {"personalization": False}}}
    run(
        sqlite_db,
        [
            event(
                3,
                "Product Viewed",
                at,
                userId="u1",
                properties={"product_id": "p9"},
                context=denied,
            )
        ],
        clock,
    )
    assert "p9" not in popularity(sqlite_db)
    with sqlite_db.connect() as conn:
        assert read_recent(conn, ["u1", "u2"]).keys() == {"u2"}


def test_recent_items_are_bounded_and_keep_what_was_bought(sqlite_db: Database) -> None:
    clock = FrozenClock(T)
    start = T - timedelta(days=1)
    order = event(
        0,
        "Order Completed",
        start,
        userId="u1",
        properties={"products": [{"product_id": "bought-1"}, {"product_id": "bought-2"}]},
    )
    views = [view(n, start + timedelta(minutes=n), f"v{n}") for n in range(1, 71)]
    run(sqlite_db, [order, *views], clock, batch=25)
    with sqlite_db.connect() as conn:
        recent = read_recent(conn, ["u1"])["u1"]
    assert recent.seen()[:2] == ["v70", "v69"]
    assert len(recent.items) == 52
    assert recent.bought() == ["bought-1", "bought-2"]
    # co-visitation remembers the last 20 views and the order's lines
    assert [item for item, _ in recent.memory["viewed"]] == [f"v{n}" for n in range(51, 71)]
    assert sorted(item for item, _ in recent.memory["bought"]) == ["bought-1", "bought-2"]


def test_merged_profiles_bring_their_recent_items(sqlite_db: Database) -> None:
    clock = FrozenClock(T)
    at = T - timedelta(hours=2)
    run(sqlite_db, [view(1, at, "tent", anonymousId="a1")], clock)
    run(
        sqlite_db,
        [
            view(2, at + timedelta(minutes=5), "stove", userId="u7", anonymousId="a1"),
        ],
        clock,
    )
    with sqlite_db.connect() as conn:
        recent = read_recent(conn, ["a1", "u7"])
        pairs = {(r.item_id, r.other_id) for r in conn.execute(sa.select(recommend_pairs))}
    assert recent.keys() == {"u7"}
    assert set(recent["u7"].seen()) == {"tent", "stove"}
    assert pairs == {("tent", "stove"), ("stove", "tent")}
    assert np.isfinite(list(popularity(sqlite_db).values())).all()


def _tables(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every live counter table's rows, in key order."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with db.connect() as conn:
        for table in (recommend_pairs, recommend_items, recommend_popularity, recommend_profiles):
            keys = [c for c in table.c if c.primary_key]
            rows = conn.execute(sa.select(table).order_by(*keys)).all()
            found[table.name] = sorted(tuple(row) for row in rows)
    return found


def test_every_counter_is_the_same_on_sqlite_and_postgresql(
    postgres_database: str, tmp_path: Path
) -> None:
    """SQLite adds rows through ``executemany``, PostgreSQL through a binary ``COPY`` of
    codes and one upsert that looks the words up: the same rows and scores, ids with
    characters that need quoting included, segments included."""
    shop = generate_shop(END, users=60, items=30, days=10)
    odd = ["tab\there", 'quote"d', "back\\slash", "brace{s}", "comma,", "ünï ☃", "NULL", " "]
    at = END - timedelta(days=1)
    extra = [
        view(10_000 + n, at + timedelta(minutes=n), item, userId=f"odd{n % 3}")
        for n, item in enumerate(odd * 3)
    ]
    extra.append(
        event(
            20_000,
            "Order Completed",
            at + timedelta(hours=1),
            properties={"products": [{"product_id": item} for item in odd]},
            userId="odd0",
        )
    )
    events = [normalized(e, received_at=arrived(e)) for e in [*shop.events, *extra]]
    found = []
    for db in (
        Database(f"sqlite:///{tmp_path / 'state.db'}"),
        Database(fresh_schema(postgres_database)),
    ):
        run(db, events, FrozenClock(END), 101, segments={"viewers": VIEWERS, "buyers": BUYERS})
        found.append(_tables(db))
        db.dispose()
    sqlite, postgresql = found
    assert {row[0] for row in sqlite["recommend_popularity"]} >= {"", "viewers", "buyers"}
    assert {row[0] for row in sqlite["recommend_pairs"]} >= set(odd)
    for name, rows in sqlite.items():
        other = postgresql[name]
        assert [row[:-1] for row in rows] == [row[:-1] for row in other], name
        if name == "recommend_profiles":
            continue
        for mine, theirs in zip(rows, other, strict=True):
            assert theirs[-1] == pytest.approx(mine[-1], rel=1e-12), (name, mine)
