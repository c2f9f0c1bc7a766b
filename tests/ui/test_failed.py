"""The failed events pages through the real app: a dead letter the worker really made is
listed and inspected, replayed through the console's form (back in the log, marked
replayed), a replay without the CSRF token is refused, and an analyst sees no replay button
and gets 403 on the post."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.api import Harness, running_app
from tests.ui import sign_in


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    # two ids per person: a third one is a poison event the worker dead-letters
    async with running_app(
        tmp_path / "data", run_lake_sink=False, profile_max_identities=2, worker_max_attempts=1
    ) as h:
        yield h


async def _dead_letter(harness: Harness) -> int:
    """Ingest events the worker fails on one of; returns the dead letter's id."""
    for body in (
        {"userId": "zed", "anonymousId": "dev-1", "messageId": "first"},
        {"userId": "zed", "anonymousId": "dev-2", "messageId": "third-id"},
    ):
        response = await harness.client.post("/v1/identify", json=body, headers=harness.auth)
        assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)
    [letter] = harness.services.failed_events.list(stage="worker")
    assert letter.code == "identity_limit" and letter.replayed_at is None
    return letter.id


def _csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def test_a_dead_letter_is_listed_inspected_and_replayed_through_the_form(
    harness: Harness,
) -> None:
    letter_id = await _dead_letter(harness)
    await sign_in(harness.client, harness.admin_secret)
    client = harness.client

    listing = await client.get("/console/failed")
    assert listing.status_code == 200
    assert f'href="/console/failed/{letter_id}"' in listing.text
    assert "identity_limit" in listing.text and "pending" in listing.text
    assert "identity_limit" in (await client.get("/console/failed?stage=worker&pending=1")).text
    assert "identity_limit" not in (await client.get("/console/failed?stage=ingest")).text

    detail = await client.get(f"/console/failed/{letter_id}")
    assert detail.status_code == 200
    assert "ValidationError: linking these events" in detail.text
    assert "<dt>Stage</dt><dd>worker</dd>" in detail.text
    # the payload, pretty-printed (indented JSON)
    assert '\n  "anonymousId": "dev-2",' in html.unescape(detail.text)
    assert f'action="/console/failed/{letter_id}/replay"' in detail.text

    before = len(await harness.services.log.tail(100))
    replayed = await client.post(
        f"/console/failed/{letter_id}/replay",
        data={"csrf": _csrf_of(detail.text)},
        follow_redirects=False,
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"] == f"/console/failed/{letter_id}?notice=replayed"
    entries = await harness.services.log.tail(100)
    assert len(entries) == before + 1
    assert msgspec.json.decode(entries[-1].payload)["messageId"] == "third-id"
    [letter] = harness.services.failed_events.list(stage="worker")
    assert letter.replayed_at is not None

    after = await client.get(replayed.headers["location"])
    assert "Replayed: the event is back in the log" in after.text
    assert "Replay this event" not in after.text
    # twice is once: the second post replays nothing
    again = await client.post(
        f"/console/failed/{letter_id}/replay",
        data={"csrf": _csrf_of(after.text)},
        follow_redirects=False,
    )
    assert again.headers["location"].endswith("notice=not-replayed")
    assert len(await harness.services.log.tail(100)) == before + 1

    missing = await client.get("/console/failed/9999")
    assert missing.status_code == 404 and "failed_event_not_found" in missing.text


async def test_a_replay_without_the_csrf_token_is_refused(harness: Harness) -> None:
    letter_id = await _dead_letter(harness)
    await sign_in(harness.client, harness.admin_secret)
    for data in ({}, {"csrf": "not-the-token"}):
        response = await harness.client.post(f"/console/failed/{letter_id}/replay", data=data)
        assert response.status_code == 403
        assert "csrf_failed" in response.text
    refused = await harness.client.post("/console/failed/replay", data={"csrf": "x"})
    assert refused.status_code == 403
    [letter] = harness.services.failed_events.list(stage="worker")
    assert letter.replayed_at is None


async def test_an_analyst_reads_dead_letters_but_cannot_replay_them(harness: Harness) -> None:
    letter_id = await _dead_letter(harness)
    _, secret = harness.services.api_keys.create("failed-analyst", "analyst")
    await sign_in(harness.client, secret)
    client = harness.client
    listing = await client.get("/console/failed")
    assert listing.status_code == 200 and "identity_limit" in listing.text
    assert "Replay all" not in listing.text
    detail = await client.get(f"/console/failed/{letter_id}")
    assert detail.status_code == 200
    assert "/replay" not in detail.text and "Replay this event" not in detail.text
    # the guard refuses the post whatever the page showed
    for path in (f"/console/failed/{letter_id}/replay", "/console/failed/replay"):
        response = await client.post(path, data={"csrf": _csrf_of(detail.text)})
        assert response.status_code == 403, path
        assert "ops:write" in response.text
    [letter] = harness.services.failed_events.list(stage="worker")
    assert letter.replayed_at is None


async def test_a_viewer_cannot_browse_dead_letters(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("failed-viewer", "viewer")
    await sign_in(harness.client, secret)
    response = await harness.client.get("/console/failed", follow_redirects=False)
    assert response.status_code == 403


async def test_replay_all_appends_every_pending_worker_letter(harness: Harness) -> None:
    await _dead_letter(harness)
    await sign_in(harness.client, harness.admin_secret)
    page = await harness.client.get("/console/failed")
    done = await harness.client.post(
        "/console/failed/replay", data={"csrf": _csrf_of(page.text)}, follow_redirects=False
    )
    assert done.headers["location"] == "/console/failed?notice=replayed-all"
    assert all(f.replayed_at for f in harness.services.failed_events.list(stage="worker"))
