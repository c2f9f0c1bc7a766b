"""Decision API benchmark: ``POST /v1/decide`` over a realistic catalog, against a bare-ASGI
baseline.

Run it with ``make bench`` or ``.venv/bin/python bench/decide.py [--quick] [--users N]
[--duration S] [--rounds R] [--rate R] [--profile N] [--no-worker] [--workers N]
[--durability D]``. It prints ONE JSON
object on stdout (progress goes to stderr) with, all measured on this machine in this run:

* ``setup`` of one data folder, as a deployment would: 100 rule segments on traits and a
  SQLite state database (the Python API on the folder before the server starts), 500 items
  published in 3 placements (``hero``, ``sidebar``, ``feed``) with a mix of targeting
  (segments, conditions on traits and features, segment references), schedules (running,
  ended, not yet started, with time zones), locales, variants and a few frequency caps;
  then ``personify serve`` (API and stream worker in one process) takes 10,000 identify
  events through ``POST /v1/batch`` and the bench waits until the worker's lag
  (``GET /v1/log``) is 0, so every user has a profile and their segments;
* ``warmup`` — one decision per user (so the profile cache and the catalog snapshot are
  warm), whose answers are checked: every one a 200, the segments per user, the items
  served and the placements that fell back;
* ``saturation`` — ``wrk`` (closed loop, ``bench/wrk/decide.lua``) replaying the same
  decision requests (3 placements each, an API key: the full answer with its trace) against
  the server and against ``bench/bare_app.py`` under the same uvicorn options, and with a
  write key (``decide_public``: the public shape, no trace), interleaved round by round:
  decisions per second, p50/p99, CPU per decision, and the ratio of the decision rate to
  the bare app's request rate (target >= 0.3);
* ``open_loop`` — the same requests sent at a fixed rate (1,000/s by default) by the bench's
  own open-loop generator (``OpenLoop``: requests are scheduled at fixed intervals over a
  pool of keep-alive connections and each latency runs from the *scheduled* send time, so a
  slow answer delays nothing it should not and is not hidden: no coordinated omission),
  against the bare app, the server at half its saturated rate, and the server:
  p50/p99/p99.9 (target p99 <= 5 ms at 1,000/s);
* ``recommendations`` — ``GET /v1/recommendations/{userId}?limit=10``: one wrk round, and
  the open loop at the same fixed rate and at half the saturated rate, when the route is in
  the server's ``/openapi.json``; else ``null`` and the reason;
* ``profile`` — where the time of one decision goes: ``DecisionEngine.decide`` called N
  times in this process against the same data folder (after the server stopped), timed
  without and then with cProfile; the top functions by own time and by cumulative time.

``wrk`` must be installed (``apt-get install wrk``; ``make bench`` does it). Debian has no
``wrk2``, hence the generator of our own for the open loop.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import cProfile
import io
import json
import math
import os
import pstats
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from ingest import (  # noqa: E402  (bench/ingest.py, the shared server and wrk drivers)
    RESULT_MARKER,
    Server,
    cpu_model,
    log,
    spread_pct,
    to_json,
    versions,
)

WRK_SCRIPT = BENCH_DIR / "wrk" / "decide.lua"
WRK_TIMEOUT_S = 10
P99_TARGET_MS = 5.0
RATIO_TARGET = 0.3
PLACEMENTS = ("hero", "sidebar", "feed")
RECOMMENDATIONS_PATH = "/v1/recommendations/{userId}"
ADMIN_KEY = "pk_bench_decide_admin_0123456789abcdef"
WRITE_KEY = "bench-decide-write-key-0123456789"
SEED = 16

# -- the users' traits, and the 100 segments over them ---------------------------------------

PLANS = ("free", "starter", "pro", "enterprise")
PLAN_WEIGHTS = (0.5, 0.25, 0.18, 0.07)
COUNTRIES = ("DE", "FR", "GB", "US", "ES", "IT", "NL", "SE", "PL", "CA")
LANGUAGES = ("en", "de", "fr", "es")
LOCALES = ("en", "en-GB", "en-US", "de", "de-DE", "fr", "es")
COHORTS = 20
AGE_BANDS = ((18, 24), (25, 34), (35, 44), (45, 54), (55, 64), (65, 90))
SCORE_THRESHOLDS = (10, 20, 30, 40, 50, 60, 70, 80, 90)
LTV_THRESHOLDS = (25, 50, 100, 200, 400, 800, 1600, 3200)
VISIT_THRESHOLDS = (1, 2, 5, 10, 20, 40)
CATEGORIES = ("shoes", "hats", "books", "garden", "kitchen", "toys", "sports", "beauty")


def user_id(number: int) -> str:
    """The userId of user ``number``."""
    return f"bench-user-{number:05d}"


def user_traits(number: int) -> dict[str, Any]:
    """User ``number``'s traits: the same on every run (seeded by the number)."""
    rng = random.Random(SEED * 1_000_003 + number)
    return {
        "plan": rng.choices(PLANS, PLAN_WEIGHTS)[0],
        "country": rng.choice(COUNTRIES),
        "language": rng.choice(LANGUAGES),
        "cohort": rng.randrange(COHORTS),
        "age": rng.randint(18, 80),
        "score": round(100 * rng.betavariate(2, 3)),
        "ltv": round(rng.expovariate(1 / 300), 2),
        "visits": int(rng.expovariate(1 / 8)),
        "newsletter": rng.random() < 0.4,
        "favourite_category": rng.choice(CATEGORIES),
        "email": f"user{number}@example.com",
    }


def _trait(path: str, op: str, value: Any = None) -> dict[str, Any]:
    leaf: dict[str, Any] = {"trait": path, "op": op}
    if value is not None:
        leaf["value"] = value
    return leaf


