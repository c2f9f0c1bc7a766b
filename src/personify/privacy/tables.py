"""The tables privacy owns: the durable erasure and export requests, and the suppressed ids."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import Timestamp, metadata

# one row per request of a data subject: ``identity`` (as given) and ``subject`` (every id of
# the person, JSON) are kept in clear only while the request runs, so that a restart can
# finish it after the state database no longer knows the ids; both are cleared when it is
# done, leaving ``identity_hash`` (the keyed hash, ``personify.privacy.suppression.id_hash``)
privacy_requests = sa.Table(
    "privacy_requests",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    # "erase" or "export"
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("identity", sa.String(512), nullable=True),
    sa.Column("identity_hash", sa.String(80), nullable=False),
    sa.Column("subject", sa.Text, nullable=True),
    # "pending", "running", "done" or "failed"
    sa.Column("status", sa.String(16), nullable=False),
    # per eraser: {"status": "done"|"failed", "result"|"error", "at"} (JSON)
    sa.Column("steps", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("next_attempt_at", Timestamp(), nullable=True),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
    sa.Column("finished_at", Timestamp(), nullable=True),
    sa.Index("privacy_requests_identity", "identity_hash", "status"),
    sa.Index("privacy_requests_status", "status", "next_attempt_at"),
)

# ids whose events the collector drops, as keyed hashes; held until an explicit un-suppress
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("id_hash", sa.String(80), primary_key=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(32), nullable=True),
    sa.Column("created_at", Timestamp(), nullable=False),
)
