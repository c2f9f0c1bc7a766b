"""The state databases segment tests run on: a real SQLite file, or that and a real
PostgreSQL schema of its own; and the membership events a test's changes left in the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from personify.segments.tables import segment_outbox
from personify.store.database import Database
from tests.postgres import fresh_schema, postgres_database

__all__ = ["outbox_events", "postgres_database"]


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        db = Database(fresh_schema(request.getfixturevalue("postgres_database")))
    yield db
    db.dispose()


def outbox_events(db: Database) -> list[dict[str, Any]]:
    """The membership events in the outbox, oldest first."""
    with db.connect() as conn:
        rows = conn.execute(sa.select(segment_outbox.c.payload).order_by(segment_outbox.c.id))
        return [msgspec.json.decode(payload) for payload in rows.scalars()]
