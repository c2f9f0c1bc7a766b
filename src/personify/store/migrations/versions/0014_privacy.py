"""Data subject rights: the durable erasure and export requests, and the suppressed ids.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("identity", sa.String(512), nullable=True),
        sa.Column("identity_hash", sa.String(80), nullable=False),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("steps", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("next_attempt_at", _time(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Column("finished_at", _time(), nullable=True),
    )
    op.create_index("privacy_requests_identity", "privacy_requests", ["identity_hash", "status"])
    op.create_index("privacy_requests_status", "privacy_requests", ["status", "next_attempt_at"])
    op.create_table(
        "suppressions",
        sa.Column("id_hash", sa.String(80), primary_key=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(32), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_index("privacy_requests_status", table_name="privacy_requests")
    op.drop_index("privacy_requests_identity", table_name="privacy_requests")
    op.drop_table("privacy_requests")
