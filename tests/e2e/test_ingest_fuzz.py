"""The whole pipeline under generated hostile input: one real ``personify serve`` process (the
collector, the stream worker and the lake writer), thousands of Hypothesis-built request
bodies over every ingest route, then the promise checked end to end:

* no answer is a 5xx, and the server logs no unhandled error;
* every event answered as accepted reaches its profile (``applied_events``) and the lake;
* every refused event reaches neither, and was answered 4xx or dead-lettered at ingest with a
  code;
* the worker's and the lake writer's groups have no lag left, and neither dead-lettered
  anything (an accepted event is never dropped later).

Bodies are written byte by byte (``render``), so they carry what no JSON encoder writes:
numbers out of every range, invalid UTF-8 in every object, lone surrogates, escapes at every
position, nesting around the depth limit and far past it, wrong types for every field, and
batches mixing good and bad events. ``--slow`` runs ten times as many.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from personify.eventlog.base import open_eventlog
from personify.lake.sink import LAKE_GROUP
from tests.conftest import make_settings
from tests.e2e.conftest import ServerProcess, make_server

pytestmark = pytest.mark.e2e

# PERSONIFY_TEST_FUZZ_BODIES overrides the count, for a quick local run
BODIES = int(os.environ.get("PERSONIFY_TEST_FUZZ_BODIES", "5000"))
SINGLE_ROUTES = ["track", "identify", "page", "screen", "group", "alias", "t", "i", "p", "g"]
BATCH_ROUTES = ["batch", "import", "b"]
# requests sent per Hypothesis example
PER_EXAMPLE = 5
EVENT_TYPES = ["track", "identify", "page", "screen", "group", "alias"]


@dataclass(frozen=True)
class Verbatim:
    """Bytes written into the body as they are (not valid JSON, or not what encoders write)."""

    data: bytes


@dataclass(frozen=True)
class Escaped:
    """A string written with every character as a ``\\u`` escape."""

    text: str


def render(value: Any) -> bytes:
    """``value`` as JSON bytes, ``Verbatim`` and ``Escaped`` parts included."""
    if isinstance(value, Verbatim):
        return value.data
    if isinstance(value, Escaped):
        units = value.text.encode("utf-16-be")
        escapes = "".join(
            f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
        )
        return b'"' + escapes.encode() + b'"'
    if isinstance(value, dict):
        return b"{" + b",".join(render(k) + b":" + render(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(render(v) for v in value) + b"]"
    return msgspec.json.encode(value)


def deep(levels: int) -> Verbatim:
    return Verbatim(b'{"a":' * (levels - 1) + b"[]" + b"}" * (levels - 1))


NASTY = st.sampled_from(
    [
        Verbatim(b"1e400"),
        Verbatim(b"-1e999"),
        Verbatim(b"1E+308"),
        Verbatim(b"1e-400"),
        Verbatim(b"-0.0"),
        Verbatim(b"9" * 310),
        Verbatim(b"-" + b"9" * 4000),
        Verbatim(b"9" * 4301),
        Verbatim(b"18446744073709551616"),
        Verbatim(b'"\\ud800"'),
        Verbatim(b'"x\\udfff"'),
        Verbatim(b'"\\ud83d\\ude00"'),
        Verbatim(b'"\xff\xfe"'),
        Verbatim(b'"\xed\xa0\x80"'),
        Verbatim(b'"\xc3\x28"'),
        Verbatim(b'"caf\xc3\xa9"'),
        Verbatim(b'"\\u0000\\"\\\\\\/\\b\\f\\n\\r\\t"'),
        Verbatim(b"[" * 5000 + b"]" * 5000),
        deep(62),
        deep(63),
        deep(64),
        deep(65),
        deep(980),
        Verbatim(b"NaN"),
        Verbatim(b"Infinity"),
        Verbatim(b"01"),
        Verbatim(b"[1,]"),
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.text(max_size=8).map(Escaped)
)
PII_KEYS = st.sampled_from(["email", "Email", "e-mail", "phone", "PHONE", "phone_number", "mobile"])
KEYS = st.text(max_size=10) | PII_KEYS | st.text(max_size=6).map(Escaped)
VALUES = st.recursive(
    SCALARS | NASTY,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=10,
)
# what well-behaved clients send: any JSON, nothing out of range
CLEAN_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)
TIMESTAMPS = st.sampled_from(
    ["2026-11-01T10:00:00Z", "2026-11-01T10:00:00.123+02:00", "yesterday", "", "2026-13-45"]
) | st.datetimes().map(lambda d: d.isoformat())


@dataclass
class Sent:
    """What the test sent and what the server answered, by tracked messageId."""

    accepted: set[str] = field(default_factory=set)
    # events of 2xx batches: accepted unless dead-lettered at ingest
    in_accepted_batches: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    bodies: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One request: its route, its body, the messageIds it tracks, how many items its batch
    array holds (None for a single event or a batch that is not one)."""

    route: str
    body: bytes
    tracked: list[str]
    items: int | None = None


