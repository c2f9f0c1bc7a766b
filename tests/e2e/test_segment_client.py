"""Segment's own Python library, unmodified, pointed at a real ``personify serve``.

Every call it makes (track, identify, page, screen, group, alias) must arrive in the log
with its fields intact: ids, properties, traits (PII hashed), context, integrations and
messageId as sent, timestamps clock-corrected.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics import Client
from segment.analytics.request import DatetimeSerializer
from segment.analytics.version import VERSION

from personify.eventlog.sqlite import SQLiteEventLog
from personify.events.hashing import HASH_PREFIX, PiiHasher
from personify.events.normalize import parse_timestamp
from tests.e2e.conftest import ServerProcess, cli, make_server

# the same key server_env() gives the server, so the test can recompute the hashes
PII_KEY = b"e2e-pii-key"
HASHED_PATHS = (("traits", "email"), ("traits", "phone"), ("context", "traits", "email"))
# the library stamps sentAt just before the POST; the server corrects against receivedAt
CLOCK_TOLERANCE = timedelta(seconds=10)


@pytest.fixture(scope="module")
def segment_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: each test tags its events with its own ids."""
    proc = make_server(tmp_path_factory.mktemp("segment") / "data")
    proc.start()
    yield proc
    proc.stop()


def read_log(data_dir: Path, limit: int = 10_000) -> list[dict[str, Any]]:
    """Every event in the server's log file, decoded, oldest first."""

    async def read() -> list[dict[str, Any]]:
        log = SQLiteEventLog(data_dir / "events.db")
        await log.start()
        try:
            return [json.loads(entry.payload) for entry in await log.tail(limit)]
        finally:
            await log.close()

    return asyncio.run(read())


def as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """A queued message as the library puts it on the wire (datetimes become ISO strings)."""
    wire: dict[str, Any] = json.loads(json.dumps(message, cls=DatetimeSerializer))
    return wire


def hashed(message: dict[str, Any], hasher: PiiHasher) -> dict[str, Any]:
    """What the server must store for ``message``: the PII paths replaced by their HMAC."""
    expected = json.loads(json.dumps(message))
    for path in HASHED_PATHS:
        parent = expected
        for name in path[:-1]:
            parent = parent.get(name)
            if not isinstance(parent, dict):
                break
        else:
            if isinstance(parent.get(path[-1]), str):
                parent[path[-1]] = hasher.hash_value(path[-1], parent[path[-1]])
    return expected


def send_every_call(client: Client, tag: str) -> list[dict[str, Any]]:
    """One call of each type, with every optional field; returns the messages as queued."""
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    anonymous_id = f"anon-{tag}"
    user_id = f"user-{tag}"
    context = {
        "ip": "203.0.113.7",
        "locale": "fr-FR",
        "userAgent": "e2e-test/1.0",
        "campaign": {"name": "spring", "source": "newsletter"},
        "traits": {"email": f"  Context.{tag}@Example.COM "},
        "consent": {"categoryPreferences": {"Advertising": False, "Analytics": True}},
    }
    integrations = {"All": False, "Mixpanel": True, "Google Analytics": {"clientId": "c-1"}}
    calls: list[tuple[bool, dict[str, Any]]] = [
        client.track(
            user_id=user_id,
            anonymous_id=anonymous_id,
            event="Order Completed",
            properties={
                "orderId": f"o-{tag}",
                "revenue": Decimal("42.50"),
                "products": [{"sku": "A-1", "quantity": 2}, {"sku": "B-2", "quantity": 1}],
                "coupon": None,
                "gift": True,
                "shippedAt": an_hour_ago,
                "tags": ("new", "promo"),
            },
            context=dict(context),
            timestamp=an_hour_ago,
            integrations=integrations,
            message_id=f"track-{tag}",
        ),
        client.identify(
            user_id=user_id,
            anonymous_id=anonymous_id,
            traits={
                "email": f" Ann.{tag}@Example.COM",
                "phone": "+33 (0)6 12-34-56-78",
                "name": "Ann Example",
                "plan": "pro",
                "logins": 7,
            },
            context=dict(context),
            timestamp=an_hour_ago + timedelta(seconds=1),
            integrations=integrations,
            message_id=f"identify-{tag}",
        ),
        client.page(
            user_id=user_id,
            anonymous_id=anonymous_id,
            category="Docs",
            name="Pricing",
            properties={
                "url": "https://shop.example/pricing",
                "referrer": "https://search.example",
            },
            context=dict(context),
            timestamp=an_hour_ago + timedelta(seconds=2),
            integrations=integrations,
            message_id=f"page-{tag}",
        ),
        client.screen(
            anonymous_id=anonymous_id,
            category="Onboarding",
            name="Welcome",
            properties={"step": 1},
            context=dict(context),
            integrations=integrations,
            message_id=f"screen-{tag}",
        ),
        client.group(
            user_id=user_id,
            anonymous_id=anonymous_id,
            group_id=f"org-{tag}",
            traits={"name": "Example Corp", "employees": 120, "industry": "retail"},
            context=dict(context),
            timestamp=an_hour_ago + timedelta(seconds=3),
            integrations=integrations,
            message_id=f"group-{tag}",
        ),
        client.alias(
            previous_id=anonymous_id,
            user_id=user_id,
            context=dict(context),
            timestamp=an_hour_ago + timedelta(seconds=4),
            integrations=integrations,
            message_id=f"alias-{tag}",
        ),
        # numeric ids are sent as strings; no messageId given: the library makes a UUID
        client.track(user_id=4242, event="Signed Up", properties={"via": "email"}),
    ]
    for queued, _ in calls:
        assert queued, "the library refused to queue an event"
    return [as_sent(message) for _, message in calls]


