"""No raw PII anywhere in storage: events carrying e-mails and phone numbers at every place the
Segment spec puts traits (``traits``, ``context.traits``, for every event type), under every
spelling of their keys (case, separators, synonyms), some already prefixed ``hmac-sha256:``,
some in events that are refused, go through one real ``personify serve`` process (collector,
stream worker, lake writer). Once the worker and the lake writer have caught up and the
server has stopped, everything under its data folder is read, raw and decoded: every table of
the state database, the event log's records, the Delta Lake's parquet files (values and
statistics) and ``_delta_log``, the dead letters, and the server's own log output. None of
the raw values is found in any of it, and each accepted value is there as its digest.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from personify.eventlog.sqlite import iter_records
from personify.events.hashing import HASH_PREFIX, PII_KEYS, PiiHasher, normalize_pii
from personify.lake.sink import LAKE_GROUP
from tests.e2e.conftest import ServerProcess, make_server
from tests.ingest.test_wire import spelled

pytestmark = pytest.mark.e2e

KINDS = ["identify", "track", "page", "screen", "group", "alias"]
LOCATIONS = [("traits",), ("context", "traits")]
# the spellings docs/ingest.md promises, each sent at every location for every kind
SPELLINGS = [
    "email", "Email", "EMAIL", "e-mail", "E-Mail", "e_mail", "e.mail", "emailAddress",
    "email_address", "Email Address", "mail", "userEmail", "work_email",
    "phone", "Phone", "PHONE", "phone_number", "phoneNumber", "Phone-Number", "mobile",
    "Mobile", "mobile_phone", "mobilePhone", "mobileNumber", "cell", "cellphone", "Cell_Phone",
    "tel", "telephone", "TEL", "fax", "homePhone", "msisdn",
]  # fmt: skip
PII_KEY = b"e2e-pii-key"  # what tests.e2e.conftest.server_env sets


@dataclass
class Sent:
    """What went in: the raw values to look for, and what must be found instead."""

    serial: itertools.count[int] = field(default_factory=itertools.count)
    raw_values: list[str] = field(default_factory=list)
    # (messageId, key, raw value) of every PII value an accepted event carried
    accepted: list[tuple[str, str, str]] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    # messageIds of the events that must be in the lake, and of those that must not
    accepted_ids: set[str] = field(default_factory=set)
    refused_ids: set[str] = field(default_factory=set)

    def value(self, form: str) -> str:
        """A new raw value no other storage holds by chance: an e-mail or a phone number,
        plain or prefixed as if it were hashed already."""
        n = next(self.serial)
        email = f"Pii.Person.k{n:05d}x@Example.COM"
        phone = f"+999 ({n % 1000:03d}) {n:06d}-42"
        value = {
            "email": email,
            "phone": phone,
            "prefixed-email": HASH_PREFIX + email,
            "prefixed-phone": HASH_PREFIX + phone,
        }[form]
        self.raw_values.append(value)
        return value

    def message_id(self) -> str:
        return f"pii-m{next(self.serial)}"


FORMS = ["email", "phone", "prefixed-email", "prefixed-phone"]


def needles(raw_values: list[str]) -> set[bytes]:
    """What must not be found, lower-cased: each value as sent, the part after a
    ``hmac-sha256:`` prefix, its canonical forms (what is hashed), and the first 12
    characters of each (Delta statistics keep only a string's prefix)."""
    found: set[bytes] = set()
    for value in raw_values:
        secret = value.removeprefix(HASH_PREFIX)
        forms = {secret, normalize_pii("email", secret), normalize_pii("phone", secret)}
        for form in forms:
            if len(form) >= 12:
                found.add(form.lower().encode())
                found.add(form[:12].lower().encode())
    return found


def event_of(
    kind: str, message_id: str, placements: list[tuple[tuple[str, ...], str, str]]
) -> dict[str, Any]:
    """A valid event of ``kind`` with each ``(location, key, value)`` placed in it."""
    event: dict[str, Any] = {"type": kind, "messageId": message_id, "userId": f"u-{message_id}"}
    event |= {
        "track": {"event": "Signed Up"},
        "page": {"name": "Home"},
        "screen": {"name": "Settings"},
        "group": {"groupId": "g-1"},
        "alias": {"previousId": f"a-{message_id}"},
    }.get(kind, {})
    event["context"] = {"library": {"name": "analytics-python", "version": "2.3.3"}}
    for location, key, value in placements:
        node = event
        for name in location:
            node = node.setdefault(name, {})
        node[key] = value
        node.setdefault("plan", "pro")
    return event


def post(client: httpx.Client, server: ServerProcess, path: str, body: Any) -> httpx.Response:
    return client.post(f"/v1/{path}", json=body, auth=(server.write_key, ""))


def record(
    sent: Sent,
    event: dict[str, Any],
    placements: list[tuple[tuple[str, ...], str, str]],
    *,
    accepted: bool,
) -> None:
    rows = [(event["messageId"], key, value) for _, key, value in placements]
    if accepted:
        sent.accepted.extend(rows)
        sent.accepted_ids.add(event["messageId"])
    else:
        sent.refused.extend(rows)
        sent.refused_ids.add(event["messageId"])


def send_every_spelling(client: httpx.Client, server: ServerProcess, sent: Sent) -> None:
    """Every documented spelling, at every location, for every kind: single events and
    batches in turn (the compiled, wire and dict paths all see them)."""
    for kind, location in itertools.product(KINDS, LOCATIONS):
        batch: list[dict[str, Any]] = []
        for n, key in enumerate(SPELLINGS):
            placements = [(location, key, sent.value(FORMS[n % len(FORMS)]))]
            event = event_of(kind, sent.message_id(), placements)
            record(sent, event, placements, accepted=True)
            if n % 2:
                batch.append(event)
                continue
            response = post(client, server, kind, event)
            assert response.status_code == 200, response.text
        response = post(client, server, "batch", {"batch": batch})
        assert response.json()["accepted"] == len(batch), response.text


placement = st.tuples(
    st.sampled_from(LOCATIONS),
    st.one_of(st.sampled_from(SPELLINGS), st.sampled_from(sorted(PII_KEYS)).flatmap(spelled)),
    st.sampled_from(FORMS),
)
# an event and how it fails: not at all, an e-mail in its timestamp, or no identity
generated_event = st.tuples(
    st.sampled_from(KINDS),
    st.lists(placement, min_size=1, max_size=3),
    st.sampled_from([None, None, None, "timestamp", "identity"]),
)


def build(
    sent: Sent, kind: str, drawn: list[tuple[tuple[str, ...], str, str]], failure: str | None
) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], str, str]]]:
    # one value per key of an object: a later one under the same key would replace it
    unique = {(location, key): form for location, key, form in reversed(drawn)}
    placements = [(location, key, sent.value(form)) for (location, key), form in unique.items()]
    event = event_of(kind, sent.message_id(), placements)
    if failure == "timestamp":
        event["timestamp"] = sent.value("email")  # the case: it was echoed back
    elif failure == "identity":
        del event["userId"]
    return event, placements


