"""Every table of the state database, as SQLAlchemy Core metadata (portable SQL only)."""

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

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", Timestamp(), nullable=False),
)

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

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_prefix", sa.String(16), nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("revoked_at", Timestamp(), nullable=True),
)

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

# -- data quality and lineage (personify.quality) -------------------------------------------

quality_runs = sa.Table(
    "quality_runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("dataset", sa.String(1000), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    # the check results as a JSON list: one run is always read and shown whole
    sa.Column("results", sa.Text, nullable=False),
    sa.Column("lineage_id", sa.String(32), nullable=True),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Index("quality_runs_stage_created", "stage", "created_at"),
)

lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("lake_uri", sa.String(1000), nullable=True),
    sa.Column("lake_versions", sa.Text, nullable=False),
    sa.Column("time_start", Timestamp(), nullable=True),
    sa.Column("time_end", Timestamp(), nullable=True),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("code_version", sa.String(200), nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("output", sa.String(1000), nullable=True),
    sa.Column("row_count", sa.BigInteger, nullable=True),
    sa.Index("lineage_kind_created", "kind", "created_at"),
)

# -- profiles and the stream worker (issue 3) -------------------------------------------------
# Event times are epoch milliseconds in BIGINT columns: exact, portable and cheap to write on
# the worker's hot path. JSON documents are Text.

identities = sa.Table(
    "identities",
    metadata,
    sa.Column("identity", sa.String(512), primary_key=True),
    sa.Column("profile_id", sa.String(512), nullable=False),
    sa.Column("linked_at", Timestamp(), nullable=False),
    sa.Index("identities_profile", "profile_id"),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("first_seen_ms", sa.BigInteger, nullable=True),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
    sa.Column("personalization_allowed", sa.Boolean, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)

profile_versions = sa.Table(
    "profile_versions",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("changed_at", Timestamp(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("event_time_ms", sa.BigInteger, nullable=True),
    sa.Column("message_ids", sa.Text, nullable=False),
    sa.Column("diff", sa.Text, nullable=False),
    sa.Column("snapshot", sa.Text, nullable=True),
)

# one row per applied event: the exactly-once guard (event_key = "sourceId:messageId") and
# the profile's timeline (the event JSON as it was in the log)
applied_events = sa.Table(
    "applied_events",
    metadata,
    sa.Column("event_key", sa.String(600), primary_key=True),
    sa.Column("profile_id", sa.String(512), nullable=False),
    sa.Column("event_time_ms", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.String(512), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("applied_at_ms", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("applied_events_timeline", "profile_id", "event_time_ms", "event_key"),
)

profile_merges = sa.Table(
    "profile_merges",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("into_profile_id", sa.String(512), nullable=False),
    sa.Column("from_profile_id", sa.String(512), nullable=False),
    sa.Column("ids", sa.Text, nullable=False),
    sa.Column("message_ids", sa.Text, nullable=False),
    sa.Column("merged_at", Timestamp(), nullable=False),
    sa.Index("profile_merges_into", "into_profile_id", "merged_at"),
)

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
