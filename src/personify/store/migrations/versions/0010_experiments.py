"""Experiments: definitions and phases, sticky assignments, bandit allocations.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("stopped_at", _time(), nullable=True),
    )
    op.create_table(
        "experiment_phases",
        sa.Column("experiment_key", sa.String(200), primary_key=True),
        sa.Column("phase", sa.Integer, primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("ended_at", _time(), nullable=True),
    )
    op.create_table(
        "experiment_assignments",
        sa.Column("experiment_key", sa.String(200), primary_key=True),
        sa.Column("unit", sa.String(512), primary_key=True),
        sa.Column("variant", sa.String(200), nullable=False),
        sa.Column("phase", sa.Integer, nullable=False),
        sa.Column("first_exposed_at", _time(), nullable=False),
    )
    op.create_index("experiment_assignments_unit", "experiment_assignments", ["unit"])
    op.create_table(
        "experiment_allocations",
        sa.Column("experiment_key", sa.String(200), primary_key=True),
        sa.Column("context", sa.String(200), primary_key=True),
        sa.Column("allocation", sa.Text, nullable=False),
        sa.Column("statistics", sa.Text, nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("experiment_allocations")
    op.drop_index("experiment_assignments_unit", table_name="experiment_assignments")
    op.drop_table("experiment_assignments")
    op.drop_table("experiment_phases")
    op.drop_table("experiments")