def send_generated(client: httpx.Client, server: ServerProcess, sent: Sent, examples: int) -> None:
    """Hypothesis-built requests: single events, batches, batches with a shared context
    carrying traits too, valid and refused events mixed."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(generated_event, min_size=1, max_size=4),
        st.booleans(),
        st.none() | st.lists(placement, min_size=1, max_size=2),
    )
    def send(
        events: list[tuple[str, list[Any], str | None]],
        single: bool,
        shared: list[tuple[tuple[str, ...], str, str]] | None,
    ) -> None:
        first_value = len(sent.raw_values)
        built = [build(sent, kind, drawn, failure) for kind, drawn, failure in events]
        if single:
            (event, placements), (_, _, failure) = built[0], events[0]
            response = post(client, server, event["type"], event)
            assert response.status_code == (200 if failure is None else 400), response.text
            # an answer is stored nowhere, but it must not repeat what was sent either
            for needle in needles(sent.raw_values[first_value:]):
                assert needle not in response.content.lower(), response.text
            record(sent, event, placements, accepted=failure is None)
            return
        body: dict[str, Any] = {"batch": [event for event, _ in built]}
        shared_placements: list[tuple[tuple[str, ...], str, str]] = []
        if shared is not None:
            # batch-level context is merged into each event: its traits are theirs
            # one value per key, the last drawn, as event_of's object keeps it
            last = {(location, key): form for location, key, form in shared}
            shared_placements = [
                (location, key, sent.value(form)) for (location, key), form in last.items()
            ]
            body["context"] = event_of("track", "shared", shared_placements).get("context", {})
        response = post(client, server, "batch", body)
        assert response.status_code == 200, response.text
        # the event's own context.traits, when it has one, replaces the batch's whole
        inherited = [p for p in shared_placements if p[0] == ("context", "traits")]
        for (event, placements), (_, _, failure) in zip(built, events, strict=True):
            if failure is not None:
                # a dead letter keeps the event as it came, without the batch's context
                record(sent, event, placements, accepted=False)
            elif "traits" in event["context"]:
                record(sent, event, placements, accepted=True)
            else:
                record(sent, event, placements + inherited, accepted=True)

    send()


def wait_until_caught_up(client: httpx.Client, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    lags: tuple[int, int] = (-1, -1)
    while time.monotonic() < deadline:
        worker = client.get("/v1/worker/status").json()["lag"]
        lake = client.get("/v1/log", params={"group": LAKE_GROUP}).json()["lag"]
        lags = (worker, lake)
        if lags == (0, 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"the worker and the lake writer never caught up: lags {lags}")


# -- reading everything the server stored ----------------------------------------------------


def sqlite_texts(path: Path) -> Iterator[tuple[str, bytes]]:
    """Every value of every table of a SQLite file, as bytes (``where``, ``data``)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        yield f"{path.name}:{table}", value
                    elif value is not None:
                        yield f"{path.name}:{table}", str(value).encode()


