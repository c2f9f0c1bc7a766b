"""Erasure through the real app: ``DELETE /v1/profiles/{id}`` of a person seeded through every
path leaves nothing of them in the state database (searched table by table, every column),
the cache or the dead letters, on SQLite and on PostgreSQL; later events of their ids are
suppressed and counted until an un-suppress; requests survive a restart and a crashed step
runs again; export holds every part."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from personify.clock import FrozenClock
from personify.privacy.erasure import ErasureJob, ErasureRequests, Subject
from personify.privacy.export import PARTS
from personify.privacy.state import CacheEraser, DeadLetterEraser, StateEraser
from personify.profiles.service import cache_key
from tests.api import Harness, assert_error, running_app
from tests.contracts.conftest import REDIS_URL, drop_redis_keys
from tests.postgres import fresh_schema, postgres_database  # noqa: F401
from tests.privacy.seeding import (
    ANON,
    EMAIL,
    OLD_ANON,
    OTHER,
    START,
    USER,
    search_state,
    seed,
    send,
    settle,
)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The state database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'personify.db'}"
    return fresh_schema(request.getfixturevalue("postgres_database"))


# the lake's removed files go at once (with a retention, the lake step waits: the last test)
NO_RETENTION = {"lake_vacuum_retention_hours": 0}


@pytest.fixture
async def engines(state_url: str) -> AsyncIterator[dict[str, Any]]:
    """Embedded (SQLite state and log, the in-memory cache) or scaled out: PostgreSQL state,
    a Redis stream for the log and Redis for the cache, each the test's own."""
    if state_url.startswith("sqlite"):
        yield {"state_url": state_url}
        return
    name = f"erasure-{uuid.uuid4().hex[:12]}"
    yield {
        "state_url": state_url,
        "eventlog_url": f"{REDIS_URL}?stream={name}",
        "cache_url": f"{REDIS_URL}?prefix={name}:",
    }
    await drop_redis_keys(REDIS_URL, name, f"{{{name}}}:*", f"{name}:*")


@pytest.fixture
async def harness(
    tmp_path: Path, clock: FrozenClock, engines: dict[str, Any]
) -> AsyncIterator[Harness]:
    async with running_app(
        tmp_path / "data",
        clock=clock,
        run_lake_sink=True,
        cache_invalidation_ttl_s=0.01,
        # the lake's old files go at once (production keeps them for the retention: below)
        lake_vacuum_retention_hours=0,
        **engines,
    ) as h:
        yield h


async def redis_holds(engines: dict[str, Any], needles: frozenset[str]) -> list[str]:
    """Every Redis key of the test (the stream's entries, the cache's values) naming a
    needle: the scaled-out engines searched byte for byte."""
    if "cache_url" not in engines:
        return []
    import redis.asyncio as aioredis

    name = engines["cache_url"].split("prefix=")[1].rstrip(":")
    client = aioredis.Redis.from_url(REDIS_URL)
    found: list[str] = []
    try:
        async for key in client.scan_iter(match=f"*{name}*", count=1000):
            kind = (await client.type(key)).decode()
            if kind == "string":
                blobs = [await client.get(key) or b""]
            elif kind == "stream":
                blobs = [
                    b"".join(k + v for k, v in fields.items())
                    for _, fields in await client.xrange(key)
                ]
            elif kind == "hash":
                blobs = [b"".join(k + v for k, v in (await client.hgetall(key)).items())]
            elif kind in ("set", "zset", "list"):
                members = (
                    await client.smembers(key)
                    if kind == "set"
                    else await client.zrange(key, 0, -1)
                    if kind == "zset"
                    else await client.lrange(key, 0, -1)
                )
                blobs = list(members)
            else:
                blobs = []
            for needle in needles:
                if any(needle.encode() in blob for blob in blobs) or needle.encode() in key:
                    found.append(f"{key.decode()}: {needle}")
    finally:
        await client.aclose()
    return found


def _needles(harness: Harness) -> frozenset[str]:
    email_hash = harness.services.hasher.hash_value("email", EMAIL)
    return frozenset({USER, ANON, OLD_ANON, email_hash})


