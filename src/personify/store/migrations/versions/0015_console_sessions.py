"""The console's sessions: a cookie's hash, who signed in with which role, the CSRF token.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

A new table only, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("expires_at", _time(), nullable=False),
    )
    op.create_index("console_sessions_expires", "console_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("console_sessions_expires", table_name="console_sessions")
    op.drop_table("console_sessions")