_ids = itertools.count()


@st.composite
def events(draw: st.DrawFn) -> tuple[Any, str | None]:
    """One event (often good, often broken) and the messageId it is tracked by, if any."""
    hostile = draw(st.integers(0, 2)) == 0
    objects = st.dictionaries(KEYS, VALUES if hostile else CLEAN_VALUES, max_size=4)
    kind = draw(st.sampled_from(EVENT_TYPES))
    message_id = f"fz-{next(_ids)}"
    event: dict[Any, Any] = {"type": kind, "messageId": message_id}
    event[draw(st.sampled_from(["userId", "anonymousId"]))] = draw(
        st.sampled_from(["u1", "u2", "anon-1"]) | st.text(min_size=1, max_size=10)
    )
    if kind == "track":
        event["event"] = draw(st.sampled_from(["Viewed", "Order Completed"]) | st.text(max_size=5))
    if kind in ("page", "screen"):
        event["name"] = draw(st.text(max_size=8))
    if kind == "group":
        event["groupId"] = "g1"
    if kind == "alias":
        event["previousId"] = "anon-1"
    for name in ("properties", "traits", "context", "integrations"):
        if draw(st.booleans()):
            event[name] = draw(objects)
    if draw(st.booleans()):
        event["context"] = {"traits": draw(objects), **event.get("context", {})}
    if draw(st.booleans()):
        event[draw(st.sampled_from(["timestamp", "sentAt", "originalTimestamp"]))] = draw(
            TIMESTAMPS
        )
    if not hostile:
        return event, message_id
    # wrong types, unknown fields, bad values anywhere at the top level
    for _ in range(draw(st.integers(0, 2))):
        name = draw(
            st.sampled_from(
                [
                    "type", "userId", "anonymousId", "event", "name", "properties", "traits",
                    "context", "integrations", "timestamp", "sentAt", "previousId", "groupId",
                    "version", "channel", "receivedAt", "flags", "unknownField",
                ]
            )
        )  # fmt: skip
        event[name] = draw(VALUES)
    if draw(st.integers(0, 19)) == 0:
        event["messageId"] = draw(VALUES)  # untracked from here on
        return event, None
    return event, message_id


@st.composite
def single_request(draw: st.DrawFn) -> Case:
    if draw(st.integers(0, 14)) == 0:  # not an event at all
        body = draw(VALUES | st.binary(max_size=50).map(Verbatim))
        return Case(draw(st.sampled_from(SINGLE_ROUTES)), render(body), [])
    event, message_id = draw(events())
    # mostly the route of the event's own type (the type field may say otherwise)
    route = str(event.get("type")) if draw(st.integers(0, 3)) else "x"
    if route not in SINGLE_ROUTES:
        route = draw(st.sampled_from(SINGLE_ROUTES))
    return Case(route, render(event), [message_id] if message_id else [])


@st.composite
def batch_request(draw: st.DrawFn) -> Case:
    route = draw(st.sampled_from(BATCH_ROUTES))
    items: list[Any] = []
    tracked: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 9)) == 0:
            items.append(draw(VALUES))
            continue
        event, message_id = draw(events())
        items.append(event)
        if message_id:
            tracked.append(message_id)
    body: dict[str, Any] = {"batch": items}
    if draw(st.integers(0, 4)) == 0:
        envelope_field = draw(st.sampled_from(["sentAt", "context", "integrations", "batch", "x"]))
        body[envelope_field] = draw(VALUES)
        if envelope_field == "batch":
            return Case(route, render(body), [], None)
    return Case(route, render(body), tracked, len(items))


REQUESTS = st.one_of(single_request(), batch_request())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = make_server(
        tmp_path_factory.mktemp("fuzz") / "data",
        PERSONIFY_EVENTLOG_DURABILITY="normal",
        PERSONIFY_LAKE_LINGER_MS="200",
    )
    server.start()
    yield server
    server.stop()


def post(client: httpx.Client, server: ServerProcess, route: str, body: bytes, how: int) -> Any:
    credentials = base64.b64encode(f"{server.write_key}:".encode()).decode("ascii")
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {credentials}"}
    if how == 1:  # as analytics.js sends it, to avoid a CORS preflight
        headers["Content-Type"] = "text/plain;charset=UTF-8"
    elif how == 2:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    return client.post(f"/v1/{route}", content=body, headers=headers)


