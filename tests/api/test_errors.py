"""Every bad input gets its exact status and error code, in the one JSON error shape."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from personify import errors
from personify.http_errors import status_for
from tests.api import Harness, assert_error, running_app


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


BAD_EVENTS: list[tuple[str, str, Any, str]] = [
    ("not-an-object", "/v1/track", ["a", "list"], "invalid_event"),
    ("string-event", "/v1/identify", "hello", "invalid_event"),
    ("no-identity", "/v1/track", {"event": "E"}, "missing_identity"),
    ("blank-identity", "/v1/track", {"event": "E", "userId": "  ", "anonymousId": ""},
     "missing_identity"),
    ("no-event-name", "/v1/track", {"userId": "u1"}, "missing_event_name"),
    ("blank-event-name", "/v1/track", {"userId": "u1", "event": "  "}, "missing_event_name"),
    ("alias-no-previous", "/v1/alias", {"userId": "u1"}, "missing_previous_id"),
    ("group-no-group", "/v1/group", {"userId": "u1"}, "missing_group_id"),
    ("bad-timestamp", "/v1/track", {"userId": "u1", "event": "E", "timestamp": "yesterday"},
     "invalid_timestamp"),
    ("numeric-timestamp", "/v1/page", {"userId": "u1", "timestamp": 1714560000},
     "invalid_timestamp"),
    ("bad-sent-at", "/v1/page", {"userId": "u1", "sentAt": "2024-13-45T00:00:00Z"},
     "invalid_timestamp"),
    ("properties-not-object", "/v1/track", {"userId": "u1", "event": "E", "properties": [1]},
     "invalid_field"),
    ("traits-not-object", "/v1/identify", {"userId": "u1", "traits": "vip"}, "invalid_field"),
    ("context-not-object", "/v1/page", {"userId": "u1", "context": 3}, "invalid_field"),
    ("user-id-object", "/v1/identify", {"userId": {"id": 1}}, "invalid_field"),
    ("user-id-too-long", "/v1/identify", {"userId": "u" * 600}, "invalid_field"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "code"), [case[1:] for case in BAD_EVENTS], ids=[c[0] for c in BAD_EVENTS]
)
async def test_bad_single_event_is_400_with_its_code(
    harness: Harness, path: str, body: Any, code: str
) -> None:
    response = await harness.client.post(path, content=encoded(body), headers=harness.auth)
    assert_error(response, 400, code)
    assert response.headers["access-control-allow-origin"] == "*"
    assert await harness.logged() == []


async def test_batch_events_with_a_bad_type_are_rejected(harness: Harness) -> None:
    batch = [
        {"userId": "u1", "type": "click"},
        {"userId": "u1"},
        {"userId": "u1", "type": ["track"]},
        {"userId": "u1", "type": {"name": "track"}},
        {"userId": "u1", "type": 7},
    ]
    response = await harness.client.post("/v1/batch", json={"batch": batch}, headers=harness.auth)
    assert response.json()["rejected"] == len(batch)
    assert [f["code"] for f in await harness.failed()] == ["invalid_type"] * len(batch)


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
@pytest.mark.parametrize(
    "body", [b"{", b"{'single': 'quotes'}", b"[1, 2,]", b"\xff\xfe{}", b'{"a": "\xed\xa0\x80"}']
)
async def test_bad_json_is_400_invalid_json(harness: Harness, path: str, body: bytes) -> None:
    response = await harness.client.post(path, content=body, headers=harness.auth)
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("body", [b"", b"   \n"])
async def test_an_empty_body_is_400(harness: Harness, body: bytes) -> None:
    for path in ("/v1/track", "/v1/batch"):
        response = await harness.client.post(path, content=body, headers=harness.auth)
        assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    "body",
    [{"events": []}, {"batch": {"type": "track"}}, {"batch": None}, [{"type": "track"}], "batch"],
)
async def test_batch_body_without_a_batch_array_is_400(harness: Harness, body: Any) -> None:
    for path in ("/v1/batch", "/v1/import"):
        response = await harness.client.post(path, content=encoded(body), headers=harness.auth)
        assert_error(response, 400, "invalid_batch")


async def test_an_empty_batch_is_accepted_as_nothing(harness: Harness) -> None:
    response = await harness.client.post("/v1/batch", json={"batch": []}, headers=harness.auth)
    assert response.json() == {"success": True, "accepted": 0, "duplicates": 0, "rejected": 0}


async def test_an_oversized_single_event_is_413(harness: Harness) -> None:
    body = {"userId": "u1", "event": "E", "properties": {"blob": "x" * (32 * 1024)}}
    response = await harness.client.post("/v1/track", json=body, headers=harness.auth)
    error = assert_error(response, 413, "event_too_large")
    assert error["details"]["limit"] == 32 * 1024
    assert response.headers["access-control-allow-origin"] == "*"
    assert await harness.logged() == []


async def test_an_event_that_grows_over_the_limit_once_normalised_is_413(
    harness: Harness,
) -> None:
    # under the limit as sent, over it once receivedAt, messageId and sourceId are added
    body = {"userId": "u1", "event": "E", "properties": {"blob": ""}}
    overhead = len(encoded(body).replace(b" ", b""))
    body["properties"] = {"blob": "x" * (32 * 1024 - overhead - 10)}
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) <= 32 * 1024
    response = await harness.client.post("/v1/track", content=raw, headers=harness.auth)
    assert_error(response, 413, "event_too_large")
    assert await harness.logged() == []


async def test_an_oversized_batch_is_413(harness: Harness) -> None:
    events = [
        {"type": "track", "userId": "u1", "event": "E", "properties": {"blob": "x" * 10_000}}
        for _ in range(60)
    ]
    response = await harness.client.post("/v1/batch", json={"batch": events}, headers=harness.auth)
    error = assert_error(response, 413, "batch_too_large")
    assert error["details"]["limit"] == 500 * 1024
    assert await harness.logged() == []


async def test_an_oversized_body_without_content_length_is_413(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"batch": ['
        for _ in range(60):
            yield b'{"type": "track", "userId": "u1", "event": "' + b"x" * 10_000 + b'"},'
        yield b"{}]}"

    response = await harness.client.post("/v1/batch", content=chunks(), headers=harness.auth)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "batch_too_large")


@pytest.mark.parametrize(
    "content_type",
    ["application/xml", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_unsupported_content_types_are_415(harness: Harness, content_type: str) -> None:
    body = encoded({"userId": "u1", "event": "E"})
    for path in ("/v1/track", "/v1/batch"):
        response = await harness.client.post(
            path, content=body, headers={**harness.auth, "Content-Type": content_type}
        )
        assert_error(response, 415, "unsupported_media_type")
        assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "application/json; charset=utf-8",
     "application/vnd.segment+json"],
)  # fmt: skip
async def test_json_and_text_plain_content_types_are_accepted(
    harness: Harness, content_type: str
) -> None:
    response = await harness.client.post(
        "/v1/track",
        content=encoded({"userId": "u1", "event": "E"}),
        headers={**harness.auth, "Content-Type": content_type},
    )
    assert response.status_code == 200, response.text


async def test_corrupt_gzip_is_400_invalid_gzip(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/batch",
        content=b"\x1f\x8b\x08\x00 this is not deflate data",
        headers={**harness.auth, "Content-Encoding": "gzip"},
    )
    assert_error(response, 400, "invalid_gzip")


async def test_truncated_gzip_is_400_invalid_gzip(harness: Harness) -> None:
    whole = gzip.compress(encoded({"batch": [{"type": "track", "userId": "u", "event": "E"}]}))
    response = await harness.client.post(
        "/v1/batch",
        content=whole[: len(whole) // 2],
        headers={**harness.auth, "Content-Encoding": "gzip"},
    )
    assert_error(response, 400, "invalid_gzip")


async def test_a_gzip_bomb_is_413(harness: Harness) -> None:
    bomb = gzip.compress(b'{"batch": [' + b" " * (20 * 1024 * 1024) + b"]}")
    assert len(bomb) < 100 * 1024
    response = await harness.client.post(
        "/v1/batch", content=bomb, headers={**harness.auth, "Content-Encoding": "gzip"}
    )
    assert_error(response, 413, "batch_too_large")
    single = gzip.compress(b'{"userId": "u1", "event": "' + b"x" * (64 * 1024) + b'"}')
    response = await harness.client.post(
        "/v1/track", content=single, headers={**harness.auth, "Content-Encoding": "gzip"}
    )
    assert_error(response, 413, "event_too_large")


async def test_an_unknown_content_encoding_is_415(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/track",
        content=encoded({"userId": "u1", "event": "E"}),
        headers={**harness.auth, "Content-Encoding": "br"},
    )
    assert_error(response, 415, "unsupported_encoding")


async def test_an_unknown_route_is_a_json_404(harness: Harness) -> None:
    for method, path in [("GET", "/nope"), ("POST", "/v1/nope"), ("POST", "/v1/tracks")]:
        response = await harness.client.request(method, path, headers=harness.auth)
        assert_error(response, 404, "not_found")


async def test_a_wrong_method_is_a_json_405(harness: Harness) -> None:
    for method, path in [
        ("GET", "/v1/track"),
        ("PUT", "/v1/batch"),
        ("DELETE", "/v1/failed-events"),
        ("POST", "/personify.js"),
    ]:
        response = await harness.client.request(method, path, headers=harness.auth)
        assert_error(response, 405, "method_not_allowed")
        assert "allow" in response.headers


def test_every_error_class_has_one_status() -> None:
    expected = {
        errors.ValidationError: 400,
        errors.PayloadTooLarge: 413,
        errors.UnsupportedMediaType: 415,
        errors.Unauthorized: 401,
        errors.Forbidden: 403,
        errors.NotFound: 404,
        errors.Conflict: 409,
        errors.BackendUnavailable: 503,
        errors.ConfigurationError: 500,
    }
    for kind, status in expected.items():
        assert status_for(kind("message")) == status
    assert status_for(errors.PersonifyError("message")) == 500
