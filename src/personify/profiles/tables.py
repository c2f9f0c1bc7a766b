"""The tables profiles own: the identity graph, profiles, their history and timeline."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import RowId, Timestamp, metadata

# Event times are epoch milliseconds in BIGINT columns: exact, portable and cheap to write on
# the worker's hot path. JSON documents are Text.

identities = sa.Table(
    "identities",
    metadata,
    sa.Column("identity", sa.String(512), primary_key=True),
    sa.Column("profile_id", sa.String(512), nullable=False),
    sa.Column("linked_at", Timestamp(), nullable=False),
    sa.Index("identities_profile", "profile_id"),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("first_seen_ms", sa.BigInteger, nullable=True),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
    sa.Column("personalization_allowed", sa.Boolean, nullable=False),
    # the row's state is the only copy of its version's state (history compacted at rest,
    # ``personify.profiles.retention``): the worker puts it back into the version row before
    # it writes the next version
    sa.Column("history_in_row", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)

profile_versions = sa.Table(
    "profile_versions",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("changed_at", Timestamp(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("event_time_ms", sa.BigInteger, nullable=True),
    sa.Column("message_ids", sa.Text, nullable=False),
    sa.Column("diff", sa.Text, nullable=False),
    sa.Column("snapshot", sa.Text, nullable=True),
    # the retention job finds the versions older than its cutoff (revision 0002)
    sa.Index("profile_versions_changed", "changed_at"),
)

# one row per applied event: the exactly-once guard (event_key = "sourceId:messageId") and
# the profile's timeline (the event JSON as it was in the log)
applied_events = sa.Table(
    "applied_events",
    metadata,
    sa.Column("event_key", sa.String(600), primary_key=True),
    sa.Column("profile_id", sa.String(512), nullable=False),
    sa.Column("event_time_ms", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.String(512), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("applied_at_ms", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("applied_events_timeline", "profile_id", "event_time_ms", "event_key"),
    # the retention job deletes the rows applied before its cutoff (revision 0002)
    sa.Index("applied_events_applied", "applied_at_ms"),
)

profile_merges = sa.Table(
    "profile_merges",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("into_profile_id", sa.String(512), nullable=False),
    sa.Column("from_profile_id", sa.String(512), nullable=False),
    sa.Column("ids", sa.Text, nullable=False),
    sa.Column("message_ids", sa.Text, nullable=False),
    sa.Column("merged_at", Timestamp(), nullable=False),
    sa.Index("profile_merges_into", "into_profile_id", "merged_at"),
    # whether a profile id had been merged away at a time, when the id came back (revision 0004)
    sa.Index("profile_merges_from", "from_profile_id", "merged_at"),
)

# each profile's newest prediction per target (``churn``, ``clv``), written by the worker's
# prediction stage in the transaction that changed the profile (``personify.predict.stage``);
# part of the profile document, and read by segment conditions
profile_predictions = sa.Table(
    "profile_predictions",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("target", sa.String(16), primary_key=True),
    sa.Column("model_id", sa.BigInteger, nullable=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("scored_at", Timestamp(), nullable=False),
)