def segment_rules() -> list[tuple[str, dict[str, Any]]]:
    """100 rule segments on traits, each saved after the segments it refers to; a user is in
    about 10-20 of them (every one in exactly one plan, country, language, cohort, age band
    and plan-language pair; more by thresholds on score, lifetime value and visits)."""
    rules: list[tuple[str, dict[str, Any]]] = []
    rules += [(f"plan-{p}", _trait("plan", "eq", p)) for p in PLANS]
    rules += [(f"country-{c.lower()}", _trait("country", "eq", c)) for c in COUNTRIES]
    rules += [(f"lang-{lang}", _trait("language", "eq", lang)) for lang in LANGUAGES]
    rules += [(f"cohort-{k:02d}", _trait("cohort", "eq", k)) for k in range(COHORTS)]
    rules += [(f"age-{lo}-{hi}", _trait("age", "between", [lo, hi])) for lo, hi in AGE_BANDS]
    rules += [(f"score-{t}", _trait("score", "gte", t)) for t in SCORE_THRESHOLDS]
    rules += [(f"ltv-{t}", _trait("ltv", "gte", t)) for t in LTV_THRESHOLDS]
    rules += [(f"visits-{t}", _trait("visits", "gte", t)) for t in VISIT_THRESHOLDS]
    rules.append(("newsletter", _trait("newsletter", "eq", True)))
    rules += [
        (
            f"{p}-{lang}",
            {"all": [{"segment": f"plan-{p}"}, {"segment": f"lang-{lang}"}]},
        )
        for p in PLANS
        for lang in LANGUAGES
    ]
    rules += [
        (
            f"engaged-{c.lower()}",
            {"all": [_trait("country", "eq", c), _trait("score", "gte", 50)]},
        )
        for c in COUNTRIES
    ]
    rules += [
        ("paying", {"not": {"segment": "plan-free"}}),
        ("vip", {"all": [{"segment": "paying"}, _trait("ltv", "gte", 800)]}),
        ("at-risk", {"all": [{"segment": "paying"}, _trait("visits", "lt", 2)]}),
        ("fans", {"any": [_trait("visits", "gte", 30), _trait("score", "gte", 85)]}),
        ("young-pro", {"all": [{"segment": "plan-pro"}, _trait("age", "lt", 30)]}),
        ("example-mail", _trait("email", "contains", "@example.com")),
    ]
    assert len(rules) == 100, len(rules)
    return rules


# -- the catalog ------------------------------------------------------------------------------


def catalog(items: int, now: datetime, keys: Sequence[str]) -> dict[str, Any]:
    """``items`` items over the three placements, and the placements with their defaults.

    The mix (seeded): 30 % untargeted, 35 % targeted at 1-3 segments, 20 % at a condition on
    traits or features, 10 % both, 5 % a condition referring to segments; 15 % scheduled
    (mostly running now, some ended, some not started, in several time zones); 20 % in one
    locale; 15 % with two or three variants; ten with a frequency cap.
    """
    rng = random.Random(SEED)
    types = {"hero": "banner", "sidebar": "offer", "feed": "article"}
    documents: list[dict[str, Any]] = []
    for placement, kind in types.items():
        documents.append(
            {
                "id": f"default-{placement}",
                "type": kind,
                "fields": {"title": f"Welcome ({placement})", "url": "/"},
                "placements": [placement],
                "priority": -100,
            }
        )
    conditions = [
        _trait("plan", "in", ["pro", "enterprise"]),
        _trait("age", "between", [25, 44]),
        {"all": [_trait("score", "gte", 40), _trait("newsletter", "eq", True)]},
        _trait("ltv", "gte", 100),
        {"any": [_trait("country", "in", ["DE", "FR"]), _trait("visits", "gte", 10)]},
        {"feature": "events_total", "op": "gte", "value": 1},
        {"feature": "recency_days", "op": "lt", "value": 30},
        {"not": _trait("plan", "eq", "free")},
    ]
    for number in range(items - len(documents)):
        placement = PLACEMENTS[number % 3]
        category = rng.choice(CATEGORIES)
        item: dict[str, Any] = {
            "id": f"item-{number:04d}",
            "type": types[placement],
            "fields": {
                "title": f"{category.title()} {types[placement]} {number}",
                "category": category,
                "url": f"/{category}/{number}",
                "image_url": f"https://cdn.example.com/{number}.jpg",
                "body": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 2,
            },
            "tags": [f"category:{category}", rng.choice(["new", "sale", "classic"])],
            # a few items fill a second placement
            "placements": [placement]
            + ([PLACEMENTS[(number + 1) % 3]] if rng.random() < 0.1 else []),
            "priority": rng.randint(0, 100),
        }
        draw = rng.random()
        if draw < 0.30:
            pass
        elif draw < 0.65:
            item["targeting"] = {"segments": rng.sample(keys, rng.randint(1, 3))}
        elif draw < 0.85:
            item["targeting"] = {"condition": rng.choice(conditions)}
        elif draw < 0.95:
            item["targeting"] = {
                "segments": rng.sample(keys, rng.randint(1, 2)),
                "condition": rng.choice(conditions),
            }
        else:
            item["targeting"] = {
                "condition": {
                    "all": [{"segment": rng.choice(keys)}, {"not": {"segment": rng.choice(keys)}}]
                }
            }
        draw = rng.random()
        zone = rng.choice(["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"])
        local = now.replace(tzinfo=None)
        if draw < 0.10:
            item["schedule"] = {
                "start": (local - timedelta(days=rng.randint(1, 30))).isoformat(timespec="minutes"),
                "end": (local + timedelta(days=rng.randint(2, 60))).isoformat(timespec="minutes"),
                "timezone": zone,
            }
        elif draw < 0.13:
            item["schedule"] = {
                "start": (local - timedelta(days=60)).isoformat(timespec="minutes"),
                "end": (local - timedelta(days=rng.randint(2, 20))).isoformat(timespec="minutes"),
                "timezone": zone,
            }
        elif draw < 0.15:
            item["schedule"] = {
                "start": (local + timedelta(days=rng.randint(2, 20))).isoformat(timespec="minutes"),
                "end": None,
                "timezone": zone,
            }
        if rng.random() < 0.20:
            item["locale"] = rng.choice(LOCALES)
        if rng.random() < 0.15:
            count = rng.choice([2, 3])
            item["variants"] = [
                {
                    "key": f"v{k}",
                    "fields": {"title": f"{item['fields']['title']} (variant {k})"},
                    "weight": rng.choice([1.0, 2.0]),
                }
                for k in range(count)
            ]
        if number % 49 == 7:
            item["frequencyCap"] = {"max": 3, "window": "1d"}
        documents.append(item)
    placements = [
        {
            "id": "hero",
            "description": "the home page's hero banner",
            "defaultItem": "default-hero",
            "strategy": {"name": "priority", "params": {}},
            "limit": 1,
        },
        {
            "id": "sidebar",
            "description": "offers beside the content, with a 5 % control group",
            "defaultItem": "default-sidebar",
            "strategy": {"name": "random", "params": {"controlPercent": 5}},
            "limit": 2,
        },
        {
            "id": "feed",
            "description": "articles by the reader's category affinities",
            "defaultItem": "default-feed",
            "strategy": {"name": "affinity", "params": {"dimension": "product_category"}},
            "limit": 5,
        },
    ]
    return {"items": documents, "placements": placements}


