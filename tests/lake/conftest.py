"""Helpers for the lake tests: normalised events, a filled SQLite log, the CLI environment."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from personify.clock import format_timestamp
from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer, partition_key
from personify.lake.schema import events_to_table
from personify.lake.table import Lake

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PII_KEY = "lake-test-pii-key"
NORMALIZER = Normalizer(PiiHasher(PII_KEY.encode(), ["traits.email", "context.traits.email"]))


def normalized(
    raw: dict[str, Any], *, received_at: datetime | None = None, source_id: str = "src-1"
) -> dict[str, Any]:
    """``raw`` as the collector would have put it in the log."""
    return NORMALIZER.normalize(raw, received_at=received_at or T0, source_id=source_id)


def track(
    number: int,
    *,
    user: str | None = None,
    anon: str | None = None,
    event: str = "Product Viewed",
    at: datetime | None = None,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A raw track event numbered ``number`` (its messageId is ``m<number>``)."""
    raw: dict[str, Any] = {
        "type": "track",
        "event": event,
        "messageId": f"m{number}",
        "timestamp": format_timestamp(at or T0 - timedelta(minutes=number)),
        "properties": properties if properties is not None else {"price": number * 1.5},
    }
    if user:
        raw["userId"] = user
    if anon:
        raw["anonymousId"] = anon
    if not user and not anon:
        raw["userId"] = f"u{number % 10}"
    return raw


def records(events: Iterable[dict[str, Any]]) -> list[LogRecord]:
    """Log records for normalised events, with the collector's dedupe keys."""
    return [
        LogRecord(msgspec.json.encode(e), partition_key(e), f"{e['sourceId']}:{e['messageId']}")
        for e in events
    ]


async def fill_log(path: Path, events: Iterable[dict[str, Any]]) -> None:
    """Append normalised events to the SQLite log at ``path``."""
    log = SQLiteEventLog(path, durability="off")
    await log.start()
    try:
        await log.append(records(events))
    finally:
        await log.close()


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``personify`` command on its own data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")}
    env.update(
        {
            "PERSONIFY_DATA_DIR": str(data_dir),
            "PERSONIFY_ENVIRONMENT": "test",
            "PERSONIFY_PII_HASH_KEY": PII_KEY,
            "PERSONIFY_EVENTLOG_DURABILITY": "normal",
        }
    )
    env.update(extra)
    return env


def write_lake(folder: Path, events: list[dict[str, Any]], *, batch: int = 0) -> Lake:
    """A lake at ``folder`` holding ``events`` (in batches of ``batch``, else one commit)."""
    lake = Lake(str(folder))
    size = batch or len(events)
    for start in range(0, len(events), size):
        chunk = events[start : start + size]
        offsets = [str(start + i + 1) for i in range(len(chunk))]
        rows = events_to_table(
            chunk, partitions=[0] * len(chunk), offsets=offsets, existing=lake.schema()
        )
        lake.append(rows, group="lake", offsets={0: offsets[-1]})
    return lake
