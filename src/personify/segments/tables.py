"""The tables segments own: definitions with their versions, memberships with their history,
the outbox of membership events, when each profile's windows next change, backfills, and
RFM runs."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import RowId, Timestamp, metadata

# one row per segment; ``revision`` is a number that grows with every change of any segment,
# so the worker notices a change with one cheap query per batch
segment_definitions = sa.Table(
    "segment_definitions",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("condition", sa.Text, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)

# every version of every definition, as it was saved
segment_versions = sa.Table(
    "segment_versions",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("condition", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("saved_at", Timestamp(), nullable=False),
)

# one row per stay of a profile in a segment: open while ``exited_at`` is null
segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("segment_key", sa.String(200), nullable=False),
    sa.Column("profile_id", sa.String(512), nullable=False),
    sa.Column("segment_version", sa.Integer, nullable=False),
    sa.Column("entered_at", Timestamp(), nullable=False),
    sa.Column("entry_reason", sa.String(32), nullable=False),
    sa.Column("exited_at", Timestamp(), nullable=True),
    sa.Column("exit_reason", sa.String(32), nullable=True),
    sa.Index("segment_members_profile", "profile_id", "exited_at"),
    sa.Index("segment_members_segment", "segment_key", "exited_at", "profile_id"),
)

# membership events written in the transaction that changed the membership, appended to the
# event log after it commits (and deleted once appended)
segment_outbox = sa.Table(
    "segment_outbox",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("partition_key", sa.String(512), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)

# when a profile's windowed counters next lose an event: the sweep re-evaluates it then
segment_due = sa.Table(
    "segment_due",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("due_ms", sa.BigInteger, nullable=False),
    sa.Index("segment_due_time", "due_ms"),
)

# a pass that evaluates every stored profile again after definitions changed (a new or edited
# rule): one row per saved version, served by whichever pass started after it was saved
segment_backfills = sa.Table(
    "segment_backfills",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("segment_key", sa.String(200), nullable=False),
    sa.Column("segment_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("done", sa.BigInteger, nullable=False),
    sa.Column("requested_at", Timestamp(), nullable=False),
    sa.Column("started_at", Timestamp(), nullable=True),
    sa.Column("updated_at", Timestamp(), nullable=True),
    sa.Column("finished_at", Timestamp(), nullable=True),
    sa.Index("segment_backfills_key", "segment_key", "id"),
    sa.Index("segment_backfills_status", "status", "id"),
)

# RFM runs: the quintile cut points of every buyer's recency, frequency and monetary figures,
# and the lake version they were read from (``personify.segments.rfm``)
rfm_runs = sa.Table(
    "rfm_runs",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("computed_at", Timestamp(), nullable=False),
    sa.Column("buyers", sa.BigInteger, nullable=False),
    sa.Column("cut_points", sa.Text, nullable=False),
    sa.Column("lake_version", sa.BigInteger, nullable=True),
)

# clusterings: named sets of segments discovered from data (``personify.segments.clusterings``)
clusterings = sa.Table(
    "clusterings",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    # the spec as JSON: features, algorithm, k, kRange, pca, sampleSize, seed
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("schedule", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # names people gave clusters, by cluster key (JSON): they survive reruns
    sa.Column("names", sa.Text, nullable=False),
    sa.Column("current_run", sa.Integer, nullable=True),
    sa.Column("next_run_at", Timestamp(), nullable=True),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)

# every run of a clustering, numbered from 1: its model, report and lineage
clustering_runs = sa.Table(
    "clustering_runs",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("clustering_key", sa.String(100), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("restored_from", sa.Integer, nullable=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=True),
    sa.Column("report", sa.Text, nullable=True),
    sa.Column("lineage", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("requested_at", Timestamp(), nullable=False),
    sa.Column("started_at", Timestamp(), nullable=True),
    sa.Column("finished_at", Timestamp(), nullable=True),
    sa.UniqueConstraint("clustering_key", "number", name="clustering_runs_number"),
    sa.Index("clustering_runs_status", "status", "id"),
)

# each profile's cluster in a run, as its place in the run's model keys (null: noise), kept so
# that a rollback restores it exactly
clustering_assignments = sa.Table(
    "clustering_assignments",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("cluster", sa.SmallInteger, nullable=True),
    sa.Column("is_user", sa.Boolean, nullable=False),
)
