"""A real PostgreSQL for tests: one throw-away database per test session, a schema per test.

PostgreSQL must be running (``PERSONIFY_TEST_POSTGRES_URL``, by default
``postgresql://postgres@127.0.0.1:5432/test``: the maintenance connection, never written to).
The ``postgres_database`` fixture creates ``personify_<random>`` through it once per session
and drops it at the end; ``fresh_schema`` gives a test an empty schema in that database and
a URL whose connections use it (``search_path``), which is much cheaper than a database per
test. ``create_database`` / ``drop_database`` serve tests that start processes of their own.
Where PostgreSQL is absent, tests are skipped (or fail under PERSONIFY_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from tests.conftest import service_missing

if TYPE_CHECKING:
    import psycopg

POSTGRES_URL = os.environ.get(
    "PERSONIFY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def _admin_connection() -> psycopg.Connection[Any]:
    """An autocommit psycopg connection to the maintenance database (skips when unreachable)."""
    import psycopg

    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        service_missing(f"PostgreSQL is unavailable at {POSTGRES_URL}: {exc}")
        raise  # service_missing skips or fails; this line is never reached


def create_database(prefix: str = "personify") -> str:
    """Create an empty database with a unique name; returns its ``postgresql://`` URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(POSTGRES_URL, name)


def drop_database(url: str) -> None:
    """Drop the database ``url`` names, disconnecting whoever is still connected."""
    name = urlsplit(url).path.lstrip("/")
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_schema(database_url: str) -> str:
    """Create an empty schema in ``database_url``; returns a URL whose sessions work in it."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    # libpq's "options" sets search_path on every connection SQLAlchemy opens
    options = quote(f"-csearch_path={schema}")
    return f"{database_url}?options={options}"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a database made for this test session (dropped at its end)."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)
