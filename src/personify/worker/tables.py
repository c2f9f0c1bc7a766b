"""The tables the stream worker owns: heartbeats."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import Timestamp, metadata

worker_heartbeats = sa.Table(
    "worker_heartbeats",
    metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("group_name", sa.String(200), nullable=False),
    sa.Column("started_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
    sa.Column("events_applied", sa.BigInteger, nullable=False),
    sa.Column("duplicates", sa.BigInteger, nullable=False),
    sa.Column("events_failed", sa.BigInteger, nullable=False),
    sa.Column("events_per_s", sa.Float, nullable=False),
    sa.Column("lag", sa.BigInteger, nullable=True),
)
