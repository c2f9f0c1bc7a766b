"""The audit log page through the real app: the records the console itself caused (a sign-in,
a per-user read, a refusal) listed newest first and filtered by actor, action and outcome,
paged, and the chain verified: ok, then broken once a row is rewritten behind its back."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from personify.auth.audit import AuditRecord
from personify.auth.tables import audit_log
from personify.ui.audit import PAGE_ROWS
from tests.api import Harness, running_app
from tests.ui import sign_in


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


def _ids(html: str) -> list[int]:
    body = html.split('<table id="audit-table">', 1)[1]
    return [int(n) for n in re.findall(r'<tr>\s*<td class="num">(\d+)</td>', body)]


async def test_the_page_lists_filters_and_pages_the_records(harness: Harness) -> None:
    admin = harness.services.api_keys.resolve(harness.admin_secret)
    assert admin is not None
    _, secret = harness.services.api_keys.create("audit-analyst", "analyst")
    analyst = httpx.AsyncClient(
        transport=harness.client._transport, base_url=str(harness.client.base_url)
    )
    async with analyst:
        await sign_in(analyst, secret, next_path="/console/events")
        # an analyst may not read the audit log: the refusal is itself recorded
        assert (await analyst.get("/console/audit")).status_code == 403
    await sign_in(harness.client, harness.admin_secret, next_path="/console/events")
    client = harness.client

    page = await client.get("/console/audit")
    assert page.status_code == 200
    ids = _ids(page.text)
    assert ids and ids == sorted(ids, reverse=True)
    assert "POST /console/login" in page.text
    assert "GET /console/events" in page.text
    assert 'href="/console/audit/verify"' in page.text

    denied = await client.get("/console/audit", params={"outcome": "denied"})
    assert "GET /console/audit" in denied.text and "POST /console/login" not in denied.text
    assert 'value="denied" selected' in denied.text

    mine = await client.get("/console/audit", params={"actor": admin.id})
    assert "GET /console/events" in mine.text and "audit-analyst" not in mine.text
    logins = await client.get("/console/audit", params={"action": "POST /console/login"})
    assert len(_ids(logins.text)) == 2

    # more records than a page: the next page goes on below the last id shown
    for n in range(PAGE_ROWS + 5):
        harness.services.audit.append(
            AuditRecord(
                at=datetime.now(UTC),
                actor_kind="cli",
                actor="ops",
                role=None,
                action="POST /v1/jobs/{name}",
                resource=f"/v1/jobs/job-{n}",
                status=200,
                outcome="ok",
            )
        )
    first = await client.get("/console/audit", params={"actor": "ops"})
    shown = _ids(first.text)
    assert len(shown) == PAGE_ROWS
    older = re.search(r'href="/console/audit\?([^"]+)" rel="next"', first.text)
    assert older, first.text[-800:]
    second = await client.get("/console/audit?" + older.group(1).replace("&amp;", "&"))
    rest = _ids(second.text)
    assert len(rest) == 5 and max(rest) < min(shown)


async def test_verify_shows_the_chain_ok_then_broken(harness: Harness) -> None:
    await sign_in(harness.client, harness.admin_secret, next_path="/console/audit")
    ok = await harness.client.get("/console/audit/verify")
    assert ok.status_code == 200
    assert 'id="verify-result">ok</span>' in ok.text
    assert "The chain is intact" in ok.text
    # rewrite the first record behind the log's back: verification names it
    with harness.services.db.begin() as conn:
        conn.execute(audit_log.update().where(audit_log.c.id == 1).values(status=299))
        assert conn.execute(sa.select(audit_log.c.status).where(audit_log.c.id == 1)).scalar()
    broken = await harness.client.get("/console/audit/verify")
    assert 'id="verify-result">broken</span>' in broken.text
    assert "<dt>First broken record</dt><dd>1</dd>" in broken.text
    assert "altered" in broken.text


async def test_roles_without_audit_read_are_refused(harness: Harness) -> None:
    _, secret = harness.services.api_keys.create("audit-editor", "editor")
    await sign_in(harness.client, secret, next_path="/console/audit")
    for path in ("/console/audit", "/console/audit/verify"):
        assert (await harness.client.get(path)).status_code == 403, path
