"""The tables ingest owns: the sources and their write keys, and the signed webhooks in."""

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

# a source that takes signed webhooks from a third party: its secrets (a keyring, JSON: every
# secret verifies, the newest is the one to give the sender) and how payloads map to events
inbound_webhooks = sa.Table(
    "inbound_webhooks",
    metadata,
    sa.Column("source_id", sa.String(64), primary_key=True),
    sa.Column("secrets", sa.Text, nullable=False),
    sa.Column("mapping", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)

# signature ids seen within the timestamp tolerance: a replay of one is refused
inbound_webhook_replays = sa.Table(
    "inbound_webhook_replays",
    metadata,
    sa.Column("signature_id", sa.String(128), primary_key=True),
    sa.Column("source_id", sa.String(64), nullable=False),
    sa.Column("seen_at", Timestamp(), nullable=False),
    sa.Index("inbound_webhook_replays_seen", "seen_at"),
)