# -- the data folder --------------------------------------------------------------------------


def personify_env(data_dir: Path, durability: str) -> dict[str, str]:
    """A Personify server's environment: its own data folder and the event log's durability,
    settings otherwise the defaults (in-process cache), nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")}
    env.update(
        {
            "PERSONIFY_DATA_DIR": str(data_dir),
            "PERSONIFY_ENVIRONMENT": "test",
            "PERSONIFY_PII_HASH_KEY": "bench",
            "PERSONIFY_EVENTLOG_DURABILITY": durability,
        }
    )
    return env


def bench_settings(data_dir: Path, durability: str = "full") -> Any:
    """The settings ``personify serve`` builds from ``personify_env`` (worker off: the
    in-process runs of this script must not drain the log)."""
    from personify.settings import Settings

    return Settings(
        _env_file=None,
        data_dir=data_dir,
        environment="test",
        pii_hash_key="bench",
        run_worker=False,
        eventlog_durability=durability,
    )


def prepare_folder(data_dir: Path, items: int, now: datetime) -> dict[str, Any]:
    """Segments, an admin key, a source and the published catalog, through the Python API on
    the data folder (before any server runs on it)."""
    from personify.runtime import Runtime

    services = Runtime.build(bench_settings(data_dir))
    try:
        started = time.perf_counter()
        rules = segment_rules()
        for key, condition in rules:
            services.segments.create(key, condition=condition)
        services.api_keys.create("bench-admin", "admin", secret=ADMIN_KEY)
        services.sources.create("bench", write_key=WRITE_KEY)
        body = catalog(items, now, [key for key, _ in rules])
        # items name their placements, which must exist first; a placement's default is an
        # item, so the placements come again once the items are in
        first = services.content.import_catalog(
            {"placements": [{**p, "defaultItem": None} for p in body["placements"]]}
        )
        done = services.content.import_catalog({"items": body["items"]}, publish=True)
        again = services.content.import_catalog({"placements": body["placements"]})
        refused = (
            first.to_dict()["placements"]["refused"]
            + done.to_dict()["items"]["refused"]
            + again.to_dict()["placements"]["refused"]
        )
        if refused:
            raise RuntimeError(f"the import refused entries: {done.to_dict()}")
        items_doc = body["items"]
        return {
            "segments": len(rules),
            "items": len(items_doc),
            "placements": len(body["placements"]),
            "targeted_items": sum(1 for i in items_doc if "targeting" in i),
            "scheduled_items": sum(1 for i in items_doc if "schedule" in i),
            "items_with_locale": sum(1 for i in items_doc if "locale" in i),
            "items_with_variants": sum(1 for i in items_doc if "variants" in i),
            "capped_items": sum(1 for i in items_doc if "frequencyCap" in i),
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        asyncio.run(services.close())


def identify_batches(users: int, now: datetime, batch: int = 100) -> Iterator[bytes]:
    """``POST /v1/batch`` bodies of one identify event per user."""
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for start in range(0, users, batch):
        events = [
            {
                "type": "identify",
                "userId": user_id(n),
                "traits": user_traits(n),
                "messageId": f"bench-identify-{n}",
                "timestamp": stamp,
            }
            for n in range(start, min(start + batch, users))
        ]
        yield json.dumps({"batch": events, "sentAt": stamp}).encode()


def http(
    method: str,
    url: str,
    *,
    auth: str,
    body: bytes | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, bytes]:
    """One request with urllib (setup only; the load has its own clients)."""
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Authorization", auth)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def bearer() -> str:
    """The admin API key's Authorization header."""
    return f"Bearer {ADMIN_KEY}"


def basic() -> str:
    """The write key's Authorization header (Segment's Basic auth)."""
    return "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


