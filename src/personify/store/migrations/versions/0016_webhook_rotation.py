"""Webhooks out rotate their signing secret: the previous secret, and until when it signs
too (a second ``v1`` in the signature header).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Nullable columns only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision: str | None = "0015"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # a database adopted from before Alembic may have been made from newer table
    # definitions: add only what is missing
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("content_webhooks")}
    wanted: list[sa.Column[object]] = [
        sa.Column("previous_secret", sa.String(128), nullable=True),
        sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True),
    ]
    missing = [column for column in wanted if column.name not in present]
    if missing:
        with op.batch_alter_table("content_webhooks") as batch:
            for column in missing:
                batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("content_webhooks") as batch:
        batch.drop_column("previous_expires_at")
        batch.drop_column("previous_secret")
