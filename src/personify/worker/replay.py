"""Feed the worker's dead letters back into the event log, after a fix.

A replayed event keeps its payload, hence its messageId: if it was applied meanwhile (a
dead letter recorded twice around a crash, say), the worker skips it. Each dead letter is
appended with the dedupe key ``replay:<id>``, so running the command twice appends once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from personify.eventlog.base import EventLog, LogRecord
from personify.events.normalize import partition_key
from personify.store.failed_events import FailedEvent, FailedEventRepository


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """Which dead letters went back into the log."""

    replayed: list[int]
    skipped: list[int]


def _record(item: FailedEvent) -> LogRecord:
    payload = item.payload
    if isinstance(payload, dict):
        return LogRecord(msgspec.json.encode(payload), partition_key(payload), f"replay:{item.id}")
    text = payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
    return LogRecord(text.encode(), "", f"replay:{item.id}")


async def replay_failed(
    log: EventLog,
    failed_events: FailedEventRepository,
    *,
    ids: Sequence[int] = (),
    limit: int = 1000,
) -> ReplayOutcome:
    """Append the worker's unreplayed dead letters (or just ``ids``) and mark them replayed.

    Only ``stage="worker"`` letters are replayed: ingest rejections never were valid events.
    """
    wanted = set(ids)
    items: list[FailedEvent] = []
    after = 0
    while len(items) < limit:
        page = await asyncio.to_thread(
            failed_events.list, stage="worker", after_id=after, limit=500, include_replayed=False
        )
        if not page:
            break
        after = page[-1].id
        items.extend(i for i in page if not wanted or i.id in wanted)
    items = items[:limit]
    skipped = sorted(wanted - {i.id for i in items})
    if not items:
        return ReplayOutcome([], skipped)
    await log.append([_record(item) for item in items])
    replayed = [item.id for item in items]
    await asyncio.to_thread(failed_events.mark_replayed, replayed)
    return ReplayOutcome(replayed, skipped)
