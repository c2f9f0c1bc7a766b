"""``personify profiles prune`` and ``personify events trim``: the retention jobs, once, for cron."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from personify.cli.main import main
from personify.clock import FrozenClock
from personify.eventlog.base import LogRecord, open_eventlog
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.store.database import open_database
from tests.conftest import make_settings
from tests.profiles.factory import event


def _run(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, *args: str, **env: str
) -> dict[str, object]:
    # the CLI reads .env from the working directory; run it where there is none
    monkeypatch.chdir(data_dir.parent)
    variables = {
        "PERSONIFY_DATA_DIR": str(data_dir),
        "PERSONIFY_PII_HASH_KEY": "x",
        "PERSONIFY_ENVIRONMENT": "test",
        **env,
    }
    result: Result = CliRunner().invoke(main, list(args), env=variables, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body: dict[str, object] = json.loads(result.output)
    return body


def test_profiles_prune_prints_what_went(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, pii_hash_key="x")
    db = open_database(settings)
    clock = FrozenClock(datetime.now(UTC) - timedelta(days=40))
    processor = ProfileProcessor(db, FeatureSet(), clock=clock)
    for n in range(3):
        processor.apply([view_event(event("track", f"m{n}", n, user_id="lee", name="Clicked"))])
        clock.advance(60)
    clock.advance(39 * 86_400)
    processor.apply([view_event(event("track", "recent", 9, user_id="lee", name="Clicked"))])
    db.dispose()

    first = _run(data_dir, monkeypatch, "profiles", "prune")
    assert first["eventsDeleted"] == 3
    # lee's three old versions are folded into one
    assert (first["versionsDeleted"], first["profilesCompacted"]) == (2, 1)
    assert {"timelineCutoff", "historyCutoff", "elapsedSeconds"} <= set(first)
    again = _run(data_dir, monkeypatch, "profiles", "prune")
    assert (again["eventsDeleted"], again["versionsDeleted"]) == (0, 0)


def test_events_trim_prints_what_went(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, pii_hash_key="x")

    async def fill() -> None:
        log = open_eventlog(settings)
        await log.start()
        try:
            await log.append([LogRecord(f"e{n}".encode(), "k") for n in range(4)])
            entries = await log.read("worker", "c", max_count=10, timeout_ms=500)
            await log.commit("worker", "c", entries)
        finally:
            await log.close()

    asyncio.run(fill())
    kept = _run(data_dir, monkeypatch, "events", "trim")
    assert kept["removed"] == 0
    assert kept["retentionHours"] == 24.0
    gone = _run(data_dir, monkeypatch, "events", "trim", PERSONIFY_EVENTLOG_RETENTION_HOURS="0")
    assert gone["removed"] == 4
