"""``personify.Client`` against a real ``personify serve`` (through a recording proxy where
requests are counted or failed), and against small scripted HTTP servers for the answers a
healthy server never gives (a Retry-After, a 400, a hang).

The client's sender is a thread with its own connections, so the ASGI app cannot be called
in-process: every test here talks HTTP over a socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import personify
from personify import Client, ConfigurationError, PayloadTooLarge, PersonifyError, ValidationError
from personify.eventlog.sqlite import SQLiteEventLog
from tests.e2e.conftest import ServerProcess, free_port, make_server
from tests.e2e.proxy import RecordingProxy

pytestmark = pytest.mark.e2e

Errors = list[tuple[PersonifyError, list[dict[str, Any]]]]


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module (starting one is most of its time): each test tags its users
    and events with its own ids."""
    proc = make_server(tmp_path_factory.mktemp("client") / "data")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def server(module_server: ServerProcess) -> ServerProcess:
    """The module's server, running: started again if a test stopped it (the last test of
    the module does, so this costs nothing in file order)."""
    if module_server.process is None or module_server.process.poll() is not None:
        module_server.start()
    return module_server


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[RecordingProxy]:
    """A recording proxy in front of the module's server."""
    recorder = RecordingProxy(server.base_url, free_port())
    recorder.start()
    yield recorder
    recorder.stop()


@pytest.fixture
def errors() -> Errors:
    """What ``on_error`` was called with."""
    return []


def client_for(host: str, write_key: str, errors: Errors, **options: Any) -> Client:
    """A client that records its errors in ``errors``."""
    return Client(
        write_key,
        host=host,
        on_error=lambda error, events: errors.append((error, events)),
        **options,
    )


def read_log(data_dir: Path) -> list[dict[str, Any]]:
    """Every event in the server's log, decoded, oldest first."""

    async def read() -> list[dict[str, Any]]:
        log = SQLiteEventLog(data_dir / "events.db")
        await log.start()
        try:
            return [json.loads(entry.payload) for entry in await log.tail(100_000)]
        finally:
            await log.close()

    return asyncio.run(read())


