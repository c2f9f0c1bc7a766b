"""Write keys from hostile clients: bounded before any lookup, cached by digest, in a bounded cache.

2,500 requests with a different 400 KB ``writeKey`` each, all answered 401, once grew a
server by almost a gigabyte: the cache of unknown keys kept every raw key.
"""

from __future__ import annotations

import base64
import gc
import secrets
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from personify.auth.secrets import MAX_SECRET_CHARS
from personify.errors import ValidationError
from personify.ingest.sources import SourceRepository
from personify.store.database import Database, open_database
from tests.api import Harness, assert_error, basic_auth, running_app
from tests.conftest import make_settings
from tests.e2e.conftest import make_server

HUGE_KEY_CHARS = 400 * 1024


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", auth_cache_ttl_s=60) as h:
        yield h


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(make_settings(tmp_path / "data"))
    yield database
    database.dispose()


def huge_key() -> str:
    """A distinct write key of 400 KB, as the hostile client sent them."""
    return secrets.token_hex(16) + "k" * (HUGE_KEY_CHARS - 32)


async def test_distinct_oversized_keys_are_refused_and_never_cached(harness: Harness) -> None:
    event = b'{"type":"track","userId":"u1","event":"E"}'
    tracemalloc.start()
    try:
        for _ in range(60):
            body = b'{"writeKey":"%s","batch":[%s]}' % (huge_key().encode(), event)
            response = await harness.client.post(
                "/v1/batch", content=body, headers={"Content-Type": "text/plain"}
            )
            error = assert_error(response, 401, "invalid_write_key")
            assert error["details"] == {"maxChars": MAX_SECRET_CHARS}
            assert len(response.content) < 500
        del body, response
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert harness.services.sources.cached_keys == 0
    # the 60 keys are 24 MB; kept anywhere, even a few of them would show
    assert kept < 4 * HUGE_KEY_CHARS
    assert await harness.logged() == []


@pytest.mark.parametrize("chars", [MAX_SECRET_CHARS + 1, 4000, 30_000])
async def test_an_oversized_key_is_401_on_every_route_and_way_of_sending_it(
    harness: Harness, chars: int
) -> None:
    key = "k" * chars
    event = {"userId": "u1", "event": "E"}
    for path, body, headers in [
        ("/v1/track", {**event, "writeKey": key}, {}),
        ("/v1/batch", {"writeKey": key, "batch": [{**event, "type": "track"}]}, {}),
        ("/v1/track", event, basic_auth(key)),
        ("/v1/batch", {"batch": [{**event, "type": "track"}]}, basic_auth(key)),
    ]:
        response = await harness.client.post(path, json=body, headers=headers)
        assert_error(response, 401, "invalid_write_key")
    response = await harness.client.get(f"/v1/projects/{key}/settings")
    assert_error(response, 401, "invalid_write_key")
    assert harness.services.sources.cached_keys == 0
    assert await harness.logged() == []


async def test_a_key_at_the_bound_is_still_looked_up(tmp_path: Path) -> None:
    key = "wk_" + "x" * (MAX_SECRET_CHARS - 3)
    async with running_app(tmp_path / "data", write_key=key) as h:
        for headers, body in [
            (basic_auth(key), {"userId": "u1", "event": "E"}),
            ({}, {"writeKey": key, "userId": "u1", "event": "E"}),
        ]:
            response = await h.client.post("/v1/track", json=body, headers=headers)
            assert response.status_code == 200, response.text
        assert len(await h.logged()) == 2


async def test_basic_credentials_beyond_any_key_are_refused_unread(harness: Harness) -> None:
    user = "k" * (MAX_SECRET_CHARS * 8)
    token = base64.b64encode(f"{user}:".encode()).decode()
    response = await harness.client.post(
        "/v1/track",
        json={"userId": "u1", "event": "E"},
        headers={"Authorization": f"Basic {token}"},
    )
    assert_error(response, 401, "invalid_write_key")
    # not even base64 is looked at past the bound
    response = await harness.client.post(
        "/v1/track",
        json={"userId": "u1", "event": "E"},
        headers={"Authorization": "Basic " + "!" * 5000},
    )
    assert_error(response, 401, "invalid_write_key")


def test_a_flood_of_unknown_keys_keeps_the_cache_bounded_and_the_good_key(db: Database) -> None:
    repo = SourceRepository(db, cache_ttl_s=600.0)
    source, key = repo.create("website")
    assert repo.resolve(key) == source
    for i in range(12_000):
        assert repo.resolve(f"wk_unknown-{i:06d}-" + "x" * 200) is None
    assert repo.cached_keys <= 10_000
    # the flood pushed out unknown keys, never the key in use
    assert repo.resolve_cached(key) == (True, source)


def test_the_cache_holds_digests_not_keys(db: Database) -> None:
    repo = SourceRepository(db, cache_ttl_s=600.0)
    keys = [f"wk_{i:04d}-" + "z" * (MAX_SECRET_CHARS - 8) for i in range(2000)]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for key in keys:
            repo.resolve(key)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert repo.cached_keys == 2000
    # each key is 256 characters; an entry (a 64-character digest and its expiry) is far less
    assert after - before < len(keys) * sys.getsizeof(keys[0])


def test_sources_refuse_to_create_an_oversized_key(db: Database) -> None:
    repo = SourceRepository(db)
    with pytest.raises(ValidationError) as caught:
        repo.create("website", write_key="k" * (MAX_SECRET_CHARS + 1))
    assert caught.value.code == "write_key_too_long"
    assert repo.list() == []
    assert repo.resolve("k" * (MAX_SECRET_CHARS + 1)) is None
    assert repo.cached_keys == 0


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_oversized_keys_over_real_http_leave_the_server_memory_flat(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data")
    server.start()
    try:
        assert server.process is not None
        event = {"type": "track", "userId": "u1", "event": "E"}
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            # a warm-up, so that what the first requests allocate once is not counted
            for _ in range(10):
                client.post("/v1/batch", json={"writeKey": huge_key(), "batch": [event]})
            before = _rss_bytes(server.process.pid)
            for _ in range(250):
                response = client.post("/v1/batch", json={"writeKey": huge_key(), "batch": [event]})
                assert_error(response, 401, "invalid_write_key")
            after = _rss_bytes(server.process.pid)
            # the good key still works
            response = client.post(
                "/v1/batch", json={"batch": [event]}, auth=(server.write_key, "")
            )
            assert response.status_code == 200, response.text
        # 250 keys of 400 KB are 100 MB: kept, they would show
        assert after - before < 30 * 1024 * 1024, (before, after)
    finally:
        server.stop()