async def test_erasing_any_id_leaves_nothing_of_the_person_in_state_cache_or_dead_letters(
    harness: Harness, engines: dict[str, Any]
) -> None:
    await seed(harness)
    services = harness.services
    needles = _needles(harness)
    subject = services.privacy.resolve(OLD_ANON)
    assert {USER, ANON, OLD_ANON} <= subject.ids and USER in subject.profile_ids
    assert services.hasher.hash_value("email", EMAIL) in subject.hashed
    # the seed reached every store the erasure covers
    before = await services.privacy.find_async(subject)
    assert before["dead_letters"] and before["cache"]
    tables = " ".join(before["state"])
    for table in (
        "identities",
        "profiles",
        "profile_versions",
        "applied_events",
        "profile_merges",
        "profile_predictions",
        "segment_members",
        "content_exposures",
        "experiment_assignments",
    ):
        assert f"state: {table} " in tables, (table, before["state"])
    assert search_state(services.db, needles)
    if "cache_url" in engines:
        # the search can find them: the stream holds their events before the erasure
        assert await redis_holds(engines, needles)

    answer = await harness.client.delete(f"/v1/profiles/{ANON}", headers=harness.admin)
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "pending" and set(accepted) == {"requestId", "status"}
    # asked again while it is pending: the same request
    again = await harness.client.delete(f"/v1/profiles/{ANON}", headers=harness.admin)
    assert again.json()["requestId"] == accepted["requestId"]

    assert await services.privacy.run_async() == {"done": 1, "pending": 0, "failed": 0}
    status = await harness.client.get(
        f"/v1/privacy/requests/{accepted['requestId']}", headers=harness.admin
    )
    assert status.status_code == 200, status.text
    request = status.json()
    assert request["status"] == "done" and request["finishedAt"]
    # every store the runtime erases took its step (a new store joins this list)
    assert {name: step["status"] for name, step in request["steps"].items()} == {
        "event_log": "done",
        "state": "done",
        "cache": "done",
        "dead_letters": "done",
        "lake": "done",
        "derived_files": "done",
    }
    assert request["steps"]["state"]["result"]["deleted"]["profiles"] == 1
    assert request["steps"]["dead_letters"]["result"] == {"deleted": 1}

    assert await services.privacy.find_async(subject) == {
        "event_log": [],
        "state": [],
        "cache": [],
        "dead_letters": [],
        "lake": [],
        "derived_files": [],
    }
    assert search_state(services.db, needles) == []
    assert await redis_holds(engines, needles) == []
    assert await services.cache.get(cache_key(ANON)) is None
    # the other person is untouched
    other = await harness.client.get(f"/v1/profiles/{OTHER}", headers=harness.admin)
    assert other.status_code == 200 and other.json()["segments"]
    gone = await harness.client.get(f"/v1/profiles/{USER}", headers=harness.admin)
    assert_error(gone, 404, "profile_not_found")


async def test_erased_ids_are_suppressed_and_counted_until_unsuppressed(
    harness: Harness,
) -> None:
    await seed(harness)
    services = harness.services
    await call_erase(harness, USER)
    logged = len(await harness.logged())
    answer = await send(
        harness,
        [
            {"type": "track", "userId": USER, "event": "Product Viewed"},
            {"type": "page", "anonymousId": ANON, "name": "Home"},
            {"type": "alias", "userId": "someone-new", "previousId": OLD_ANON},
            # invalid and suppressed: not kept as a dead letter either
            {"type": "track", "userId": USER},
            {"type": "track", "userId": OTHER, "event": "Product Viewed"},
        ],
    )
    assert answer == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "suppressed": 4,
    }
    single = await harness.client.post(
        "/v1/track", json={"userId": USER, "event": "Clicked"}, headers=harness.auth
    )
    assert single.status_code == 200 and single.json() == {"success": True}
    assert len(await harness.logged()) == logged + 1
    assert services.collector.suppressed == 5
    await settle(harness)
    assert services.privacy.resolve(USER).profile_ids == frozenset()
    assert services.failed_events.list() == []

    # a process started after the erasure reads the list before its first event
    services.suppressions._hashes = frozenset()  # as a fresh process has it before start
    assert services.suppressions.refresh() == len(services.suppressions._hashes) >= 3
    assert services.suppressions.is_suppressed(ANON)

    missing = await harness.client.delete(
        "/v1/privacy/suppressions/never-seen", headers=harness.admin
    )
    assert_error(missing, 404, "not_suppressed")
    lifted = await harness.client.delete(f"/v1/privacy/suppressions/{USER}", headers=harness.admin)
    assert lifted.status_code == 200 and lifted.json() == {"unsuppressed": True}
    answer = await send(
        harness,
        [
            {"type": "track", "userId": USER, "event": "Product Viewed"},
            {"type": "page", "anonymousId": ANON, "name": "Home"},
        ],
    )
    assert answer == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "suppressed": 1,
    }
    await settle(harness)
    back = await harness.client.get(f"/v1/profiles/{USER}", headers=harness.admin)
    assert back.status_code == 200 and back.json()["profileId"] == USER


