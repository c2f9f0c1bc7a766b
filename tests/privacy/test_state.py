"""The state eraser's coverage: every table of the schema with a column named like a person's
id is erased or says why it is not, so a new store without erasure fails here."""

from __future__ import annotations

import sqlalchemy as sa

from personify.privacy.state import (
    ERASED_COLUMNS,
    NOT_PER_USER,
    coverage_gaps,
    per_user_tables,
)
from personify.store.migrations import target_metadata


def test_every_per_user_table_of_the_schema_is_erased_or_explained() -> None:
    assert coverage_gaps() == []
    found = per_user_tables()
    # the map names real tables and real columns, each of which the walk finds
    for name, columns in ERASED_COLUMNS.items():
        table = target_metadata().tables[name]
        assert set(columns) <= {c.name for c in table.columns}, name
    for name in NOT_PER_USER:
        assert name in found, f"{name} is explained but has no per-user column"
    assert {"identities", "profiles", "segment_members", "experiment_assignments"} <= set(found)


def test_a_new_table_with_a_profile_id_column_fails_the_check() -> None:
    copy = sa.MetaData()
    for table in target_metadata().tables.values():
        table.to_metadata(copy)
    sa.Table(
        "loyalty_points",
        copy,
        sa.Column("profile_id", sa.String(512), primary_key=True),
        sa.Column("points", sa.Integer, nullable=False),
    )
    sa.Table("loyalty_tiers", copy, sa.Column("tier", sa.String(32), primary_key=True))
    assert coverage_gaps(copy) == ["loyalty_points.profile_id"]
    assert "loyalty_tiers" not in per_user_tables(copy)


def test_a_new_id_column_on_an_erased_table_fails_the_check_too() -> None:
    copy = sa.MetaData()
    for table in target_metadata().tables.values():
        table.to_metadata(copy)
    copy.tables["content_exposures"].append_column(sa.Column("anonymous_id", sa.String(512)))
    assert coverage_gaps(copy) == ["content_exposures.anonymous_id"]