def by_message_id(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        found.setdefault(event["messageId"], []).append(event)
    return found


def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """The first truthy result of ``check``, polled until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def admin(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key}"}


# --- events ---------------------------------------------------------------------------------


def test_events_land_in_the_log_and_in_the_profile(server: ServerProcess, errors: Errors) -> None:
    """track, identify and page arrive once each, fields intact, and build the profile."""
    tag = uuid.uuid4().hex[:10]
    user = f"user-{tag}"
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with client_for(server.base_url, server.write_key, errors) as client:
        ids = {
            "identify": client.identify(
                user, {"plan": "pro", "name": "Ann"}, anonymous_id=f"anon-{tag}"
            ),
            "track": client.track(
                user,
                "Product Viewed",
                {"product_id": "p-1", "price": 12.5},
                context={"locale": "fr-FR"},
                timestamp=an_hour_ago,
            ),
            "page": client.page(
                user, "Pricing", {"path": "/pricing"}, category="Docs", message_id=f"page-{tag}"
            ),
        }
        assert client.flush(timeout_s=10)
    assert errors == []
    assert ids["page"] == f"page-{tag}"
    assert uuid.UUID(ids["track"]).version == 4

    stored = by_message_id(read_log(server.data_dir))
    for kind, message_id in ids.items():
        assert len(stored.get(message_id, [])) == 1, f"{kind} is not in the log exactly once"
    track = stored[ids["track"]][0]
    assert track["type"] == "track" and track["event"] == "Product Viewed"
    assert track["userId"] == user
    assert track["properties"] == {"product_id": "p-1", "price": 12.5}
    assert track["context"]["locale"] == "fr-FR"
    assert track["context"]["library"] == {
        "name": "personify-python",
        "version": personify.__version__,
    }
    # the time given at call time, corrected by the batch's sentAt: still an hour ago
    assert track["originalTimestamp"] == an_hour_ago.strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{an_hour_ago.microsecond // 1000:03d}Z"
    )
    page = stored[ids["page"]][0]
    assert (page["name"], page["category"], page["properties"]) == (
        "Pricing",
        "Docs",
        {"path": "/pricing"},
    )

    def profile() -> dict[str, Any] | None:
        answer = httpx.get(f"{server.base_url}/v1/profiles/{user}", headers=admin(server))
        document: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
        done = document.get("features", {}).get("events_total") == 3
        return document if done else None

    document = eventually(profile)
    assert document, "the worker did not apply the three events"
    assert document["traits"]["plan"] == "pro"
    assert f"anon-{tag}" in document["ids"]["anonymousIds"]


def test_events_are_sent_in_batches_by_count(
    server: ServerProcess, proxy: RecordingProxy, errors: Errors
) -> None:
    """120 events with flush_at=50 go in three requests (50, 50, 20)."""
    tag = uuid.uuid4().hex[:10]
    proxy.arm()
    with client_for(proxy.base_url, server.write_key, errors, flush_at=50, flush_interval_s=5) as c:
        ids = [c.track(f"u-{tag}", "Clicked", {"n": n}) for n in range(120)]
        assert c.flush(timeout_s=10)
    assert errors == []
    requests = proxy.requests("POST", "/v1/batch")
    assert [r.status for r in requests] == [200, 200, 200]
    stored = by_message_id(read_log(server.data_dir))
    assert all(len(stored.get(message_id, [])) == 1 for message_id in ids)
    # order within one user is kept
    numbers = [
        event["properties"]["n"]
        for event in read_log(server.data_dir)
        if event.get("userId") == f"u-{tag}"
    ]
    assert numbers == list(range(120))


def test_events_are_sent_in_batches_under_the_size_limit(
    server: ServerProcess, proxy: RecordingProxy, errors: Errors
) -> None:
    """20 events of 30 KB (600 KB) do not fit one 500 KB batch: two requests, none refused."""
    tag = uuid.uuid4().hex[:10]
    proxy.arm()
    with client_for(proxy.base_url, server.write_key, errors, flush_interval_s=5) as client:
        ids = [client.track(f"u-{tag}", "Big", {"blob": "x" * 30_000, "n": n}) for n in range(20)]
    assert errors == []
    assert [r.status for r in proxy.requests("POST", "/v1/batch")] == [200, 200]
    stored = by_message_id(read_log(server.data_dir))
    assert all(len(stored.get(message_id, [])) == 1 for message_id in ids)


def test_a_batch_goes_after_the_interval_without_a_flush(
    server: ServerProcess, proxy: RecordingProxy, errors: Errors
) -> None:
    """Three events and no flush: sent together once flush_interval_s has passed."""
    tag = uuid.uuid4().hex[:10]
    proxy.arm()
    client = client_for(proxy.base_url, server.write_key, errors, flush_interval_s=0.3)
    try:
        started = time.monotonic()
        ids = [client.track(f"u-{tag}", "Clicked") for _ in range(3)]
        assert eventually(lambda: proxy.requests("POST", "/v1/batch"), timeout_s=5)
        waited = time.monotonic() - started
        assert 0.25 <= waited < 3
        stored = eventually(
            lambda: all(m in by_message_id(read_log(server.data_dir)) for m in ids), timeout_s=5
        )
        assert stored
        assert len(proxy.requests("POST", "/v1/batch")) == 1
    finally:
        client.close()
    assert errors == []


def test_retries_after_503_keep_the_message_id(
    server: ServerProcess, proxy: RecordingProxy, errors: Errors
) -> None:
    """The first two deliveries get a 503; the third lands, with the id given at call time."""
    tag = uuid.uuid4().hex[:10]
    proxy.arm(fail_paths=["/v1/batch"], fail_first=2)
    with client_for(proxy.base_url, server.write_key, errors, flush_interval_s=0.05) as client:
        message_id = client.track(f"u-{tag}", "Retried")
        # the same messageId sent again (as a retry after a lost answer would) is kept once
        client.track(f"u-{tag}", "Retried", message_id=message_id)
        assert client.flush(timeout_s=20)
    assert errors == []
    exchanges = proxy.requests("POST", "/v1/batch")
    assert [(e.status, e.failed_on_purpose) for e in exchanges] == [
        (503, True),
        (503, True),
        (200, False),
    ]
    assert len(by_message_id(read_log(server.data_dir)).get(message_id, [])) == 1


def test_events_queued_when_the_process_ends_are_sent(server: ServerProcess) -> None:
    """A script that tracks and exits without close(): the atexit hook delivers the event."""
    script = (
        "import sys\n"
        "from personify import Client\n"
        "client = Client(sys.argv[1], host=sys.argv[2], flush_interval_s=60)\n"
        "print(client.track('u-exit', 'Left'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, server.write_key, server.base_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    message_id = done.stdout.strip()
    assert len(by_message_id(read_log(server.data_dir)).get(message_id, [])) == 1


# --- scripted answers -----------------------------------------------------------------------


class Scripted:
    """A local HTTP server answering POSTs with a script of (status, headers), then 200s;
    it keeps every body it got."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                scripted.bodies.append(json.loads(body))
                scripted.times.append(time.monotonic())
                status, headers = scripted.script.pop(0) if scripted.script else (200, {})
                answer = json.dumps(
                    {"success": True, "accepted": 1, "duplicates": 0, "rejected": 0}
                    if status == 200
                    else {"error": {"code": f"scripted_{status}", "message": "no", "details": None}}
                ).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[tuple[int, dict[str, str]]]], Scripted]]:
    started: list[Scripted] = []

    def start(script: list[tuple[int, dict[str, str]]]) -> Scripted:
        started.append(Scripted(script))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def test_retry_after_is_honoured_and_the_batch_is_the_same(
    scripted: Callable[[list[tuple[int, dict[str, str]]]], Scripted], errors: Errors
) -> None:
    """A 503 with Retry-After: 1 and a 429: the retries wait, and resend the same events."""
    fake = scripted([(503, {"retry-after": "1"}), (429, {})])
    with client_for(fake.url, "wk", errors, flush_interval_s=0.05) as client:
        ids = [client.track("u", "E", {"n": n}) for n in range(3)]
        assert client.flush(timeout_s=10)
    assert errors == []
    assert len(fake.bodies) == 3
    batches = [body["batch"] for body in fake.bodies]
    assert batches[0] == batches[1] == batches[2]
    assert [event["messageId"] for event in batches[0]] == ids
    assert fake.times[1] - fake.times[0] >= 1.0


