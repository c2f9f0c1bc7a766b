"""The acceptance rule through the real app: a body is either refused at ingest, with a code,
or everything taken from it can be read by the stages after the log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from personify.events.decoding import MAX_DEPTH
from tests.api import Harness, assert_error, running_app

BIG_310 = "9" * 310
BIG_4301 = "9" * 4301


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
async def harness(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", ingest_native=request.param) as h:
        yield h


def nested(depth: int) -> bytes:
    """A properties value that makes the event ``depth`` levels deep (the event is level 1,
    properties level 2)."""
    inner = depth - 1
    return b'{"a":' * inner + b"1" + b"}" * inner


def track_body(properties: bytes, **extra: str) -> bytes:
    fields = b"".join(b'"%s":"%s",' % (k.encode(), v.encode()) for k, v in extra.items())
    return b"{" + fields + b'"userId":"u","event":"x","properties":' + properties + b"}"


async def post(harness: Harness, path: str, body: bytes) -> Any:
    return await harness.client.post(
        path, content=body, headers={**harness.auth, "Content-Type": "application/json"}
    )


async def logged_payloads_decode(harness: Harness) -> list[dict[str, Any]]:
    """Every record in the log, decoded with the generic decoder the worker and the lake use
    (it raises if a later stage could not read one)."""
    return [msgspec.json.decode(e.payload) for e in await harness.services.log.tail(1000)]


REFUSED_SINGLE = {
    "infinite float": (track_body(b'{"a":1e400}'), "number_out_of_range"),
    "negative infinite float": (track_body(b'{"a":-1e400}'), "number_out_of_range"),
    "integer over 4300 digits": (track_body(b'{"a":' + BIG_4301.encode() + b"}"), "number_out_of_range"),
    "invalid utf-8 in properties": (track_body(b'{"a":"\xff\xfe"}'), "invalid_json"),
    "invalid utf-8 in a key": (track_body(b'{"\xc3\x28":1}'), "invalid_json"),
    "invalid utf-8 in traits": (b'{"userId":"u","traits":{"name":"\xed\xa0\x80"}}', "invalid_json"),
    "invalid utf-8 in context": (b'{"userId":"u","event":"x","context":{"ip":"\x80"}}', "invalid_json"),
    "invalid utf-8 in integrations": (b'{"userId":"u","event":"x","integrations":{"\xff":true}}', "invalid_json"),
    "lone high surrogate": (track_body(b'{"a":"\\ud800"}'), "invalid_json"),
    "lone low surrogate": (track_body(b'{"a":"x\\udc00y"}'), "invalid_json"),
    "nesting one level too deep": (track_body(nested(MAX_DEPTH + 1)), "too_deep"),
    "nesting 980 levels deep": (track_body(nested(980)), "too_deep"),
    "nesting 5000 levels deep": (track_body(b"[" * 5000 + b"]" * 5000), "too_deep"),
    # an unknown top-level field sends the event down the general (dict) path
    "infinite float, general path": (track_body(b'{"a":1e400}', extra="x"), "number_out_of_range"),
    "invalid utf-8, general path": (track_body(b'{"a":"\xff"}', extra="x"), "invalid_json"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED_SINGLE))
async def test_a_single_event_that_a_later_stage_could_not_read_is_refused(
    harness: Harness, name: str
) -> None:
    body, code = REFUSED_SINGLE[name]
    response = await post(harness, "/v1/track", body)
    error = assert_error(response, 400, code)
    assert error["message"]
    assert await harness.logged() == []


@pytest.mark.parametrize("kind", ["group", "alias", "identify", "page", "screen"])
async def test_every_single_event_route_refuses_an_infinite_number_with_a_400(
    harness: Harness, kind: str
) -> None:
    body = b'{"userId":"u","previousId":"p","groupId":"g","name":"n","traits":{"a":1e400}}'
    response = await post(harness, f"/v1/{kind}", body)
    assert_error(response, 400, "number_out_of_range")
    assert await harness.logged() == []


async def test_large_integers_that_decode_are_accepted_and_readable(harness: Harness) -> None:
    body = track_body(b'{"n":' + BIG_310.encode() + b',"m":18446744073709551616}')
    response = await post(harness, "/v1/track", body)
    assert response.status_code == 200, response.text
    [event] = await logged_payloads_decode(harness)
    assert event["properties"] == {"n": int(BIG_310), "m": 2**64}


async def test_nesting_at_the_limit_is_accepted(harness: Harness) -> None:
    response = await post(harness, "/v1/track", track_body(nested(MAX_DEPTH)))
    assert response.status_code == 200, response.text
    [event] = await logged_payloads_decode(harness)
    assert event["event"] == "x"


async def test_a_bad_number_in_a_batch_costs_only_its_own_event(harness: Harness) -> None:
    # the reproduction: this answered 500 and lost the good event
    body = (
        b'{"batch":[{"type":"track","userId":"good","event":"ok","messageId":"good-1"},'
        b'{"type":"group","userId":"u","groupId":"g","messageId":"bad-1","properties":{"a":1e400}},'
        b'{"type":"track","userId":"deep","event":"d","properties":' + nested(MAX_DEPTH + 1) + b"},"
        b'{"type":"track","userId":"big","event":"b","properties":{"n":'
        + BIG_4301.encode()
        + b"}},"
        b'{"type":"track","userId":"good","event":"ok","messageId":"good-2",'
        b'"context":{"n":' + BIG_310.encode() + b"}}]}"
    )
    response = await post(harness, "/v1/batch", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": 2, "duplicates": 0, "rejected": 3}
    events = await logged_payloads_decode(harness)
    assert [e["messageId"] for e in events] == ["good-1", "good-2"]
    failed = await harness.failed()
    assert sorted(f["code"] for f in failed) == [
        "number_out_of_range",
        "number_out_of_range",
        "too_deep",
    ]
    assert all(f["stage"] == "ingest" and f["reason"] for f in failed)
    # what could be read of a refused event identifies it; nothing else of it is kept
    assert "bad-1" in [f["messageId"] for f in failed]


async def test_a_batch_keeps_its_envelope_when_an_event_is_refused(harness: Harness) -> None:
    body = (
        b'{"sentAt":"2026-01-01T00:00:00Z","context":{"ip":"10.0.0.1"},"batch":['
        b'{"type":"track","userId":"u","event":"ok","messageId":"m1"},'
        b'{"type":"track","userId":"u","event":"bad","properties":{"a":-1e999}}]}'
    )
    response = await post(harness, "/v1/batch", body)
    assert response.json()["accepted"] == 1, response.text
    [event] = await logged_payloads_decode(harness)
    assert event["context"]["ip"] == "10.0.0.1"


BATCH_REFUSED_WHOLE = {
    "invalid utf-8": (b'{"batch":[{"userId":"u","event":"x","properties":{"a":"\xff"}}]}', "invalid_json"),
    "lone surrogate": (b'{"batch":[{"userId":"u","event":"x","properties":{"a":"\\udfff"}}]}', "invalid_json"),
    "bad number in the envelope": (b'{"context":{"a":1e400},"batch":[{"userId":"u","event":"x"}]}', "number_out_of_range"),
    "batch not an array, with a bad number": (b'{"batch":{"a":1e400}}', "invalid_batch"),
    "no batch, with a bad number": (b'{"events":[1e400]}', "invalid_batch"),
    "truncated": (b'{"batch":[{"userId":"u","event":"x"}', "invalid_json"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BATCH_REFUSED_WHOLE))
async def test_a_batch_that_is_not_readable_json_is_refused_whole(
    harness: Harness, name: str
) -> None:
    body, code = BATCH_REFUSED_WHOLE[name]
    response = await post(harness, "/v1/batch", body)
    assert_error(response, 400, code)
    assert await harness.logged() == []


async def test_an_empty_body_is_refused(harness: Harness) -> None:
    for path in ("/v1/track", "/v1/batch"):
        assert_error(await post(harness, path, b"  "), 400, "invalid_json")
