"""The audit log: one append-only, hash-chained record per change and per read of per-user
data (docs/privacy.md).

Each record says who (``actor_kind``, ``actor``, ``role``), what (``action``), which resource,
when (``at``), from where (``source``) and the outcome (``status``, ``outcome``), with optional
``details``. Records are numbered 1, 2, 3… without gaps (the id is the head's plus one, taken
under a lock, never from a sequence that a rolled-back transaction would skip).

The chain. A record's ``hash`` is the lower-case hex SHA-256 of::

    prev_hash (64 ASCII hex characters) || canonical JSON of the record (UTF-8)

where ``prev_hash`` is the previous record's ``hash`` (64 zeros for record 1) and the canonical
JSON is one object with exactly the keys ``id``, ``at``, ``actor_kind``, ``actor``, ``role``,
``action``, ``resource``, ``status``, ``outcome``, ``source``, ``details``: keys sorted,
no whitespace (separators ``,`` and ``:``), non-ASCII characters as themselves, ``at`` as
ISO-8601 UTC with microseconds (``2026-01-02T03:04:05.000000+00:00``), ``details`` as the JSON
value stored (``null`` when absent), ``role`` and ``source`` ``null`` when absent. The
``audit_head`` row holds the newest id and hash and is updated in the transaction that appends,
so a record removed from the end leaves the head pointing past it.

``verify`` walks every record and reports the first that fails: ``removed`` (an id missing,
or the head pointing past the last record), ``altered`` (a record whose fields no longer give
its hash, or whose ``prev_hash`` is not the previous record's hash: that one or this one was
rewritten), ``head_mismatch`` (records after the head, or the head's hash not the last
record's). A chain proves order and integrity against anyone who cannot rewrite every later
record and the head together; to catch that too, keep the head hash ``verify`` prints
somewhere else (a ticket, a log shipper) now and then.

Append-only: this class has no method that updates or deletes a record. Retention of audit
records is the operator's, never Personify's: export them (``personify audit export``), then
rotate the table (empty ``audit_log`` and ``audit_head`` together; the export keeps its own
chain, and a new chain starts at 1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

import sqlalchemy as sa

from personify.auth.tables import audit_head, audit_log
from personify.clock import Clock, SystemClock
from personify.errors import ValidationError
from personify.store.database import Database, aware

__all__ = [
    "ACTOR_KINDS",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "VerifyReport",
    "canonical_json",
    "chain_hash",
    "outcome_of",
]

ActorKind = Literal["api_key", "token", "write_key", "cli", "system", "anonymous"]
ACTOR_KINDS: Final[tuple[str, ...]] = (
    "api_key",
    "token",
    "write_key",
    "cli",
    "system",
    "anonymous",
)
Outcome = Literal["ok", "denied", "failed"]
BrokenReason = Literal["altered", "removed", "head_mismatch"]

# record 1's prev_hash
GENESIS_HASH: Final = "0" * 64
# the one head row
_HEAD_ID: Final = 1
# any constant: the PostgreSQL advisory lock appenders of one database take turns on
_APPEND_LOCK_KEY: Final = 0x61756469  # "audi"
_PAGE_ROWS: Final = 1000
MAX_QUERY_ROWS: Final = 1000
# the columns' lengths (personify.auth.tables): longer values are cut before hashing, so the
# hash covers exactly what is stored on every engine
_LIMITS: Final = {
    "actor_kind": 16,
    "actor": 512,
    "role": 32,
    "action": 300,
    "resource": 1000,
    "outcome": 16,
    "source": 200,
}


def outcome_of(status: int) -> Outcome:
    """The outcome of an HTTP status: ``ok`` below 400, ``denied`` for 401, 403 and 429,
    ``failed`` otherwise."""
    if status < 400:
        return "ok"
    if status in (401, 403, 429):
        return "denied"
    return "failed"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited action: who, what, which resource, when, from where, and the outcome."""

    at: datetime
    actor_kind: str
    actor: str
    role: str | None
    action: str
    resource: str
    status: int
    outcome: str
    source: str | None = None
    details: dict[str, Any] | None = None

    def clipped(self) -> AuditRecord:
        """The record with its texts cut to their columns' lengths and ``at`` in UTC."""
        cut: dict[str, Any] = {}
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if value is not None and len(value) > limit:
                cut[name] = value[:limit]
        at = self.at.replace(tzinfo=UTC) if self.at.tzinfo is None else self.at.astimezone(UTC)
        return replace(self, at=at, **cut)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A stored record with its place in the chain."""

    id: int
    record: AuditRecord
    prev_hash: str
    hash: str

    def to_document(self) -> dict[str, Any]:
        """The record as the API and the JSON-lines export show it."""
        r = self.record
        return {
            "id": self.id,
            "at": _iso(r.at),
            "actorKind": r.actor_kind,
            "actor": r.actor,
            "role": r.role,
            "action": r.action,
            "resource": r.resource,
            "status": r.status,
            "outcome": r.outcome,
            "source": r.source,
            "details": r.details,
            "prevHash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of walking the chain: ``ok``, or the first broken id and why."""

    ok: bool
    records: int
    head_id: int | None
    head_hash: str | None
    broken_id: int | None = None
    reason: BrokenReason | None = None
    message: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The report as the API shows it."""
        return {
            "ok": self.ok,
            "records": self.records,
            "headId": self.head_id,
            "headHash": self.head_hash,
            "brokenId": self.broken_id,
            "reason": self.reason,
            "message": self.message,
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_json(entry_id: int, record: AuditRecord) -> bytes:
    """The bytes a record's hash covers besides the previous hash (see the module docstring)."""
    fields = {
        "id": entry_id,
        "at": _iso(record.at),
        "actor_kind": record.actor_kind,
        "actor": record.actor,
        "role": record.role,
        "action": record.action,
        "resource": record.resource,
        "status": record.status,
        "outcome": record.outcome,
        "source": record.source,
        "details": record.details,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: str, entry_id: int, record: AuditRecord) -> str:
    """SHA-256 of the previous hash and the record's canonical JSON, as lower-case hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(entry_id, record)).hexdigest()


def _details_text(details: dict[str, Any] | None) -> str | None:
    if details is None:
        return None
    try:
        return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"audit details must be JSON: {exc}", code="invalid_audit_details"
        ) from exc


def _entry(row: sa.Row[Any]) -> AuditEntry:
    m = row._mapping
    details = json.loads(m["details"]) if m["details"] is not None else None
    record = AuditRecord(
        at=aware(m["at"]),  # type: ignore[arg-type]
        actor_kind=m["actor_kind"],
        actor=m["actor"],
        role=m["role"],
        action=m["action"],
        resource=m["resource"],
        status=m["status"],
        outcome=m["outcome"],
        source=m["source"],
        details=details,
    )
    return AuditEntry(id=m["id"], record=record, prev_hash=m["prev_hash"], hash=m["hash"])


def _take_turns(conn: sa.Connection) -> None:
    """Hold the append lock until this transaction ends, so that appenders read the head
    one after another and the chain never forks."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # the driver defers BEGIN to the first write: take the write lock before reading the
        # head, or two appenders would both read it and chain to the same record
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class AuditLog:
    """Appends records to the hash chain, walks it to verify it, and reads it back.

    There is no update or delete: retention is the operator's (export, then rotate the table).
    """

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()

    @property
    def clock(self) -> Clock:
        """The clock records are stamped with by their makers."""
        return self._clock

    def append(self, record: AuditRecord) -> int:
        """Add ``record`` at the end of the chain; returns its id.

        Raises ``BackendUnavailable`` when the state database is down, ``ValidationError``
        when ``details`` is not JSON.
        """
        record = record.clipped()
        details = _details_text(record.details)
        if details is not None:
            # hashed as it will be read back
            record = replace(record, details=json.loads(details))
        with self._db.begin() as conn:
            _take_turns(conn)
            head = conn.execute(
                sa.select(audit_head.c.last_id, audit_head.c.last_hash).where(
                    audit_head.c.id == _HEAD_ID
                )
            ).first()
            if head is None:
                # the first append (or a head row someone removed: continue after the last
                # record, which verify then still checks link by link)
                last = conn.execute(
                    sa.select(audit_log.c.id, audit_log.c.hash)
                    .order_by(audit_log.c.id.desc())
                    .limit(1)
                ).first()
                last_id, prev_hash = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
                conn.execute(
                    audit_head.insert().values(id=_HEAD_ID, last_id=last_id, last_hash=prev_hash)
                )
            else:
                last_id, prev_hash = int(head[0]), str(head[1])
            entry_id = last_id + 1
            digest = chain_hash(prev_hash, entry_id, record)
            conn.execute(
                audit_log.insert().values(
                    id=entry_id,
                    at=record.at,
                    actor_kind=record.actor_kind,
                    actor=record.actor,
                    role=record.role,
                    action=record.action,
                    resource=record.resource,
                    status=record.status,
                    outcome=record.outcome,
                    source=record.source,
                    details=details,
                    prev_hash=prev_hash,
                    hash=digest,
                )
            )
            conn.execute(
                audit_head.update()
                .where(audit_head.c.id == _HEAD_ID)
                .values(last_id=entry_id, last_hash=digest)
            )
        return entry_id

    def _rows(self, after_id: int, until_id: int | None = None) -> Iterator[AuditEntry]:
        """Every record after ``after_id`` (up to ``until_id``) in id order, a page at a time."""
        while True:
            statement = sa.select(audit_log).where(audit_log.c.id > after_id)
            if until_id is not None:
                statement = statement.where(audit_log.c.id <= until_id)
            with self._db.connect() as conn:
                page = [
                    _entry(row)
                    for row in conn.execute(statement.order_by(audit_log.c.id).limit(_PAGE_ROWS))
                ]
            yield from page
            if len(page) < _PAGE_ROWS:
                return
            after_id = page[-1].id

    def head(self) -> tuple[int, str] | None:
        """The head: the newest record's id and hash (``None`` before the first append)."""
        with self._db.connect() as conn:
            row = conn.execute(
                sa.select(audit_head.c.last_id, audit_head.c.last_hash).where(
                    audit_head.c.id == _HEAD_ID
                )
            ).first()
        return (int(row[0]), str(row[1])) if row is not None else None

    def verify(self) -> VerifyReport:
        """Walk every record in id order, recompute each hash and link, and check the head.

        Records appended while it walks are checked up to the head read after the walk;
        later ones are left for the next run.
        """
        checked = 0
        prev_hash = GENESIS_HASH
        expected = 1

        def broken(entry_id: int, reason: BrokenReason, message: str) -> VerifyReport:
            head = self.head()
            return VerifyReport(
                ok=False,
                records=checked,
                head_id=head[0] if head else None,
                head_hash=head[1] if head else None,
                broken_id=entry_id,
                reason=reason,
                message=message,
            )

        def walk(after_id: int, until_id: int | None) -> VerifyReport | None:
            nonlocal checked, prev_hash, expected
            for entry in self._rows(after_id, until_id):
                if entry.id != expected:
                    missing = (
                        f"record {expected} is missing"
                        if entry.id == expected + 1
                        else f"records {expected} to {entry.id - 1} are missing"
                    )
                    return broken(expected, "removed", missing)
                if entry.prev_hash != prev_hash:
                    return broken(
                        entry.id,
                        "altered",
                        f"its prev_hash is not record {entry.id - 1}'s hash: that record or "
                        "this one was rewritten",
                    )
                if chain_hash(entry.prev_hash, entry.id, entry.record) != entry.hash:
                    return broken(entry.id, "altered", "its fields no longer give its hash")
                prev_hash = entry.hash
                expected += 1
                checked += 1
            return None

        found = walk(0, None)
        if found is not None:
            return found
        last_id = expected - 1
        head = self.head()
        if head is not None and head[0] > last_id:
            # appended while we walked (a record and the head commit together, so every
            # record up to this head exists unless one was removed)
            found = walk(last_id, head[0])
            if found is not None:
                return found
            last_id = expected - 1
        if head is None:
            if last_id == 0:
                return VerifyReport(ok=True, records=0, head_id=None, head_hash=None)
            return broken(last_id, "head_mismatch", "there are records but no head")
        head_id, head_hash = head
        if head_id > last_id:
            return broken(
                last_id + 1,
                "removed",
                f"the head points to record {head_id} but the log ends at record {last_id}",
            )
        if head_id < last_id:
            return broken(
                head_id + 1,
                "head_mismatch",
                f"the head points to record {head_id} but the log goes on to {last_id}",
            )
        if head_hash != prev_hash:
            return broken(head_id, "head_mismatch", "the head's hash is not the last record's")
        return VerifyReport(ok=True, records=checked, head_id=head_id, head_hash=head_hash)

    def _filtered(
        self,
        actor: str | None,
        action: str | None,
        resource_prefix: str | None,
        since: datetime | None,
        until: datetime | None,
        outcome: str | None = None,
    ) -> list[sa.ColumnElement[bool]]:
        conditions: list[sa.ColumnElement[bool]] = []
        if actor is not None:
            conditions.append(audit_log.c.actor == actor)
        if action is not None:
            conditions.append(audit_log.c.action == action)
        if outcome is not None:
            conditions.append(audit_log.c.outcome == outcome)
        if resource_prefix:
            conditions.append(audit_log.c.resource.startswith(resource_prefix, autoescape=True))
        if since is not None:
            conditions.append(audit_log.c.at >= since)
        if until is not None:
            conditions.append(audit_log.c.at < until)
        return conditions

    def query(
        self,
        actor: str | None = None,
        action: str | None = None,
        resource_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after_id: int | None = None,
        *,
        outcome: str | None = None,
        before_id: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        """Records oldest first (or ``newest_first``), after ``after_id`` and before
        ``before_id``: by actor, exact action (``PATCH /v1/experiments/{key}``), outcome,
        resource prefix, and time (``since`` ≤ at < ``until``)."""
        if not 1 <= limit <= MAX_QUERY_ROWS:
            raise ValidationError(
                f"limit must be between 1 and {MAX_QUERY_ROWS}", code="invalid_parameter"
            )
        conditions = self._filtered(actor, action, resource_prefix, since, until, outcome)
        if after_id is not None:
            conditions.append(audit_log.c.id > after_id)
        if before_id is not None:
            conditions.append(audit_log.c.id < before_id)
        order = audit_log.c.id.desc() if newest_first else audit_log.c.id
        statement = sa.select(audit_log).where(*conditions).order_by(order).limit(limit)
        with self._db.connect() as conn:
            return [_entry(row) for row in conn.execute(statement)]

    def export(
        self,
        actor: str | None = None,
        action: str | None = None,
        resource_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[bytes]:
        """Every matching record, oldest first, as JSON lines (one ``to_document`` each,
        ``prevHash`` and ``hash`` included, so an export keeps its chain)."""
        conditions = self._filtered(actor, action, resource_prefix, since, until)
        after_id = 0
        while True:
            statement = (
                sa.select(audit_log)
                .where(*conditions, audit_log.c.id > after_id)
                .order_by(audit_log.c.id)
                .limit(_PAGE_ROWS)
            )
            with self._db.connect() as conn:
                page: Sequence[AuditEntry] = [_entry(row) for row in conn.execute(statement)]
            for entry in page:
                yield json.dumps(entry.to_document(), ensure_ascii=False).encode() + b"\n"
            if len(page) < _PAGE_ROWS:
                return
            after_id = page[-1].id