def test_a_refused_batch_is_dropped_and_reported(
    scripted: Callable[[list[tuple[int, dict[str, str]]]], Scripted], errors: Errors
) -> None:
    """A 400 is not retried: one request, and on_error gets the error and the events."""
    fake = scripted([(400, {})])
    with client_for(fake.url, "wk", errors, flush_interval_s=0.05) as client:
        message_id = client.track("u", "E")
        assert client.flush(timeout_s=10)
        client.track("u", "After")  # the sender goes on with the next batch
    assert len(fake.bodies) == 2
    assert len(errors) == 1
    error, events = errors[0]
    assert isinstance(error, ValidationError) and error.code == "scripted_400"
    assert [event["messageId"] for event in events] == [message_id]


def test_retries_give_up_after_max_retries(errors: Errors) -> None:
    """Nobody listening: 1 + max_retries attempts, then on_error with the batch."""
    client = client_for(f"http://127.0.0.1:{free_port()}", "wk", errors, max_retries=2)
    message_id = client.track("u", "E")
    assert client.flush(timeout_s=10)
    client.close()
    assert len(errors) == 1
    error, events = errors[0]
    assert error.code == "unreachable" and "3 attempts" in error.message
    assert events[0]["messageId"] == message_id


def test_a_full_queue_drops_the_newest_without_blocking(errors: Errors) -> None:
    """max_queue=3: the fourth and fifth events are dropped and reported at once."""
    client = client_for(
        f"http://127.0.0.1:{free_port()}",
        "wk",
        errors,
        max_queue=3,
        flush_interval_s=30,
        max_retries=0,
    )
    try:
        started = time.monotonic()
        ids = [client.track("u", "E", {"n": n}) for n in range(5)]
        assert time.monotonic() - started < 0.5
        assert [(e.code, [m["messageId"] for m in events]) for e, events in errors] == [
            ("queue_full", [ids[3]]),
            ("queue_full", [ids[4]]),
        ]
    finally:
        client.close(timeout_s=10)
    client.track("u", "Late")
    assert errors[-1][0].code == "client_closed"
    assert client.decide(["hero"], user_id="u", fallback=FALLBACK) == FALLBACK
    assert errors[-1][0].code == "client_closed"


def test_calls_are_checked_before_anything_is_queued(errors: Errors) -> None:
    """No id, no name, an oversized event or a value JSON cannot hold: raised at the call."""
    with client_for(f"http://127.0.0.1:{free_port()}", "wk", errors) as client:
        with pytest.raises(ValidationError, match="user_id or an anonymous_id"):
            client.track(event="E")
        with pytest.raises(ValidationError, match="name"):
            client.track("u")
        with pytest.raises(PayloadTooLarge):
            client.track("u", "E", {"blob": "x" * 40_000})
        with pytest.raises(ValidationError, match="JSON"):
            client.identify("u", {"bad": object()})
        with pytest.raises(ValidationError):
            client.decide(["hero"])
        with pytest.raises(ConfigurationError):
            client.recommend("u")
        assert client.flush(timeout_s=1)
    with pytest.raises(ConfigurationError):
        Client("")
    assert errors == []