def parquet_texts(path: Path) -> Iterator[tuple[str, bytes]]:
    """A parquet file's values (decompressed) and its column statistics."""
    parquet = pq.ParquetFile(path)
    for row in parquet.read().to_pylist():
        yield f"{path.name}:values", repr(row).encode()
    metadata = parquet.metadata
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            stats = metadata.row_group(group).column(column).statistics
            if stats is not None and stats.has_min_max:
                yield f"{path.name}:statistics", repr((stats.min, stats.max)).encode()


def stored_texts(data_dir: Path) -> Iterator[tuple[str, bytes]]:
    """Everything under ``data_dir``: every file's raw bytes (the server's log among them),
    and, decoded, every SQLite table, the event log's records and every parquet file."""
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield str(path.relative_to(data_dir)), data
        if data.startswith(b"SQLite format 3\x00"):
            yield from sqlite_texts(path)
        if path.suffix == ".parquet":
            yield from parquet_texts(path)
    for _, _, payload in iter_records(data_dir / "events.db"):
        yield "events.db:records", payload


def test_no_raw_pii_reaches_any_storage(tmp_path: Path) -> None:
    server = make_server(
        tmp_path / "data",
        "--log-level",
        "debug",  # its most verbose: the server's output goes to a file in data_dir, scanned too
        PERSONIFY_EVENTLOG_DURABILITY="normal",
        PERSONIFY_LAKE_LINGER_MS="100",
    )
    sent = Sent()
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            send_every_spelling(client, server, sent)
            send_generated(client, server, sent, examples=150)
            client.headers["Authorization"] = f"Bearer {server.admin_key}"
            wait_until_caught_up(client)
    finally:
        server.stop()
    assert sent.accepted and sent.refused

    # nothing raw, anywhere
    searched = needles(sent.raw_values)
    texts = list(stored_texts(server.data_dir))
    places = {where.split(":")[0] for where, _ in texts}
    assert {"personify.db", "events.db", f"server-{server.port}.log"} <= places, places
    assert any(where.endswith(".parquet") for where in places), places
    assert any("_delta_log" in where for where in places), places
    found: list[tuple[bytes, str]] = []
    for where, data in texts:
        lowered = data.lower()
        found.extend((needle, where) for needle in searched if needle in lowered)
    assert not found, f"raw PII found: {found[:10]}"

    # and every accepted value is there, hashed, where it should be
    hasher = PiiHasher(PII_KEY, ["traits.*", "context.traits.*"])
    log_text = b"\n".join(payload for _, _, payload in iter_records(server.data_dir / "events.db"))
    logged_ids = {msgspec.json.decode(p)["messageId"] for p in log_text.split(b"\n")}
    assert logged_ids == sent.accepted_ids
    lake = DeltaTable(str(server.data_dir / "lake")).to_pyarrow_table()
    assert set(lake.column("message_id").to_pylist()) == sent.accepted_ids
    lake_text = repr(lake.to_pylist()).encode()
    for message_id, key, value in sent.accepted:
        digest = hasher.hash_value(key, value).encode()
        assert digest in log_text, (message_id, key)
        assert digest in lake_text, (message_id, key)

    # refused events are dead letters, their PII hashed, the value that failed not kept
    with contextlib.closing(sqlite3.connect(server.data_dir / "personify.db")) as conn:
        dead = dict(conn.execute("SELECT message_id, payload FROM failed_events").fetchall())
    assert set(dead) == sent.refused_ids
    dead_text = "\n".join(dead.values()).encode()
    for message_id, key, value in sent.refused:
        assert hasher.hash_value(key, value).encode() in dead_text, (message_id, key)