def identify_users(server: Server, users: int, now: datetime, timeout_s: float) -> dict[str, Any]:
    """Send every user's identify event and wait until the worker has applied the log."""
    started = time.perf_counter()
    for body in identify_batches(users, now):
        status, answer = http("POST", server.base_url + "/v1/batch", auth=basic(), body=body)
        if status != 200:
            raise RuntimeError(f"/v1/batch answered {status}: {answer[:300]!r}")
    sent = time.perf_counter() - started
    # the worker's membership relay appends Segment Entered events after each batch, so the
    # lag must stay 0 for a while, not just touch it
    lag = wait_for_worker(server, timeout_s, settle_s=2.0)
    if lag != 0:
        raise RuntimeError(f"the worker's lag is still {lag} after {timeout_s:g} s")
    return {
        "users": users,
        "send_seconds": round(sent, 2),
        "applied_seconds": round(time.perf_counter() - started, 2),
    }


def wait_for_worker(server: Server, timeout_s: float, settle_s: float = 0.0) -> int:
    """Wait until the worker's lag (``GET /v1/log``) has been 0 for ``settle_s``; the last
    lag read (0 unless ``timeout_s`` ran out)."""
    zero_since: float | None = None
    deadline = time.monotonic() + timeout_s
    lag = -1
    while time.monotonic() < deadline:
        status, answer = http("GET", server.base_url + "/v1/log", auth=bearer())
        if status != 200:
            raise RuntimeError(f"/v1/log answered {status}: {answer[:300]!r}")
        lag = int(json.loads(answer)["lag"])
        if lag == 0:
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since >= settle_s:
                return 0
        else:
            zero_since = None
        time.sleep(0.25)
    return lag


def decision_bodies(users: int) -> list[bytes]:
    """One decision request per user (3 placements, a context whose locale is the user's
    language most of the time), in a shuffled order that is the same every run."""
    rng = random.Random(SEED + 1)
    devices = ("desktop", "mobile", "tablet")
    bodies = []
    for n in range(users):
        language = user_traits(n)["language"]
        locale = language if rng.random() < 0.7 else rng.choice(LOCALES)
        bodies.append(
            json.dumps(
                {
                    "userId": user_id(n),
                    "placements": [{"id": p} for p in PLACEMENTS],
                    "context": {
                        "page": "/home",
                        "device": rng.choice(devices),
                        "locale": locale,
                    },
                },
                separators=(",", ":"),
            ).encode()
        )
    rng.shuffle(bodies)
    return bodies


def recommendation_paths(users: int) -> list[str]:
    """One recommendations path per user, shuffled like the decisions."""
    paths = [
        RECOMMENDATIONS_PATH.replace("{userId}", user_id(n)) + "?limit=10" for n in range(users)
    ]
    random.Random(SEED + 2).shuffle(paths)
    return paths


# -- the load: keep-alive HTTP/1.1 connections over raw sockets ----------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, answers read by their
    Content-Length (every server measured here sends one)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            self._waiter.set_exception(ValueError(f"no content-length in {head!r}"))
            return
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        status = int(head[0].split(" ", 2)[1])
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send one request and wait for its answer."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self._waiter


