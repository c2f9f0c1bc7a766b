"""The collector's routes through the real ASGI app: every route, auth, CORS, server fields."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from personify.clock import FrozenClock, format_timestamp
from personify.events.hashing import HASH_PREFIX
from tests.api import Harness, assert_error, basic_auth, running_app

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


@pytest.fixture
async def frozen(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", clock=FrozenClock(NOW)) as h:
        yield h


SINGLE_EVENTS: dict[str, dict[str, Any]] = {
    "track": {"userId": "u1", "event": "Clicked", "properties": {"button": "buy"}},
    "identify": {"userId": "u1", "traits": {"plan": "pro"}},
    "page": {"anonymousId": "a1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"userId": "u1", "name": "Settings"},
    "group": {"userId": "u1", "groupId": "g1", "traits": {"size": 10}},
    "alias": {"userId": "u1", "previousId": "a1"},
}
SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias"}


# -- every route -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SINGLE_EVENTS))
async def test_single_event_route_appends_the_event(harness: Harness, kind: str) -> None:
    body = {**SINGLE_EVENTS[kind], "messageId": f"m-{kind}"}
    response = await harness.client.post(f"/v1/{kind}", json=body, headers=harness.auth)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    assert response.headers["access-control-allow-origin"] == "*"
    [event] = await harness.logged()
    assert event["type"] == kind
    assert event["messageId"] == f"m-{kind}"
    assert event["sourceId"] == harness.source.id
    for name, value in SINGLE_EVENTS[kind].items():
        assert event[name] == value


@pytest.mark.parametrize("short", sorted(SHORT))
async def test_short_analytics_js_routes_take_text_plain(harness: Harness, short: str) -> None:
    kind = SHORT[short]
    # analytics.js posts text/plain with the write key in the body to avoid a CORS preflight
    body = {**SINGLE_EVENTS[kind], "writeKey": harness.write_key, "messageId": f"s-{short}"}
    response = await harness.client.post(
        f"/v1/{short}",
        content=httpx.Request("POST", "/", json=body).content,
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 200, response.text
    [event] = await harness.logged()
    assert event["type"] == kind
    assert event["messageId"] == f"s-{short}"
    assert "writeKey" not in event


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
async def test_batch_routes_append_every_event_in_order(harness: Harness, path: str) -> None:
    batch = [
        {**body, "type": kind, "messageId": f"b-{kind}"} for kind, body in SINGLE_EVENTS.items()
    ]
    response = await harness.client.post(path, json={"batch": batch}, headers=harness.auth)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "accepted": len(batch),
        "duplicates": 0,
        "rejected": 0,
    }
    logged = await harness.logged()
    assert [e["messageId"] for e in logged] == [e["messageId"] for e in batch]
    assert [e["type"] for e in logged] == list(SINGLE_EVENTS)


async def test_metrics_route_answers_success_and_stores_nothing(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/m", content=b'{"series":[]}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert response.headers["access-control-allow-origin"] == "*"
    assert await harness.logged() == []


async def test_project_settings_point_analytics_js_back_at_this_host(harness: Harness) -> None:
    response = await harness.client.get(f"/v1/projects/{harness.write_key}/settings")
    assert response.status_code == 200
    integration = response.json()["integrations"]["Segment.io"]
    assert integration["apiKey"] == harness.write_key
    assert integration["apiHost"] == "test/v1"
    assert integration["protocol"] == "http"
    assert response.headers["access-control-allow-origin"] == "*"


async def test_project_settings_of_an_unknown_key_is_401(harness: Harness) -> None:
    response = await harness.client.get("/v1/projects/wk_nope/settings")
    assert_error(response, 401, "invalid_write_key")
    assert response.headers["access-control-allow-origin"] == "*"


async def test_tracker_script_is_javascript(harness: Harness) -> None:
    response = await harness.client.get("/personify.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert "track" in response.text and "identify" in response.text and "page" in response.text


async def test_health(harness: Harness) -> None:
    response = await harness.client.get("/healthz")
    assert response.json() == {"status": "ok"}


# -- CORS ------------------------------------------------------------------------------------


# what Segment's libraries send: analytics.js adds x-retry-count to every retry
SEGMENT_HEADERS = ["content-type", "authorization", "content-encoding", "x-retry-count"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/track", "POST"),
        ("/v1/t", "POST"),
        ("/v1/batch", "POST"),
        ("/v1/b", "POST"),
        ("/v1/m", "POST"),
        ("/v1/projects/wk_any/settings", "GET"),
    ],
)
async def test_preflight_allows_any_origin_without_credentials(
    harness: Harness, path: str, method: str
) -> None:
    response = await harness.client.options(
        path,
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ",".join(SEGMENT_HEADERS),
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert method in response.headers["access-control-allow-methods"]
    allowed = {
        name.strip().lower() for name in response.headers["access-control-allow-headers"].split(",")
    }
    assert allowed >= set(SEGMENT_HEADERS)
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/v1/t", 401, "missing_write_key"),
        ("POST", "/v1/batch", 401, "missing_write_key"),
        ("GET", "/v1/track", 405, "method_not_allowed"),
        ("GET", "/v1/projects/wk_nope/settings", 401, "invalid_write_key"),
    ],
)
async def test_collector_errors_repeat_code_and_message_at_the_top_level(
    harness: Harness, method: str, path: str, status: int, code: str
) -> None:
    # Segment's and RudderStack's libraries read body["code"] and body["message"]
    response = await harness.client.request(
        method, path, content=b'{"batch": []}' if method == "POST" else None
    )
    error = assert_error(response, status, code)
    body = response.json()
    assert (body["code"], body["message"]) == (code, error["message"])


async def test_admin_errors_keep_the_one_shape(harness: Harness) -> None:
    response = await harness.client.get("/v1/failed-events")
    assert response.status_code == 401
    assert set(response.json()) == {"error"}


async def test_error_responses_carry_cors_headers(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/track", json={"event": "x"}, headers={"Origin": "https://shop.example"}
    )
    assert_error(response, 401, "missing_write_key")
    assert response.headers["access-control-allow-origin"] == "*"
    response = await harness.client.post("/v1/track", content=b"{", headers=harness.auth)
    assert_error(response, 400, "invalid_json")
    assert response.headers["access-control-allow-origin"] == "*"


# -- auth ------------------------------------------------------------------------------------


async def test_write_key_in_the_body_is_enough(harness: Harness) -> None:
    body = {"writeKey": harness.write_key, "userId": "u1", "event": "E"}
    response = await harness.client.post("/v1/track", json=body)
    assert response.status_code == 200, response.text
    response = await harness.client.post(
        "/v1/batch",
        json={"writeKey": harness.write_key, "batch": [{**body, "type": "track"}]},
    )
    assert response.status_code == 200, response.text
    assert len(await harness.logged()) == 2


async def test_basic_auth_with_empty_user_falls_back_to_the_body(harness: Harness) -> None:
    body = {"writeKey": harness.write_key, "userId": "u1", "event": "E"}
    response = await harness.client.post("/v1/track", json=body, headers=basic_auth(""))
    assert response.status_code == 200, response.text


async def test_missing_write_key_is_401(harness: Harness) -> None:
    response = await harness.client.post("/v1/track", json={"userId": "u1", "event": "E"})
    assert_error(response, 401, "missing_write_key")
    assert await harness.logged() == []


async def test_unknown_write_key_is_401(harness: Harness) -> None:
    for headers, body in [
        (basic_auth("wk_unknown"), {"userId": "u1", "event": "E"}),
        ({}, {"writeKey": "wk_unknown", "userId": "u1", "event": "E"}),
    ]:
        response = await harness.client.post("/v1/track", json=body, headers=headers)
        assert_error(response, 401, "invalid_write_key")
    assert await harness.logged() == []


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
    ],
)
async def test_malformed_basic_credentials_are_401(harness: Harness, header: str) -> None:
    response = await harness.client.post(
        "/v1/track", json={"userId": "u1", "event": "E"}, headers={"Authorization": header}
    )
    assert_error(response, 401, "invalid_write_key")


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
async def test_the_first_of_a_repeated_header_is_the_one_read(harness: Harness, path: str) -> None:
    event = {"type": "track", "userId": "u1", "event": "E"}
    body = json.dumps({"batch": [event]} if path == "/v1/batch" else event).encode()
    good = harness.auth["Authorization"]
    bad = basic_auth("wk_unknown")["Authorization"]
    json_type = ("Content-Type", "application/json")
    response = await harness.client.post(
        path, content=body, headers=[json_type, ("Authorization", good), ("Authorization", bad)]
    )
    assert response.status_code == 200, response.text
    response = await harness.client.post(
        path, content=body, headers=[json_type, ("Authorization", bad), ("Authorization", good)]
    )
    assert_error(response, 401, "invalid_write_key")
    response = await harness.client.post(
        path,
        content=body,
        headers=[("Content-Type", "text/csv"), json_type, ("Authorization", good)],
    )
    assert_error(response, 415, "unsupported_media_type")
    assert len(await harness.logged()) == 1


async def test_revoked_write_key_is_401(tmp_path: Path) -> None:
    async with running_app(tmp_path / "data", auth_cache_ttl_s=0) as h:
        body = {"userId": "u1", "event": "E"}
        assert (await h.client.post("/v1/track", json=body, headers=h.auth)).status_code == 200
        h.services.sources.revoke("web")
        response = await h.client.post("/v1/track", json=body, headers=h.auth)
        assert_error(response, 401, "invalid_write_key")
        response = await h.client.post("/v1/batch", json={"batch": [body]}, headers=h.auth)
        assert_error(response, 401, "invalid_write_key")
        assert len(await h.logged()) == 1


# -- gzip ------------------------------------------------------------------------------------


async def test_gzip_bodies_are_accepted(harness: Harness) -> None:
    batch = {"batch": [{"type": "track", "userId": "u1", "event": f"E{i}"} for i in range(20)]}
    raw = httpx.Request("POST", "/", json=batch).content
    response = await harness.client.post(
        "/v1/batch",
        content=gzip.compress(raw),
        headers={**harness.auth, "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 20
    assert [e["event"] for e in await harness.logged()] == [f"E{i}" for i in range(20)]


# -- batch with good and bad events ----------------------------------------------------------


async def test_bad_events_in_a_batch_are_dead_lettered_and_the_rest_kept(
    harness: Harness,
) -> None:
    batch: list[Any] = [
        {"type": "track", "userId": "u1", "event": "Good 1", "messageId": "g1"},
        {"type": "track", "event": "No identity", "messageId": "bad-1",
         "traits": {"email": "Ann@Example.com"}},
        {"type": "identify", "userId": "u2", "messageId": "g2",
         "traits": {"email": " Bob@Example.com "}},
        {"type": "track", "userId": "u3", "messageId": "bad-2"},
        {"type": "nonsense", "userId": "u4", "messageId": "bad-3"},
        "not an object",
        {"type": "track", "userId": "u5", "event": "Big", "messageId": "bad-4",
         "properties": {"blob": "x" * (33 * 1024)}},
        {"type": "track", "userId": "u6", "event": "Good 3", "messageId": "g3"},
    ]  # fmt: skip
    response = await harness.client.post("/v1/batch", json={"batch": batch}, headers=harness.auth)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": 3, "duplicates": 0, "rejected": 5}

    assert [e["messageId"] for e in await harness.logged()] == ["g1", "g2", "g3"]

    failed = await harness.failed()
    by_code = {f["code"]: f for f in failed}
    assert sorted(by_code) == sorted(
        ["missing_identity", "missing_event_name", "invalid_type", "invalid_event",
         "event_too_large"]
    )  # fmt: skip
    for item in failed:
        assert item["stage"] == "ingest"
        assert item["sourceId"] == harness.source.id
        assert item["reason"]
    no_identity = by_code["missing_identity"]
    assert no_identity["messageId"] == "bad-1"
    stored_email = no_identity["payload"]["traits"]["email"]
    assert stored_email == harness.services.hasher.hash_value("email", "ann@example.com")
    assert "Ann@Example.com" not in str(failed)
    assert by_code["invalid_event"]["payload"] == "not an object"
    too_large = by_code["event_too_large"]
    assert too_large["messageId"] == "bad-4"
    assert too_large["payload"]["userId"] == "u5"


async def test_single_route_rejects_a_bad_event_with_its_code(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/track", json={"userId": "u1", "properties": []}, headers=harness.auth
    )
    error = assert_error(response, 400, "invalid_field")
    assert error["details"] == {"field": "properties"}
    assert await harness.logged() == []


# -- dedupe ----------------------------------------------------------------------------------


async def test_same_message_id_twice_is_stored_once(harness: Harness) -> None:
    body = {"userId": "u1", "event": "E", "messageId": "dup-1"}
    for _ in range(2):
        response = await harness.client.post("/v1/track", json=body, headers=harness.auth)
        assert response.status_code == 200
    response = await harness.client.post(
        "/v1/batch",
        json={"batch": [{**body, "type": "track"}, {**body, "type": "track"}]},
        headers=harness.auth,
    )
    assert response.json() == {"success": True, "accepted": 0, "duplicates": 2, "rejected": 0}
    assert [e["messageId"] for e in await harness.logged()] == ["dup-1"]


async def test_dedupe_survives_a_restart(tmp_path: Path) -> None:
    body = {"userId": "u1", "event": "E", "messageId": "dup-restart"}
    async with running_app(tmp_path / "data") as h:
        assert (await h.client.post("/v1/track", json=body, headers=h.auth)).status_code == 200
    async with running_app(tmp_path / "data") as h:
        response = await h.client.post(
            "/v1/batch", json={"batch": [{**body, "type": "track"}]}, headers=h.auth
        )
        assert response.json()["duplicates"] == 1
        assert [e["messageId"] for e in await h.logged()] == ["dup-restart"]


async def test_same_message_id_from_two_sources_is_kept_twice(harness: Harness) -> None:
    _, other_key = harness.services.sources.create("app")
    body = {"userId": "u1", "event": "E", "messageId": "shared-id"}
    for key in (harness.write_key, other_key):
        response = await harness.client.post("/v1/track", json=body, headers=basic_auth(key))
        assert response.status_code == 200
    logged = await harness.logged()
    assert [e["messageId"] for e in logged] == ["shared-id", "shared-id"]
    assert len({e["sourceId"] for e in logged}) == 2


# -- server-side fields ----------------------------------------------------------------------


async def test_received_at_and_a_message_id_are_set_by_the_server(frozen: Harness) -> None:
    response = await frozen.client.post(
        "/v1/track", json={"userId": "u1", "event": "E"}, headers=frozen.auth
    )
    assert response.status_code == 200
    await frozen.client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=frozen.auth)
    first, second = await frozen.logged()
    assert first["receivedAt"] == "2024-05-01T12:00:00.000Z"
    assert first["timestamp"] == first["receivedAt"]
    assert first["messageId"] and first["messageId"] != second["messageId"]


async def test_server_fields_sent_by_the_client_are_replaced(frozen: Harness) -> None:
    body = {
        "userId": "u1",
        "event": "E",
        "receivedAt": "2000-01-01T00:00:00.000Z",
        "sourceId": "someone-else",
        "type": "identify",
    }
    response = await frozen.client.post("/v1/track", json=body, headers=frozen.auth)
    assert response.status_code == 200
    [event] = await frozen.logged()
    assert event["receivedAt"] == "2024-05-01T12:00:00.000Z"
    assert event["sourceId"] == frozen.source.id
    assert event["type"] == "track"


async def test_clock_skew_is_corrected_from_sent_at(frozen: Harness) -> None:
    # the client's clock is 1 h fast; the event happened 5 s before it was sent
    client_now = NOW + timedelta(hours=1)
    body = {
        "userId": "u1",
        "event": "E",
        "originalTimestamp": format_timestamp(client_now - timedelta(seconds=5)),
        "sentAt": format_timestamp(client_now),
    }
    response = await frozen.client.post("/v1/track", json=body, headers=frozen.auth)
    assert response.status_code == 200
    [event] = await frozen.logged()
    assert event["timestamp"] == "2024-05-01T11:59:55.000Z"
    assert event["originalTimestamp"] == body["originalTimestamp"]
    assert event["sentAt"] == body["sentAt"]
    assert event["receivedAt"] == "2024-05-01T12:00:00.000Z"
    assert "flags" not in event


async def test_batch_level_context_and_sent_at_apply_to_each_event(frozen: Harness) -> None:
    client_now = NOW - timedelta(minutes=10)
    payload = {
        "sentAt": format_timestamp(client_now),
        "context": {"library": {"name": "analytics-python"}, "locale": "de-DE"},
        "batch": [
            {"type": "track", "userId": "u1", "event": "A",
             "timestamp": format_timestamp(client_now - timedelta(seconds=30))},
            {"type": "track", "userId": "u1", "event": "B", "context": {"locale": "fr-FR"},
             "timestamp": format_timestamp(client_now - timedelta(seconds=10))},
        ],
    }  # fmt: skip
    response = await frozen.client.post("/v1/batch", json=payload, headers=frozen.auth)
    assert response.status_code == 200
    a, b = await frozen.logged()
    assert a["context"] == {"library": {"name": "analytics-python"}, "locale": "de-DE"}
    assert b["context"] == {"library": {"name": "analytics-python"}, "locale": "fr-FR"}
    assert a["sentAt"] == b["sentAt"] == payload["sentAt"]
    assert a["timestamp"] == "2024-05-01T11:59:30.000Z"
    assert b["timestamp"] == "2024-05-01T11:59:50.000Z"


async def test_far_future_events_are_flagged_and_client_flags_dropped(frozen: Harness) -> None:
    events = [
        {"type": "track", "userId": "u1", "event": "Future", "messageId": "future",
         "timestamp": format_timestamp(NOW + timedelta(hours=25))},
        {"type": "track", "userId": "u1", "event": "Soon", "messageId": "soon",
         "timestamp": format_timestamp(NOW + timedelta(hours=23)), "flags": ["vip"]},
        {"type": "track", "userId": "u1", "event": "Spoof", "messageId": "spoof",
         "flags": ["future_timestamp"]},
    ]  # fmt: skip
    response = await frozen.client.post("/v1/batch", json={"batch": events}, headers=frozen.auth)
    assert response.json()["accepted"] == 3
    future, soon, spoof = await frozen.logged()
    assert future["flags"] == ["future_timestamp"]
    assert "flags" not in soon
    assert "flags" not in spoof


# -- PII and consent -------------------------------------------------------------------------


async def test_pii_is_normalised_and_hashed_and_never_stored_raw(harness: Harness) -> None:
    spellings = [
        ({"email": "  Ann.Lee@Example.COM ", "phone": "+1 (555) 010-9999"}, "m1"),
        ({"email": "ann.lee@example.com", "phone": "15550109999"}, "m2"),
    ]
    for traits, message_id in spellings:
        body = {
            "userId": "u1",
            "messageId": message_id,
            "traits": {**traits, "plan": "pro"},
            "context": {"traits": {"email": traits["email"]}},
        }
        response = await harness.client.post("/v1/identify", json=body, headers=harness.auth)
        assert response.status_code == 200
    first, second = await harness.logged()
    for name in ("email", "phone"):
        assert first["traits"][name].startswith(HASH_PREFIX)
        assert first["traits"][name] == second["traits"][name]
    assert first["context"]["traits"]["email"] == first["traits"]["email"]
    assert first["traits"]["plan"] == "pro"
    raw_log = b"".join(e.payload for e in await harness.services.log.tail(10))
    for raw in (b"Ann.Lee", b"ann.lee", b"555", b"010-9999"):
        assert raw not in raw_log


@pytest.mark.parametrize("path", ["/v1/identify", "/v1/batch"])
async def test_pii_under_an_escaped_key_is_hashed_too(harness: Harness, path: str) -> None:
    # "\u0065mail" is "email": JSON lets a client spell any key with escapes
    event = (
        b'{"type":"identify","userId":"u1","messageId":"esc",'
        b'"traits":{"\\u0065mail":"Ann.Lee@Example.com"},"context":{"library":{"name":"x"}}}'
    )
    body = event if path == "/v1/identify" else b'{"batch":[' + event + b"]}"
    headers = {**harness.auth, "content-type": "application/json"}
    response = await harness.client.post(path, content=body, headers=headers)
    assert response.status_code == 200
    [stored] = await harness.logged()
    assert stored["traits"]["email"].startswith(HASH_PREFIX)
    raw_log = b"".join(e.payload for e in await harness.services.log.tail(10))
    assert b"Ann.Lee" not in raw_log and b"ann.lee" not in raw_log


async def test_consent_preferences_are_kept_faithfully(harness: Harness) -> None:
    consent = {
        "categoryPreferences": {"Advertising": False, "Analytics": True, "Personalization": False}
    }
    body = {"userId": "u1", "event": "E", "context": {"consent": consent}}
    response = await harness.client.post("/v1/track", json=body, headers=harness.auth)
    assert response.status_code == 200
    [event] = await harness.logged()
    assert event["context"]["consent"] == consent


# -- nothing acknowledged that is not in the log ---------------------------------------------


async def test_a_closed_log_answers_503_with_retry_after(harness: Harness) -> None:
    await harness.services.log.close()
    response = await harness.client.post(
        "/v1/track", json={"userId": "u1", "event": "E"}, headers=harness.auth
    )
    assert_error(response, 503, "log_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["access-control-allow-origin"] == "*"
    response = await harness.client.post(
        "/v1/batch",
        json={"batch": [{"type": "track", "userId": "u1", "event": "E"}, {"type": "track"}]},
        headers=harness.auth,
    )
    assert_error(response, 503, "log_unavailable")
    await harness.services.log.start()
    assert await harness.logged() == []


async def test_an_overloaded_log_answers_503_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    async with running_app(
        tmp_path / "data", eventlog_max_pending_events=5, eventlog_linger_ms=20.0
    ) as h:

        async def send(i: int) -> httpx.Response:
            batch = [
                {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"{i}-{j}"}
                for j in range(5)
            ]
            return await h.client.post("/v1/batch", json={"batch": batch}, headers=h.auth)

        responses = await asyncio.gather(*(send(i) for i in range(20)))
        ok = [i for i, r in enumerate(responses) if r.status_code == 200]
        refused = [i for i, r in enumerate(responses) if r.status_code != 200]
        assert ok, "at least the first batch is written"
        assert refused, "a bound of 5 pending events must refuse concurrent batches"
        for i in refused:
            assert_error(responses[i], 503, "log_overloaded")
            assert "retry-after" in responses[i].headers
        logged = {e["messageId"] for e in await h.logged()}
        assert logged == {f"{i}-{j}" for i in ok for j in range(5)}


def break_state_database(harness: Harness) -> Path:
    """Put a directory where the state database was, as a lost disk would; returns its path."""
    harness.services.db.dispose()
    path = harness.services.settings.data_dir / "personify.db"
    for part in path.parent.glob("personify.db*"):
        part.rename(part.with_name(part.name + ".away"))
    path.mkdir()
    return path


def mend_state_database(path: Path) -> None:
    path.rmdir()
    for part in path.parent.glob("personify.db*.away"):
        part.rename(part.with_name(part.name.removesuffix(".away")))


async def test_an_unreachable_state_database_answers_503(tmp_path: Path) -> None:
    async with running_app(tmp_path / "data", auth_cache_ttl_s=0) as h:
        break_state_database(h)
        body = {"userId": "u1", "event": "E"}
        response = await h.client.post("/v1/track", json=body, headers=h.auth)
        assert_error(response, 503, "state_unavailable")
        assert "retry-after" in response.headers
        assert response.headers["access-control-allow-origin"] == "*"
        response = await h.client.get("/v1/failed-events", headers=h.admin)
        assert_error(response, 503, "state_unavailable")
        assert await h.logged() == []


async def test_a_dead_letter_that_cannot_be_kept_fails_the_batch_and_a_retry_loses_nothing(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path / "data", auth_cache_ttl_s=600) as h:
        batch = {
            "batch": [
                {"type": "track", "userId": "u1", "event": "Good", "messageId": "good"},
                {"type": "track", "event": "No identity", "messageId": "bad"},
            ]
        }
        # resolve the write key once so that auth is answered from the cache
        assert (await h.client.post("/v1/batch", json={"batch": []}, headers=h.auth)).is_success
        path = break_state_database(h)
        response = await h.client.post("/v1/batch", json=batch, headers=h.auth)
        assert_error(response, 503, "state_unavailable")
        mend_state_database(path)
        response = await h.client.post("/v1/batch", json=batch, headers=h.auth)
        assert response.json() == {"success": True, "accepted": 0, "duplicates": 1, "rejected": 1}
        assert [e["messageId"] for e in await h.logged()] == ["good"]
        assert [f["messageId"] for f in await h.failed()] == ["bad"]


async def test_a_batch_whose_events_take_both_paths_keeps_their_order(harness: Harness) -> None:
    """Plain events go through the compiled path, odd ones through Python: one order."""
    batch = [
        {"type": "track", "userId": "u1", "event": "Plain", "messageId": "m1"},
        {"type": "track", "userId": "caf\u00e9", "event": "Accented", "messageId": "m2"},
        {"type": "track", "userId": "u1", "event": "Plain", "messageId": "m3",
         "timestamp": "2026-11-27T09:00:00.000Z"},
        {"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "m4"},
        {"type": "track", "userId": "u1", "event": "Late", "messageId": "m5",
         "timestamp": "2026-11-27 10:00:00+01:00"},
    ]  # fmt: skip
    response = await harness.client.post("/v1/batch", json={"batch": batch}, headers=harness.auth)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 5
    logged = await harness.logged()
    assert [e["messageId"] for e in logged] == ["m1", "m2", "m3", "m4", "m5"]
    assert logged[1]["userId"] == "caf\u00e9"
    assert logged[4]["originalTimestamp"] == "2026-11-27T09:00:00.000Z"


async def test_the_compiled_path_on_or_off_logs_the_same_events(tmp_path: Path) -> None:
    """PERSONIFY_INGEST_NATIVE switches the compiled common case; the log cannot tell."""
    batch = [
        {**body, "type": kind, "messageId": f"m-{kind}", "timestamp": "2026-11-27T09:00:00.000Z"}
        for kind, body in SINGLE_EVENTS.items()
    ] + [
        {"type": "identify", "userId": "u9", "messageId": "m-pii", "traits": {"email": "A@B.c"}},
        {"type": "track", "userId": "u9", "messageId": "m-bad"},
    ]
    logged: dict[bool, list[dict[str, Any]]] = {}
    for native in (True, False):
        clock = FrozenClock(NOW)
        async with running_app(tmp_path / f"data-{native}", clock=clock, ingest_native=native) as h:
            response = await h.client.post("/v1/batch", json={"batch": batch}, headers=h.auth)
            assert response.json()["accepted"] == len(batch) - 1
            single = {"userId": "u1", "event": "One", "messageId": "m-one"}
            assert (await h.client.post("/v1/track", json=single, headers=h.auth)).is_success
            # each run has its own source, so its own sourceId
            logged[native] = [{**e, "sourceId": None} for e in await h.logged()]
    assert logged[True] == logged[False]
    assert [e["messageId"] for e in logged[True]][-1] == "m-one"
    assert "A@B.c" not in str(logged[True])  # hashed on both paths
