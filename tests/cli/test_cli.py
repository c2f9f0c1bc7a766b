"""The ``personify`` command line, run in-process with click's runner on a temporary data dir."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import msgspec

from personify.auth.keys import ApiKeyRepository
from personify.eventlog.base import LogRecord, open_eventlog
from personify.ingest.sources import SourceRepository
from personify.store.database import open_database
from personify.store.migrations import head
from tests.cli.conftest import Invoke, ok
from tests.conftest import make_settings


def test_sources_create_prints_a_write_key_that_works(run: Invoke, data_dir: Path) -> None:
    output = ok(run("sources", "create", "website"))
    match = re.search(r"write key: (\S+)", output)
    assert match, output
    key = match.group(1)
    db = open_database(make_settings(data_dir))
    try:
        source = SourceRepository(db).resolve(key)
        assert source is not None and source.name == "website"
        assert source.id in output
    finally:
        db.dispose()


def test_sources_list_and_revoke(run: Invoke) -> None:
    ok(run("sources", "create", "website"))
    ok(run("sources", "create", "app"))
    listing = ok(run("sources", "list"))
    lines = listing.strip().splitlines()
    assert len(lines) == 2
    assert "website" in lines[0] and "active" in lines[0]
    assert "app" in lines[1]
    assert "revoked source website" in ok(run("sources", "revoke", "website"))
    lines = ok(run("sources", "list")).strip().splitlines()
    assert "revoked" in lines[0] and "active" in lines[1]


def test_a_duplicate_source_name_exits_1(run: Invoke) -> None:
    ok(run("sources", "create", "website"))
    result = run("sources", "create", "website")
    assert result.exit_code == 1
    assert "error [source_exists]" in result.output


def test_revoking_an_unknown_source_exits_1(run: Invoke) -> None:
    result = run("sources", "revoke", "nope")
    assert result.exit_code == 1
    assert "error [source_not_found]" in result.output


def test_keys_create_list_and_revoke(run: Invoke, data_dir: Path) -> None:
    output = ok(run("keys", "create", "ops", "--role", "read"))
    match = re.search(r"api key: (\S+)", output)
    assert match, output
    secret = match.group(1)
    assert "role analyst" in output
    db = open_database(make_settings(data_dir))
    try:
        repo = ApiKeyRepository(db, cache_ttl_s=0)
        key = repo.resolve(secret)
        assert key is not None and key.role == "analyst"
        listing = ok(run("keys", "list"))
        assert "ops" in listing and "analyst" in listing and "active" in listing
        assert "never used" not in listing and "no expiry" in listing
        assert secret not in listing
        rotated = ok(run("keys", "rotate", "ops", "--overlap", "0s"))
        fresh = re.search(r"api key: (\S+)", rotated)
        assert fresh and "rotated key ops" in rotated
        repo = ApiKeyRepository(db, cache_ttl_s=0)
        assert repo.resolve(secret) is None and repo.resolve(fresh.group(1)) is not None
        expiring = ok(run("keys", "create", "temp", "--role", "viewer", "--expires-in", "7d"))
        assert "role viewer, expires" in expiring
        secret = fresh.group(1)
        assert "revoked key ops" in ok(run("keys", "revoke", "ops"))
        assert repo.resolve(secret) is None
        assert "revoked" in ok(run("keys", "list"))
    finally:
        db.dispose()


def test_keys_default_to_admin_and_reject_unknown_roles(run: Invoke) -> None:
    assert "role admin" in ok(run("keys", "create", "root"))
    result = run("keys", "create", "x", "--role", "superuser")
    assert result.exit_code == 2


def test_revoking_an_unknown_key_exits_1(run: Invoke) -> None:
    result = run("keys", "revoke", "nope")
    assert result.exit_code == 1
    assert "error [key_not_found]" in result.output


def test_events_tail_prints_the_newest_events(run: Invoke, data_dir: Path) -> None:
    async def seed() -> None:
        log = open_eventlog(make_settings(data_dir))
        await log.start()
        try:
            await log.append(
                [
                    LogRecord(msgspec.json.encode({"messageId": f"m{i}", "type": "track"}), "k")
                    for i in range(5)
                ]
            )
        finally:
            await log.close()

    asyncio.run(seed())
    lines = ok(run("events", "tail", "-n", "3")).strip().splitlines()
    assert [msgspec.json.decode(line)["messageId"] for line in lines] == ["m2", "m3", "m4"]


def test_events_tail_on_an_empty_log_prints_nothing(run: Invoke) -> None:
    assert ok(run("events", "tail")) == ""


def test_db_upgrade_applies_migrations_once(run: Invoke) -> None:
    assert f"(now at {head()})" in ok(run("db", "upgrade"))
    assert f"schema is up to date (at {head()})" in ok(run("db", "upgrade"))


def test_help_lists_the_commands(run: Invoke) -> None:
    output = ok(run("--help"))
    for command in ("serve", "sources", "keys", "events", "db"):
        assert command in output