def raw_request(method: str, path: str, host: str, auth: str, body: bytes | None) -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: {auth}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class _Pool:
    """Keep-alive connections to one server, opened on demand up to ``limit``."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.opened = 0
        self._all: list[_Connection] = []
        self._idle: list[_Connection] = []
        self._waiting: collections.deque[asyncio.Future[_Connection]] = collections.deque()

    async def acquire(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        if self.opened < self.limit:
            self.opened += 1
            _, protocol = await asyncio.get_running_loop().create_connection(
                _Connection, self.host, self.port
            )
            self._all.append(protocol)
            return protocol
        waiter: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return await waiter

    def release(self, connection: _Connection) -> None:
        if connection.closed:
            self.opened -= 1
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def close(self) -> None:
        """Close every connection, busy ones included (their requests are given up)."""
        for waiter in self._waiting:
            waiter.cancel()
        for connection in self._all:
            if connection.transport is not None:
                connection.transport.close()


def percentile(ordered: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(share / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass
class OpenLoop:
    """Requests at a fixed rate, whatever the answers do (an open loop, as users arrive).

    Request ``i`` is due at ``start + i / rate``; the scheduler sends every due request as soon
    as it wakes, over an idle connection (a new one while fewer than ``connections`` are
    open; else it waits for one). Each latency is measured from the due time to the last
    byte of the answer, so time a request spent waiting (for the scheduler, a connection or
    the server) counts: a stall shows in the percentiles instead of thinning the load.
    """

    host: str
    port: int
    payloads: Sequence[bytes]
    rate: float
    duration_s: float
    connections: int = 64
    grace_s: float = 5.0
    latencies_ms: list[float] = field(default_factory=list)
    send_delays_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    async def run(self) -> dict[str, Any]:
        """Send the requests and return the figures. Requests still unanswered
        ``grace_s`` after the last one was due count as unanswered (an infinite latency:
        a percentile that lands on one is ``None``)."""
        pool = _Pool(self.host, self.port, self.connections)
        total = int(self.rate * self.duration_s)
        interval = 1.0 / self.rate
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.05
        sent = 0
        while sent < total:
            now = time.perf_counter()
            while sent < total and start + sent * interval <= now:
                due = start + sent * interval
                task = asyncio.create_task(
                    self._one(pool, self.payloads[sent % len(self.payloads)], due)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if sent < total:
                await asyncio.sleep(max(0.0, start + sent * interval - time.perf_counter()))
        if tasks:
            await asyncio.wait(set(tasks), timeout=self.grace_s)
        elapsed = time.perf_counter() - start
        unanswered = len(tasks)
        for task in list(tasks):
            task.cancel()
        pool.close()
        ordered = sorted(self.latencies_ms) + [math.inf] * unanswered
        delays = sorted(self.send_delays_ms)

        def at(share: float) -> float | None:
            value = percentile(ordered, share)
            return round(value, 3) if math.isfinite(value) else None

        answered = len(self.latencies_ms)
        return {
            "rate_per_s": self.rate,
            "answered_per_s": round(answered / elapsed, 1),
            "requests": total,
            "unanswered": unanswered,
            "kept_up": unanswered == 0 and self.errors == 0,
            "p50_ms": at(50),
            "p90_ms": at(90),
            "p99_ms": at(99),
            "p999_ms": at(99.9),
            "max_ms": at(100),
            "send_delay_p99_ms": round(percentile(delays, 99), 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "connections_opened": pool.opened,
            "duration_s": round(elapsed, 2),
        }

    async def _one(self, pool: _Pool, payload: bytes, due: float) -> None:
        self.send_delays_ms.append((time.perf_counter() - due) * 1000)
        connection = await pool.acquire()
        try:
            status, _ = await connection.request(payload)
        except (ConnectionError, ValueError):
            self.errors += 1
            connection.closed = True
            pool.release(connection)
            return
        self.latencies_ms.append((time.perf_counter() - due) * 1000)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        pool.release(connection)


async def closed_loop(
    host: str, port: int, payloads: Sequence[bytes], concurrency: int
) -> list[tuple[int, bytes]]:
    """Every payload once, ``concurrency`` at a time; the answers in the payloads' order."""
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(payloads)
    position = 0

    async def worker() -> None:
        nonlocal position
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, host, port)
        try:
            while position < len(payloads):
                index = position
                position += 1
                answers[index] = await connection.request(payloads[index])
        finally:
            assert connection.transport is not None
            connection.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def run_async(coroutine: Any) -> Any:
    """Run ``coroutine`` on uvloop when it is installed (as the servers do)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- the phases -------------------------------------------------------------------------------


def warm_up(server: Server, bodies: Sequence[bytes]) -> dict[str, Any]:
    """One decision per user, 8 at a time; the answers checked and summed up."""
    host = f"127.0.0.1:{server.port}"
    payloads = [raw_request("POST", "/v1/decide", host, bearer(), b) for b in bodies]
    started = time.perf_counter()
    answers = run_async(closed_loop("127.0.0.1", server.port, payloads, 8))
    seconds = time.perf_counter() - started
    statuses: dict[str, int] = {}
    segments: list[int] = []
    items: dict[str, list[int]] = {p: [] for p in PLACEMENTS}
    fallbacks: dict[str, int] = {}
    excluded: dict[str, int] = {}
    sizes: list[int] = []
    for status, body in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status != 200:
            continue
        sizes.append(len(body))
        decision = json.loads(body)
        segments.append(len(decision["trace"]["segments"]))
        for key, placement in decision["placements"].items():
            items[key].append(len(placement["items"]))
            if placement["fallback"]:
                reason = f"{key}:{placement.get('reason')}"
                fallbacks[reason] = fallbacks.get(reason, 0) + 1
            for entry in placement.get("trace", {}).get("excluded", []):
                excluded[entry["reason"]] = excluded.get(entry["reason"], 0) + 1
    if statuses.get("200", 0) != len(bodies):
        first_bad = next(b for s, b in answers if s != 200)
        raise RuntimeError(f"warm-up answers {statuses}: {first_bad[:300]!r}")
    segments.sort()
    return {
        "decisions": len(bodies),
        "seconds": round(seconds, 2),
        "statuses": statuses,
        "segments_per_user": {
            "min": segments[0],
            "median": statistics.median(segments),
            "mean": round(statistics.fmean(segments), 1),
            "max": segments[-1],
        },
        "items_per_placement_mean": {k: round(statistics.fmean(v), 2) for k, v in items.items()},
        "fallbacks": dict(sorted(fallbacks.items())),
        "exclusions_per_decision": {
            k: round(v / len(bodies), 1) for k, v in sorted(excluded.items())
        },
        "answer_bytes_mean": round(statistics.fmean(sizes)),
    }


@dataclass
class Target:
    """A server under load and what it is sent."""

    name: str
    server: Server
    path: str
    mode: str
    lines_file: Path
    auth: str
    rounds: list[dict[str, Any]] = field(default_factory=list)


def run_wrk(target: Target, duration_s: float, connections: int) -> dict[str, Any]:
    """One closed-loop wrk run against ``target``."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        target.server.base_url + target.path,
        "--",
        target.mode,
        str(target.lines_file),
        target.auth,
    ]
    server_before = target.server.cpu_seconds()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_after = target.server.cpu_seconds()
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk failed ({done.returncode}) on {target.name}:\n{done.stdout}\n{done.stderr}"
            f"\n{target.server.log_tail()}"
        )
    raw = json.loads(lines[-1][len(RESULT_MARKER) :])
    errors = raw["errors"]
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - errors["status"]
    server_cpu = (
        server_after - server_before
        if server_after is not None and server_before is not None
        else float("nan")
    )
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return {
        "requests_per_s": round(ok / seconds, 1),
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "requests": raw["requests"],
        "non_2xx": errors["status"],
        "socket_errors": sum(errors[k] for k in ("connect", "read", "write", "timeout")),
        "server_cpu_cores": round(server_cpu / seconds, 2),
        "server_cpu_us_per_request": round(server_cpu * 1e6 / max(ok, 1), 1),
        "wrk_cpu_cores": round(wrk_cpu / seconds, 2),
    }


def summarise(target: Target) -> dict[str, Any]:
    """Medians over the rounds, and every round's figures."""
    keys = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request", "server_cpu_cores")
    per_round = {key: [r[key] for r in target.rounds] for key in keys}
    return {
        **{key: round(statistics.median(values), 3) for key, values in per_round.items()},
        "rounds": per_round,
        "spread_pct": {key: spread_pct(per_round[key]) for key in keys[:3]},
        "non_2xx": sum(r["non_2xx"] for r in target.rounds),
        "socket_errors": sum(r["socket_errors"] for r in target.rounds),
    }


