"""Segments: definitions and their versions, memberships with history, the membership
events' outbox, when each profile's windows next change, backfills, and RFM runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# written out, never taken from the live definitions (see 0001)
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segment_definitions",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("condition", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
    )
    op.create_table(
        "segment_versions",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("condition", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("saved_at", _time(), nullable=False),
    )
    op.create_table(
        "segment_members",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("segment_key", sa.String(200), nullable=False),
        sa.Column("profile_id", sa.String(512), nullable=False),
        sa.Column("segment_version", sa.Integer, nullable=False),
        sa.Column("entered_at", _time(), nullable=False),
        sa.Column("entry_reason", sa.String(32), nullable=False),
        sa.Column("exited_at", _time(), nullable=True),
        sa.Column("exit_reason", sa.String(32), nullable=True),
    )
    op.create_index("segment_members_profile", "segment_members", ["profile_id", "exited_at"])
    op.create_index(
        "segment_members_segment", "segment_members", ["segment_key", "exited_at", "profile_id"]
    )
    op.create_table(
        "segment_outbox",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("partition_key", sa.String(512), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_table(
        "segment_due",
        sa.Column("profile_id", sa.String(512), primary_key=True),
        sa.Column("due_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("segment_due_time", "segment_due", ["due_ms"])
    op.create_table(
        "segment_backfills",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("segment_key", sa.String(200), nullable=False),
        sa.Column("segment_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("done", sa.BigInteger, nullable=False),
        sa.Column("requested_at", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("updated_at", _time(), nullable=True),
        sa.Column("finished_at", _time(), nullable=True),
    )
    op.create_index("segment_backfills_key", "segment_backfills", ["segment_key", "id"])
    op.create_index("segment_backfills_status", "segment_backfills", ["status", "id"])
    op.create_table(
        "rfm_runs",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("computed_at", _time(), nullable=False),
        sa.Column("buyers", sa.BigInteger, nullable=False),
        sa.Column("cut_points", sa.Text, nullable=False),
        sa.Column("lake_version", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rfm_runs")
    op.drop_table("segment_backfills")
    op.drop_table("segment_due")
    op.drop_table("segment_outbox")
    op.drop_table("segment_members")
    op.drop_table("segment_versions")
    op.drop_table("segment_definitions")
