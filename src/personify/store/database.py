"""The state database engine, built from ``PERSONIFY_STATE_URL``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from personify.errors import BackendUnavailable, ConfigurationError
from personify.registry import scheme_of
from personify.store import migrations
from personify.wal import use_wal

if TYPE_CHECKING:
    from personify.settings import Settings


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time we store is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def state_unavailable(exc: sa.exc.DBAPIError) -> BackendUnavailable:
    """The error for a state database that cannot be reached, opened or written (HTTP 503)."""
    return BackendUnavailable(
        f"the state database is unreachable: {exc.orig}", code="state_unavailable"
    )


def is_unavailable(exc: sa.exc.DBAPIError) -> bool:
    """Whether a driver error means the database is down or cut off, not that a statement failed.

    ``OperationalError`` (refused, reset, locked, out of space) and ``InterfaceError`` (a
    connection the driver already found closed) are the engine's state; any error on a
    connection SQLAlchemy has just invalidated is too. Integrity and data errors are not.
    """
    return (
        isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
        or exc.connection_invalidated
    )


@contextlib.contextmanager
def reachable() -> Iterator[None]:
    """Turn a driver error that means the state database is down into ``BackendUnavailable``.

    Repositories read and write inside it, so every route answers 503 (with ``Retry-After``)
    and never 500 when the database goes away, whichever query it was on.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if is_unavailable(exc):
            raise state_unavailable(exc) from exc
        raise


# serialization_failure, deadlock_detected: PostgreSQL aborted the transaction because of a
# concurrent one; running it again succeeds
_LOST_RACE_SQLSTATES = frozenset({"40001", "40P01"})


def lost_a_race(exc: sa.exc.DBAPIError) -> bool:
    """Whether the engine aborted the transaction for a concurrent one (retry it at once)."""
    return getattr(exc.orig, "sqlstate", None) in _LOST_RACE_SQLSTATES


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _postgresql_session(dbapi_conn: Any, _record: Any) -> None:
    # psycopg prepares a statement after five runs, and PostgreSQL then soon settles on one
    # generic plan for it. Planned while a table was still empty, that plan scans the table:
    # the worker's `event_key IN (...)` lookup then grew slower with every batch (0.4 s ->
    # 12 s per 10,000 events). Custom plans keep the index, and the parse is still saved.
    cursor = dbapi_conn.cursor()
    cursor.execute("SET plan_cache_mode = force_custom_plan")
    cursor.close()
    # SET inside the driver's implicit transaction would be undone by the pool's rollback
    dbapi_conn.commit()


class Database:
    """One SQLAlchemy engine for the system of record, plus its migrations."""

    def __init__(self, url: str, *, auto_upgrade: bool = True) -> None:
        self.url = url
        scheme = scheme_of(url)
        if scheme == "sqlite":
            parsed = make_url(url)
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, connect_args={"timeout": 10})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        elif scheme == "postgresql":
            if "+" not in make_url(url).drivername:
                url = url.replace("postgresql://", "postgresql+psycopg://", 1)
            try:
                self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10)
            except ModuleNotFoundError as exc:
                raise ConfigurationError(
                    "the postgresql:// state database needs psycopg: pip install 'personify[postgres]'",
                    code="missing_extra",
                ) from exc
            sa.event.listen(self.engine, "connect", _postgresql_session)
        else:
            raise ConfigurationError(
                f"no state database for {scheme}:// (use sqlite:// or postgresql://)",
                code="unknown_backend",
            )
        self.dialect = scheme
        if auto_upgrade:
            self.upgrade()

    def upgrade(self) -> list[str]:
        """Run the pending migrations; returns the revisions applied, oldest first."""
        with reachable():
            return migrations.upgrade(self.engine)

    @contextlib.contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection for reads; a database that is down raises ``BackendUnavailable``."""
        with reachable(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A connection in a transaction committed at the end (rolled back on error); a
        database that is down raises ``BackendUnavailable``."""
        with reachable(), self.engine.begin() as conn:
            yield conn

    def ping(self) -> None:
        """One ``SELECT 1`` round trip (a readiness probe); a database that is down raises
        ``BackendUnavailable``."""
        with self.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def copy_rows(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) with PostgreSQL's ``COPY … FROM STDIN``.

    Part of ``conn``'s transaction. Driver errors come out as SQLAlchemy's (a duplicate key
    is ``IntegrityError``, a lost connection ``OperationalError``), as from ``execute``.
    """
    if conn.dialect.name != "postgresql":
        raise ConfigurationError("COPY is PostgreSQL's", code="unsupported_backend")
    # psycopg's connection (the only PostgreSQL driver we use), whose cursors copy
    driver: Any = conn.connection.dbapi_connection
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(
            statement, None, exc, conn.dialect.loaded_dbapi.Error
        ) from exc


def open_database(settings: Settings, *, auto_upgrade: bool = True) -> Database:
    """The state database the settings name, migrated to the latest schema."""
    return Database(settings.resolved_state_url, auto_upgrade=auto_upgrade)
