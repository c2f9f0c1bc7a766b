"""Scaled out: 2 API processes and 2 stream workers on shared engines, one worker SIGKILLed.

Per event log (Kafka on the tansu broker, and Redis Streams), with PostgreSQL for state and
Redis for the cache: a retrying client sends 20,000 events of 400 shoppers (anonymous
browsing, identify, second devices, aliases, orders) as 200 batches of 100 over both API
nodes, resending some batches with the same messageIds as a client whose answer got lost
would. Mid-stream one worker is killed with SIGKILL and not restarted: the other must take
over its partitions (Kafka: after the session timeout) or its pending entries (Redis:
``XAUTOCLAIM`` after the claim idle time). At the end the group's lag is zero, every event
was applied exactly once in effect, nothing was dead-lettered, and every profile equals, byte
for byte, the one a clean single-process embedded run (SQLite log and state, in-process
worker) builds from the same events; both API nodes serve every profile at its final version
through the shared Redis cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from personify.api.app import create_app
from personify.profiles import tables as profile_tables
from personify.runtime import Runtime
from personify.store import tables as store_tables
from personify.worker import tables as worker_tables
from tests.conftest import make_settings
from tests.contracts.conftest import REDIS_URL, drop_redis_keys
from tests.e2e.conftest import PERSONIFY, ServerProcess, cli, printed_secret, server_env
from tests.kafka_broker import TansuBroker, kafka_broker
from tests.postgres import create_database, drop_database
from tests.profiles.factory import shop_events

__all__ = ["kafka_broker"]

pytestmark = [pytest.mark.e2e, pytest.mark.services]

USERS = 400
EVENTS_PER_USER = 50  # 20,000 events
BATCH = 100
PARTITIONS = 4
# the client sends faster than two workers on two shared cores apply, so the workers always
# have a backlog (and are in the middle of a batch) when one of them dies
SEND_EVENTS_PER_S = 4000.0
# a worker dies once the workers together have applied this share of the events (and, on
# Redis, once it holds entries it has read and not acknowledged)
KILL_AT_SHARE = 0.3
# the kill is triggered by the state of the run, never by its speed: past this share of the
# batches the client slows to one batch per TRICKLE_INTERVAL_S until the worker is dead (so
# the workers keep reading new entries, and so hold some, without the client running out),
# and it sends the last HELD_BATCHES only after the kill, so that the kill is always mid-stream
SLOW_DOWN_AT_SHARE = 0.5
TRICKLE_INTERVAL_S = 0.25
HELD_BATCHES = 10
# should the trickle end before the victim was seen holding entries, it dies this long after
GRACE_S = 10.0
# every RESEND_EVERY-th batch is sent twice, as by a client whose first answer was lost
RESEND_EVERY = 7
SETTLE_TIMEOUT_S = 120.0
# not part of the comparison: they depend on when and in which run a profile was written/read
VOLATILE = ("features", "version", "createdAt", "lastUpdated", "asOf")


def raw_events() -> list[dict[str, Any]]:
    """The shop's events as a client sends them (the server stamps source and receipt)."""
    events = []
    for data in shop_events(USERS, EVENTS_PER_USER, seed=23):
        sent = {k: v for k, v in data.items() if k not in ("sourceId", "receivedAt")}
        events.append(sent)
    return events


def batches() -> list[list[dict[str, Any]]]:
    """The events in batches of ``BATCH``, in time order."""
    events = raw_events()
    return [events[i : i + BATCH] for i in range(0, len(events), BATCH)]


@dataclass(frozen=True)
class Outcome:
    """Profiles as stored (state JSON by canonical id), the identity graph, served documents."""

    states: dict[str, str]
    graph: dict[str, str]
    documents: dict[str, dict[str, Any]]


def stable(document: dict[str, Any]) -> dict[str, Any]:
    """A profile document without its run- and time-dependent fields."""
    return {k: v for k, v in document.items() if k not in VOLATILE}


