"""The tables quality owns: check runs and lineage records."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import Timestamp, metadata

quality_runs = sa.Table(
    "quality_runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("dataset", sa.String(1000), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    # the check results as a JSON list: one run is always read and shown whole
    sa.Column("results", sa.Text, nullable=False),
    sa.Column("lineage_id", sa.String(32), nullable=True),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Index("quality_runs_stage_created", "stage", "created_at"),
)

lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("lake_uri", sa.String(1000), nullable=True),
    sa.Column("lake_versions", sa.Text, nullable=False),
    sa.Column("time_start", Timestamp(), nullable=True),
    sa.Column("time_end", Timestamp(), nullable=True),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("code_version", sa.String(200), nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("output", sa.String(1000), nullable=True),
    sa.Column("row_count", sa.BigInteger, nullable=True),
    sa.Index("lineage_kind_created", "kind", "created_at"),
)
