"""The state database contract: the same SQLAlchemy Core code on every engine.

Every test runs on SQLite and on PostgreSQL (``open_state`` in ``tests/contracts/conftest.py``
opens an empty database of each; an absent PostgreSQL calls ``service_missing``). Profiles
are checked against a reference built by one processor on a SQLite file from the same events.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from personify.auth.keys import ApiKeyRepository
from personify.clock import FrozenClock
from personify.errors import BackendUnavailable, Conflict, ValidationError
from personify.events.normalize import partition_key
from personify.ingest.sources import SourceRepository
from personify.ingest.tables import sources
from personify.profiles.events import ProfileEvent, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.profiles.state import encode_state
from personify.profiles.tables import applied_events, identities, profile_merges, profiles
from personify.store.database import Database, lost_a_race
from personify.store.failed_events import FailedEventRepository, NewFailedEvent
from personify.store.tables import failed_events
from personify.worker.heartbeats import Heartbeat, HeartbeatRepository
from tests.contracts.conftest import StateFactory
from tests.postgres import fresh_schema
from tests.profiles.factory import event, shop_events

FEATURES = FeatureSet()
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
# the same instants, written with a +02:00 offset, as a caller's datetime may carry
PLUS_TWO = timezone(timedelta(hours=2))


def _profiles(db: Database) -> dict[str, str]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(profiles.c.profile_id, profiles.c.state))
        return {str(k): str(v) for k, v in rows}


def _graph(db: Database) -> dict[str, str]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(identities.c.identity, identities.c.profile_id))
        return {str(k): str(v) for k, v in rows}


def _applied(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(applied_events)).scalar_one()
        )


def _reference(tmp_path: Path, events: Sequence[ProfileEvent]) -> Database:
    """One processor, one batch, a SQLite file: what every engine must end up with."""
    db = Database(f"sqlite:///{tmp_path / 'reference.db'}")
    ProfileProcessor(db, FEATURES, clock=FrozenClock(T0)).apply(events)
    return db


def _apply_retrying(processor: ProfileProcessor, batch: Sequence[ProfileEvent]) -> None:
    """What the stream worker does with a batch another writer raced: try it again."""
    for _ in range(200):
        try:
            processor.apply(batch)
            return
        except (Conflict, BackendUnavailable):
            # a lost race (Conflict), or on PostgreSQL a deadlock between two batches
            continue
    raise AssertionError("a batch kept conflicting")


# -- reaching the database ------------------------------------------------------------------


def test_an_unreachable_postgresql_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable) as caught:
        Database("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    assert caught.value.code == "state_unavailable"


# -- sources, API keys, dead letters, heartbeats ---------------------------------------------


def test_sources_create_resolve_and_revoke(open_state: StateFactory) -> None:
    db = open_state()
    repository = SourceRepository(db, cache_ttl_s=0)
    web, key = repository.create("web")
    repository.create("app")
    with pytest.raises(Conflict):
        repository.create("web")
    assert [s.name for s in repository.list()] == ["web", "app"]
    assert repository.get("web").id == web.id
    resolved = repository.resolve(key)
    assert resolved is not None
    assert resolved.id == web.id
    assert repository.revoke("web").revoked_at is not None
    assert repository.resolve(key) is None
    assert SourceRepository(open_state()).get(web.id).is_active is False


def test_api_keys_create_resolve_and_revoke(open_state: StateFactory) -> None:
    db = open_state()
    clock = FrozenClock(T0)
    repository = ApiKeyRepository(db, cache_ttl_s=0, clock=clock)
    admin, secret = repository.create("ops", "admin")
    clock.advance(1)
    repository.create("dashboards", "read")
    assert [k.name for k in repository.list()] == ["dashboards", "ops"]
    resolved = repository.resolve(secret)
    assert resolved is not None
    assert (resolved.id, resolved.role, resolved.created_at) == (admin.id, "admin", T0)
    repository.revoke("ops")
    assert repository.resolve(secret) is None


def test_dead_letters_keep_their_payload_and_order(open_state: StateFactory) -> None:
    db = open_state()
    clock = FrozenClock(T0)
    repository = FailedEventRepository(db, clock=clock)
    payload = {"messageId": "m-\u00e9\u4e2d", "properties": {"big": 2**53, "nested": [1, None]}}
    repository.add_many(
        [
            NewFailedEvent(stage="ingest", code="invalid", reason="bad", payload=payload),
            NewFailedEvent(stage="worker", code="boom", reason="x" * 5000, payload="not json {"),
            NewFailedEvent(
                stage="worker", code="boom", reason="r", payload={}, message_id="m" * 512
            ),
        ]
    )
    listed = repository.list()
    assert [f.stage for f in listed] == ["ingest", "worker", "worker"]
    assert listed[0].id < listed[1].id < listed[2].id
    assert listed[0].payload == payload
    assert listed[1].payload == "not json {"
    assert listed[1].reason == "x" * 5000
    assert listed[2].message_id == "m" * 512
    assert listed[0].created_at == T0
    assert listed[0].created_at.utcoffset() == timedelta(0)
    assert [f.id for f in repository.list(stage="worker", after_id=listed[1].id)] == [listed[2].id]
    repository.mark_replayed([listed[1].id])
    assert [f.id for f in repository.list(include_replayed=False)] == [listed[0].id, listed[2].id]


def test_row_ids_go_past_32_bits(open_state: StateFactory) -> None:
    db = open_state()
    big = 2**31 + 7
    with db.engine.begin() as conn:
        conn.execute(
            failed_events.insert().values(
                id=big,
                stage="worker",
                code="c",
                reason="r",
                payload="{}",
                attempts=1,
                created_at=T0,
            )
        )
        conn.execute(
            profile_merges.insert().values(
                id=big,
                into_profile_id="a",
                from_profile_id="b",
                ids="[]",
                message_ids="[]",
                merged_at=T0,
            )
        )
    assert [f.id for f in FailedEventRepository(db).list(after_id=2**31)] == [big]


def test_times_are_stored_as_instants_whatever_their_offset(open_state: StateFactory) -> None:
    db = open_state()
    local = T0.astimezone(PLUS_TWO)
    source, _ = SourceRepository(db, clock=FrozenClock(local)).create("web")
    stored = SourceRepository(db).get(source.id)
    assert stored.created_at == T0
    assert stored.created_at.utcoffset() == timedelta(0)
    with db.engine.connect() as conn:
        later = conn.execute(
            sa.select(sa.func.count())
            .select_from(sources)
            .where(sources.c.created_at > (T0 - timedelta(minutes=1)).astimezone(PLUS_TWO))
        ).scalar_one()
    assert later == 1


def test_heartbeats_are_upserted_listed_and_pruned(open_state: StateFactory) -> None:
    repository = HeartbeatRepository(open_state())

    def beat(consumer: str, at: datetime, applied: int) -> Heartbeat:
        return Heartbeat(consumer, "worker", T0, at, applied, 0, 0, 12.5, 3)

    repository.beat(beat("w-1", T0, 10))
    repository.beat(beat("w-1", T0 + timedelta(seconds=5), 20))
    repository.beat(beat("w-2", T0 + timedelta(seconds=1), 2**40))
    recent = repository.recent(since=T0, group="worker")
    assert [(b.consumer, b.events_applied) for b in recent] == [("w-1", 20), ("w-2", 2**40)]
    assert recent[0].updated_at == T0 + timedelta(seconds=5)
    assert repository.prune(older_than=timedelta(seconds=1), now=T0 + timedelta(seconds=5)) == 1
    assert [b.consumer for b in repository.recent(since=T0 - timedelta(days=1))] == ["w-1"]


# -- profiles: the worker's application path --------------------------------------------------


def test_profiles_equal_the_reference_whatever_the_batching(
    open_state: StateFactory, tmp_path: Path
) -> None:
    events = [view_event(e) for e in shop_events(40, 30)]
    reference = _reference(tmp_path, events)
    db = open_state()
    processor = ProfileProcessor(db, FEATURES, clock=FrozenClock(T0))
    applied = duplicates = 0
    for start in range(0, len(events), 97):
        result = processor.apply(events[start : start + 97])
        applied += result.applied
        duplicates += result.duplicates
    # a redelivery of everything (a worker that died before committing its offsets)
    redelivered = processor.apply(events[: len(events) // 2])
    assert (applied, duplicates) == (len(events), 0)
    assert (redelivered.applied, redelivered.duplicates) == (0, len(events) // 2)
    assert _profiles(db) == _profiles(reference)
    assert _graph(db) == _graph(reference)
    assert _applied(db) == len(events)
    reference.dispose()


def test_concurrent_writers_end_with_the_reference_profiles(
    open_state: StateFactory, tmp_path: Path
) -> None:
    # two workers, each owning the partitions of half the devices, racing on shared profiles
    events = [view_event(e) for e in shop_events(30, 30, seed=11)]
    reference = _reference(tmp_path, events)
    lanes: list[list[ProfileEvent]] = [[], []]
    for item in events:
        lanes[zlib.crc32(partition_key(dict(item.data)).encode()) % 2].append(item)
    db = open_state()
    errors: list[BaseException] = []

    def run(lane: list[ProfileEvent]) -> None:
        processor = ProfileProcessor(db, FEATURES, clock=FrozenClock(T0))
        try:
            for start in range(0, len(lane), 25):
                _apply_retrying(processor, lane[start : start + 25])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _profiles(db) == _profiles(reference)
    assert _graph(db) == _graph(reference)
    assert _applied(db) == len(events)
    reference.dispose()


def test_profile_reads_by_any_id_history_timeline_and_as_of(open_state: StateFactory) -> None:
    db = open_state()
    clock = FrozenClock(T0)
    processor = ProfileProcessor(db, FEATURES, clock=clock, snapshot_every=2)
    repository = ProfileRepository(db, FEATURES)
    processor.apply([view_event(event("page", "p1", 0, anonymous_id="dev-1"))])
    clock.advance(60)
    processor.apply([view_event(event("track", "t1", 1, user_id="ana", name="Clicked"))])
    clock.advance(60)
    processor.apply(
        [
            view_event(
                event("identify", "i1", 2, user_id="ana", anonymous_id="dev-1", traits={"a": 1})
            )
        ]
    )
    clock.advance(60)
    processor.apply([view_event(event("track", "t2", 3, user_id="ana", name="Bought"))])

    stored = repository.find("dev-1")
    assert stored is not None
    assert stored.profile_id == repository.resolve("ana") == "ana"
    assert stored.state().events == 4
    assert stored.created_at == T0 + timedelta(seconds=60)
    assert stored.updated_at == T0 + timedelta(seconds=180)
    assert [(v.version, v.kind) for v in repository.versions("ana")] == [
        (3, "update"),
        (2, "merge"),
        (1, "create"),
    ]
    assert [m.from_profile_id for m in repository.merges("ana")] == ["dev-1"]
    first = repository.timeline("ana", limit=3)
    assert [e.payload["messageId"] for e in first] == ["t2", "i1", "t1"]
    rest = repository.timeline("ana", before=(first[-1].event_time_ms, first[-1].event_key))
    assert [e.payload["messageId"] for e in rest] == ["p1"]

    # before the identify, read with a +02:00 offset: the device's page view is not linked yet
    past = repository.state_as_of("ana", (T0 + timedelta(seconds=90)).astimezone(PLUS_TWO))
    assert past is not None
    assert past.events == 2
    now = repository.state_as_of("ana", T0 + timedelta(hours=1))
    assert now is not None
    assert encode_state(now).decode() == stored.blob


def test_an_identity_at_the_length_limit_is_stored(open_state: StateFactory) -> None:
    db = open_state()
    long_id = "u" * 512
    properties: dict[str, Any] = {"text": "\u00e9" * 1000}
    ProfileProcessor(db, FEATURES).apply(
        [
            view_event(
                event("track", "m" * 512, 0, user_id=long_id, name="n" * 600, properties=properties)
            )
        ]
    )
    stored = ProfileRepository(db, FEATURES).find(long_id)
    assert stored is not None
    assert stored.profile_id == long_id


def test_postgresql_sessions_plan_each_lookup_with_its_values(postgres_database: str) -> None:
    # a generic plan made while a table was empty scans it forever after (see database.py)
    db = Database(fresh_schema(postgres_database))
    try:
        for _ in range(3):
            with db.engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
                conn.rollback()
    finally:
        db.dispose()


def test_a_postgresql_deadlock_is_a_lost_race(postgres_database: str) -> None:
    db = Database(fresh_schema(postgres_database))
    rows = [
        {
            "profile_id": pid,
            "version": 1,
            "state": "{}",
            "personalization_allowed": True,
            "created_at": T0,
            "updated_at": T0,
        }
        for pid in ("a", "b")
    ]
    with db.engine.begin() as conn:
        conn.execute(profiles.insert(), rows)

    def bump(conn: sa.Connection, pid: str) -> None:
        conn.execute(profiles.update().where(profiles.c.profile_id == pid).values(version=2))

    failures: list[sa.exc.DBAPIError] = []
    first, second = db.engine.connect(), db.engine.connect()
    try:
        first.begin()
        second.begin()
        bump(first, "a")
        bump(second, "b")

        def cross(conn: sa.Connection, pid: str) -> None:
            try:
                bump(conn, pid)
            except sa.exc.DBAPIError as exc:
                failures.append(exc)
                conn.rollback()

        # each waits for the other's row: PostgreSQL aborts one of them
        waiter = threading.Thread(target=cross, args=(first, "b"))
        waiter.start()
        cross(second, "a")
        waiter.join()
    finally:
        first.close()
        second.close()
        db.dispose()
    assert len(failures) == 1
    assert lost_a_race(failures[0])


def test_text_the_engine_cannot_store_is_refused_clearly(open_state: StateFactory) -> None:
    # PostgreSQL's text cannot hold NUL; SQLite's can. Either way no driver error escapes
    # (the worker dead-letters a ValidationError), and the dead letter itself is stored.
    db = open_state()
    poisoned = view_event(event("track", "m\x00", 0, user_id="u\x00", name="Clicked\x00"))
    try:
        ProfileProcessor(db, FEATURES).apply([poisoned])
    except ValidationError as exc:
        assert exc.code == "unstorable_value"
        assert db.engine.dialect.name == "postgresql"
    repository = FailedEventRepository(db)
    repository.add_many(
        [
            NewFailedEvent(
                stage="worker",
                code="unstorable_value",
                reason="NUL \x00 inside",
                payload="raw \x00 text",
                message_id="m\x00",
                source_id="s\x00",
            ),
            NewFailedEvent(stage="worker", code="c", reason="r", payload={"text": "a\x00b"}),
        ]
    )
    first, second = repository.list()
    assert (first.message_id, first.source_id) == ("m\ufffd", "s\ufffd")
    assert (first.reason, first.payload) == ("NUL \ufffd inside", "raw \ufffd text")
    assert second.payload == {"text": "a\x00b"}
