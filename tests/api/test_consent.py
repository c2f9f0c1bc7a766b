"""``PUT /v1/profiles/{id}/consent`` through the real app: a consent change is an event in
the person's history, and a withdrawn personalization consent ends their decisions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import Harness, assert_error, running_app


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


async def test_withdrawn_personalization_consent_is_an_event_and_ends_decisions(
    harness: Harness,
) -> None:
    client, admin = harness.client, harness.admin
    identify = {
        "type": "identify",
        "userId": "ada",
        "anonymousId": "anon-1",
        "traits": {"plan": "pro"},
    }
    assert (
        await client.post("/v1/batch", json={"batch": [identify]}, headers=harness.auth)
    ).status_code == 200
    await harness.services.worker.run(until_idle=True)
    await client.post("/v1/placements", json={"id": "hero"}, headers=admin)
    before = (await client.get("/v1/profiles/ada", headers=admin)).json()
    assert before["consent"]["personalizationAllowed"] is True

    changed = await client.put(
        "/v1/profiles/anon-1/consent",
        json={"personalization": False, "analytics": True},
        headers=admin,
    )
    assert changed.status_code == 202, changed.text
    body = changed.json()
    assert body["profileId"] == "ada"
    assert body["categoryPreferences"] == {"analytics": True, "personalization": False}
    await harness.services.worker.run(until_idle=True)

    after = (await client.get("/v1/profiles/ada", headers=admin)).json()
    assert after["consent"]["personalizationAllowed"] is False
    events = (await client.get("/v1/profiles/ada/events", headers=admin)).json()
    assert any(e.get("event") == "Consent Updated" for e in events["data"]), events
    decision = await client.post(
        "/v1/decide", json={"userId": "ada", "placements": [{"id": "hero"}]}, headers=admin
    )
    assert decision.json()["placements"]["hero"]["reason"] == "no_consent"

    assert_error(
        await client.put("/v1/profiles/nobody/consent", json={"analytics": True}, headers=admin),
        404,
        "profile_not_found",
    )
    assert_error(
        await client.put("/v1/profiles/ada/consent", json={}, headers=admin), 400, "invalid_consent"
    )
    refused = await client.put("/v1/profiles/ada/consent", json={"marketing": True}, headers=admin)
    assert refused.status_code == 400
