"""Crash test: SIGKILL the server three times mid-ingest; the log loses and doubles nothing.

A client in this process sends 10,000 events in batches of 100 over four parallel
streams, retrying every failed batch (connection error, 5xx) with the same messageIds
and a backoff. Three times during the run the server is killed with SIGKILL, so requests
are in flight, and restarted on the same port and data folder. At the end the log file
holds every messageId exactly once: an acknowledged batch survived the kill (durability
"full"), and a batch whose answer was lost was deduplicated when it came again.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import pytest

from personify.eventlog.sqlite import iter_records
from tests.e2e.conftest import ServerProcess, make_server

EVENTS = 10_000
BATCH_SIZE = 100
STREAMS = 4
KILL_AFTER_ACKED = (2_500, 5_000, 7_500)
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.5
RUN_DEADLINE_S = 90.0


@dataclass
class Progress:
    """What the senders and the killer share (all on one event loop, so no locks)."""

    acked_events: int = 0
    in_flight: int = 0
    attempts: int = 0
    retries: int = 0
    duplicates_reported: int = 0
    in_flight_at_kill: list[int] = field(default_factory=list)
    thresholds: list[asyncio.Event] = field(default_factory=list)


def message_id(batch: int, index: int) -> str:
    """The fixed id of one event: a retry sends exactly the same ids."""
    return f"crash-{batch:03d}-{index:03d}"


def batch_body(batch: int) -> bytes:
    """One batch request, encoded once so that every retry is byte-for-byte the same."""
    events = [
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": message_id(batch, index),
            "anonymousId": f"device-{(batch * BATCH_SIZE + index) % 97}",
            "properties": {"sku": f"SKU-{index}", "batch": batch, "price": index * 1.5},
            "timestamp": "2024-05-01T12:00:00.000Z",
        }
        for index in range(BATCH_SIZE)
    ]
    return msgspec.json.encode({"batch": events, "sentAt": "2024-05-01T12:00:01.000Z"})


async def send_batch(
    client: httpx.AsyncClient, url: str, write_key: str, batch: int, progress: Progress
) -> None:
    """POST one batch until the server acknowledges it; 4xx is a bug and fails the test."""
    body = batch_body(batch)
    delay = BACKOFF_FIRST_S
    while True:
        progress.attempts += 1
        progress.in_flight += 1
        try:
            response = await client.post(
                url,
                content=body,
                auth=(write_key, ""),
                headers={"Content-Type": "application/json"},
            )
        except httpx.TransportError:
            response = None
        finally:
            progress.in_flight -= 1
        if response is not None and response.status_code == 200:
            answer = response.json()
            assert answer["success"] is True
            assert answer["rejected"] == 0
            assert answer["accepted"] + answer["duplicates"] == BATCH_SIZE
            progress.duplicates_reported += answer["duplicates"]
            progress.acked_events += BATCH_SIZE
            for threshold, reached in zip(KILL_AFTER_ACKED, progress.thresholds, strict=True):
                if progress.acked_events >= threshold:
                    reached.set()
            return
        if response is not None and response.status_code < 500:
            raise AssertionError(f"batch {batch}: {response.status_code} {response.text}")
        wait_s = delay
        if response is not None and response.headers.get("retry-after", "").isdigit():
            wait_s = min(float(response.headers["retry-after"]), BACKOFF_MAX_S)
        progress.retries += 1
        await asyncio.sleep(wait_s * random.uniform(0.5, 1.0))
        delay = min(delay * 2, BACKOFF_MAX_S)


async def sender(
    client: httpx.AsyncClient,
    url: str,
    write_key: str,
    batches: asyncio.Queue[int],
    progress: Progress,
) -> None:
    """One stream: takes the next batch number and sends it until it is acknowledged."""
    while True:
        try:
            batch = batches.get_nowait()
        except asyncio.QueueEmpty:
            return
        await send_batch(client, url, write_key, batch, progress)


async def killer(server: ServerProcess, progress: Progress) -> list[int | None]:
    """SIGKILL the server at each threshold and start it again on the same port and data."""
    exit_codes: list[int | None] = []
    for reached in progress.thresholds:
        await reached.wait()
        progress.in_flight_at_kill.append(progress.in_flight)
        await asyncio.to_thread(server.kill)
        assert server.process is not None
        exit_codes.append(server.process.returncode)
        await asyncio.to_thread(server.start)
    return exit_codes


def logged_message_ids(events_db: Path) -> list[str]:
    """Every messageId in the log file, one per record, read with plain sqlite3."""
    decode = msgspec.json.Decoder().decode
    return [str(decode(payload)["messageId"]) for _, _, payload in iter_records(events_db)]


@pytest.fixture
def crash_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with the default durability ("full"), ingest only."""
    # no stream worker: the test counts the log itself, which retention must not touch
    proc = make_server(tmp_path / "data", "--no-worker")
    proc.start()
    yield proc
    proc.stop()


async def test_sigkill_three_times_loses_and_duplicates_nothing(
    crash_server: ServerProcess,
) -> None:
    """10,000 events over 4 streams, 3 SIGKILLs and restarts: exactly 10,000 distinct ids."""
    progress = Progress(thresholds=[asyncio.Event() for _ in KILL_AFTER_ACKED])
    batches: asyncio.Queue[int] = asyncio.Queue()
    for batch in range(EVENTS // BATCH_SIZE):
        batches.put_nowait(batch)
    url = f"{crash_server.base_url}/v1/batch"
    started = time.monotonic()
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(10.0), limits=httpx.Limits(max_connections=STREAMS)
    ) as client:
        # a task group cancels the other streams as soon as one of them fails
        async with asyncio.timeout(RUN_DEADLINE_S), asyncio.TaskGroup() as tasks:
            kills = tasks.create_task(killer(crash_server, progress))
            for _ in range(STREAMS):
                tasks.create_task(sender(client, url, crash_server.write_key, batches, progress))
        exit_codes = kills.result()
    elapsed_s = time.monotonic() - started

    assert progress.acked_events == EVENTS
    assert exit_codes == [-signal.SIGKILL] * len(KILL_AFTER_ACKED)
    # the kills hit a busy server: at least one found requests on the wire
    assert sum(progress.in_flight_at_kill) > 0, progress
    assert progress.retries > 0

    crash_server.stop()
    ids = logged_message_ids(crash_server.data_dir / "events.db")
    expected = {message_id(b, i) for b in range(EVENTS // BATCH_SIZE) for i in range(BATCH_SIZE)}
    assert len(ids) == EVENTS, f"{len(ids) - len(set(ids))} duplicated rows"
    assert len(set(ids)) == EVENTS
    assert set(ids) == expected
    print(
        f"\ncrash ingest: {EVENTS} events in {elapsed_s:.1f}s, {progress.attempts} requests, "
        f"{progress.retries} retries, {progress.duplicates_reported} duplicates answered, "
        f"in flight at kills {progress.in_flight_at_kill}"
    )