# --- decide and recommend -------------------------------------------------------------------

FALLBACK = {"hero": {"title": "Welcome"}}


def test_decide_returns_the_placements_items(server: ServerProcess, errors: Errors) -> None:
    """A published banner for the "hero" placement, and a known user: the banner comes back
    (the public shape with the write key, the trace with an API key); an unknown placement
    or a refused key gives the fallback."""
    tag = uuid.uuid4().hex[:10]
    placement, item = f"hero-{tag}", f"banner-{tag}"
    with httpx.Client(base_url=server.base_url, headers=admin(server), timeout=10) as api:
        # the placement first: an item names placements that exist
        made = api.post("/v1/placements", json={"id": placement})
        assert made.status_code in (200, 201), made.text
        created = api.post(
            "/v1/content",
            params={"publish": "true"},
            json={
                "id": item,
                "type": "banner",
                "fields": {"title": "Spring sale"},
                "placements": [placement],
            },
        )
        assert created.status_code in (200, 201), created.text
    user = f"user-{tag}"
    with client_for(server.base_url, server.write_key, errors) as client:
        client.identify(user, {"plan": "pro"})
        assert client.flush(timeout_s=10)

        def decided() -> dict[str, Any] | None:
            answer = client.decide([placement], user_id=user, timeout_s=2)
            chosen = answer["placements"][placement] if answer else None
            return answer if chosen and not chosen["fallback"] else None

        decision = eventually(decided)
        assert decision, f"no personalised decision: {client.decide([placement], user_id=user)}"
        chosen = decision["placements"][placement]
        assert [i["id"] for i in chosen["items"]] == [item]
        assert chosen["items"][0]["content"]["title"] == "Spring sale"
        assert "trace" not in chosen

        # a decision the server refuses (too many placements) is the fallback, reported
        many = [f"p{n}" for n in range(30)]
        assert client.decide(many, user_id=user, fallback=FALLBACK) == FALLBACK
        assert errors[-1][0].code == "invalid_parameter"
        errors.clear()
    with client_for(server.base_url, server.write_key, errors, api_key=server.admin_key) as traced:
        decision = traced.decide([{"id": placement, "limit": 1}], user_id=user, timeout_s=2)
        assert decision is not None and "trace" in decision["placements"][placement]
    with client_for(server.base_url, "not-a-key", errors) as wrong:
        assert wrong.decide([placement], user_id=user, fallback=FALLBACK, timeout_s=2) == FALLBACK
    assert [error.code for error, _ in errors] == ["invalid_write_key"]


def test_recommend_returns_items_viewed_together(server: ServerProcess, errors: Errors) -> None:
    """One user views X then Y, another views X: the second is recommended Y "because you
    viewed X", without X itself (exclude_seen); no API key is a ConfigurationError."""
    tag = uuid.uuid4().hex[:10]
    x, y = f"x-{tag}", f"y-{tag}"
    first, second = f"first-{tag}", f"second-{tag}"
    with client_for(server.base_url, server.write_key, errors, api_key=server.admin_key) as c:
        c.track(first, "Product Viewed", {"product_id": x})
        c.track(first, "Product Viewed", {"product_id": y})
        c.track(second, "Product Viewed", {"product_id": x})
        assert c.flush(timeout_s=10)

        def recommended() -> list[dict[str, Any]] | None:
            items = c.recommend(second, limit=10, timeout_s=5)
            return items if items and any(item["id"] == y for item in items) else None

        items = eventually(recommended, timeout_s=15)
        assert items, f"{y} never recommended: {c.recommend(second, timeout_s=5)}"
        pick = next(item for item in items if item["id"] == y)
        assert (pick["source"], pick["anchor"]) == ("covisitation", x)
        assert x not in [item["id"] for item in items]
        assert x in [item["id"] for item in c.recommend(second, exclude_seen=False) or []]
    assert errors == []
    with (
        client_for(server.base_url, server.write_key, errors) as no_key,
        pytest.raises(ConfigurationError),
    ):
        no_key.recommend(second)


