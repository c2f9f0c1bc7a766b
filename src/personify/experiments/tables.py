"""The tables experiments own: the experiments with their phases, the variant each unit was
exposed to (what keeps an assignment sticky), and the bandits' traffic allocations."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import Timestamp, metadata

# one row per experiment: its definition now (JSON), status and phase; ``revision`` grows with
# every change of any experiment (and of a bandit's allocation), so the decision engine
# notices one with a cheap query
experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    # "draft", "running" or "stopped"
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("phase", sa.Integer, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
    sa.Column("started_at", Timestamp(), nullable=True),
    sa.Column("stopped_at", Timestamp(), nullable=True),
)

# every phase of every experiment: the allocation it ran with (variants, weights, coverage,
# namespace, targeting) and when; a weight or variant change of a running experiment is a
# new phase, never an edit of this one
experiment_phases = sa.Table(
    "experiment_phases",
    metadata,
    sa.Column("experiment_key", sa.String(200), primary_key=True),
    sa.Column("phase", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("started_at", Timestamp(), nullable=False),
    sa.Column("ended_at", Timestamp(), nullable=True),
)

# the variant each unit (a userId or anonymousId) was first exposed to, written by the worker
# from exposure events: a later decision for any id of the same profile keeps it, whatever
# the weights say by then
experiment_assignments = sa.Table(
    "experiment_assignments",
    metadata,
    sa.Column("experiment_key", sa.String(200), primary_key=True),
    sa.Column("unit", sa.String(512), primary_key=True),
    sa.Column("variant", sa.String(200), nullable=False),
    sa.Column("phase", sa.Integer, nullable=False),
    sa.Column("first_exposed_at", Timestamp(), nullable=False),
    sa.Index("experiment_assignments_unit", "unit"),
)

# a bandit's traffic allocation per context (a segment key, "*" for everyone): arm -> share,
# with the statistics it was computed from
experiment_allocations = sa.Table(
    "experiment_allocations",
    metadata,
    sa.Column("experiment_key", sa.String(200), primary_key=True),
    sa.Column("context", sa.String(200), primary_key=True),
    sa.Column("allocation", sa.Text, nullable=False),
    sa.Column("statistics", sa.Text, nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)