def saturation(
    targets: Sequence[Target], args: argparse.Namespace, warm_s: float
) -> dict[str, dict[str, Any]]:
    """Interleaved wrk rounds over ``targets``, after a short wrk warm-up of each (none when
    ``warm_s`` is 0)."""
    for target in targets:
        if warm_s:
            run_wrk(target, warm_s, args.connections)
    for number in range(1, args.rounds + 1):
        for target in targets:
            figures = run_wrk(target, args.duration, args.connections)
            target.rounds.append(figures)
            log(
                f"saturation round {number}/{args.rounds} {target.name}: "
                f"{figures['requests_per_s']:.0f}/s, p50 {figures['p50_ms']:.2f} ms, "
                f"p99 {figures['p99_ms']:.2f} ms, {figures['server_cpu_us_per_request']:.0f} "
                "CPU µs/request"
            )
    return {target.name: summarise(target) for target in targets}


def open_loop(
    server: Server,
    payloads: Sequence[bytes],
    args: argparse.Namespace,
    rate: float | None = None,
) -> dict[str, Any]:
    """The fixed-rate run against ``server`` (at ``--rate`` unless ``rate``), with the
    server's CPU over it."""
    cpu_before = server.cpu_seconds()
    figures: dict[str, Any] = run_async(
        OpenLoop(
            "127.0.0.1",
            server.port,
            payloads,
            rate or args.rate,
            args.open_duration,
            args.open_connections,
            grace_s=args.grace,
        ).run()
    )
    cpu_after = server.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        figures["server_cpu_cores"] = round((cpu_after - cpu_before) / figures["duration_s"], 2)
    return figures


def server_memory(server: Server) -> dict[str, float] | None:
    """The server process's resident memory now and at its peak (MiB), from /proc."""
    if server.process is None:
        return None
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found["rss" if name == "VmRSS" else "peak"] = round(int(value.split()[0]) / 1024, 1)
    return found or None


def settle(server: Server, args: argparse.Namespace) -> int | None:
    """Let the server's worker catch up with the exposures appended so far (up to 120 s);
    the lag left (``None`` without a worker)."""
    return None if args.no_worker else wait_for_worker(server, 120.0)


def route_exists(server: Server, path: str) -> bool:
    """Whether the server's OpenAPI document has ``path`` (whatever its parameter's name)."""
    status, body = http("GET", server.base_url + "/openapi.json", auth=bearer())
    prefix = path.split("{", 1)[0]
    return status == 200 and any(
        known.startswith(prefix + "{") for known in json.loads(body).get("paths", {})
    )


def recommendations(
    server: Server, baseline: Server, users: int, folder: Path, args: argparse.Namespace
) -> dict[str, Any] | None:
    """The recommendations route at the fixed rate (and the bare app under the same GETs)."""
    if not route_exists(server, RECOMMENDATIONS_PATH):
        return None
    paths = recommendation_paths(users)
    status, body = http("GET", server.base_url + paths[0], auth=bearer())
    if status != 200:
        raise RuntimeError(f"{paths[0]} answered {status}: {body[:300]!r}")
    lines_file = folder / "recommendations.txt"
    lines_file.write_text("\n".join(paths) + "\n")
    host = f"127.0.0.1:{server.port}"
    payloads = [raw_request("GET", p, host, bearer(), None) for p in paths]
    # warm: one request per user, as for the decisions
    answers = run_async(closed_loop("127.0.0.1", server.port, payloads, 8))
    statuses: dict[str, int] = {}
    items = []
    for status, answer in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            items.append(len(json.loads(answer).get("items", [])))
    target = Target("recommendations", server, "/", "get", lines_file, bearer())
    target.rounds.append(run_wrk(target, args.duration, args.connections))
    saturated = summarise(target)
    bare = open_loop(baseline, payloads, args)
    half_rate = round(saturated["requests_per_s"] / 2, 1)
    settle(server, args)
    half = open_loop(server, payloads, args, rate=half_rate)
    settle(server, args)
    ours = open_loop(server, payloads, args)
    return {
        "what": "GET /v1/recommendations/{userId}?limit=10, one user after another",
        "p99_ms": ours["p99_ms"],
        "p99_ms_at_half_saturation": half["p99_ms"],
        "open_loop": ours,
        "open_loop_at_half_saturation": half,
        "open_loop_baseline": bare,
        "saturation": saturated,
        "warmup_statuses": statuses,
        # the users have identify events only (no views, no orders): the cold-start path
        "items_per_answer_mean": round(statistics.fmean(items), 2) if items else None,
    }


