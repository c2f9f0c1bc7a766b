"""The Alembic environment: runs the revisions on the connection it is handed.

``personify.store.migrations.upgrade`` passes an open connection in ``config.attributes``.
Run from the ``alembic`` command line (``alembic.ini`` at the repository root, for writing a
revision), it opens the database named by ``-x url=…`` instead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.runtime.migration import MigrationContext, MigrationInfo

from personify.store.database import Database
from personify.store.migrations import target_metadata
from personify.store.tables import Timestamp


def _render_item(kind: str, item: Any, autogen: AutogenContext) -> str | Literal[False]:
    # a revision freezes the DDL: our column types are written as the plain types they emit
    if kind == "type" and isinstance(item, Timestamp):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: sa.Connection) -> None:
    applied: list[str] = context.config.attributes.get("applied", [])

    def record(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        if step.is_upgrade:
            applied.append(step.up_revision_id or "")

    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        # SQLite alters most columns and constraints only by copying the table
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
        compare_type=True,
        on_version_apply=record,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection: sa.Connection | None = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("name the database: alembic -x url=sqlite:///path/to/personify.db …")
    db = Database(url, auto_upgrade=False)
    try:
        with db.engine.begin() as conn:
            _run(conn)
    finally:
        db.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported; run against a database")
_main()
