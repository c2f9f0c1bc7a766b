"""The state database's one ``MetaData``, its shared column types, and the tables store owns.

Each package defines its own tables on ``metadata`` in its ``tables`` module (``profiles/
tables.py``, ``auth/tables.py``…); ``personify.store.migrations.TABLE_MODULES`` names them all,
so Alembic's comparison sees the whole schema while no import runs up the layers.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData()


class Timestamp(sa.types.TypeDecorator[datetime]):
    """A point in time: written as UTC and read back timezone-aware UTC on every engine.

    SQLite keeps a datetime as text and drops its offset (``14:00+02:00`` would be stored as
    ``14:00``), and PostgreSQL answers in the session's time zone; converting at this one
    place makes comparisons and round trips mean the same instant everywhere.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Naive values are taken as UTC; aware ones are converted to it."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Aware UTC, whatever the driver handed back."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# A 64-bit auto-increment row id on every engine. PostgreSQL's plain INTEGER (SERIAL) stops at
# 2**31 - 1; SQLite only auto-increments a column declared INTEGER (its integers are 64-bit).
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

failed_events = sa.Table(
    "failed_events",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("source_id", sa.String(64), nullable=True),
    sa.Column("message_id", sa.String(512), nullable=True),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("replayed_at", Timestamp(), nullable=True),
    sa.Index("failed_events_stage_id", "stage", "id"),
)