@pytest.mark.timeout(900)
def test_no_acknowledged_event_is_dropped_and_no_bad_one_is_kept(
    fuzz_server: ServerProcess, request: pytest.FixtureRequest
) -> None:
    server = fuzz_server
    bodies = BODIES * (10 if request.config.getoption("--slow") else 1)
    sent = Sent()
    client = httpx.Client(base_url=server.base_url, timeout=30)

    @settings(
        max_examples=bodies // PER_EXAMPLE,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(
            st.tuples(REQUESTS, st.sampled_from([0, 0, 0, 1, 2])),
            min_size=PER_EXAMPLE,
            max_size=PER_EXAMPLE,
        )
    )
    def send_all(cases: list[tuple[Case, int]]) -> None:
        for case, how in cases:
            send(case, how)

    def send(case: Case, how: int) -> None:
        route, body, tracked = case.route, case.body, case.tracked
        response = post(client, server, route, body, how)
        sent.bodies += 1
        sent.statuses[response.status_code] = sent.statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (route, body[:2000], response.text)
        answer = response.json()
        if response.status_code >= 400:
            assert set(answer["error"]) >= {"code", "message"}, answer
            sent.refused.update(tracked)
            sent.codes[answer["error"]["code"]] = sent.codes.get(answer["error"]["code"], 0) + 1
            return
        if route in BATCH_ROUTES:
            if case.items is not None:
                # (an untracked event's messageId, a mutated value, may repeat an earlier one)
                counted = answer["accepted"] + answer["duplicates"] + answer["rejected"]
                assert counted == case.items, answer
            sent.in_accepted_batches.update(tracked)
        else:
            assert answer == {"success": True}
            sent.accepted.update(tracked)

    started = time.monotonic()
    with client:
        send_all()
    print(
        f"sent {sent.bodies} bodies in {time.monotonic() - started:.1f} s: {sent.statuses} {sent.codes}"
    )
    assert sent.bodies >= bodies
    # the generated mix must exercise both outcomes broadly, or the test proves little
    assert sent.statuses.get(200, 0) > bodies // 5, sent.statuses
    assert sum(n for status, n in sent.statuses.items() if status >= 400) > bodies // 10

    state_db = server.data_dir / "personify.db"
    ingest_refused = dead_lettered_at_ingest(state_db)
    accepted = sent.accepted | (sent.in_accepted_batches - ingest_refused)
    refused = sent.refused | (sent.in_accepted_batches & ingest_refused)
    assert accepted and refused

    deadline = time.monotonic() + 180
    started = time.monotonic()
    while True:
        applied = applied_message_ids(state_db)
        in_lake = lake_message_ids(server.data_dir / "lake")
        if accepted <= applied and accepted <= in_lake:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(accepted - applied)} accepted events never reached a profile and "
                f"{len(accepted - in_lake)} never reached the lake; e.g. "
                f"{sorted(accepted - applied)[:5]} / {sorted(accepted - in_lake)[:5]}"
            )
        time.sleep(0.5)
    print(f"{len(accepted)} accepted events applied in {time.monotonic() - started:.1f} s")
    assert not refused & applied
    assert not refused & in_lake
    server.stop()

    log_text = b"".join(p.read_bytes() for p in server.data_dir.glob("server-*.log"))
    assert b"Traceback" not in log_text, log_text.decode("utf-8", "replace")[-5000:]
    downstream = (
        sqlite3.connect(state_db)
        .execute("SELECT stage, code, reason FROM failed_events WHERE stage != 'ingest'")
        .fetchall()
    )
    assert downstream == []
    assert asyncio.run(group_lags(server)) == {"worker": 0, LAKE_GROUP: 0}


def dead_lettered_at_ingest(state_db: Path) -> set[str]:
    with sqlite3.connect(state_db) as conn:
        rows = conn.execute(
            "SELECT message_id, code FROM failed_events WHERE stage = 'ingest'"
        ).fetchall()
    assert all(code for _, code in rows)
    return {message_id for message_id, _ in rows if message_id}


def applied_message_ids(state_db: Path) -> set[str]:
    with sqlite3.connect(state_db) as conn:
        return {row[0] for row in conn.execute("SELECT message_id FROM applied_events")}


def lake_message_ids(lake_dir: Path) -> set[str]:
    if not (lake_dir / "_delta_log").exists():
        return set()
    table = DeltaTable(str(lake_dir)).to_pyarrow_table(columns=["message_id"])
    return set(table.column("message_id").to_pylist())


async def group_lags(server: ServerProcess) -> dict[str, int | None]:
    log = open_eventlog(make_settings(server.data_dir))
    await log.start()
    try:
        return {group: await log.lag(group) for group in ("worker", LAKE_GROUP)}
    finally:
        await log.close()
