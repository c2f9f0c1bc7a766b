"""Incremental membership equals brute force: for generated rules and generated histories
(late events, duplicates, shuffled arrival, any batching, rules saved part-way and
backfilled), the segments the worker keeps, through its counters, stage, backfill and sweep
on a real SQLite file, are exactly the segments a brute-force evaluation of the same rule over
the user's raw events gives at the same time."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from personify.clock import FrozenClock, from_epoch_us
from personify.profiles.events import MS_PER_DAY, parse_ms, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.segments.backfill import SegmentBackfill
from personify.segments.repository import SegmentRepository
from personify.segments.stage import SegmentStage
from personify.segments.sweep import SegmentSweep
from personify.segments.tables import segment_members
from personify.store.database import Database
from tests.segments.test_conditions import T, brute_force, event_leaves, raw_events

FEATURES = FeatureSet()
EVENT_RULES = st.recursive(
    event_leaves(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=4,
)
# events happen at or before T: the collector places a future timestamp at its arrival
PAST_EVENTS = raw_events().filter(lambda ev: parse_ms("timestamp", ev["timestamp"]) <= T)
EMPTY = {"traits": {}, "features": {}, "predictions": None, "segments": set()}


def members(db: Database) -> set[str]:
    with db.connect() as conn:
        m = segment_members.c
        return set(conn.execute(sa.select(m.segment_key).where(m.exited_at.is_(None))).scalars())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(
    rules=st.lists(EVENT_RULES, min_size=1, max_size=3),
    events=st.lists(PAST_EVENTS, max_size=12),
    seed=st.integers(0, 2**32 - 1),
    later_ms=st.integers(1, 15 * MS_PER_DAY),
)
def test_incremental_membership_equals_brute_force(
    tmp_path_factory: pytest.TempPathFactory,
    rules: list[dict[str, Any]],
    events: list[dict[str, Any]],
    seed: int,
    later_ms: int,
) -> None:
    rng = random.Random(seed)
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('incremental') / 'state.db'}")
    try:
        clock = FrozenClock(from_epoch_us(T * 1000))
        repository = SegmentRepository(db, clock=clock)
        stage = SegmentStage(repository, FEATURES, clock=clock)
        processor = ProfileProcessor(db, FEATURES, clock=clock, stages=[stage])
        sweep = SegmentSweep(db, stage, clock=clock)

        history = [
            {**ev, "messageId": f"m{i}", "anonymousId": "a1", "sourceId": "src"}
            for i, ev in enumerate(events)
        ]
        # shuffled, some sent twice, in batches of any size
        arrivals = history + [ev for ev in history if rng.random() < 0.3]
        rng.shuffle(arrivals)
        # the rules are saved after some of the events applied: those count from the timeline
        saved_after = rng.randint(0, len(arrivals))
        for event_ in arrivals[:saved_after]:
            processor.apply([view_event(event_)])
        arrivals = arrivals[saved_after:]
        for n, rule in enumerate(rules):
            repository.create(f"s{n}", condition=rule)
        # the rules are evaluated for the profiles stored before them, by a backfill pass
        # that may come before or after the rest of the events
        backfill_first = rng.random() < 0.5
        if backfill_first:
            SegmentBackfill(db, stage, clock=clock).run()
        while arrivals:
            size = rng.randint(1, 4)
            batch, arrivals = arrivals[:size], arrivals[size:]
            processor.apply([view_event(ev) for ev in batch])
        if not backfill_first:
            SegmentBackfill(db, stage, clock=clock).run()

        def expected(at_ms: int) -> set[str]:
            if not history:
                return set()
            return {
                f"s{n}" for n, rule in enumerate(rules) if brute_force(rule, history, at_ms, EMPTY)
            }

        now_members = expected(T)
        event(f"members at T: {len(now_members)}")
        assert members(db) == now_members
        # time passes with no event: the sweep moves whoever's windows slid
        clock.advance(timedelta(milliseconds=later_ms).total_seconds())
        sweep.sweep()
        due_ms = T + later_ms
        # the sweep runs for profiles whose windows lost an event; a rule that turns true
        # only with time (a "not" of a window) is caught by it as well
        later_members = expected(due_ms)
        event(f"changed by the sweep: {later_members != now_members}")
        assert members(db) == later_members
    finally:
        db.dispose()