def profile_decisions(
    data_dir: Path, bodies: Sequence[bytes], count: int, durability: str
) -> dict[str, Any]:
    """``count`` in-process ``DecisionEngine.decide`` calls against ``data_dir`` (the same
    requests as over HTTP, after one warm pass), timed plain, then under cProfile."""
    from personify.decide.engine import DecisionRequest, PlacementRequest
    from personify.runtime import Runtime

    requests = []
    for body in bodies[:count]:
        decoded = json.loads(body)
        requests.append(
            DecisionRequest(
                placements=[PlacementRequest(p["id"]) for p in decoded["placements"]],
                user_id=decoded["userId"],
                context=decoded["context"],
            )
        )
    services = Runtime.build(bench_settings(data_dir, durability))

    cpu: list[float] = []

    async def decide_all() -> float:
        started = time.perf_counter()
        cpu_started = time.process_time()
        for request in requests:
            await services.decisions.decide(request)
        cpu.append(time.process_time() - cpu_started)
        return time.perf_counter() - started

    async def main() -> dict[str, Any]:
        # the event log, as the server starts it (decisions append their exposures)
        await services.start()
        await decide_all()  # warm the profile cache and the catalog snapshot
        plain = await decide_all()
        profiler = cProfile.Profile()
        profiler.enable()
        profiled = await decide_all()
        profiler.disable()
        await services.close()
        return {"plain_s": plain, "profiled_s": profiled, "profiler": profiler}

    found = run_async(main())
    stats = pstats.Stats(found["profiler"], stream=io.StringIO())
    entries = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename
        for marker in ("site-packages/", "src/", "lib/python3"):
            if marker in filename:
                short = filename.split(marker, 1)[1]
                break
        entries.append(
            {
                "function": f"{short}:{line}({name})",
                "calls_per_decision": round(calls / count, 2),
                "own_us_per_decision": round(own * 1e6 / count, 1),
                "cumulative_us_per_decision": round(cumulative * 1e6 / count, 1),
            }
        )
    by_own = sorted(entries, key=lambda e: -e["own_us_per_decision"])[:25]
    by_cumulative = sorted(entries, key=lambda e: -e["cumulative_us_per_decision"])[:30]
    return {
        "decisions": count,
        "us_per_decision": round(found["plain_s"] * 1e6 / count, 1),
        # CPU of this process (every thread: the log's writer and fsync helper too), less
        # sensitive than the wall time to other work on the machine
        "cpu_us_per_decision": round(cpu[1] * 1e6 / count, 1),
        "us_per_decision_profiled": round(found["profiled_s"] * 1e6 / count, 1),
        "top_own_time": by_own,
        "top_cumulative": by_cumulative,
    }


