"""Retention: pruning the timeline and dedupe keys, compacting versions, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock
from personify.profiles.events import datetime_ms, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.profiles.retention import ProfilePruner
from personify.profiles.state import is_compressed
from personify.profiles.tables import applied_events, profile_versions, profiles
from personify.store.database import Database
from tests.postgres import fresh_schema, postgres_database
from tests.profiles.factory import event

__all__ = ["postgres_database"]

FEATURES = FeatureSet()
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY_S = 86_400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = fresh_schema(request.getfixturevalue("postgres_database"))
    database = Database(url)
    yield database
    database.dispose()


def pruner(db: Database, clock: FrozenClock, **options: Any) -> ProfilePruner:
    values: dict[str, Any] = {"timeline_retention_days": 30.0, "history_retention_days": 30.0}
    values.update(options)
    return ProfilePruner(db, clock=clock, **values)


def kept_keys(db: Database) -> set[str]:
    with db.connect() as conn:
        return set(conn.execute(sa.select(applied_events.c.event_key)).scalars())


def versions_of(db: Database, profile_id: str) -> list[tuple[int, bool]]:
    """(version, has a snapshot) of each stored version, oldest first."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(profile_versions.c.version, profile_versions.c.snapshot)
            .where(profile_versions.c.profile_id == profile_id)
            .order_by(profile_versions.c.version)
        )
        return [(int(version), snapshot is not None) for version, snapshot in rows]


def at_rest(db: Database, profile_id: str) -> bool:
    """Whether the profile's row holds its only version's state, compressed."""
    with db.connect() as conn:
        flag, state = conn.execute(
            sa.select(profiles.c.history_in_row, profiles.c.state).where(
                profiles.c.profile_id == profile_id
            )
        ).one()
    return bool(flag) and is_compressed(state)


def track(message_id: str, minutes: float, user: str) -> dict[str, Any]:
    return event("track", message_id, minutes, user_id=user, name="Clicked")


def applied_count(repository: ProfileRepository, identity: str) -> int:
    stored = repository.find(identity)
    assert stored is not None
    return int(stored.state().events)


def test_pruning_deletes_exactly_the_rows_applied_before_the_retention(db: Database) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock)
    processor.apply([view_event(track(f"a{n}", n, "ann")) for n in range(3)])
    processor.apply([view_event(track("b0", 0, "bob"))])
    clock.advance(5 * DAY_S)
    # applied exactly at the cutoff of the prune below: kept (only older rows go)
    processor.apply([view_event(track("a3", 3, "ann"))])
    clock.advance(10 * DAY_S)
    processor.apply([view_event(track(f"a{n}", n, "ann")) for n in (4, 5)])
    clock.advance(20 * DAY_S)

    # two rows per transaction: the four old rows take several chunks
    result = pruner(db, clock, chunk_rows=2).prune()

    assert result.events_deleted == 4
    assert result.timeline_cutoff_ms == datetime_ms(T0 + timedelta(days=5))
    assert kept_keys(db) == {"src-test:a3", "src-test:a4", "src-test:a5"}
    assert pruner(db, clock).prune().events_deleted == 0


def test_a_resend_older_than_the_retention_is_applied_again_a_newer_one_is_not(
    db: Database,
) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock)
    repository = ProfileRepository(db, FEATURES)
    processor.apply([view_event(track("old", 0, "cat"))])
    clock.advance(31 * DAY_S)
    processor.apply([view_event(track("new", 1, "cat"))])
    assert applied_count(repository, "cat") == 2

    assert pruner(db, clock).prune().events_deleted == 1

    processor.apply([view_event(track("new", 1, "cat"))])
    assert applied_count(repository, "cat") == 2
    # its dedupe key went with the retention: exactly once holds only within it
    processor.apply([view_event(track("old", 0, "cat"))])
    assert applied_count(repository, "cat") == 3
    assert kept_keys(db) == {"src-test:old", "src-test:new"}


def _document(repository: ProfileRepository, profile_id: str, at: datetime) -> Any:
    state = repository.state_as_of(profile_id, at)
    return None if state is None else msgspec.to_builtins(state, order="deterministic")


