"""The ``Cache`` contract: every backend must pass this module unchanged.

The ``cache`` fixture (``tests/contracts/conftest.py``) yields a started cache of every
backend in ``CACHE_BACKENDS``; an absent engine calls ``tests.conftest.service_missing``.
"""

from __future__ import annotations

import asyncio
import uuid

from personify.cache.base import Cache


def key(name: str) -> str:
    """A key no other test (or earlier run on a shared engine) uses."""
    return f"contract:{uuid.uuid4().hex}:{name}"


async def test_the_protocol_is_implemented(cache: Cache) -> None:
    assert isinstance(cache, Cache)


async def test_set_then_get_returns_the_bytes(cache: Cache) -> None:
    k = key("a")
    value = bytes(range(256))
    await cache.set(k, value)
    assert await cache.get(k) == value
    assert await cache.get(key("missing")) is None


async def test_set_overwrites(cache: Cache) -> None:
    k = key("a")
    await cache.set(k, b"1")
    await cache.set(k, b"2")
    assert await cache.get(k) == b"2"


async def test_add_stores_only_when_absent(cache: Cache) -> None:
    k = key("a")
    assert await cache.add(k, b"first")
    assert not await cache.add(k, b"second")
    assert await cache.get(k) == b"first"


async def test_concurrent_adds_store_exactly_one(cache: Cache) -> None:
    k = key("race")
    results = await asyncio.gather(*(cache.add(k, str(i).encode()) for i in range(20)))
    assert sum(results) == 1
    winner = results.index(True)
    assert await cache.get(k) == str(winner).encode()


async def test_set_many_and_delete(cache: Cache) -> None:
    keys = [key(str(i)) for i in range(5)]
    await cache.set_many({k: k.encode() for k in keys})
    assert [await cache.get(k) for k in keys] == [k.encode() for k in keys]
    assert await cache.delete([*keys[:3], key("absent")]) == 3
    assert [await cache.get(k) for k in keys] == [
        None,
        None,
        None,
        keys[3].encode(),
        keys[4].encode(),
    ]


async def test_values_expire_after_their_ttl(cache: Cache) -> None:
    short, long = key("short"), key("long")
    await cache.set(short, b"x", ttl_s=0.2)
    await cache.set_many({long: b"y"}, ttl_s=30)
    assert await cache.get(short) == b"x"
    await asyncio.sleep(0.4)
    assert await cache.get(short) is None
    assert await cache.get(long) == b"y"
    assert await cache.add(short, b"again", ttl_s=1)


async def test_get_many_returns_only_the_live_values(cache: Cache) -> None:
    present = [key(str(i)) for i in range(3)]
    short, missing = key("short"), key("missing")
    await cache.set_many({k: k.encode() for k in present})
    await cache.set(short, b"s", ttl_s=0.2)
    assert await cache.get_many([*present, short, missing]) == {
        **{k: k.encode() for k in present},
        short: b"s",
    }
    await asyncio.sleep(0.4)
    assert await cache.get_many([short, missing, present[0], present[0]]) == {
        present[0]: present[0].encode()
    }
    assert await cache.get_many([]) == {}


async def test_ping_answers_while_the_engine_is_up(cache: Cache) -> None:
    await cache.ping()
    await cache.set(key("p"), b"1")
    await cache.ping()