# -- the run ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000, help="identified users")
    parser.add_argument("--items", type=int, default=500, help="published items")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds (medians)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests per s")
    parser.add_argument("--open-duration", type=float, default=20.0, help="open-loop seconds")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds to wait for late open-loop answers"
    )
    parser.add_argument(
        "--open-connections", type=int, default=64, help="open-loop connection pool size"
    )
    parser.add_argument(
        "--profile", type=int, default=1000, help="in-process decisions to profile (0: none)"
    )
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="measure an API node: restart the server with --no-worker after the setup",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes of the server and of the bare app (N > 1: `serve --workers N "
        "--no-worker` and one `personify worker` process)",
    )
    parser.add_argument(
        "--durability",
        choices=["full", "normal", "off"],
        default="full",
        help="the event log's (the default setting: full, every append fsynced)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run in under a minute")
    parser.add_argument("--keep-data", action="store_true", help="keep the data folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.duration, args.rounds = 200, 2.0, 1
        args.open_duration, args.profile, args.grace = 2.0, 50, 1.0
    return args


@contextlib.contextmanager
def scratch_folder(keep: bool) -> Iterator[Path]:
    """A temporary folder for data and server logs, removed afterwards unless ``keep``."""
    folder = Path(tempfile.mkdtemp(prefix="personify-bench-decide-"))
    try:
        yield folder
    finally:
        if keep:
            log(f"data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def personify_server(
    folder: Path,
    data_dir: Path,
    name: str,
    no_worker: bool,
    durability: str,
    workers: int = 1,
) -> Server:
    """``personify serve`` on ``data_dir`` (with its stream worker unless ``no_worker``).

    With ``workers`` > 1, ``--workers N --no-worker`` and, unless ``no_worker``, one
    ``personify worker`` process beside it, as the embedded log asks of several API
    processes: a shell starts the worker, then becomes the server (``exec``), so the worker
    is a child of the server's process (its CPU counts in ``Server.cpu_seconds``) and in its
    process group (``Server.stop`` ends it)."""
    serve = [sys.executable, "-m", "personify.cli", "serve", "--log-level", "warning"]
    if workers == 1:
        argv = [*serve, *(["--no-worker"] if no_worker else [])]
    else:
        worker = "" if no_worker else f"{sys.executable} -m personify.cli worker & "
        argv = [
            "sh",
            "-c",
            worker + 'exec "$@"',
            "sh",
            *serve,
            "--workers",
            str(workers),
            "--no-worker",
        ]
    return Server(name, argv, personify_env(data_dir, durability), folder, "/healthz")


def bare_server(folder: Path, workers: int = 1) -> Server:
    """``bench/bare_app.py`` under uvicorn with ``personify serve``'s options."""
    return Server(
        "baseline",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--app-dir",
            str(BENCH_DIR),
            "--host",
            "127.0.0.1",
            "--no-access-log",
            "--log-level",
            "warning",
            *(["--workers", str(workers)] if workers > 1 else []),
        ],
        {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")},
        folder,
        "/",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed: `apt-get install wrk` (or run `make bench`)")
        return 2
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    result: dict[str, Any] = {"benchmark": "decide", "date": started.isoformat(timespec="seconds")}
    with scratch_folder(args.keep_data) as folder:
        data_dir = folder / "data"
        data_dir.mkdir()
        log(f"setup: 100 segments, {args.items} items, 3 placements in {data_dir}")
        prepared = prepare_folder(data_dir, args.items, started)
        server = personify_server(folder, data_dir, "decide", False, args.durability, args.workers)
        baseline = bare_server(folder, args.workers)
        servers = [server, baseline]
        try:
            server.start()
            log(f"identify {args.users} users through /v1/batch; waiting for the worker")
            identified = identify_users(server, args.users, started, timeout_s=600)
            log(f"users applied in {identified['applied_seconds']} s")
            if args.no_worker:
                server.stop()
                server = personify_server(
                    folder, data_dir, "decide-api", True, args.durability, args.workers
                )
                servers[0] = server
                server.start()
            baseline.start()
            bodies = decision_bodies(args.users)
            lines_file = folder / "decisions.jsonl"
            lines_file.write_bytes(b"\n".join(bodies) + b"\n")
            warm = warm_up(server, bodies)
            log(
                f"warm-up: {warm['decisions']} decisions in {warm['seconds']} s, segments per "
                f"user {warm['segments_per_user']}, fallbacks {warm['fallbacks']}"
            )
            targets = [
                Target("baseline", baseline, "/v1/decide", "post", lines_file, bearer()),
                Target("decide", server, "/v1/decide", "post", lines_file, bearer()),
                Target("decide_public", server, "/v1/decide", "post", lines_file, basic()),
            ]
            saturated = saturation(targets, args, warm_s=0.0 if args.quick else 2.0)
            ratios = [
                round(d["requests_per_s"] / b["requests_per_s"], 3)
                for d, b in zip(targets[1].rounds, targets[0].rounds, strict=True)
            ]
            host = f"127.0.0.1:{server.port}"
            payloads = [raw_request("POST", "/v1/decide", host, bearer(), b) for b in bodies]
            # the bare app first, while the server is idle; the server's runs each after its
            # worker has caught up with the exposures of the runs before
            log(f"open loop at {args.rate:g}/s for {args.open_duration:g} s: baseline")
            open_bare = open_loop(baseline, payloads, args)
            # the latency at a load the server carries, whatever the fixed rate does to it
            half_rate = round(saturated["decide"]["requests_per_s"] / 2, 1)
            lags = [settle(server, args)]
            log(f"open loop at half the saturated rate, {half_rate:g}/s: decide")
            open_half = open_loop(server, payloads, args, rate=half_rate)
            lags.append(settle(server, args))
            log(f"open loop at {args.rate:g}/s: decide")
            open_decide = open_loop(server, payloads, args)
            log(
                f"open loop: decide p50 {open_decide['p50_ms']} ms, p99 {open_decide['p99_ms']} "
                f"ms, {open_decide['unanswered']} unanswered; baseline p99 "
                f"{open_bare['p99_ms']} ms; decide at {half_rate:g}/s p99 {open_half['p99_ms']} ms"
            )
            lags.append(settle(server, args))
            recommended = recommendations(server, baseline, args.users, folder, args)
            memory = server_memory(server)
            lag_status, lag_body = http("GET", server.base_url + "/v1/log", auth=bearer())
            worker_lag = json.loads(lag_body)["lag"] if lag_status == 200 else None
        finally:
            for running in servers:
                running.stop(signal.SIGTERM)
        profile = None
        if args.profile:
            log(f"profile: {args.profile} in-process decisions")
            profile = profile_decisions(
                data_dir, bodies, min(args.profile, len(bodies)), args.durability
            )

    decide_rate = saturated["decide"]["requests_per_s"]
    bare_rate = saturated["baseline"]["requests_per_s"]
    ratio = decide_rate / bare_rate
    result.update(
        {
            "saturation": {
                "decisions_per_s": decide_rate,
                "ratio_to_baseline": round(ratio, 3),
                "ratio_target": RATIO_TARGET,
                "meets_target": ratio >= RATIO_TARGET,
                "ratio_rounds": ratios,
                "decide": saturated["decide"],
                "decide_public": {
                    "what": "the same requests with the write key: the public shape, no trace",
                    "ratio_to_baseline": round(
                        saturated["decide_public"]["requests_per_s"] / bare_rate, 3
                    ),
                    **saturated["decide_public"],
                },
                "baseline": {
                    "what": "bench/bare_app.py, same uvicorn options, requests and wrk",
                    **saturated["baseline"],
                },
            },
            "open_loop": {
                "p99_ms": open_decide["p99_ms"],
                "p99_target_ms": P99_TARGET_MS,
                "meets_target": open_decide["p99_ms"] is not None
                and open_decide["p99_ms"] <= P99_TARGET_MS,
                "decide": open_decide,
                "baseline": open_bare,
                "decide_at_half_saturation": open_half,
            },
            "recommendations": recommended,
            "warmup": warm,
            "data": {**prepared, **identified},
            "server_memory_mib": memory,
            "worker_lag_at_end": worker_lag,
            "worker_lag_before_open_loops": lags,
            "profile": profile,
            "setup": {
                "server": (
                    (
                        "personify serve (one uvicorn process, "
                        + (
                            "--no-worker after the setup"
                            if args.no_worker
                            else "API + stream worker"
                        )
                        if args.workers == 1
                        else f"personify serve --workers {args.workers} --no-worker ("
                        + (
                            "no stream worker after the setup"
                            if args.no_worker
                            else "and one personify worker process"
                        )
                    )
                    + f"), default settings but the log's durability ({args.durability}): "
                    "SQLite state and log, in-process cache; the bare app with the same "
                    f"--workers {args.workers}"
                ),
                "workers": args.workers,
                "request": "POST /v1/decide, 3 placements, Bearer API key (full answer, trace)",
                "saturation": (
                    f"wrk closed loop, 1 thread, {args.connections} connections, "
                    f"{args.rounds} x {args.duration:g} s interleaved with the baseline"
                ),
                "open_loop": (
                    f"bench/decide.py OpenLoop (asyncio + uvloop, raw keep-alive sockets), "
                    f"{args.rate:g}/s for {args.open_duration:g} s, up to "
                    f"{args.open_connections} connections; latency from the scheduled send time"
                ),
                "cpu_count": os.cpu_count(),
                "cpu_model": cpu_model(),
                "load_avg_before": [round(x, 2) for x in load_before],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                "versions": versions(),
            },
        }
    )
    if recommended is None:
        result["recommendations"] = None
        result["recommendations_reason"] = (
            f"{RECOMMENDATIONS_PATH} is not in the server's /openapi.json (route not built yet)"
        )
    print(to_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
