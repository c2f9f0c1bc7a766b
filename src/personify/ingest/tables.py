"""The tables ingest owns: the sources and their write keys."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import Timestamp, metadata

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("write_key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("write_key_prefix", sa.String(16), nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("revoked_at", Timestamp(), nullable=True),
)