def read_state(engine: sa.Engine) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """(state by profile id, profile id by identity, version by profile id)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                profile_tables.profiles.c.profile_id,
                profile_tables.profiles.c.state,
                profile_tables.profiles.c.version,
            )
        ).all()
        graph = conn.execute(
            sa.select(profile_tables.identities.c.identity, profile_tables.identities.c.profile_id)
        ).all()
    return (
        {str(r[0]): str(r[1]) for r in rows},
        {str(i): str(p) for i, p in graph},
        {str(r[0]): int(r[2]) for r in rows},
    )


async def _embedded_run(data_dir: Path) -> Outcome:
    settings = make_settings(data_dir, run_worker=False, worker_poll_timeout_ms=50)
    services = Runtime.build(settings)
    await services.start()
    try:
        _, write_key = services.sources.create("reference")
        _, admin_key = services.api_keys.create("reference")
        app = create_app(settings, services=services)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://embedded") as client:
            for batch in batches():
                answer = await client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
                assert answer.status_code == 200, answer.text
                assert answer.json()["accepted"] == len(batch)
            await services.worker.run(until_idle=True)
            states, graph, _ = read_state(services.db.engine)
            documents = {}
            client.headers["Authorization"] = f"Bearer {admin_key}"
            for profile_id in states:
                answer = await client.get(f"/v1/profiles/{profile_id}")
                assert answer.status_code == 200, answer.text
                documents[profile_id] = stable(answer.json())
        return Outcome(states, graph, documents)
    finally:
        await services.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The profiles a clean single-process embedded run builds from the same events."""
    return asyncio.run(_embedded_run(tmp_path_factory.mktemp("embedded") / "data"))


