"""Predictions: model versions, promotions, monitoring checks and each profile's current
predictions.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

# written out, never taken from the live definitions (see 0001)
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "prediction_models",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("target_key", sa.String(300), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("horizon_days", sa.Float, nullable=False),
        sa.Column("event", sa.String(200), nullable=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("file", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("definitions", sa.String(64), nullable=False),
        sa.Column("lineage_id", sa.String(64), nullable=True),
        sa.Column("report", sa.Text, nullable=False),
        sa.Column("as_of", _time(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.UniqueConstraint("target_key", "number", name="prediction_models_number"),
    )
    op.create_table(
        "prediction_promotions",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("target_key", sa.String(300), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("model_id", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("promoted_at", _time(), nullable=False),
    )
    op.create_index("prediction_promotions_target", "prediction_promotions", ["target", "id"])
    op.create_table(
        "prediction_checks",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("model_id", sa.BigInteger, nullable=False),
        sa.Column("checked_at", _time(), nullable=False),
        sa.Column("alert", sa.Boolean, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
    )
    op.create_index("prediction_checks_target", "prediction_checks", ["target", "id"])
    op.create_table(
        "profile_predictions",
        sa.Column("profile_id", sa.String(512), primary_key=True),
        sa.Column("target", sa.String(16), primary_key=True),
        sa.Column("model_id", sa.BigInteger, nullable=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("scored_at", _time(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("profile_predictions")
    op.drop_table("prediction_checks")
    op.drop_table("prediction_promotions")
    op.drop_table("prediction_models")
