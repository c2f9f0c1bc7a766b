"""The schema as the pre-Alembic ``create()`` migrations left it: sources and API keys, dead
letters, data quality and lineage, profiles and the stream worker.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

The DDL is written out here, never taken from the live table definitions: a later edit of a
table must come with a revision of its own, and must not change what this one does.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# a 64-bit auto-increment row id; SQLite only auto-increments a column declared INTEGER
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _sources() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("write_key_hash", sa.String(64), nullable=False),
        sa.Column("write_key_prefix", sa.String(16), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("write_key_hash"),
    )


def _api_keys() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )


def _failed_events() -> None:
    op.create_table(
        "failed_events",
        sa.Column("id", _ROW_ID, autoincrement=True, nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("source_id", sa.String(64), nullable=True),
        sa.Column("message_id", sa.String(512), nullable=True),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("replayed_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("failed_events_stage_id", "failed_events", ["stage", "id"])


def _quality_runs() -> None:
    op.create_table(
        "quality_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("dataset", sa.String(1000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("results", sa.Text(), nullable=False),
        sa.Column("lineage_id", sa.String(32), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("quality_runs_stage_created", "quality_runs", ["stage", "created_at"])


def _lineage() -> None:
    op.create_table(
        "lineage",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("lake_uri", sa.String(1000), nullable=True),
        sa.Column("lake_versions", sa.Text(), nullable=False),
        sa.Column("time_start", _time(), nullable=True),
        sa.Column("time_end", _time(), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("code_version", sa.String(200), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("output", sa.String(1000), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("lineage_kind_created", "lineage", ["kind", "created_at"])


def _identities() -> None:
    op.create_table(
        "identities",
        sa.Column("identity", sa.String(512), nullable=False),
        sa.Column("profile_id", sa.String(512), nullable=False),
        sa.Column("linked_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("identity"),
    )
    op.create_index("identities_profile", "identities", ["profile_id"])


def _profiles() -> None:
    op.create_table(
        "profiles",
        sa.Column("profile_id", sa.String(512), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=True),
        sa.Column("personalization_allowed", sa.Boolean(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id"),
    )


def _profile_versions() -> None:
    op.create_table(
        "profile_versions",
        sa.Column("profile_id", sa.String(512), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("changed_at", _time(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event_time_ms", sa.BigInteger(), nullable=True),
        sa.Column("message_ids", sa.Text(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("snapshot", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("profile_id", "version"),
    )


def _applied_events() -> None:
    op.create_table(
        "applied_events",
        sa.Column("event_key", sa.String(600), nullable=False),
        sa.Column("profile_id", sa.String(512), nullable=False),
        sa.Column("event_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.String(512), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("applied_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_key"),
    )
    op.create_index(
        "applied_events_timeline", "applied_events", ["profile_id", "event_time_ms", "event_key"]
    )


def _profile_merges() -> None:
    op.create_table(
        "profile_merges",
        sa.Column("id", _ROW_ID, autoincrement=True, nullable=False),
        sa.Column("into_profile_id", sa.String(512), nullable=False),
        sa.Column("from_profile_id", sa.String(512), nullable=False),
        sa.Column("ids", sa.Text(), nullable=False),
        sa.Column("message_ids", sa.Text(), nullable=False),
        sa.Column("merged_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("profile_merges_into", "profile_merges", ["into_profile_id", "merged_at"])


def _worker_heartbeats() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Column("events_applied", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("events_failed", sa.BigInteger(), nullable=False),
        sa.Column("events_per_s", sa.Float(), nullable=False),
        sa.Column("lag", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("consumer"),
    )


_TABLES: dict[str, Callable[[], None]] = {
    "sources": _sources,
    "api_keys": _api_keys,
    "failed_events": _failed_events,
    "quality_runs": _quality_runs,
    "lineage": _lineage,
    "identities": _identities,
    "profiles": _profiles,
    "profile_versions": _profile_versions,
    "applied_events": _applied_events,
    "profile_merges": _profile_merges,
    "worker_heartbeats": _worker_heartbeats,
}


def upgrade() -> None:
    """Create every table; when adopting a database made before Alembic, only those missing.

    The old ``create()`` migrations built these same tables in three steps, so a database they
    left part-way (before profiles, say) lacks some of them and holds the others with data.
    """
    adopting = bool(context.config.attributes.get("adopting_legacy", False))
    present = set(sa.inspect(op.get_bind()).get_table_names()) if adopting else set()
    for name, create in _TABLES.items():
        if name not in present:
            create()


def downgrade() -> None:
    """Drop every table (the data goes with them)."""
    for name in reversed(_TABLES):
        op.drop_table(name)