async def call_erase(harness: Harness, identity: str) -> dict[str, Any]:
    answer = await harness.client.delete(f"/v1/profiles/{identity}", headers=harness.admin)
    assert answer.status_code == 202, answer.text
    await harness.services.privacy.run_async()
    request = harness.services.privacy.requests.get(answer.json()["requestId"])
    assert request.status == "done", request
    return request.to_dict()


async def test_export_holds_every_part(harness: Harness) -> None:
    await seed(harness)
    response = await harness.client.get(f"/v1/profiles/{OLD_ANON}/export", headers=harness.admin)
    assert response.status_code == 200, response.text
    document = response.json()
    for part in PARTS:
        assert document[part], part
    assert document["profile"][0]["profile_id"] == USER
    assert document["profile"][0]["state"]["traits"]["plan"]
    assert {m["segment_key"] for m in document["memberships"]} == {"pros"}
    assert document["predictions"][0]["value"] == {"probability": 0.4}
    assert document["decisions"][0]["placement_id"] == "home-hero"
    assert document["experiments"][0]["experiment_key"] == "hero-test"
    assert document["history"]["merges"] and document["history"]["versions"]
    assert document["deadLetters"][0]["payload"]["userId"] == USER
    lake_ids = {(e["user_id"], e["anonymous_id"]) for e in document["lakeEvents"]}
    assert (None, ANON) in lake_ids and (USER, None) in lake_ids
    assert all(OTHER not in (e["user_id"], e["user_key"]) for e in document["lakeEvents"])
    recorded = harness.services.privacy.requests.get(document["requestId"])
    assert recorded.kind == "export" and recorded.status == "done"
    nobody = await harness.client.get("/v1/profiles/nobody-at-all/export", headers=harness.admin)
    assert_error(nobody, 404, "profile_not_found")


async def test_a_request_survives_a_restart(tmp_path: Path, clock: FrozenClock) -> None:
    data = tmp_path / "data"
    async with running_app(
        data, clock=clock, cache_invalidation_ttl_s=0.01, **NO_RETENTION
    ) as harness:
        await send(harness, [{"type": "identify", "userId": USER, "anonymousId": ANON}])
        await settle(harness)
        request = harness.services.privacy.submit(ANON)
        assert harness.services.suppressions.is_stored(USER)
    async with running_app(
        data, clock=clock, cache_invalidation_ttl_s=0.01, **NO_RETENTION
    ) as harness:
        # a new process: the id is suppressed from its first event, the request is still due
        assert harness.services.suppressions.is_suppressed(ANON)
        assert await harness.services.privacy.run_async() == {"done": 1, "pending": 0, "failed": 0}
        done = harness.services.privacy.requests.get(request.id)
        assert done.status == "done" and done.steps["state"]["result"]["deleted"]["profiles"] == 1
        assert search_state(harness.services.db, frozenset({USER, ANON})) == []


