"""The lake writer never dies on one event, and when it dies anyway it says so and comes back.

Failures are injected into the Delta Lake library (``write_deltalake``, and reading the
table's transaction versions), never into our own code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import deltalake
import pyarrow as pa
import pytest

from personify.eventlog.sqlite import SQLiteEventLog
from personify.lake import table as lake_table
from personify.lake.sink import LAKE_GROUP, LakeSink
from personify.lake.table import Lake
from personify.settings import Settings
from personify.store.database import open_database
from personify.store.failed_events import FailedEventRepository
from tests.lake.conftest import Served, normalized, records, track

_real_write_deltalake = lake_table.write_deltalake


def fail_writes_holding(
    monkeypatch: pytest.MonkeyPatch, message_id: str | None, *, times: int | None = None
) -> list[int]:
    """Make ``write_deltalake`` raise for rows holding ``message_id`` (any rows when None),
    ``times`` times at most; returns the list that counts the failures."""
    failures: list[int] = []

    def write_deltalake(target: Any, data: pa.Table, *args: Any, **kwargs: Any) -> Any:
        ids = data.column("message_id").to_pylist()
        if (message_id is None or message_id in ids) and (times is None or len(failures) < times):
            failures.append(len(ids))
            raise RuntimeError(f"injected failure writing {len(ids)} rows")
        return _real_write_deltalake(target, data, *args, **kwargs)

    monkeypatch.setattr(lake_table, "write_deltalake", write_deltalake)
    return failures


# -- the sink alone --------------------------------------------------------------------------


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SQLiteEventLog]:
    """A started SQLite event log."""
    opened = SQLiteEventLog(tmp_path / "events.db", durability="off")
    await opened.start()
    yield opened
    await opened.close()


async def _drain(sink: LakeSink) -> None:
    while (await sink.process_once()).read:
        pass


async def test_the_event_a_write_fails_on_is_found_and_dead_lettered(
    log: SQLiteEventLog, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_database(settings)
    failed = FailedEventRepository(db)
    events = [normalized(track(i)) for i in range(20)]
    await log.append(records(events))
    failures = fail_writes_holding(monkeypatch, "m13")
    lake = Lake(str(tmp_path / "lake"))
    sink = LakeSink(
        log, lake, linger_ms=0, failed_events=failed, max_attempts=3, retry_backoff_ms=1
    )

    await _drain(sink)

    written = sorted(lake.open().to_pyarrow_table(columns=["message_id"]).column(0).to_pylist())
    assert written == sorted(f"m{i}" for i in range(20) if i != 13)
    [letter] = failed.list(stage="lake")
    assert (letter.code, letter.message_id, letter.attempts) == ("lake_write_failed", "m13", 3)
    assert letter.reason == "RuntimeError: injected failure writing 1 rows"
    assert failures[0] == 20 and failures[-3:] == [1, 1, 1]
    assert lake.watermarks(LAKE_GROUP, {0}) == {0: 20}
    assert await log.lag(LAKE_GROUP) == 0
    db.dispose()


async def test_a_write_that_fails_once_loses_and_blames_nothing(
    log: SQLiteEventLog, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_database(settings)
    failed = FailedEventRepository(db)
    await log.append(records([normalized(track(i)) for i in range(8)]))
    failures = fail_writes_holding(monkeypatch, None, times=1)
    lake = Lake(str(tmp_path / "lake"))
    sink = LakeSink(log, lake, linger_ms=0, failed_events=failed, retry_backoff_ms=1)

    await _drain(sink)

    assert failures == [8]
    assert lake.open().count() == 8
    assert failed.list() == []
    assert await log.lag(LAKE_GROUP) == 0
    db.dispose()


# -- through the served app ------------------------------------------------------------------


async def test_a_poison_event_is_dead_lettered_while_the_lake_keeps_running(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_writes_holding(monkeypatch, "poison")
    batch = [
        {"type": "track", "userId": "ann", "event": "Clicked", "messageId": mid}
        for mid in ("good-1", "poison", "good-2")
    ]
    assert (await served.send("/v1/batch", {"batch": batch})).status_code == 200
    await served.settled()

    assert sorted(r["message_id"] for r in served.lake_rows()) == ["good-1", "good-2"]
    letters = (await served.client.get("/v1/failed-events", params={"stage": "lake"})).json()
    [letter] = letters["data"]
    assert (letter["code"], letter["messageId"]) == ("lake_write_failed", "poison")
    assert letter["reason"].startswith("RuntimeError: injected failure")
    # the profile is another stage: it has every event
    profile = (await served.client.get("/v1/profiles/ann")).json()
    assert profile["features"]["event_counts"]["Clicked"]["all"] == 3
    lake = (await served.stages())["lake"]
    assert (lake["state"], lake["restarts"], lake["lastError"]) == ("running", 0, None)
    assert (await served.ready())[0] == 200

    later = {"userId": "ann", "event": "Clicked", "messageId": "good-3"}
    assert (await served.send("/v1/track", later)).status_code == 200
    await served.settled()
    assert "good-3" in {r["message_id"] for r in served.lake_rows()}


async def test_a_lake_writer_that_dies_is_reported_and_restarted(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = {"userId": "bo", "event": "Clicked", "messageId": "before"}
    assert (await served.send("/v1/track", first)).status_code == 200
    await served.settled()

    # reading the table's offsets fails whatever the event: no event is to blame, the stage dies
    broken = True
    real_version = deltalake.DeltaTable.transaction_version

    def transaction_version(table: deltalake.DeltaTable, app_id: str) -> int | None:
        if broken:
            raise RuntimeError("injected: the Delta log cannot be read")
        return real_version(table, app_id)

    monkeypatch.setattr(deltalake.DeltaTable, "transaction_version", transaction_version)
    second = {"userId": "bo", "event": "Clicked", "messageId": "during"}
    assert (await served.send("/v1/track", second)).status_code == 200

    body = await served.down()
    assert body["error"]["code"] == "stage_down"
    assert "lake" in body["error"]["message"]
    assert [s["stage"] for s in body["error"]["details"]["stages"]] == ["lake"]
    assert "injected" not in str(body)  # error texts are for the admin key only
    assert (await served.client.get("/healthz")).status_code == 200
    lake = (await served.stages())["lake"]
    assert lake["state"] in ("restarting", "running")
    assert lake["lastError"] == {
        "code": "stage_failed",
        "message": "RuntimeError: injected: the Delta log cannot be read",
    }
    assert lake["lastFailureAt"] is not None
    assert (await served.stages())["worker"]["state"] == "running"

    broken = False

    async def recovered() -> bool:
        stage = (await served.stages())["lake"]
        return stage["state"] == "running" and stage["restarts"] >= 1

    await served.wait_for(recovered, "the lake writer to be restarted")
    await served.settled()
    assert sorted(r["message_id"] for r in served.lake_rows()) == ["before", "during"]
    assert served.services.failed_events.list(stage="lake") == []
    assert (await served.ready())[0] == 200
    third = {"userId": "bo", "event": "Clicked", "messageId": "after"}
    assert (await served.send("/v1/track", third)).status_code == 200
    await served.settled()
    assert len(served.lake_rows()) == 3
