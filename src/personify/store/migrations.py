"""Ordered, additive schema migrations. Each runs once; data survives every upgrade.

Add a migration by appending a function to ``MIGRATIONS``; never edit one that shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from personify.clock import SystemClock
from personify.store import tables


def _v1_foundation(conn: sa.Connection) -> None:
    for table in (tables.sources, tables.api_keys, tables.failed_events):
        table.create(conn, checkfirst=True)


def _lake_quality_and_lineage(conn: sa.Connection) -> None:
    for table in (tables.quality_runs, tables.lineage):
        table.create(conn, checkfirst=True)


def _profiles_and_worker(conn: sa.Connection) -> None:
    for table in (
        tables.identities,
        tables.profiles,
        tables.profile_versions,
        tables.applied_events,
        tables.profile_merges,
        tables.worker_heartbeats,
    ):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    _v1_foundation,
    _lake_quality_and_lineage,
    _profiles_and_worker,
]


# any constant: the PostgreSQL advisory lock that upgraders of one database take turns on
_UPGRADE_LOCK_KEY = 0x70657273  # "pers"


def _take_turns(conn: sa.Connection) -> None:
    """Hold the database's upgrade lock until this transaction ends.

    Several processes start at once in a deployment (API nodes, workers, ``--workers N``), each
    upgrading on start; without the lock two of them create the same table and one fails.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # the driver defers BEGIN to the first write; take the write lock before the first read
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def current_version(conn: sa.Connection) -> int:
    """The highest applied migration, 0 on an empty database."""
    tables.schema_version.create(conn, checkfirst=True)
    version = conn.execute(sa.select(sa.func.max(tables.schema_version.c.version))).scalar()
    return int(version or 0)


def upgrade(engine: sa.Engine) -> list[int]:
    """Apply every pending migration, each in its own transaction; returns the versions applied."""
    applied: list[int] = []
    with engine.begin() as conn:
        _take_turns(conn)
        version = current_version(conn)
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        with engine.begin() as conn:
            _take_turns(conn)
            # another process may have applied it meanwhile
            if current_version(conn) >= number:
                continue
            migration(conn)
            conn.execute(
                tables.schema_version.insert().values(
                    version=number, applied_at=SystemClock().now()
                )
            )
        applied.append(number)
    return applied
