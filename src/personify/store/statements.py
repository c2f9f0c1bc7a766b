"""Statements compiled once and run through the driver's ``executemany``, for hot paths.

SQLAlchemy's per-row parameter handling costs more than SQLite's insert itself where a batch
writes thousands of rows (the stream worker, the segment stage), so rows go to the driver
directly, with the dialect's own bind processors (e.g. datetimes on SQLite) applied to the
columns that have one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = [
    "CompiledStatement",
    "Statements",
    "dialect_insert",
    "insert_skipping_taken",
    "insert_without_id",
]


def insert_without_id(table: sa.Table) -> sa.Insert:
    """An insert of every column but ``id``, bound by column name: the id is the database's
    to assign (``executemany`` of rows without one)."""
    return table.insert().values({c.name: sa.bindparam(c.name) for c in table.c if c.name != "id"})


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """``dialect``'s own insert into ``table`` (``sqlite`` or ``postgresql``): the one that
    can say ``ON CONFLICT DO NOTHING`` / ``DO UPDATE``."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise ValueError(f"no ON CONFLICT insert for the {dialect!r} dialect")


def insert_skipping_taken(dialect: str, table: sa.Table) -> sa.Insert:
    """An insert that leaves out each row whose key a stored row holds already (``ON
    CONFLICT DO NOTHING``): rows a redelivery brings again cost no read first."""
    return dialect_insert(dialect, table).on_conflict_do_nothing()  # type: ignore[no-any-return]


class CompiledStatement:
    """A statement compiled once for one dialect, with its bind processors."""

    def __init__(self, conn: sa.Connection, statement: sa.ClauseElement) -> None:
        compiled: Any = statement.compile(dialect=conn.dialect)
        self.sql = str(compiled)
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None
        self.processors: dict[str, Any] = {
            name: _remember_last(processor) for name, processor in compiled._bind_processors.items()
        }

    def params(self, row: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """``row`` (by bind name) as the driver takes it, processed."""
        processors = self.processors
        if self.order is None:
            if not processors:
                return row
            return {k: processors[k](v) if k in processors else v for k, v in row.items()}
        if not processors:
            return tuple([row[name] for name in self.order])
        return tuple(
            [
                processors[name](row[name]) if name in processors else row[name]
                for name in self.order
            ]
        )


def _remember_last(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``processor`` with its last answer kept: a batch binds one ``now`` on every row."""
    last: list[Any] = [_NOTHING, None]

    def process(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, processor(value)
        return last[1]

    return process


_NOTHING = object()


class Statements:
    """Compiled statements by name (one cache per owner), run with ``executemany``."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, Any], CompiledStatement] = {}

    def compiled(
        self, conn: sa.Connection, name: Any, build: Callable[[], sa.ClauseElement]
    ) -> CompiledStatement:
        """The statement ``build`` makes, compiled once for ``conn``'s dialect."""
        key = (conn.dialect.name, name)
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._cache[key] = CompiledStatement(conn, build())
        return compiled

    def run(
        self,
        conn: sa.Connection,
        name: str,
        build: Callable[[], sa.ClauseElement],
        rows: list[dict[str, Any]],
    ) -> int:
        """Execute the statement once per row (one ``executemany``); returns rows matched."""
        if not rows:
            return 0
        compiled = self.compiled(conn, name, build)
        params = [compiled.params(row) for row in rows]
        return int(conn.exec_driver_sql(compiled.sql, params).rowcount)

    def run_tuples(
        self,
        conn: sa.Connection,
        name: str,
        build: Callable[[], sa.ClauseElement],
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """``run`` for rows given as tuples in ``columns`` order (no dict per row)."""
        if not rows:
            return
        compiled = self.compiled(conn, name, build)
        if compiled.order == columns and not compiled.processors:
            conn.exec_driver_sql(compiled.sql, rows)
            return
        self.run(conn, name, build, [dict(zip(columns, row, strict=True)) for row in rows])
