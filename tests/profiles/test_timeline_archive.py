"""The timeline past the state database's retention comes from the lake, through the real app."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from personify.cli.main import main
from personify.clock import FrozenClock, format_timestamp
from personify.profiles.retention import ProfilePruner
from tests.api import Harness, running_app

START = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def _events(
    prefix: str, now: datetime, minutes_ago: list[float], **ids: str
) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "event": "Viewed",
            "properties": {"n": n, "tags": ["a", "b"], "price": 9.5},
            "timestamp": format_timestamp(now - timedelta(minutes=ago)),
            "messageId": f"{prefix}{n}",
            **ids,
        }
        for n, ago in enumerate(minutes_ago)
    ]


async def _send(h: Harness, events: list[dict[str, Any]]) -> None:
    response = await h.client.post("/v1/batch", json={"batch": events}, headers=h.auth)
    assert response.status_code == 200, response.text
    await h.services.worker.run(until_idle=True)
    sink = h.services.lake_sink
    assert sink is not None
    while (await sink.process_once()).read:
        pass


async def _pages(h: Harness, identity: str, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await h.client.get(
            f"/v1/profiles/{identity}/events", headers=h.admin, params=params
        )
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["data"])
        cursor = body["next"]
        if cursor is None:
            return pages


async def test_timeline_pages_through_state_database_then_lake_without_gaps(
    tmp_path: Path,
) -> None:
    clock = FrozenClock(START)
    data = tmp_path / "data"
    async with running_app(data, clock=clock, worker_poll_timeout_ms=20, lake_linger_ms=0) as h:
        # 40 days ago: the anonymous browsing and the sign-up that merged it into the user
        await _send(h, _events("old-anon-", clock.now(), [90, 80, 70], anonymousId="dev-1"))
        await _send(
            h,
            _events("old-user-", clock.now(), [60, 50, 40, 30], userId="ivy", anonymousId="dev-1"),
        )
        clock.advance(40 * 86_400)
        # today: recent events, and an import of events older than everything above, which
        # the state database keeps (applied today) while newer ones were pruned
        await _send(h, _events("new-", clock.now(), [20, 10, 5, 1], userId="ivy"))
        old = clock.now() - timedelta(days=41)
        await _send(h, _events("import-", old, [3, 2, 1], userId="ivy"))
        await _send(h, _events("other-", clock.now(), [2], userId="someone-else"))

        full = [e for page in await _pages(h, "ivy", 500) for e in page]
        assert len(full) == 14

        pruned = ProfilePruner.from_settings(h.services.settings, h.services.db, clock=clock)
        result = pruned.prune()
        assert result.events_deleted == 7

        for limit in (1, 3, 4, 500):
            pages = await _pages(h, "ivy", limit)
            assert all(len(page) == limit for page in pages[:-1])
            assert [e for page in pages for e in page] == full
        # by the device id too: the same profile
        assert [e for page in await _pages(h, "dev-1", 5) for e in page] == full
    ids = [e["messageId"] for e in full]
    assert ids[:4] == ["new-3", "new-2", "new-1", "new-0"]
    assert set(ids[4:11]) == {f"old-anon-{n}" for n in range(3)} | {
        f"old-user-{n}" for n in range(4)
    }
    assert ids[11:] == ["import-2", "import-1", "import-0"]


def test_the_cli_pages_the_same_timeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FrozenClock(datetime.now(UTC) - timedelta(days=40))
    data = tmp_path / "data"

    async def fill() -> list[dict[str, Any]]:
        async with running_app(data, clock=clock, worker_poll_timeout_ms=20, lake_linger_ms=0) as h:
            await _send(h, _events("old-", clock.now(), [30, 20, 10], userId="jo"))
            clock.advance(40 * 86_400)
            await _send(h, _events("new-", clock.now(), [5], userId="jo"))
            full = [e for page in await _pages(h, "jo", 500) for e in page]
            result = ProfilePruner.from_settings(h.services.settings, h.services.db, clock=clock)
            assert result.prune().events_deleted == 3
            return full

    full = asyncio.run(fill())
    env = {
        "PERSONIFY_DATA_DIR": str(data),
        "PERSONIFY_ENVIRONMENT": "test",
        "PERSONIFY_PII_HASH_KEY": "test-pii-key",
    }
    # the CLI reads .env from the working directory; run it where there is none
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    got: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        args = ["profiles", "events", "jo", "--limit", "2"]
        if cursor:
            args += ["--cursor", cursor]
        outcome = runner.invoke(main, args, env=env, catch_exceptions=False)
        assert outcome.exit_code == 0, outcome.output
        body = json.loads(outcome.output)
        got.extend(body["data"])
        cursor = body["next"]
        if cursor is None:
            break
    assert got == full
    assert [e["messageId"] for e in got] == ["new-0", "old-2", "old-1", "old-0"]
