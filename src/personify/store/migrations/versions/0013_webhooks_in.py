"""Signed webhooks in: the sources that take them (secrets, mapping) and the signature ids
seen within the timestamp tolerance (replay protection).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "inbound_webhooks",
        sa.Column("source_id", sa.String(64), primary_key=True),
        sa.Column("secrets", sa.Text, nullable=False),
        sa.Column("mapping", sa.Text, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
    )
    op.create_table(
        "inbound_webhook_replays",
        sa.Column("signature_id", sa.String(128), primary_key=True),
        sa.Column("source_id", sa.String(64), nullable=False),
        sa.Column("seen_at", _time(), nullable=False),
    )
    op.create_index("inbound_webhook_replays_seen", "inbound_webhook_replays", ["seen_at"])


def downgrade() -> None:
    op.drop_index("inbound_webhook_replays_seen", table_name="inbound_webhook_replays")
    op.drop_table("inbound_webhook_replays")
    op.drop_table("inbound_webhooks")
