"""Versioned history: every change is a version; a profile can be read as of a past time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from personify.clock import FrozenClock
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.history import apply_diff, diff_documents
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.profiles.state import encode_state
from personify.store.database import Database
from tests.profiles.factory import event

FEATURES = FeatureSet()
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'state.db'}")
    yield database
    database.dispose()


def test_diffs_round_trip() -> None:
    old = {"a": 1, "b": {"c": 2, "d": {"e": 3}}, "gone": True}
    new = {"a": 1, "b": {"c": 5, "d": {"e": 3, "f": [1]}}, "added": "x"}
    diff = diff_documents(old, new)
    assert diff == {
        "set": [[["b", "c"], 5], [["b", "d", "f"], [1]], [["added"], "x"]],
        "unset": [["gone"]],
    }
    copy = {"a": 1, "b": {"c": 2, "d": {"e": 3}}, "gone": True}
    apply_diff(copy, diff)
    assert copy == new


def test_every_change_is_a_version_naming_its_events(db: Database) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock)
    repository = ProfileRepository(db, FEATURES)
    processor.apply(
        [view_event(event("identify", "i1", 0, user_id="gus", traits={"plan": "free"}))]
    )
    clock.advance(60)
    processor.apply(
        [
            view_event(event("identify", "i2", 5, user_id="gus", traits={"plan": "pro"})),
            view_event(event("track", "t1", 6, user_id="gus", name="Clicked")),
        ]
    )
    versions = repository.versions("gus")
    assert [(v.version, v.kind, v.message_ids) for v in versions] == [
        (2, "update", ["i2", "t1"]),
        (1, "create", ["i1"]),
    ]
    latest = versions[0]
    assert [["traits", "plan"], [latest.event_time_ms - 60_000, "i2", "pro"]] in latest.diff["set"]
    assert latest.changed_at == T0 + timedelta(seconds=60)
    assert "traits" in latest.to_dict()["sections"]


def test_as_of_replays_versions_from_the_latest_snapshot(db: Database) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock, snapshot_every=3)
    repository = ProfileRepository(db, FEATURES)
    states = []
    for n in range(8):
        processor.apply([view_event(event("identify", f"i{n}", n, user_id="hal", traits={"n": n}))])
        stored = repository.find("hal")
        assert stored is not None
        states.append((clock.now(), stored.blob))
        clock.advance(10)
    for moment, blob in states:
        past = repository.state_as_of("hal", moment + timedelta(seconds=1))
        assert past is not None
        assert encode_state(past).decode() == blob
    assert repository.state_as_of("hal", T0 - timedelta(seconds=1)) is None


def test_as_of_before_a_merge_includes_the_profile_merged_in_later(db: Database) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock)
    repository = ProfileRepository(db, FEATURES)
    processor.apply([view_event(event("track", "a1", 0, anonymous_id="dev-9", name="Viewed"))])
    clock.advance(60)
    processor.apply([view_event(event("track", "u1", 1, user_id="ivy", name="Viewed"))])
    clock.advance(60)
    processor.apply([view_event(event("identify", "link", 2, user_id="ivy", anonymous_id="dev-9"))])

    before_link = repository.state_as_of("ivy", T0 + timedelta(seconds=90))
    assert before_link is not None
    assert before_link.events == 2
    assert before_link.anonymous_ids == {"dev-9"}
    only_device = repository.state_as_of("ivy", T0 + timedelta(seconds=30))
    assert only_device is not None
    assert only_device.events == 1
    now = repository.state_as_of("ivy", T0 + timedelta(seconds=600))
    assert now is not None
    assert now.events == 3
