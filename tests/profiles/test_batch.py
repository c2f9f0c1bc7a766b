"""The columnar batch apply equals the per-event reference, and batch stages run in its
transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personify.errors import ValidationError
from personify.profiles.batch import ProfileBatch, StagedProfile, group_rows
from personify.profiles.counters import CounterSpec
from personify.profiles.events import view_event
from personify.profiles.features import FeatureDefinition, FeatureSet, ProfileConfig
from personify.profiles.features.plan import FeaturePlan
from personify.profiles.processor import ProfileProcessor
from personify.profiles.state import (
    ProfileState,
    apply_batch,
    apply_event,
    compact_state,
    encode_state,
    needs_compaction,
)
from personify.profiles.tables import profiles
from personify.store.database import Database
from tests.profiles.factory import event
from tests.profiles.test_order_independence import histories

# every aggregation, filters, group-bys over a path and over lists, windows and "all"
FEATURES = FeatureSet(
    ProfileConfig(
        features=[
            FeatureDefinition(
                name="spend_by_category",
                event="Order Completed",
                aggregation="sum",
                property="properties.revenue",
                group_by="properties.products[].category",
                windows=[1, 7, "all"],
            ),
            FeatureDefinition(
                name="cheapest_view",
                event="Product Viewed",
                aggregation="min",
                property="properties.price",
                windows=[1, 30, "all"],
            ),
            FeatureDefinition(
                name="dearest_view",
                event="Product Viewed",
                aggregation="max",
                property="properties.price",
                windows=[7, "all"],
            ),
            FeatureDefinition(
                name="first_category",
                event=["$page", "Product Viewed"],
                aggregation="first",
                property="properties.category",
            ),
            FeatureDefinition(
                name="last_plan",
                event="$identify",
                aggregation="last",
                property="traits.plan",
                windows=[7, "all"],
            ),
            FeatureDefinition(
                name="shoe_views",
                event="Product Viewed",
                where={"properties.category": ["shoes", "hats"]},
                windows=[1, "all"],
            ),
            FeatureDefinition(
                name="tag_counts",
                aggregation="count",
                property="properties.tags[]",
                group_by="properties.tags[]",
                windows=[30],
            ),
            FeatureDefinition(
                name="watch_time",
                event="Video Played",
                aggregation="avg",
                property="properties.seconds",
                windows=[1, "all"],
            ),
            FeatureDefinition(
                name="days_since_view", event="Product Viewed", aggregation="days_since"
            ),
        ]
    )
)
PLAN = FeaturePlan(FEATURES)


def per_event(events: Sequence[dict[str, Any]]) -> bytes:
    state = ProfileState()
    for data in events:
        apply_event(state, view_event(data), FEATURES)
    compact_state(state, FEATURES)
    return encode_state(state)


def batched(events: Sequence[dict[str, Any]], sizes: Sequence[int]) -> bytes:
    state = ProfileState()
    views = [view_event(e) for e in events]
    start = 0
    chunks = iter(sizes)
    while start < len(views):
        chunk = views[start : start + next(chunks, len(views))]
        start += len(chunk)
        latest_before = state.last_seen
        batch = ProfileBatch(chunk, [0] * len(chunk), 1)
        batch.raise_latest(0, latest_before)
        apply_batch([state], batch, PLAN)
        # as the processor does before storing
        if needs_compaction(state, FEATURES, latest_before, min(e.ts for e in chunk)):
            compact_state(state, FEATURES)
    compact_state(state, FEATURES)
    return encode_state(state)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_a_batch_applied_as_columns_equals_the_events_applied_one_by_one(
    data: st.DataObject,
) -> None:
    events = data.draw(histories())
    delivered = list(data.draw(st.permutations(events)))
    sizes = data.draw(st.lists(st.integers(1, 8), max_size=len(delivered)))
    assert batched(delivered, sizes) == per_event(events)


def test_equal_times_are_ordered_by_message_id_as_one_by_one() -> None:
    # three events in one millisecond: "last" and "first" break the tie by messageId
    events = [
        event("identify", mid, 5, user_id="u", traits={"plan": plan})
        for mid, plan in (("m-b", "pro"), ("m-c", "team"), ("m-a", "free"))
    ]
    assert batched(events, [3]) == per_event(events)
    assert batched(list(reversed(events)), [1, 2]) == per_event(events)


def test_huge_sums_are_exact_beyond_int64() -> None:
    # 1e15 is the largest number a feature reads; its micro-units overflow int64 when added
    events = [
        event(
            "track",
            f"m-{i}",
            i,
            user_id="u",
            name="Order Completed",
            properties={"revenue": 1e15, "products": [{"category": "x"}]},
        )
        for i in range(20)
    ]
    assert batched(events, [20]) == per_event(events)


def test_group_rows_orders_by_every_key_and_opens_each_group() -> None:
    first = np.asarray([2, 1, 2, 1, 1], dtype=np.int64)
    second = np.asarray([0, 5, 0, 3, 5], dtype=np.int64)
    groups = group_rows(first, second)
    assert [(int(first[i]), int(second[i])) for i in groups.order] == [
        (1, 3),
        (1, 5),
        (1, 5),
        (2, 0),
        (2, 0),
    ]
    assert groups.starts.tolist() == [0, 1, 3]
    assert groups.sizes(5).tolist() == [1, 2, 2]


# -- batch stages -------------------------------------------------------------------------------


class CountingNothing:
    """A stage that reads no event counter from the profile states."""

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        return ()


class NoOpStage(CountingNothing):
    """The smallest stage: looks at the batch and changes nothing."""

    name = "no-op"

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[str]]] = []

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, staged: Sequence[StagedProfile]
    ) -> None:
        self.seen.append((batch.size, sorted(p.profile_id for p in staged)))


class CountingStage(CountingNothing):
    """Writes per-profile event counts with the batch's connection (a columnar pass)."""

    name = "counting"

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, staged: Sequence[StagedProfile]
    ) -> None:
        counts = np.bincount(batch.profile, minlength=batch.profiles).tolist()
        for profile in staged:
            if profile.profile_id == self.fail_on:
                raise ValidationError("this stage refuses the profile", code="stage_refused")
            conn.execute(
                sa.text("INSERT INTO stage_counts VALUES (:p, :n)"),
                {"p": profile.profile_id, "n": counts[profile.index]},
            )


