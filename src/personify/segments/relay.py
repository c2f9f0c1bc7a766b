"""Appending the membership events of ``segment_outbox`` to the event log.

The worker's segment stage and the sweep write ``Segment Entered`` / ``Segment Exited`` into
the outbox in the transaction that changes the membership; ``MembershipRelay.flush`` appends
them to the log and deletes them once the log holds them. The stream worker flushes after
each batch it commits, and a scheduled job flushes what a crash or a down log left behind.
An event appended twice (a crash between the append and the delete) has one messageId, the
log's dedupe key, so the log keeps it once.
"""

from __future__ import annotations

import asyncio

import msgspec
import sqlalchemy as sa

from personify.eventlog.base import EventLog, LogRecord
from personify.segments.conditions import SEGMENT_ENTERED, SEGMENT_EXITED
from personify.segments.tables import segment_outbox
from personify.store.database import Database

__all__ = ["MembershipRelay"]


class _Membership(msgspec.Struct):
    """What the counts read of a membership event: its name and its segment."""

    event: str = ""
    properties: dict[str, object] = {}


_decode_membership = msgspec.json.Decoder(_Membership).decode


class MembershipRelay:
    """Moves membership events from the outbox into the event log (module docstring)."""

    def __init__(self, db: Database, log: EventLog, *, page_size: int = 2000) -> None:
        self._db = db
        self._log = log
        self._page_size = max(1, page_size)
        # one flush at a time per process: the worker's and the scheduled job's
        self._lock = asyncio.Lock()
        # segment key -> entries and exits this process appended to the log (GET /metrics);
        # an event appended twice after a crash is counted twice (the log keeps it once)
        self.entries: dict[str, int] = {}
        self.exits: dict[str, int] = {}

    async def flush(self) -> int:
        """Append every event in the outbox; how many were appended. ``BackendUnavailable``
        when the state database or the log is down (the events stay in the outbox)."""
        appended = 0
        async with self._lock:
            while True:
                rows = await asyncio.to_thread(self._page)
                if not rows:
                    return appended
                await self._log.append(
                    [
                        LogRecord(payload.encode(), key, message_id)
                        for _, key, message_id, payload in rows
                    ]
                )
                await asyncio.to_thread(self._delete, [row[0] for row in rows])
                self._count([payload for _, _, _, payload in rows])
                appended += len(rows)
                if len(rows) < self._page_size:
                    return appended

    def _count(self, payloads: list[str]) -> None:
        for payload in payloads:
            event = _decode_membership(payload)
            counts = (
                self.entries
                if event.event == SEGMENT_ENTERED
                else self.exits
                if event.event == SEGMENT_EXITED
                else None
            )
            segment = event.properties.get("segment")
            if counts is not None and isinstance(segment, str):
                counts[segment] = counts.get(segment, 0) + 1

    def pending(self) -> int:
        """How many events wait in the outbox."""
        with self._db.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(segment_outbox)).scalar_one()
            )

    def _page(self) -> list[tuple[int, str, str, str]]:
        o = segment_outbox.c
        with self._db.connect() as conn:
            return [
                (int(row_id), str(key), str(message_id), str(payload))
                for row_id, key, message_id, payload in conn.execute(
                    sa.select(o.id, o.partition_key, o.message_id, o.payload)
                    .order_by(o.id)
                    .limit(self._page_size)
                )
            ]

    def _delete(self, row_ids: list[int]) -> None:
        with self._db.begin() as conn:
            conn.execute(segment_outbox.delete().where(segment_outbox.c.id.in_(row_ids)))
