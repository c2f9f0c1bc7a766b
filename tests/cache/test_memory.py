"""The in-process cache: least-recently-used eviction by entries and by bytes, and expiry on an
injectable clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from personify.cache.base import open_cache
from personify.cache.memory import MemoryCache
from personify.clock import FrozenClock
from personify.errors import ConfigurationError
from personify.settings import Settings


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2024, 1, 1, tzinfo=UTC))


async def test_least_recently_used_entries_are_evicted_first(clock: FrozenClock) -> None:
    cache = MemoryCache(max_entries=3, clock=clock)
    for key in "abc":
        await cache.set(key, key.encode())
    assert await cache.get("a") == b"a"  # a is now the most recently used
    await cache.set("d", b"d")
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]
    assert len(cache) == 3


async def test_the_bytes_bound_evicts_the_least_recently_used(clock: FrozenClock) -> None:
    # each entry: a 1-byte key, 800 bytes of value and the 200 bytes of overhead counted
    cache = MemoryCache(max_bytes=3_003, clock=clock)
    for key in "abc":
        await cache.set(key, key.encode() * 800)
    assert cache.size_bytes == 3_003
    assert await cache.get("a") == b"a" * 800  # a is now the most recently used
    await cache.set("d", b"d" * 800)
    assert await cache.get("b") is None
    assert len(cache) == 3 and cache.size_bytes == 3_003
    # a bigger value for a kept key pushes out the oldest others, never itself
    await cache.set("a", b"a" * 2_500)
    assert [await cache.get(k) is not None for k in "acd"] == [True, False, False]
    assert cache.size_bytes == 2_701
    # a value over the whole bound is still kept, alone
    await cache.set("huge", b"h" * 10_000)
    assert len(cache) == 1 and await cache.get("huge") is not None
    # expired, replaced and deleted entries give their bytes back
    await cache.set("huge", b"small", ttl_s=1)
    assert cache.size_bytes == 4 + 5 + 200
    clock.advance(2)
    assert await cache.get("huge") is None
    assert cache.size_bytes == 0
    await cache.set_many({"x": b"1", "y": b"2"})
    assert await cache.delete(["x"]) == 1
    assert cache.size_bytes == 1 + 1 + 200
    await cache.close()
    assert cache.size_bytes == 0


async def test_entries_expire_after_their_ttl(clock: FrozenClock) -> None:
    cache = MemoryCache(default_ttl_s=60, clock=clock)
    await cache.set("default", b"1")
    await cache.set("short", b"2", ttl_s=5)
    clock.advance(6)
    assert await cache.get("short") is None
    assert await cache.get("default") == b"1"
    clock.advance(60)
    assert await cache.get("default") is None
    # an expired entry no longer blocks add
    assert await cache.add("default", b"3")


async def test_add_only_fills_an_empty_key(clock: FrozenClock) -> None:
    cache = MemoryCache(clock=clock)
    assert await cache.add("k", b"first")
    assert not await cache.add("k", b"second")
    assert await cache.get("k") == b"first"


async def test_delete_counts_live_entries(clock: FrozenClock) -> None:
    cache = MemoryCache(clock=clock)
    await cache.set_many({"a": b"1", "b": b"2"}, ttl_s=10)
    await cache.set("c", b"3", ttl_s=1)
    clock.advance(2)
    assert await cache.delete(["a", "c", "missing"]) == 1
    assert await cache.get("b") == b"2"


def test_memory_url_options_override_settings() -> None:
    settings = Settings(_env_file=None, cache_url="memory://?max_entries=7&ttl_s=1.5&max_mb=2")
    cache = open_cache(settings)
    assert isinstance(cache, MemoryCache)
    assert (cache.max_entries, cache.default_ttl_s, cache.max_bytes) == (7, 1.5, 2 * 1024 * 1024)
    defaults = open_cache(Settings(_env_file=None))
    assert isinstance(defaults, MemoryCache)
    assert (defaults.max_entries, defaults.max_bytes) == (1_000_000, 128 * 1024 * 1024)
    with pytest.raises(ConfigurationError):
        open_cache(settings, "memory://?max_entries=zero")
    with pytest.raises(ConfigurationError):
        MemoryCache(max_entries=0)
    with pytest.raises(ConfigurationError):
        MemoryCache(max_bytes=0)
