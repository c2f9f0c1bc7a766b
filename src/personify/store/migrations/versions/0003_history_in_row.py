"""``profiles.history_in_row``: a profile at rest keeps its state once, in its row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

A column with a default (false: every existing history keeps its snapshots), so processes of
the previous release keep running beside this one until they are replaced (they write no
compacted history; only ``personify profiles prune`` of this release sets the flag).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "profiles",
        sa.Column("history_in_row", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # SQLite drops a column only by rebuilding the table, which batch mode does
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("history_in_row")
