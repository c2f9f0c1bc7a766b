"""API keys with roles of their own scopes, an expiry, a last-used time, and a rotation's
overlap (the previous secret, valid until a time).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

Columns added as nullable, so processes of the previous release keep running beside this
one; keys of the old ``read`` role become ``analyst`` (what ``read`` allowed).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    # a database adopted from before Alembic (``BASELINE``) may have been made from newer
    # table definitions: add only what is missing
    inspector = sa.inspect(op.get_bind())
    present = {column["name"] for column in inspector.get_columns("api_keys")}
    indexes = {index["name"] for index in inspector.get_indexes("api_keys")}
    wanted: list[sa.Column[object]] = [
        sa.Column("expires_at", _time(), nullable=True),
        sa.Column("last_used_at", _time(), nullable=True),
        sa.Column("previous_hash", sa.String(64), nullable=True),
        sa.Column("previous_expires_at", _time(), nullable=True),
    ]
    missing = [column for column in wanted if column.name not in present]
    if missing or "api_keys_previous_hash" not in indexes:
        with op.batch_alter_table("api_keys") as batch:
            for column in missing:
                batch.add_column(column)
            if "api_keys_previous_hash" not in indexes:
                batch.create_index("api_keys_previous_hash", ["previous_hash"])
    op.execute("UPDATE api_keys SET role = 'analyst' WHERE role = 'read'")


def downgrade() -> None:
    op.execute("UPDATE api_keys SET role = 'read' WHERE role NOT IN ('admin', 'read')")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("api_keys_previous_hash")
        batch.drop_column("previous_expires_at")
        batch.drop_column("previous_hash")
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
