"""Recommendations: the worker's live counters (co-visitation, popularity, each profile's
recent items) and the learned index (runs, users' top items, items' similar items).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

New tables only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

# written out, never taken from the live definitions (see 0001)
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "recommend_items",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "recommend_pairs",
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("other_id", sa.String(200), primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "recommend_popularity",
        sa.Column("segment_key", sa.String(200), primary_key=True),
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("recommend_popularity_top", "recommend_popularity", ["segment_key", "score"])
    op.create_table(
        "recommend_profiles",
        sa.Column("profile_id", sa.String(512), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
    )
    op.create_table(
        "recommend_runs",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(32), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("lake_version", sa.BigInteger, nullable=True),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("as_of", _time(), nullable=False),
        sa.Column("users", sa.Integer, nullable=False),
        sa.Column("items", sa.Integer, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
    )
    op.create_table(
        "recommend_user_index",
        sa.Column("profile_id", sa.String(512), primary_key=True),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
    )
    op.create_table(
        "recommend_item_index",
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recommend_item_index")
    op.drop_table("recommend_user_index")
    op.drop_table("recommend_runs")
    op.drop_table("recommend_profiles")
    op.drop_table("recommend_popularity")
    op.drop_table("recommend_pairs")
    op.drop_table("recommend_items")
