"""An empty state database of each engine: a SQLite file, or a fresh PostgreSQL schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.postgres import fresh_schema, postgres_database

__all__ = ["postgres_database", "state_url"]


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty state database on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'personify.db'}"
    database: str = request.getfixturevalue("postgres_database")
    return fresh_schema(database)


@pytest.fixture
def state_url_postgresql(postgres_database: str) -> str:
    """The URL of an empty PostgreSQL schema."""
    return fresh_schema(postgres_database)
