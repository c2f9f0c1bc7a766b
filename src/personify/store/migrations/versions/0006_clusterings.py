"""Clusterings: their definitions, their runs (model, report, lineage) and each run's
assignments of profiles to clusters.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# written out, never taken from the live definitions (see 0001)
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "clusterings",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("schedule", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("current_run", sa.Integer, nullable=True),
        sa.Column("next_run_at", _time(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
    )
    op.create_table(
        "clustering_runs",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("clustering_key", sa.String(100), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("restored_from", sa.Integer, nullable=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("report", sa.Text, nullable=True),
        sa.Column("lineage", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("requested_at", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("finished_at", _time(), nullable=True),
        sa.UniqueConstraint("clustering_key", "number", name="clustering_runs_number"),
    )
    op.create_index("clustering_runs_status", "clustering_runs", ["status", "id"])
    op.create_table(
        "clustering_assignments",
        sa.Column("run_id", sa.BigInteger, primary_key=True),
        sa.Column("profile_id", sa.String(512), primary_key=True),
        sa.Column("cluster", sa.SmallInteger, nullable=True),
        sa.Column("is_user", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("clustering_assignments")
    op.drop_table("clustering_runs")
    op.drop_table("clusterings")