class _Flaky:
    """A store that is down the first ``failures`` times it is asked to erase."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.erased: list[Subject] = []

    def erase(self, subject: Subject) -> dict[str, Any]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the store is down")
        self.erased.append(subject)
        return {"deleted": 1}

    def find(self, subject: Subject) -> list[str]:
        return [] if self.erased else ["flaky: something"]


def _job(harness: Harness, clock: FrozenClock, flaky: _Flaky, **options: Any) -> ErasureJob:
    services = harness.services
    return ErasureJob(
        ErasureRequests(services.db, services.hasher, clock=clock),
        [StateEraser(services.db), CacheEraser(services.cache, invalidation_ttl_s=0.0), flaky],
        db=services.db,
        hasher=services.hasher,
        suppressions=services.suppressions,
        clock=clock,
        **options,
    )


async def test_a_failed_step_is_retried_and_the_steps_done_stay_done(
    tmp_path: Path, clock: FrozenClock
) -> None:
    async with running_app(tmp_path / "data", clock=clock, **NO_RETENTION) as harness:
        await send(harness, [{"type": "identify", "userId": USER, "anonymousId": ANON}])
        await settle(harness)
        flaky = _Flaky(failures=1)
        job = _job(harness, clock, flaky, retry_s=30.0, max_attempts=3)
        request = job.submit(USER)
        assert await job.run_async() == {"done": 0, "pending": 1, "failed": 0}
        after_crash = job.requests.get(request.id)
        assert after_crash.status == "pending" and "the store is down" in (after_crash.error or "")
        assert after_crash.steps["state"]["status"] == "done"
        assert after_crash.steps["flaky"]["status"] == "failed"
        # not due before its retry time
        assert await job.run_async() == {"done": 0, "pending": 0, "failed": 0}
        clock.advance(31)
        assert await job.run_async() == {"done": 1, "pending": 0, "failed": 0}
        done = job.requests.get(request.id)
        assert done.steps["state"] == after_crash.steps["state"]
        assert done.attempts == 2 and done.error is None
        # the subject kept with the request found the ids after the state step erased them
        assert {USER, ANON} <= flaky.erased[0].ids
        # erasing again is idempotent
        assert StateEraser(harness.services.db).erase(flaky.erased[0]) == {"deleted": {}}


async def test_a_step_failing_every_time_fails_the_request_and_a_new_submit_reopens_it(
    tmp_path: Path, clock: FrozenClock
) -> None:
    async with running_app(tmp_path / "data", clock=clock, **NO_RETENTION) as harness:
        flaky = _Flaky(failures=2)
        job = _job(harness, clock, flaky, retry_s=1.0, max_attempts=2)
        request = job.submit(USER)
        await job.run_async()
        clock.advance(2)
        assert await job.run_async() == {"done": 0, "pending": 0, "failed": 1}
        assert job.requests.get(request.id).status == "failed"
        reopened = job.submit(USER)
        assert reopened.id == request.id and reopened.status == "pending"
        assert await job.run_async() == {"done": 1, "pending": 0, "failed": 0}


async def test_a_request_left_running_by_a_dead_process_is_taken_over(
    tmp_path: Path, clock: FrozenClock
) -> None:
    async with running_app(tmp_path / "data", clock=clock, **NO_RETENTION) as harness:
        flaky = _Flaky(failures=0)
        job = _job(harness, clock, flaky, stale_after_s=600.0)
        request = job.submit(USER)
        # a process claimed it and died before any step
        assert job.requests.claim(request.id, stale_after_s=600.0) is not None
        assert await job.run_async() == {"done": 0, "pending": 0, "failed": 0}
        clock.advance(601)
        assert await job.run_async() == {"done": 1, "pending": 0, "failed": 0}
        assert job.requests.get(request.id).attempts == 2


async def test_dead_letters_match_whole_ids_only(tmp_path: Path) -> None:
    async with running_app(tmp_path / "data", **NO_RETENTION) as harness:
        await send(
            harness,
            [{"type": "track", "userId": "u1"}, {"type": "track", "userId": "u10"}],
        )
        eraser = DeadLetterEraser(harness.services.db)
        assert eraser.erase(Subject.of("u1")) == {"deleted": 1}
        left = harness.services.failed_events.list()
        assert [item.payload["userId"] for item in left] == ["u10"]


async def test_a_store_that_must_wait_keeps_the_request_open_until_its_time(
    tmp_path: Path, clock: FrozenClock
) -> None:
    """With the lake's vacuum retention, the removed files stay until it passes: the lake
    step waits, the request stays pending until then, and the other stores are done."""
    async with running_app(
        tmp_path / "data", clock=clock, run_lake_sink=True, cache_invalidation_ttl_s=0.01
    ) as harness:
        await seed(harness)
        answer = await harness.client.delete(f"/v1/profiles/{USER}", headers=harness.admin)
        request_id = answer.json()["requestId"]
        assert await harness.services.privacy.run_async() == {
            "done": 0,
            "pending": 1,
            "failed": 0,
        }
        status = (
            await harness.client.get(f"/v1/privacy/requests/{request_id}", headers=harness.admin)
        ).json()
        assert status["status"] == "pending"
        steps = {name: step["status"] for name, step in status["steps"].items()}
        assert steps.pop("lake") == "waiting" and set(steps.values()) == {"done"}
        assert status["steps"]["lake"]["result"]["rows_deleted"] > 0
        assert status["steps"]["lake"]["result"]["remains"]["rerun_after"]
