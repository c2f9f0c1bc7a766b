"""The content catalog: items and their versions, placements and theirs, webhooks and their
deliveries, and the exposures the frequency caps count.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

# written out, never taken from the live definitions (see 0001)
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "content_items",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("published_version", sa.Integer, nullable=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Column("published_at", _time(), nullable=True),
    )
    op.create_index("content_items_type", "content_items", ["type", "id"])
    op.create_table(
        "content_versions",
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("saved_at", _time(), nullable=False),
    )
    op.create_table(
        "placements",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
    )
    op.create_table(
        "placement_versions",
        sa.Column("placement_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("saved_at", _time(), nullable=False),
    )
    op.create_table(
        "content_webhooks",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("events", sa.String(200), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
    )
    op.create_table(
        "content_webhook_deliveries",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("webhook_id", sa.BigInteger, nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("item_version", sa.Integer, nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _time(), nullable=True),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("delivered_at", _time(), nullable=True),
    )
    op.create_index(
        "content_webhook_deliveries_due",
        "content_webhook_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "content_webhook_deliveries_webhook", "content_webhook_deliveries", ["webhook_id", "id"]
    )
    op.create_table(
        "content_exposures",
        sa.Column("decision_id", sa.String(64), primary_key=True),
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("profile_id", sa.String(512), nullable=False),
        sa.Column("placement_id", sa.String(200), nullable=False),
        sa.Column("exposed_at", _time(), nullable=False),
    )
    op.create_index(
        "content_exposures_profile", "content_exposures", ["profile_id", "item_id", "exposed_at"]
    )
    op.create_index("content_exposures_time", "content_exposures", ["exposed_at"])


def downgrade() -> None:
    op.drop_table("content_exposures")
    op.drop_table("content_webhook_deliveries")
    op.drop_table("content_webhooks")
    op.drop_table("placement_versions")
    op.drop_table("placements")
    op.drop_table("content_versions")
    op.drop_table("content_items")
