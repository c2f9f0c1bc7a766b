"""The Redis cache: URL options, the key prefix, and what two processes sharing it see."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from personify.cache.base import open_cache
from personify.errors import BackendUnavailable, ConfigurationError
from personify.settings import Settings
from tests.conftest import make_settings, service_missing
from tests.contracts.conftest import REDIS_URL, drop_redis_keys

redis_cache = pytest.importorskip("personify.cache.redis")
RedisCache = redis_cache.RedisCache

pytestmark = pytest.mark.services


@pytest.fixture
def prefix() -> str:
    return f"personify-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def raw_redis(prefix: str) -> AsyncIterator[object]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except aioredis.RedisError as exc:
        await client.aclose()
        service_missing(f"Redis is unavailable at {REDIS_URL}: {exc}")
    yield client
    await client.aclose()
    await drop_redis_keys(REDIS_URL, f"{prefix}*")


def test_the_url_picks_the_adapter_and_its_options(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cache_ttl_s=42)
    cache = open_cache(settings, f"{REDIS_URL}?prefix=shop:&max_connections=8&socket_timeout=3")
    assert isinstance(cache, RedisCache)
    assert cache.prefix == "shop:"
    assert cache.default_ttl_s == 42
    # the adapter's own options are not handed to redis-py; redis-py's are
    assert "prefix" not in cache.url
    assert "max_connections=8" in cache.url
    assert "socket_timeout=3" in cache.url
    plain = RedisCache.from_url(f"{REDIS_URL}?ttl_s=5", settings)
    assert (plain.prefix, plain.default_ttl_s) == ("personify:", 5.0)
    with pytest.raises(ConfigurationError):
        RedisCache.from_url(f"{REDIS_URL}?ttl_s=soon", settings)
    with pytest.raises(ConfigurationError):
        RedisCache.from_url(f"{REDIS_URL}?ttl_s=0", settings)


async def test_keys_live_under_the_prefix_with_their_ttl(
    raw_redis: object, prefix: str, settings: Settings
) -> None:
    import redis.asyncio as aioredis

    assert isinstance(raw_redis, aioredis.Redis)
    cache = RedisCache.from_url(f"{REDIS_URL}?prefix={prefix}", settings)
    await cache.start()
    try:
        await cache.set("profile:a", b"1", ttl_s=30)
        await cache.set_many({"profile:b": b"2", "profile:c": b"3"}, ttl_s=10)
        assert await raw_redis.get(f"{prefix}profile:a") == b"1"
        assert 29_000 < await raw_redis.pttl(f"{prefix}profile:a") <= 30_000
        assert 9_000 < await raw_redis.pttl(f"{prefix}profile:c") <= 10_000
        assert await raw_redis.get("profile:a") is None
    finally:
        await cache.close()


async def test_two_processes_share_values_and_invalidations(
    raw_redis: object, prefix: str, settings: Settings
) -> None:
    url = f"{REDIS_URL}?prefix={prefix}"
    api, worker = RedisCache.from_url(url, settings), RedisCache.from_url(url, settings)
    await api.start()
    await worker.start()
    try:
        assert await api.add("profile:u", b"v1")
        assert await worker.get("profile:u") == b"v1"
        # the worker's marker wins over a reader's late fill of what it read before the commit
        await worker.set_many({"profile:u": b"invalidated"}, ttl_s=5)
        assert not await api.add("profile:u", b"v1-stale")
        assert await api.get_many(["profile:u", "profile:x"]) == {"profile:u": b"invalidated"}
        assert await worker.delete(["profile:u", "profile:u"]) == 1
    finally:
        await api.close()
        await worker.close()


async def test_an_unreachable_redis_is_backend_unavailable(settings: Settings) -> None:
    cache = RedisCache.from_url("redis://127.0.0.1:1/0?socket_connect_timeout=1", settings)
    with pytest.raises(BackendUnavailable) as caught:
        await cache.start()
    assert caught.value.code == "cache_unavailable"
    with pytest.raises(BackendUnavailable):
        await cache.get("anything")
