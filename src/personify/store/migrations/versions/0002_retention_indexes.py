"""Indexes the retention job prunes by: applied_events by apply time, profile_versions by
change time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

Only indexes are added, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("applied_events_applied", "applied_events", ["applied_at_ms"])
    op.create_index("profile_versions_changed", "profile_versions", ["changed_at"])


def downgrade() -> None:
    op.drop_index("profile_versions_changed", table_name="profile_versions")
    op.drop_index("applied_events_applied", table_name="applied_events")