@dataclass
class WorkerProcess:
    """A ``personify worker`` subprocess."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker (it joins the group on its first read)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*PERSONIFY, "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        """The process id (part of the worker's consumer name)."""
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no commit, no leaving the group, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


@dataclass
class Deployment:
    """The scaled-out processes and what the test needs to talk to them."""

    folder: Path
    env: dict[str, str]
    state_url: str
    apis: list[ServerProcess] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    write_key: str = ""
    admin_key: str = ""

    def start(self) -> None:
        """Create the source and key, then start every process at once (each migrates)."""
        self.write_key = printed_secret(cli(self.env, "sources", "create", "shop"), "write key")
        self.admin_key = printed_secret(cli(self.env, "keys", "create", "ops"), "api key")
        for n in range(2):
            self.workers.append(WorkerProcess(f"worker-{n}", self.env, self.folder / f"w{n}.log"))
            self.apis.append(ServerProcess(self.folder, self.env, extra_args=("--no-worker",)))
        for worker in self.workers:
            worker.start()
        for api in self.apis:
            api.start()

    def stop(self) -> None:
        """Stop whatever still runs."""
        for worker in self.workers:
            worker.stop()
        for api in self.apis:
            api.stop()

    def logs(self) -> str:
        """The end of every process's log, for failure messages."""
        parts = []
        for path in sorted(self.folder.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def _count_rows(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _applied_by(engine: sa.Engine, pid: int) -> int:
    """Events the worker with process id ``pid`` reported applied in its last heartbeat."""
    beats = worker_tables.worker_heartbeats
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(beats.c.events_applied).where(beats.c.consumer.like(f"%-{pid}"))
        ).scalar()
    return int(value or 0)


class RetryingClient:
    """Sends batches over several API nodes; a failed or lost request goes again, unchanged."""

    def __init__(self, nodes: list[str], write_key: str) -> None:
        self.nodes = nodes
        self.write_key = write_key
        self.acknowledged = 0
        self.retries = 0
        self.resent = 0

    async def send(
        self, client: httpx.AsyncClient, number: int, batch: list[dict[str, Any]]
    ) -> None:
        """POST one batch until a node acknowledges it (switching node after a failure)."""
        body = {"batch": batch}
        attempt = 0
        while True:
            node = self.nodes[(number + attempt) % len(self.nodes)]
            try:
                answer = await client.post(
                    f"{node}/v1/batch", json=body, auth=(self.write_key, ""), timeout=30
                )
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == 200:
                break
            assert answer is None or answer.status_code >= 500, answer.text
            attempt += 1
            self.retries += 1
            await asyncio.sleep(min(0.05 * attempt, 1.0))
        result = answer.json()
        assert result["rejected"] == 0, result
        assert result["accepted"] + result["duplicates"] == len(batch), result
        self.acknowledged += len(batch)
        if number % RESEND_EVERY == 0:
            # the first answer "never arrived": the same batch again, on the other node
            again = await client.post(
                f"{self.nodes[(number + 1) % len(self.nodes)]}/v1/batch",
                json=body,
                auth=(self.write_key, ""),
                timeout=30,
            )
            assert again.status_code == 200, again.text
            assert again.json()["duplicates"] == len(batch), again.json()
            self.resent += len(batch)


async def _status(client: httpx.AsyncClient, node: str, admin_key: str) -> dict[str, Any]:
    answer = await client.get(
        f"{node}/v1/worker/status", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _victim_has_pending(stream: str, consumer_suffix: str) -> bool:
    """Whether the Redis consumer whose name ends in ``consumer_suffix`` holds unacked entries."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        for consumer in await client.xinfo_consumers(stream, "worker"):
            name = consumer["name"].decode()
            if name.endswith(consumer_suffix) and int(consumer["pending"]) > 0:
                return True
        return False
    finally:
        await client.aclose()


async def _drive(deployment: Deployment, engine: sa.Engine, stream: str | None) -> dict[str, Any]:
    """Send everything while killing one worker mid-stream; wait until the group has no lag."""
    nodes = [api.base_url for api in deployment.apis]
    sender = RetryingClient(nodes, deployment.write_key)
    all_batches = batches()
    total = sum(len(b) for b in all_batches)
    victim, survivor = deployment.workers
    killed_at: dict[str, Any] = {}
    killed = asyncio.Event()
    reads = {"found": 0, "missing": 0}
    sending = True
    slow_from = int(len(all_batches) * SLOW_DOWN_AT_SHARE)
    held_from = len(all_batches) - HELD_BATCHES
    headers = {"Authorization": f"Bearer {deployment.admin_key}"}

    async with httpx.AsyncClient() as client:

        async def produce() -> None:
            nonlocal sending
            started = time.monotonic()
            sends: list[asyncio.Task[None]] = []
            for number, batch in enumerate(all_batches):
                if number >= held_from:
                    await killed.wait()
                elif number >= slow_from and not killed.is_set():
                    # one batch at a time until the kill: the workers keep reading entries
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(killed.wait(), TRICKLE_INTERVAL_S)
                else:
                    # paced, open loop: batch n leaves at n * BATCH / rate seconds
                    delay = started + number * BATCH / SEND_EVENTS_PER_S - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sends.append(asyncio.create_task(sender.send(client, number, batch)))
                if number + 1 == held_from and not killed.is_set():
                    # nothing more comes in before the kill
                    killed_at["trickle_done_at"] = time.monotonic()
            await asyncio.gather(*sends)
            sending = False

        async def browse() -> None:
            # reads while profiles change fill the shared cache, which the workers must
            # invalidate: the final reads then prove no node serves a stale version
            number = 0
            while sending:
                number += 1
                user = f"user-{(number * 37) % USERS:04d}"
                answer = await client.get(
                    f"{nodes[number % 2]}/v1/profiles/{user}", headers=headers, timeout=30
                )
                assert answer.status_code in (200, 404), answer.text
                reads["found" if answer.status_code == 200 else "missing"] += 1
                await asyncio.sleep(0.02)

        async def kill_mid_stream() -> None:
            # both workers must be consuming (so the victim owns partitions or entries)
            while True:
                applied = await asyncio.to_thread(
                    _count_rows, engine, profile_tables.applied_events
                )
                by_victim = await asyncio.to_thread(_applied_by, engine, victim.pid)
                if applied >= total * KILL_AT_SHARE and by_victim > 0:
                    break
                await asyncio.sleep(0.05)
            killed_at["victim_applied"] = by_victim
            if stream is not None:
                # Redis tells which consumer holds what: kill it while it holds entries (the
                # client trickles batches in until then)
                killed_at["holding_entries"] = False
                while time.monotonic() < killed_at.get("trickle_done_at", math.inf) + GRACE_S:
                    if await _victim_has_pending(stream, f"-{victim.pid}"):
                        killed_at["holding_entries"] = True
                        break
                    await asyncio.sleep(0.002)
            victim.kill()
            killed_at.update(applied=applied, sent=sender.acknowledged)
            killed.set()

        await asyncio.gather(produce(), kill_mid_stream(), browse())
        assert killed_at["sent"] < total, "the worker was killed after the client had finished"

        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = await _status(client, nodes[0], deployment.admin_key)
            if status["lag"] == 0 and _count_rows(engine, profile_tables.applied_events) >= total:
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError(f"the group never caught up: {status}\n{deployment.logs()}")
        # both nodes see the same log and the same group
        other = await _status(client, nodes[1], deployment.admin_key)
    assert survivor.process is not None and survivor.process.poll() is None, deployment.logs()
    return {
        "status": status,
        "other_status": other,
        "killed_at": killed_at,
        "reads_during_stream": reads,
        "client": {
            "acknowledged": sender.acknowledged,
            "retries": sender.retries,
            "resent": sender.resent,
        },
    }


async def _served_documents(
    deployment: Deployment, profile_ids: list[str], versions: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Every profile read through each API node (so through the Redis cache), checked fresh."""
    documents: dict[str, dict[str, Any]] = {}
    headers = {"Authorization": f"Bearer {deployment.admin_key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        for api in deployment.apis:
            for profile_id in profile_ids:
                answer = await client.get(f"{api.base_url}/v1/profiles/{profile_id}")
                assert answer.status_code == 200, answer.text
                document = answer.json()
                assert document["version"] == versions[profile_id], (api.base_url, profile_id)
                documents[profile_id] = stable(document)
    return documents


@dataclass
class EventLogUnderTest:
    """The event log URL (and extra settings) one parametrisation runs on."""

    env: dict[str, str]
    redis_patterns: list[str]
    stream: str | None = None


@pytest.fixture(params=["kafka", "redis"])
def eventlog(request: pytest.FixtureRequest) -> Iterator[EventLogUnderTest]:
    """A fresh topic (tansu) or stream (Redis) for one run; its Redis keys go afterwards."""
    name = f"personify-scale-{uuid.uuid4().hex[:10]}"
    if request.param == "kafka":
        broker: TansuBroker = request.getfixturevalue("kafka_broker")
        under_test = EventLogUnderTest(
            {
                "PERSONIFY_EVENTLOG_URL": broker.url(name, partitions=PARTITIONS),
                "PERSONIFY_EVENTLOG_DEDUPE_URL": REDIS_URL,
                # a killed member's partitions move after this; tansu holds a join ~half of it
                "PERSONIFY_EVENTLOG_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "PERSONIFY_EVENTLOG_KAFKA_FETCH_WAIT_MS": "50",
                # tansu's memory engine has no DeleteRecords
                "PERSONIFY_EVENTLOG_KAFKA_DELETE_RECORDS": "false",
            },
            [f"personify:kafka:{name}:*"],
        )
    else:
        under_test = EventLogUnderTest(
            {
                "PERSONIFY_EVENTLOG_URL": f"{REDIS_URL}?stream={name}",
                # a killed consumer's pending entries are claimed by the other after this
                "PERSONIFY_EVENTLOG_CLAIM_IDLE_MS": "3000",
            },
            [name, f"{{{name}}}:*"],
            stream=name,
        )
    yield under_test
    asyncio.run(drop_redis_keys(REDIS_URL, *under_test.redis_patterns))


def _redis_available() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        with contextlib.closing(client):
            return bool(client.ping())
    except redis.RedisError:
        return False


def test_two_apis_and_two_workers_survive_a_killed_worker(
    eventlog: EventLogUnderTest, reference: Outcome, tmp_path: Path
) -> None:
    if not _redis_available():
        from tests.conftest import service_missing

        service_missing(f"Redis is unavailable at {REDIS_URL}")
    state_url = create_database("personify_scale")
    cache_prefix = f"personify-scale-{uuid.uuid4().hex[:10]}:"
    folder = tmp_path / "deployment"
    folder.mkdir()
    env = server_env(
        folder,
        PERSONIFY_STATE_URL=state_url,
        PERSONIFY_CACHE_URL=f"{REDIS_URL}?prefix={cache_prefix}",
        PERSONIFY_WORKER_BATCH_SIZE="1000",
        PERSONIFY_WORKER_HEARTBEAT_S="0.5",
        **eventlog.env,
    )
    deployment = Deployment(folder, env, state_url)
    engine = sa.create_engine(state_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        deployment.start()
        report = asyncio.run(_drive(deployment, engine, eventlog.stream))
        states, graph, versions = read_state(engine)
        documents = asyncio.run(_served_documents(deployment, sorted(states), versions))
        survivor = deployment.workers[1]
        assert survivor.stop() == 0, deployment.logs()
        print(f"\nscale-out run on {eventlog.env['PERSONIFY_EVENTLOG_URL']}: {report}")

        total = USERS * EVENTS_PER_USER
        assert report["status"]["lag"] == report["other_status"]["lag"] == 0
        assert _count_rows(engine, profile_tables.applied_events) == total
        assert _count_rows(engine, store_tables.failed_events) == 0, deployment.logs()
        assert graph == reference.graph
        assert states.keys() == reference.states.keys()
        differing = [p for p in states if states[p] != reference.states[p]]
        assert differing == [], f"{len(differing)} profiles differ, e.g. {differing[:3]}"
        assert documents == reference.documents
        # the survivor's consumer name is its own (host and pid), as is the killed one's
        beats = {b["consumer"] for b in report["status"]["workers"]}
        assert any(name.endswith(f"-{survivor.pid}") for name in beats), beats
    finally:
        deployment.stop()
        engine.dispose()
        drop_database(state_url)
        asyncio.run(drop_redis_keys(REDIS_URL, f"{cache_prefix}*"))
        if os.environ.get("PERSONIFY_KEEP_SCALE_LOGS"):
            print(deployment.logs())
