"""Helpers for the lake tests: normalised events, a filled SQLite log, the CLI environment,
the served app with its background stages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from personify.api.app import create_app
from personify.clock import format_timestamp
from personify.eventlog.base import LogRecord
from personify.eventlog.sqlite import SQLiteEventLog
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer, partition_key
from personify.lake.schema import events_to_table
from personify.lake.table import Lake
from personify.runtime import Runtime
from tests.conftest import make_settings

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


class Served:
    """The real app over a temporary data folder, with its supervised worker and lake writer
    running: a write key for ingest, an httpx client that holds an admin key."""

    def __init__(self, services: Runtime, client: httpx.AsyncClient, write_key: str) -> None:
        self.services = services
        self.client = client
        self.write_key = write_key

    async def send(self, path: str, body: str | dict[str, Any]) -> httpx.Response:
        """POST to an ingest route with the write key (Basic auth replaces the Bearer header)."""
        content = body if isinstance(body, str) else msgspec.json.encode(body).decode()
        return await self.client.post(
            path,
            content=content,
            auth=(self.write_key, ""),
            headers={"Content-Type": "application/json"},
        )

    async def stages(self) -> dict[str, dict[str, Any]]:
        """``/v1/worker/status``'s stages, by name."""
        body = (await self.client.get("/v1/worker/status")).json()
        return {stage["stage"]: stage for stage in body["stages"]}

    async def ready(self) -> tuple[int, dict[str, Any]]:
        """``GET /readyz``: its status and body."""
        answer = await self.client.get("/readyz")
        body: dict[str, Any] = answer.json()
        return answer.status_code, body

    async def down(self) -> dict[str, Any]:
        """The first 503 body of ``/readyz`` (the stage may be running again right after)."""
        seen: list[dict[str, Any]] = []

        async def not_ready() -> bool:
            status, body = await self.ready()
            if status == 503:
                seen.append(body)
            return bool(seen)

        await self.wait_for(not_ready, "/readyz to report a stage down")
        return seen[0]

    async def wait_for(
        self, condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0
    ) -> None:
        """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not await condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def settled(self) -> None:
        """Wait until the worker and the lake writer (if it runs) have committed everything."""
        groups = ["worker", "lake"] if self.services.lake_sink is not None else ["worker"]

        async def no_lag() -> bool:
            for group in groups:
                answer = await self.client.get("/v1/log", params={"group": group})
                if answer.json()["lag"] != 0:
                    return False
            return True

        await self.wait_for(no_lag, f"the groups {groups} to reach lag 0")

    def lake_rows(self) -> list[dict[str, Any]]:
        """Every row of the lake."""
        lake = Lake(self.services.settings.resolved_lake_url)
        return lake.open().to_pyarrow_table().to_pylist() if lake.exists() else []


@contextlib.asynccontextmanager
async def serving(data_dir: Path, **overrides: Any) -> AsyncIterator[Served]:
    """``Served`` on fresh settings (short polls and linger, so tests do not wait)."""
    values: dict[str, Any] = {
        "worker_poll_timeout_ms": 50,
        "worker_retry_backoff_ms": 5,
        "lake_linger_ms": 20,
        "cache_invalidation_ttl_s": 0.05,
    }
    values.update(overrides)
    settings = make_settings(data_dir, **values)
    services = Runtime.build(settings)
    app = create_app(settings, services=services)
    await services.start()
    try:
        _, write_key = services.sources.create("web")
        _, admin_key = services.api_keys.create("ops", "admin")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {admin_key}"},
        ) as client:
            yield Served(services, client, write_key)
    finally:
        await services.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The app on a fresh data folder, its worker and lake writer running."""
    async with serving(tmp_path / "data") as harness:
        yield harness