def check_arrived(sent: list[dict[str, Any]], stored_events: list[dict[str, Any]]) -> None:
    """Every sent message is in the log once, with its fields intact."""
    hasher = PiiHasher(PII_KEY, [".".join(path) for path in HASHED_PATHS])
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in stored_events:
        by_id.setdefault(event["messageId"], []).append(event)
    for message in sent:
        copies = by_id.get(message["messageId"], [])
        assert len(copies) == 1, f"{message['messageId']} is in the log {len(copies)} times"
        stored = copies[0]
        expected = hashed(message, hasher)
        client_time = parse_timestamp("timestamp", expected.pop("timestamp"))
        for name, value in expected.items():
            assert stored.get(name) == value, f"{message['type']}.{name} changed"
        assert stored["context"]["library"] == {"name": "analytics-python", "version": VERSION}

        # PII never stored raw: the hash is the one the server's key gives
        for path in HASHED_PATHS:
            parent: Any = stored
            for name in path:
                parent = parent.get(name) if isinstance(parent, dict) else None
            if parent is not None:
                assert isinstance(parent, str) and parent.startswith(HASH_PREFIX)
        raw_text = json.dumps(stored).lower()
        assert "example.com" not in raw_text and "12-34-56-78" not in raw_text

        # clock-skew correction: timestamp = receivedAt - (sentAt - originalTimestamp)
        received_at = parse_timestamp("receivedAt", stored["receivedAt"])
        sent_at = parse_timestamp("sentAt", stored["sentAt"])
        original = parse_timestamp("originalTimestamp", stored["originalTimestamp"])
        timestamp = parse_timestamp("timestamp", stored["timestamp"])
        assert abs(original - client_time) < timedelta(milliseconds=1)
        assert abs(timestamp - (received_at - (sent_at - original))) < timedelta(milliseconds=2)
        assert abs(timestamp - client_time) < CLOCK_TOLERANCE
        assert "flags" not in stored
        assert stored["sourceId"]


def failed_events(server: ServerProcess) -> list[dict[str, Any]]:
    """The dead letters the server kept."""
    response = httpx.get(
        f"{server.base_url}/v1/failed-events",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.mark.parametrize(
    ("sync_mode", "gzip"),
    [(False, False), (False, True), (True, False), (True, True)],
    ids=["batched", "batched-gzip", "sync", "sync-gzip"],
)
def test_every_call_arrives_intact(
    segment_server: ServerProcess, sync_mode: bool, gzip: bool
) -> None:
    """Each call type, batched or one per request, plain or gzip, lands in the log intact."""
    errors: list[tuple[Exception, list[Any]]] = []
    client = Client(
        write_key=segment_server.write_key,
        host=segment_server.base_url,
        sync_mode=sync_mode,
        gzip=gzip,
        on_error=lambda error, batch: errors.append((error, batch)),
        max_retries=2,
        timeout=10,
        upload_interval=0.05,
    )
    tag = uuid.uuid4().hex[:12]
    try:
        sent = send_every_call(client, tag)
        if not sync_mode:
            client.flush()
    finally:
        if not sync_mode:
            client.shutdown()
    assert errors == []

    check_arrived(sent, read_log(segment_server.data_dir))
    assert [e for e in failed_events(segment_server) if tag in json.dumps(e)] == []


def test_events_tail_shows_what_the_library_sent(segment_server: ServerProcess) -> None:
    """``personify events tail`` prints the library's events as stored (hashed PII)."""
    errors: list[Exception] = []
    client = Client(
        write_key=segment_server.write_key,
        host=segment_server.base_url,
        sync_mode=True,
        on_error=lambda error, batch: errors.append(error),
    )
    tag = uuid.uuid4().hex[:12]
    sent = send_every_call(client, tag)
    assert errors == []

    output = cli(segment_server.env, "events", "tail", "-n", "100")
    printed = [json.loads(line) for line in output.splitlines() if line.strip()]
    check_arrived(sent, printed)
    identify = next(e for e in printed if e["messageId"] == f"identify-{tag}")
    assert identify["traits"]["email"].startswith(HASH_PREFIX)
    assert identify["traits"]["name"] == "Ann Example"
