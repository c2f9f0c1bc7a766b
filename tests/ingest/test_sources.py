"""Sources and write keys in the real state database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from personify.clock import FrozenClock
from personify.errors import Conflict, NotFound, ValidationError
from personify.ingest.sources import SourceRepository
from personify.settings import Settings
from personify.store.database import Database, open_database
from tests.conftest import make_settings

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings)
    yield database
    database.dispose()


def test_create_returns_a_fresh_write_key_that_resolves(db: Database) -> None:
    repo = SourceRepository(db, clock=FrozenClock(NOW))
    source, key = repo.create("  website ")
    assert source.name == "website"
    assert source.is_active
    assert source.created_at == NOW
    assert key.startswith("wk_") and len(key) > 40
    assert source.write_key_prefix == key[:10]
    resolved = repo.resolve(key)
    assert resolved is not None and resolved.id == source.id
    _, other = repo.create("app")
    assert other != key


def test_write_keys_are_stored_hashed(db: Database, settings: Settings) -> None:
    repo = SourceRepository(db)
    _, key = repo.create("website")
    db.dispose()
    raw = b"".join(p.read_bytes() for p in settings.data_dir.glob("personify.db*"))
    assert key.encode() not in raw
    assert key[10:].encode() not in raw


def test_names_are_unique_and_not_blank(db: Database) -> None:
    repo = SourceRepository(db)
    repo.create("website")
    with pytest.raises(Conflict) as caught:
        repo.create("website")
    assert caught.value.code == "source_exists"
    with pytest.raises(ValidationError) as invalid:
        repo.create("   ")
    assert invalid.value.code == "invalid_name"


def test_get_by_id_or_name_and_list_oldest_first(db: Database) -> None:
    clock = FrozenClock(NOW)
    repo = SourceRepository(db, clock=clock)
    first, _ = repo.create("website")
    clock.advance(60)
    second, _ = repo.create("app")
    assert repo.get(first.id) == first
    assert repo.get("app") == second
    assert [s.name for s in repo.list()] == ["website", "app"]
    with pytest.raises(NotFound) as caught:
        repo.get("nope")
    assert caught.value.code == "source_not_found"


def test_revoke_stops_the_key_at_once_and_is_idempotent(db: Database) -> None:
    clock = FrozenClock(NOW)
    repo = SourceRepository(db, cache_ttl_s=60.0, clock=clock)
    source, key = repo.create("website")
    assert repo.resolve(key) is not None  # now cached
    clock.advance(5)
    revoked = repo.revoke("website")
    assert revoked.revoked_at == datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
    assert not revoked.is_active
    assert repo.resolve(key) is None
    clock.advance(5)
    assert repo.revoke(source.id).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        repo.revoke("nope")


def test_a_revocation_by_another_process_is_seen_after_the_cache_ttl(db: Database) -> None:
    api_side = SourceRepository(db, cache_ttl_s=0.0)
    cli_side = SourceRepository(db)
    _, key = api_side.create("website")
    assert api_side.resolve(key) is not None
    cli_side.revoke("website")
    assert api_side.resolve(key) is None


def test_resolve_cached_only_answers_from_the_cache(db: Database) -> None:
    repo = SourceRepository(db, cache_ttl_s=60.0)
    _, key = repo.create("website")
    assert repo.resolve_cached(key) == (False, None)
    source = repo.resolve(key)
    assert repo.resolve_cached(key) == (True, source)
    assert repo.resolve("wk_unknown") is None
    assert repo.resolve_cached("wk_unknown") == (True, None)


def test_a_key_looked_up_before_it_existed_resolves_once_created(db: Database) -> None:
    repo = SourceRepository(db, cache_ttl_s=60.0)
    assert repo.resolve("wk_chosen-key") is None
    source, key = repo.create("website", write_key="wk_chosen-key")
    assert key == "wk_chosen-key"
    resolved = repo.resolve(key)
    assert resolved is not None and resolved.id == source.id


def test_sources_survive_a_reopen(settings: Settings) -> None:
    first = open_database(settings)
    _, key = SourceRepository(first).create("website")
    first.dispose()
    second = open_database(settings)
    try:
        resolved = SourceRepository(second).resolve(key)
        assert resolved is not None and resolved.name == "website"
        with closing(sqlite3.connect(settings.data_dir / "personify.db")) as conn:
            assert conn.execute("SELECT count(*) FROM sources").fetchone() == (1,)
    finally:
        second.dispose()