def test_compacted_history_answers_as_of_after_the_cutoff_as_before(db: Database) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock, snapshot_every=4)
    repository = ProfileRepository(db, FEATURES)
    moments: list[datetime] = []
    # dan: 20 versions two days apart, traits changing, a second device merged in on day 16
    for n in range(20):
        if n == 8:
            processor.apply([view_event(event("page", "d-anon", n * 60, anonymous_id="dan-phone"))])
        if n == 9:
            merge = event("identify", "d-merge", n * 60, user_id="dan", anonymous_id="dan-phone")
            processor.apply([view_event(merge)])
        traits = {"plan": "pro" if n % 3 else "free", "visits": n}
        processor.apply(
            [view_event(event("identify", f"d{n}", n * 60, user_id="dan", traits=traits))]
        )
        moments.append(clock.now())
        clock.advance(DAY_S / 2)
        moments.append(clock.now())
        clock.advance(1.5 * DAY_S)
    # eve: three versions, all long before the cutoff
    clock_eve = FrozenClock(T0 - timedelta(days=5))
    eve = ProfileProcessor(db, FEATURES, clock=clock_eve)
    for n in range(3):
        eve.apply([view_event(track(f"e{n}", n, "eve"))])
        clock_eve.advance(3600)
    now = clock.now()
    cutoff = now - timedelta(days=30)
    probes = [m for m in moments if m >= cutoff] + [cutoff, now]
    before = {(pid, m): _document(repository, pid, m) for pid in ("dan", "eve") for m in probes}
    history_before = repository.versions("dan", limit=500)
    dan_versions = versions_of(db, "dan")

    result = pruner(db, clock).prune()

    after = {(pid, m): _document(repository, pid, m) for pid in ("dan", "eve") for m in probes}
    assert after == before
    assert all(value is not None for (pid, _), value in after.items() if pid == "dan")
    # dan: the versions before the cutoff are one version now, holding a snapshot
    old = [v for v in history_before if v.changed_at < cutoff]
    newest_old = max(v.version for v in old)
    kept = versions_of(db, "dan")
    assert kept[0] == (newest_old, True)
    assert [v for v, _ in kept] == [v for v, _ in dan_versions if v >= newest_old]
    # eve: not written since the cutoff, so at rest: her newest version stays, its state
    # kept once, compressed in her row
    assert versions_of(db, "eve") == [(3, False)]
    assert at_rest(db, "eve")
    assert not at_rest(db, "dan")
    assert result.versions_deleted == (len(old) - 1) + 2
    assert result.profiles_compacted >= 2
    # /history pages through what is left; a second prune has nothing to fold
    assert [v.version for v in repository.versions("dan", limit=500)] == [
        v.version for v in history_before if v.version >= newest_old
    ]
    again = pruner(db, clock).prune()
    assert (again.versions_deleted, again.profiles_compacted) == (0, 0)


def test_a_profile_merged_away_keeps_answering_as_of(db: Database) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock, snapshot_every=2)
    repository = ProfileRepository(db, FEATURES)
    for n in range(5):
        processor.apply([view_event(event("page", f"p{n}", n, anonymous_id="fay-laptop"))])
        clock.advance(DAY_S)
    clock.advance(40 * DAY_S)
    merge = event("identify", "f-merge", 60, user_id="fay", anonymous_id="fay-laptop")
    processor.apply([view_event(merge)])
    merged_at = clock.now()
    clock.advance(DAY_S)
    probes = [merged_at - timedelta(seconds=1), merged_at, clock.now()]
    profile_id = repository.resolve("fay")
    assert profile_id is not None
    before = [_document(repository, profile_id, m) for m in probes]

    pruner(db, clock).prune()

    assert [_document(repository, profile_id, m) for m in probes] == before
    assert before[0] is not None


def test_a_profile_at_rest_keeps_its_state_once_and_wakes_up_whole(db: Database) -> None:
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock)
    repository = ProfileRepository(db, FEATURES)
    for n in range(3):
        processor.apply([view_event(track(f"g{n}", n, "gil"))])
        clock.advance(DAY_S)
    clock.advance(40 * DAY_S)
    written = [T0 + timedelta(days=n) for n in range(3)]
    before = [_document(repository, "gil", m) for m in [*written, clock.now()]]
    stored_before = repository.find("gil")
    assert stored_before is not None

    result = pruner(db, clock).prune()

    assert result.profiles_at_rest == 1
    assert at_rest(db, "gil")
    assert versions_of(db, "gil") == [(3, False)]
    stored = repository.find("gil")
    assert stored is not None
    assert (stored.version, stored.blob) == (stored_before.version, stored_before.blob)
    # times before the compacted version have no history left; from it on, as before
    assert [_document(repository, "gil", m) for m in [written[2], clock.now()]] == before[2:]

    # the worker wakes it (from its cached state, the same version): the version row gets
    # its snapshot back, the row is plain again, and every time still answers as before
    woke_at = clock.now()
    clock.advance(60)
    processor.apply([view_event(track("g-late", 60 * 24 * 44, "gil"))])
    assert not at_rest(db, "gil")
    assert versions_of(db, "gil") == [(3, True), (4, False)]
    assert _document(repository, "gil", woke_at) == before[3]
    reference = Database("sqlite://")
    try:
        ProfileProcessor(reference, FEATURES, clock=FrozenClock(T0)).apply(
            [view_event(track(f"g{n}", n, "gil")) for n in range(3)]
            + [view_event(track("g-late", 60 * 24 * 44, "gil"))]
        )
        expected = ProfileRepository(reference, FEATURES).find("gil")
        woken = repository.find("gil")
        assert expected is not None and woken is not None
        assert woken.blob == expected.blob
    finally:
        reference.dispose()
