"""The audit log's chain on SQLite and PostgreSQL: many appends verify, every kind of
tampering is found at the right record with the right reason, concurrent appenders keep one
unbroken chain, and queries and exports read it back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from personify.auth import audit as audit_module
from personify.auth.audit import (
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    chain_hash,
    outcome_of,
)
from personify.auth.tables import audit_head, audit_log
from personify.clock import FrozenClock
from personify.store.database import Database
from tests.postgres import fresh_schema, postgres_database  # noqa: F401

START = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty state database: a SQLite file or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'personify.db'}"
    return fresh_schema(request.getfixturevalue("postgres_database"))


@pytest.fixture
def db(state_url: str) -> Iterator[Database]:
    opened = Database(state_url)
    yield opened
    opened.dispose()


@pytest.fixture
def log(db: Database) -> AuditLog:
    return AuditLog(db, clock=FrozenClock(START))


def record(number: int, **changes: object) -> AuditRecord:
    """A varied record: kinds, roles, sources and details change with ``number``."""
    kinds = ["api_key", "token", "cli", "system"]
    status = [200, 201, 403, 500][number % 4]
    made = AuditRecord(
        at=START + timedelta(seconds=number, microseconds=number),
        actor_kind=kinds[number % 4],
        actor=f"actor-{number % 3}",
        role=None if number % 5 == 0 else "admin",
        action="PATCH /v1/experiments/{key}" if number % 2 else "POST /v1/segments",
        resource=f"/v1/experiments/exp-{number}",
        status=status,
        outcome=outcome_of(status),
        source=None if number % 7 == 0 else "10.0.0.7",
        details=None if number % 3 == 0 else {"name": f"clé n°{number}", "n": number / 3},
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def fill(log: AuditLog, count: int) -> list[int]:
    return [log.append(record(n)) for n in range(1, count + 1)]


def test_outcomes_follow_the_status() -> None:
    assert [outcome_of(s) for s in (200, 204, 304, 401, 403, 429, 400, 404, 409, 500, 503)] == [
        "ok",
        "ok",
        "ok",
        "denied",
        "denied",
        "denied",
        "failed",
        "failed",
        "failed",
        "failed",
        "failed",
    ]


def test_an_empty_log_verifies(log: AuditLog) -> None:
    report = log.verify()
    assert report.ok and report.records == 0 and report.head_id is None


def test_a_chain_of_many_appends_verifies_page_by_page(
    log: AuditLog, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small pages, so that the walk crosses many page boundaries
    monkeypatch.setattr(audit_module, "_PAGE_ROWS", 16)
    ids = fill(log, 150)
    assert ids == list(range(1, 151))
    report = log.verify()
    assert report.ok, report
    assert (report.records, report.head_id) == (150, 150)
    entries = log.query(limit=1000)
    assert [e.record for e in entries] == [record(n) for n in range(1, 151)]
    # the chain as the module docstring defines it, recomputed here from the fields alone
    previous = GENESIS_HASH
    for entry in entries:
        assert entry.prev_hash == previous
        assert entry.hash == chain_hash(previous, entry.id, entry.record)
        previous = entry.hash
    assert report.head_hash == previous
    with db.connect() as conn:
        head = conn.execute(sa.select(audit_head)).one()
    assert (head.last_id, head.last_hash) == (150, previous)


def test_texts_longer_than_their_columns_are_cut_before_hashing(log: AuditLog) -> None:
    long = record(1, resource="/v1/profiles/" + "x" * 2000, actor="é" * 600)
    log.append(long)
    (entry,) = log.query()
    assert len(entry.record.resource) == 1000 and len(entry.record.actor) == 512
    assert log.verify().ok


def test_details_that_are_not_json_are_refused(log: AuditLog) -> None:
    from personify.errors import ValidationError

    with pytest.raises(ValidationError):
        log.append(record(1, details={"when": object()}))
    assert log.verify().ok and log.query() == []


# every stored column, with a value different from any ``record`` gives it
ALTERATIONS = {
    "at": START - timedelta(days=1),
    "actor_kind": "system",
    "actor": "someone-else",
    "role": "owner",
    "action": "DELETE /v1/segments/{key}",
    "resource": "/v1/experiments/other",
    "status": 299,
    "outcome": "denied",
    "source": "203.0.113.9",
    "details": '{"name":"forged"}',
    "prev_hash": "a" * 64,
    "hash": "b" * 64,
}


@pytest.mark.parametrize("column", sorted(ALTERATIONS))
def test_a_field_altered_in_sql_is_found_at_its_record(
    log: AuditLog, db: Database, column: str
) -> None:
    fill(log, 30)
    with db.begin() as conn:
        conn.execute(
            audit_log.update().where(audit_log.c.id == 17).values({column: ALTERATIONS[column]})
        )
    report = log.verify()
    assert not report.ok
    assert (report.broken_id, report.reason) == (17, "altered"), report
    assert report.records == 16


def test_a_record_rewritten_with_a_fresh_hash_breaks_the_next_link(
    log: AuditLog, db: Database
) -> None:
    fill(log, 10)
    (original,) = [e for e in log.query() if e.id == 5]
    forged = replace(original.record, actor="nobody")
    with db.begin() as conn:
        conn.execute(
            audit_log.update()
            .where(audit_log.c.id == 5)
            .values(actor="nobody", hash=chain_hash(original.prev_hash, 5, forged))
        )
    report = log.verify()
    assert (report.broken_id, report.reason) == (6, "altered"), report
    assert "record 5" in (report.message or "")


@pytest.mark.parametrize(("removed", "first_broken"), [(1, 1), (12, 12), (29, 29)])
def test_a_deleted_record_is_found(
    log: AuditLog, db: Database, removed: int, first_broken: int
) -> None:
    fill(log, 30)
    with db.begin() as conn:
        conn.execute(audit_log.delete().where(audit_log.c.id == removed))
    report = log.verify()
    assert (report.broken_id, report.reason) == (first_broken, "removed"), report


def test_deleting_the_last_records_leaves_the_head_past_the_end(
    log: AuditLog, db: Database
) -> None:
    fill(log, 20)
    with db.begin() as conn:
        conn.execute(audit_log.delete().where(audit_log.c.id >= 19))
    report = log.verify()
    assert not report.ok
    assert (report.broken_id, report.reason) == (19, "removed"), report
    assert report.head_id == 20 and "ends at record 18" in (report.message or "")


def test_a_head_that_does_not_match_the_last_record_is_found(log: AuditLog, db: Database) -> None:
    fill(log, 8)
    with db.begin() as conn:
        conn.execute(audit_head.update().values(last_hash="c" * 64))
    report = log.verify()
    assert (report.broken_id, report.reason) == (8, "head_mismatch"), report
    # a record slipped in after the head, chained correctly, is still outside the chain
    with db.begin() as conn:
        head_hash = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.id == 8)).scalar()
        conn.execute(audit_head.update().values(last_hash=head_hash))
        extra = record(9)
        conn.execute(
            audit_log.insert().values(
                id=9,
                at=extra.at,
                actor_kind=extra.actor_kind,
                actor=extra.actor,
                role=extra.role,
                action=extra.action,
                resource=extra.resource,
                status=extra.status,
                outcome=extra.outcome,
                source=extra.source,
                details=json.dumps(extra.details) if extra.details is not None else None,
                prev_hash=head_hash,
                hash=chain_hash(str(head_hash), 9, extra),
            )
        )
    report = log.verify()
    assert (report.broken_id, report.reason) == (9, "head_mismatch"), report
    with db.begin() as conn:
        conn.execute(audit_head.delete())
    report = log.verify()
    assert report.reason == "head_mismatch" and "no head" in (report.message or "")


def test_concurrent_appends_from_threads_keep_one_unbroken_chain(
    state_url: str, log: AuditLog
) -> None:
    # four engines on one database, as four processes have, two threads each
    engines = [Database(state_url, auto_upgrade=False) for _ in range(4)]
    logs = [AuditLog(engine) for engine in engines]
    start = threading.Barrier(8)

    def append(worker: int) -> list[int]:
        start.wait()
        return [logs[worker % 4].append(record(worker * 100 + n)) for n in range(25)]

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            # result() raises a thread's error here
            appended = [i for ids in pool.map(append, range(8), timeout=120) for i in ids]
    finally:
        for engine in engines:
            engine.dispose()
    assert sorted(appended) == list(range(1, 201))
    report = log.verify()
    assert report.ok and report.records == 200 and report.head_id == 200, report


def test_queries_filter_and_page(log: AuditLog) -> None:
    fill(log, 40)
    by_actor = log.query(actor="actor-1", limit=1000)
    assert by_actor and {e.record.actor for e in by_actor} == {"actor-1"}
    assert [e.id for e in by_actor] == sorted(e.id for e in by_actor)
    patches = log.query(action="PATCH /v1/experiments/{key}", limit=1000)
    assert {e.id % 2 for e in patches} == {1} and len(patches) == 20
    assert [e.id for e in log.query(resource_prefix="/v1/experiments/exp-3", limit=1000)] == [
        3,
        30,
        31,
        32,
        33,
        34,
        35,
        36,
        37,
        38,
        39,
    ]
    # LIKE's wildcards in a prefix are plain characters
    assert log.query(resource_prefix="/v1/experiments/exp-_") == []
    assert log.query(resource_prefix="%") == []
    window = log.query(since=START + timedelta(seconds=10), until=START + timedelta(seconds=13))
    assert [e.id for e in window] == [10, 11, 12]
    first = log.query(limit=15)
    second = log.query(limit=15, after_id=first[-1].id)
    assert [e.id for e in first + second] == list(range(1, 31))


def test_the_export_is_json_lines_that_keep_the_chain(log: AuditLog) -> None:
    fill(log, 25)
    lines = list(log.export())
    assert len(lines) == 25 and all(line.endswith(b"\n") for line in lines)
    documents = [json.loads(line) for line in lines]
    previous = GENESIS_HASH
    for number, document in enumerate(documents, start=1):
        assert document["id"] == number and document["prevHash"] == previous
        assert (
            document["at"] == (START + timedelta(seconds=number, microseconds=number)).isoformat()
        )
        previous = document["hash"]
    assert documents[1]["details"] == {"name": "clé n°2", "n": 2 / 3}
    assert [json.loads(line)["actor"] for line in log.export(actor="actor-2")] == ["actor-2"] * 8


def test_the_log_has_no_way_to_change_or_remove_a_record() -> None:
    public = {name for name in dir(AuditLog) if not name.startswith("_")}
    assert public == {"append", "clock", "export", "head", "query", "verify"}
