"""Rate limits: the ``RateLimiter`` contract on every backend, then the collector's 429s
through the real app.

The ``limiter`` fixture yields a started limiter of each backend on a frozen clock; Redis is
the one at ``PERSONIFY_TEST_REDIS_URL`` (127.0.0.1:6379), skipped when absent unless
``PERSONIFY_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from personify.auth.ratelimit import (
    MemoryRateLimiter,
    RateDecision,
    RateLimiter,
    RedisRateLimiter,
    enforce,
    open_rate_limiter,
    refusal,
)
from personify.clock import FrozenClock
from personify.errors import ConfigurationError, RateLimited
from personify.http_errors import error_parts
from tests.api import assert_error, basic_auth, running_app
from tests.conftest import make_settings, service_missing
from tests.e2e.conftest import free_port
from tests.tcp_proxy import TcpProxy

REDIS_URL = os.environ.get("PERSONIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


async def redis_answers(url: str) -> str | None:
    """``None`` when Redis at ``url`` answers a PING, else why not."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        return f"Redis is unavailable at {url}: {exc}"
    finally:
        await client.aclose()
    return None


async def drop_keys(url: str, pattern: str) -> None:
    """Delete a test's bucket keys."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, clock: FrozenClock) -> AsyncIterator[RateLimiter]:
    """A started limiter of each backend, on the frozen clock, with keys of its own."""
    if request.param == "memory":
        memory = MemoryRateLimiter(clock=clock)
        await memory.start()
        yield memory
        await memory.close()
        return
    reason = await redis_answers(REDIS_URL)
    if reason is not None:
        service_missing(reason)
    prefix = f"personify-test-{uuid.uuid4().hex[:12]}:"
    # these tests are about the buckets: a Redis slowed by a loaded machine must not make a
    # take fail open (the 0.25 s production timeout has tests of its own)
    redis = RedisRateLimiter(REDIS_URL, prefix=prefix, clock=clock, timeout_s=5.0)
    await redis.start()
    try:
        yield redis
    finally:
        await redis.close()
        await drop_keys(REDIS_URL, f"{prefix}*")


async def take_all(limiter: RateLimiter, key: str, n: int, **limits: float) -> list[RateDecision]:
    rate, burst = limits["rate_per_s"], int(limits["burst"])
    return [await limiter.take(key, rate_per_s=rate, burst=burst) for _ in range(n)]


# -- the contract --------------------------------------------------------------------


async def test_the_protocol_is_implemented(limiter: RateLimiter) -> None:
    assert isinstance(limiter, RateLimiter)


async def test_the_burst_is_admitted_then_refused_until_the_clock_refills_it(
    limiter: RateLimiter, clock: FrozenClock
) -> None:
    decisions = await take_all(limiter, "wk:a", 6, rate_per_s=10.0, burst=5)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    # the refused take took nothing: still refused with the clock where it is
    assert not (await limiter.take("wk:a", rate_per_s=10.0, burst=5)).allowed
    clock.advance(0.1)  # one token at 10 a second
    assert (await limiter.take("wk:a", rate_per_s=10.0, burst=5)).allowed
    assert not (await limiter.take("wk:a", rate_per_s=10.0, burst=5)).allowed
    clock.advance(3600)  # a long idle refills to the burst, never beyond
    decisions = await take_all(limiter, "wk:a", 6, rate_per_s=10.0, burst=5)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]


async def test_keys_have_independent_buckets(limiter: RateLimiter) -> None:
    assert [d.allowed for d in await take_all(limiter, "wk:a", 3, rate_per_s=1.0, burst=2)] == [
        True,
        True,
        False,
    ]
    assert all(d.allowed for d in await take_all(limiter, "wk:b", 2, rate_per_s=1.0, burst=2))
    assert all(d.allowed for d in await take_all(limiter, "ak:a", 2, rate_per_s=1.0, burst=2))


async def test_the_decision_carries_limit_remaining_retry_after_and_reset(
    limiter: RateLimiter, clock: FrozenClock
) -> None:
    for _ in range(3):
        decision = await limiter.take("ak:k", rate_per_s=2.0, burst=5)
    assert decision == RateDecision(
        allowed=True, limit=5, remaining=2, retry_after_s=0.0, reset_s=pytest.approx(1.5)
    )
    # a cost of 3 with 2 left: refused, nothing taken, a token short at 2 a second
    refused = await limiter.take("ak:k", rate_per_s=2.0, burst=5, cost=3)
    assert not refused.allowed
    assert refused.limit == 5
    assert refused.remaining == 2
    assert refused.retry_after_s == pytest.approx(0.5)
    assert refused.reset_s == pytest.approx(1.5)
    clock.advance(0.5)
    after = await limiter.take("ak:k", rate_per_s=2.0, burst=5, cost=3)
    assert after.allowed
    assert after.remaining == 0
    assert after.reset_s == pytest.approx(2.5)


async def test_a_clock_that_steps_back_refills_nothing(
    limiter: RateLimiter, clock: FrozenClock
) -> None:
    await take_all(limiter, "wk:c", 2, rate_per_s=1.0, burst=2)
    clock.advance(-30)
    assert not (await limiter.take("wk:c", rate_per_s=1.0, burst=2)).allowed
    # back where it was: still no refill (the later stamp was kept)
    clock.advance(30)
    assert not (await limiter.take("wk:c", rate_per_s=1.0, burst=2)).allowed
    clock.advance(1)
    assert (await limiter.take("wk:c", rate_per_s=1.0, burst=2)).allowed


async def test_impossible_takes_are_refused_as_errors(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="cost"):
        await limiter.take("wk:x", rate_per_s=1.0, burst=2, cost=3)
    with pytest.raises(ValueError, match="cost"):
        await limiter.take("wk:x", rate_per_s=1.0, burst=2, cost=0)
    with pytest.raises(ValueError, match="rate_per_s"):
        await limiter.take("wk:x", rate_per_s=0.0, burst=2)
    with pytest.raises(ValueError, match="rate_per_s"):
        await limiter.take("wk:x", rate_per_s=float("nan"), burst=2)


async def test_concurrent_takes_never_admit_more_than_the_burst(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(
        *(limiter.take("wk:race", rate_per_s=0.001, burst=10) for _ in range(60))
    )
    assert sum(d.allowed for d in decisions) == 10
    # every admitted take saw a different number left: none was counted twice
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))


async def test_enforce_raises_rate_limited_with_the_header_values(limiter: RateLimiter) -> None:
    assert await enforce(limiter, "ak:e", rate_per_s=0.25, burst=2) is not None
    await enforce(limiter, "ak:e", rate_per_s=0.25, burst=2)
    with pytest.raises(RateLimited) as caught:
        await enforce(limiter, "ak:e", rate_per_s=0.25, burst=2)
    error = caught.value
    assert (error.limit, error.remaining, error.retry_after_s, error.reset_s) == (2, 0, 4, 8)
    assert "API key" in error.message and "PERSONIFY_RATE_LIMIT_API_KEY_PER_S" in error.message
    status, body, headers = error_parts(error)
    assert status == 429
    assert msgspec.json.decode(body)["error"]["code"] == "rate_limited"
    assert headers == {
        "retry-after": "4",
        "ratelimit-limit": "2",
        "ratelimit-remaining": "0",
        "ratelimit-reset": "8",
    }


async def test_enforce_without_a_limiter_admits_everything() -> None:
    assert await enforce(None, "wk:any", rate_per_s=1.0, burst=1) is None


def test_retry_after_rounds_up_to_a_whole_second_of_at_least_one() -> None:
    decision = RateDecision(allowed=False, limit=9, remaining=0, retry_after_s=0.01, reset_s=2.2)
    error = refusal("wk:s", decision)
    assert (error.retry_after_s, error.reset_s) == (1, 3)
    assert "write key" in error.message


# -- memory: bounded ------------------------------------------------------------------


async def test_memory_forgets_full_buckets_and_stays_under_its_bound(clock: FrozenClock) -> None:
    limiter = MemoryRateLimiter(clock=clock, max_buckets=100, sweep_interval_s=60.0)
    for i in range(1000):
        await limiter.take(f"wk:{i}", rate_per_s=1.0, burst=10)
        assert len(limiter) <= 100
    # the most recently used is remembered; the oldest were forgiven when the bound was hit
    assert (await limiter.take("wk:999", rate_per_s=1.0, burst=10)).remaining == 8
    assert (await limiter.take("wk:0", rate_per_s=1.0, burst=10)).remaining == 9
    clock.advance(61)  # every bucket refilled: the sweep drops them all but the new one
    await limiter.take("wk:new", rate_per_s=1.0, burst=10)
    assert len(limiter) == 1


# -- Redis: failures never take the API down ---------------------------------------------


async def test_redis_down_at_start_allows_and_counts(clock: FrozenClock) -> None:
    # a port where nothing listens
    limiter = RedisRateLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0", clock=clock)
    await limiter.start()  # no raise
    try:
        decisions = await take_all(limiter, "wk:d", 5, rate_per_s=1.0, burst=1)
    finally:
        await limiter.close()
    assert all(d.allowed for d in decisions)
    assert limiter.failures == 5


async def test_redis_that_goes_away_allows_and_counts_then_limits_again(
    clock: FrozenClock,
) -> None:
    reason = await redis_answers(REDIS_URL)
    if reason is not None:
        service_missing(reason)
    target = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
    proxy = TcpProxy(target[0], int(target[1]))
    proxy.start()
    prefix = f"personify-test-{uuid.uuid4().hex[:12]}:"
    limiter = RedisRateLimiter.from_url(
        f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}", clock=clock
    )
    await limiter.start()
    try:
        assert [d.allowed for d in await take_all(limiter, "wk:g", 2, rate_per_s=1.0, burst=1)] == [
            True,
            False,
        ]
        assert limiter.failures == 0
        proxy.stop()
        started = time.monotonic()
        decisions = await take_all(limiter, "wk:g", 20, rate_per_s=1.0, burst=1)
        assert all(d.allowed for d in decisions)
        assert limiter.failures == 20
        # one take waited for Redis at most; the others were let through at once
        assert time.monotonic() - started < 1.0
        proxy.start()
        # past the back-off, Redis is asked again: 1.5 s at 1 a second refilled its bucket
        clock.advance(1.5)
        back = await take_all(limiter, "wk:g", 2, rate_per_s=1.0, burst=1)
        assert [d.allowed for d in back] == [True, False]
        assert limiter.failures == 20
    finally:
        proxy.stop()
        await limiter.close()
        await drop_keys(REDIS_URL, f"{prefix}*")


async def test_redis_keys_expire_when_their_bucket_would_be_full(clock: FrozenClock) -> None:
    reason = await redis_answers(REDIS_URL)
    if reason is not None:
        service_missing(reason)
    import redis.asyncio as aioredis

    prefix = f"personify-test-{uuid.uuid4().hex[:12]}:"
    limiter = RedisRateLimiter.from_url(f"{REDIS_URL}?prefix={prefix}&ttl_s=5", clock=clock)
    await limiter.start()
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await take_all(limiter, "wk:t", 3, rate_per_s=2.0, burst=4)
        ttl_ms = await client.pttl(f"{prefix}ratelimit:wk:t")
        # 3 tokens short at 2 a second: full in 1.5 s
        assert 1000 < ttl_ms <= 1501
        await take_all(limiter, "wk:fast", 1, rate_per_s=1000.0, burst=1)
        await asyncio.sleep(0.05)
        assert await client.exists(f"{prefix}ratelimit:wk:fast") == 0
    finally:
        await client.aclose()
        await limiter.close()
        await drop_keys(REDIS_URL, f"{prefix}*")


# -- choosing the backend --------------------------------------------------------------


def test_the_backend_follows_the_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert open_rate_limiter(make_settings(data, rate_limit_enabled=False)) is None
    assert isinstance(open_rate_limiter(make_settings(data)), MemoryRateLimiter)
    on_redis = open_rate_limiter(make_settings(data, cache_url=f"{REDIS_URL}?prefix=p:"))
    assert isinstance(on_redis, RedisRateLimiter)
    assert on_redis.prefix == "p:ratelimit:"
    forced = make_settings(data, cache_url=REDIS_URL, rate_limit_backend="memory")
    assert isinstance(open_rate_limiter(forced), MemoryRateLimiter)
    with pytest.raises(ConfigurationError, match="PERSONIFY_CACHE_URL"):
        open_rate_limiter(make_settings(data, rate_limit_backend="redis"))


# -- through the app: the collector's 429 -------------------------------------------------


def track(n: int) -> dict[str, object]:
    return {"type": "track", "event": "Clicked", "userId": "u1", "messageId": f"m-{n}"}


async def test_the_collector_answers_429_after_the_burst(
    tmp_path: Path, clock: FrozenClock
) -> None:
    async with running_app(
        tmp_path / "data",
        clock=clock,
        rate_limit_write_key_per_s=0.5,
        rate_limit_write_key_burst=3,
    ) as harness:
        for n in range(2):
            response = await harness.client.post("/v1/track", json=track(n), headers=harness.auth)
            assert response.status_code == 200, response.text
        # a batch of five costs one token, like a single event
        batch = {"batch": [track(10 + i) for i in range(5)]}
        response = await harness.client.post("/v1/batch", json=batch, headers=harness.auth)
        assert response.status_code == 200, response.text

        refused = await harness.client.post("/v1/track", json=track(99), headers=harness.auth)
        body = assert_error(refused, 429, "rate_limited")
        assert "write key" in body["message"]
        assert refused.headers["retry-after"] == "2"
        assert refused.headers["ratelimit-limit"] == "3"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-reset"] == "6"
        # the browser reads a 429 it is allowed to see
        assert refused.headers["access-control-allow-origin"] == "*"
        refused_batch = {"batch": [track(100), track(101)]}
        response = await harness.client.post("/v1/batch", json=refused_batch, headers=harness.auth)
        assert_error(response, 429, "rate_limited")

        # another write key has a bucket of its own
        _, other_key = harness.services.sources.create("other")
        response = await harness.client.post(
            "/v1/track", json=track(200), headers=basic_auth(other_key)
        )
        assert response.status_code == 200, response.text

        kept = {e["messageId"] for e in await harness.logged()}
        assert kept == {"m-0", "m-1", *(f"m-{10 + i}" for i in range(5)), "m-200"}

        clock.advance(2.0)  # one token back at 0.5 a second
        response = await harness.client.post("/v1/track", json=track(300), headers=harness.auth)
        assert response.status_code == 200, response.text
        assert harness.services.rate_limiter is not None


async def test_no_limit_when_rate_limits_are_off(tmp_path: Path) -> None:
    async with running_app(
        tmp_path / "data", rate_limit_enabled=False, rate_limit_write_key_burst=1
    ) as harness:
        assert harness.services.rate_limiter is None
        for n in range(5):
            response = await harness.client.post("/v1/track", json=track(n), headers=harness.auth)
            assert response.status_code == 200, response.text
