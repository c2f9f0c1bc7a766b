"""An index of profile merges by the profile merged away, for history reads as of a time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

A profile id can come back after its profile was merged away (``ProfileProcessor``); a read
of its history as of a time between the two checks whether it had been merged away then.
Only an index is added, so processes of the previous release keep running beside this one.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("profile_merges_from", "profile_merges", ["from_profile_id", "merged_at"])


def downgrade() -> None:
    op.drop_index("profile_merges_from", table_name="profile_merges")