def _database(tmp_path: Any) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade()
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE stage_counts (profile_id TEXT, events INTEGER)"))
    return db


def _shop() -> list[dict[str, Any]]:
    return [
        event("page", "m-1", 1, anonymous_id="a-1"),
        event("page", "m-2", 2, anonymous_id="a-1"),
        event("track", "m-3", 3, user_id="u-2", name="Product Viewed"),
    ]


def test_a_no_op_stage_sees_every_touched_profile_and_changes_nothing(tmp_path: Any) -> None:
    db = _database(tmp_path)
    stage = NoOpStage()
    try:
        result = ProfileProcessor(db, FeatureSet(), stages=[stage]).apply(
            [view_event(e) for e in _shop()]
        )
        assert result.applied == 3
        assert stage.seen == [(3, ["a-1", "u-2"])]
    finally:
        db.dispose()


def test_a_stage_writes_in_the_batch_transaction_and_fails_it_whole(tmp_path: Any) -> None:
    db = _database(tmp_path)
    try:
        ProfileProcessor(db, FeatureSet(), stages=[CountingStage()]).apply(
            [view_event(e) for e in _shop()]
        )
        failing = ProfileProcessor(db, FeatureSet(), stages=[CountingStage(fail_on="a-9")])
        with pytest.raises(ValidationError):
            failing.apply([view_event(event("page", "m-4", 4, anonymous_id="a-9"))])
        with db.engine.connect() as conn:
            counts = dict(
                conn.execute(sa.text("SELECT profile_id, events FROM stage_counts")).all()
            )
            ids = {row[0] for row in conn.execute(sa.select(profiles.c.profile_id))}
        assert counts == {"a-1": 2, "u-2": 1}
        # the stage's failure rolled back the profile the batch would have created
        assert ids == {"a-1", "u-2"}
    finally:
        db.dispose()


# -- the state cache ----------------------------------------------------------------------------


def _stored(db: Database) -> dict[str, str]:
    with db.engine.connect() as conn:
        return dict(conn.execute(sa.select(profiles.c.profile_id, profiles.c.state)).all())


def _views(*events: dict[str, Any]) -> list[Any]:
    return [view_event(e) for e in events]


def test_a_cached_state_is_not_used_once_another_writer_changed_the_profile(
    tmp_path: Any,
) -> None:
    first, second, third = (
        event("track", f"m-{i}", i, user_id="u", name="Product Viewed") for i in range(3)
    )
    shared = Database(f"sqlite:///{tmp_path / 'shared.db'}")
    alone = Database(f"sqlite:///{tmp_path / 'alone.db'}")
    try:
        one, other = ProfileProcessor(shared, FEATURES), ProfileProcessor(shared, FEATURES)
        one.apply(_views(first))
        other.apply(_views(second))  # version 2, written by the other worker
        one.apply(_views(third))  # must read version 2, not its own version 1
        ProfileProcessor(alone, FEATURES).apply(_views(first, second, third))
        assert _stored(shared) == _stored(alone)
    finally:
        shared.dispose()
        alone.dispose()


def test_a_batch_that_fails_leaves_no_trace_in_the_cache(tmp_path: Any) -> None:
    db = _database(tmp_path)
    reference = Database(f"sqlite:///{tmp_path / 'reference.db'}")
    try:
        processor = ProfileProcessor(db, FeatureSet(), stages=[CountingStage(fail_on="u")])
        good = event("page", "m-1", 1, anonymous_id="a")
        processor.apply(_views(good))
        # applied to the cached state in place, then refused by the stage: rolled back
        with pytest.raises(ValidationError):
            processor.apply(_views(event("identify", "m-2", 2, user_id="u", anonymous_id="a")))
        later = event("page", "m-3", 3, anonymous_id="a")
        processor.apply(_views(later))
        ProfileProcessor(reference, FeatureSet()).apply(_views(good, later))
        assert _stored(db) == _stored(reference)
    finally:
        db.dispose()
        reference.dispose()
