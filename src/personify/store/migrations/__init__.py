"""Schema migrations: an Alembic environment inside the package, run programmatically.

``upgrade(engine)`` brings a database to the newest revision (``versions/``); every service
calls it at start and ``personify db upgrade`` runs it on demand. No ``alembic.ini`` is needed
at run time: the configuration is built here, with ``script_location`` pointing at this folder.

A database made by the ``create()`` migrations that came before Alembic (it has a
``schema_version`` table and no ``alembic_version``) is adopted: the tables it lacks are
created from the first revision's DDL, the tables it has are kept with their data, and it is
stamped at that revision before the rest of the chain runs.

Each package owns its tables, defined on ``personify.store.tables.metadata`` in its own
``tables`` module; ``TABLE_MODULES`` names those modules by import string, so the store can
gather the whole schema for Alembic's comparison without importing the layers above it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from personify.store.tables import metadata

__all__ = ["BASELINE", "TABLE_MODULES", "config", "current_revision", "head", "upgrade"]

# every module that defines tables of the state database; a package with tables adds its own
TABLE_MODULES = (
    "personify.store.tables",
    "personify.auth.tables",
    "personify.quality.tables",
    "personify.ingest.tables",
    "personify.profiles.tables",
    "personify.worker.tables",
    "personify.segments.tables",
    "personify.predict.tables",
    "personify.content.tables",
    "personify.recommend.tables",
    "personify.experiments.tables",
    "personify.privacy.tables",
)

# the first revision: the schema as the pre-Alembic migrations left it
BASELINE = "0001"
_LEGACY_TABLE = "schema_version"
_SCRIPTS = Path(__file__).parent

# any constant: the PostgreSQL advisory lock that upgraders of one database take turns on
_UPGRADE_LOCK_KEY = 0x70657273  # "pers"


def target_metadata() -> sa.MetaData:
    """The ``MetaData`` holding every table definition of every package."""
    for module in TABLE_MODULES:
        importlib.import_module(module)
    return metadata


def config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration for this package's migrations, run on ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def current_revision(conn: sa.Connection) -> str | None:
    """The revision the database is at; ``None`` when Alembic has not run on it."""
    return MigrationContext.configure(conn).get_current_revision()


def _take_turns(conn: sa.Connection) -> None:
    """Hold the database's upgrade lock until this transaction ends.

    Several processes start at once in a deployment (API nodes, workers, ``--workers N``), each
    upgrading on start; without the lock two of them create the same table and one fails.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # the driver defers BEGIN to the first write; take the write lock before the first read,
        # which also makes SQLite's DDL part of the transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _adopt_legacy(conn: sa.Connection, applied: list[str]) -> None:
    cfg = config(conn)
    cfg.attributes["adopting_legacy"] = True
    cfg.attributes["applied"] = applied
    command.upgrade(cfg, BASELINE)
    conn.execute(sa.text(f"DROP TABLE {_LEGACY_TABLE}"))


def upgrade(engine: sa.Engine) -> list[str]:
    """Run every pending revision in one transaction; returns the revisions applied, oldest first.

    Raises the driver's ``OperationalError`` when the database cannot be reached.
    """
    applied: list[str] = []
    with engine.begin() as conn:
        _take_turns(conn)
        present = set(sa.inspect(conn).get_table_names())
        if _LEGACY_TABLE in present and "alembic_version" not in present:
            _adopt_legacy(conn, applied)
        cfg = config(conn)
        cfg.attributes["applied"] = applied
        command.upgrade(cfg, "head")
    return applied