def test_assign_matches_the_servers_decisions_and_tracks_the_exposure(
    server: ServerProcess, errors: Errors
) -> None:
    """A running experiment: the client assigns in-process exactly as /v1/decide does, keeps
    a sticky variant after the weights change in a new phase, and its first assignment of a
    user becomes an Experiment Viewed event the server keeps sticky."""
    tag = uuid.uuid4().hex[:10]
    placement, key = f"page-{tag}", f"exp-{tag}"
    variants = [{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}]
    with httpx.Client(base_url=server.base_url, headers=admin(server), timeout=10) as api:
        assert api.post("/v1/placements", json={"id": placement}).status_code in (200, 201)
        made = api.post(
            "/v1/experiments", json={"key": key, "placements": [placement], "variants": variants}
        )
        assert made.status_code in (200, 201), made.text
        assert api.post(f"/v1/experiments/{key}/start").status_code == 200
    session: dict[str, str] = {}
    with client_for(server.base_url, server.write_key, errors, api_key=server.admin_key) as c:
        chosen = {}
        for number in range(30):
            user = f"u{number}-{tag}"
            assignment = c.assign(key, user_id=user, sticky=session)
            assert assignment is not None and assignment.probability == 0.5
            decision = c.decide([placement], user_id=user, timeout_s=5)
            assert decision is not None
            assert decision["placements"][placement]["experiment"]["variant"] == assignment.variant
            chosen[user] = assignment.variant
        assert set(chosen.values()) == {"control", "treatment"}
        assert c.assign(f"unknown-{tag}", user_id="u0") is None
        assert c.flush(timeout_s=10)
    # the tracked exposures reached the lake's input: one Experiment Viewed per user
    with httpx.Client(base_url=server.base_url, headers=admin(server), timeout=10) as api:
        moved = api.patch(
            f"/v1/experiments/{key}",
            params={"newPhase": "true"},
            json={"variants": [{"key": "control", "weight": 0}, {"key": "treatment", "weight": 1}]},
        )
        assert moved.status_code == 200, moved.text
    with client_for(server.base_url, server.write_key, errors, api_key=server.admin_key) as fresh:
        for user, variant in chosen.items():
            # the caller's sticky store keeps what each user saw
            kept = fresh.assign(key, user_id=user, sticky=session, track=False)
            assert kept is not None and kept.variant == variant
        newcomer = fresh.assign(key, user_id=f"new-{tag}", track=False)
        assert newcomer is not None and newcomer.variant == "treatment"
        # the server kept the tracked exposures sticky too: decisions still agree
        control_user = next(u for u, v in chosen.items() if v == "control")

        def kept_by_server() -> bool:
            answer = fresh.decide([placement], user_id=control_user, timeout_s=5)
            return (
                bool(answer)
                and answer["placements"][placement]["experiment"]["variant"] == "control"
            )

        assert eventually(kept_by_server, timeout_s=15)
    assert errors == []


def test_recommend_gives_the_fallback_when_the_server_cannot_answer(errors: Errors) -> None:
    """Nobody listening: the fallback comes back, and the failure is reported."""
    with client_for(f"http://127.0.0.1:{free_port()}", "wk", errors, api_key="k") as client:
        assert client.recommend("u-1", fallback=[{"id": "best-seller"}]) == [{"id": "best-seller"}]
    assert errors[0][0].code == "unreachable"


def test_decide_returns_the_fallback_within_the_timeout_when_the_server_is_stopped(
    server: ServerProcess, errors: Errors
) -> None:
    """The module's server stopped (this test is last so that no other waits for a restart),
    and a server that accepts connections but never answers: the fallback, in time."""
    client = client_for(server.base_url, server.write_key, errors, decide_timeout_s=0.3)
    try:
        assert client.decide(["hero"], anonymous_id="a-1", fallback=FALLBACK, timeout_s=5) not in (
            FALLBACK,
            None,
        )
        assert errors == []
        server.stop()
        started = time.monotonic()
        assert client.decide(["hero"], anonymous_id="a-1", fallback=FALLBACK) == FALLBACK
        assert time.monotonic() - started < 0.3
        assert errors[-1][0].code == "unreachable"
    finally:
        client.close(timeout_s=5)

    # a listening socket nobody accepts on: the connection opens, no answer ever comes
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        with client_for(f"http://127.0.0.1:{hung.getsockname()[1]}", "wk", errors) as slow:
            started = time.monotonic()
            answer = slow.decide(["hero"], user_id="u", fallback=FALLBACK, timeout_s=0.2)
            waited = time.monotonic() - started
    assert answer == FALLBACK
    assert 0.2 <= waited < 0.7
    assert errors[-1][0].code == "unreachable"
