"""The tables the content catalog owns: items with every saved version, placements with
theirs, the webhooks told of publishing, and the log of their deliveries."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import RowId, Timestamp, metadata

# one row per item: its newest version and the version it serves (``published_version``,
# null unless published); ``revision`` grows with every change of any item or placement, so a
# reader notices a change of the published catalog with one cheap query
content_items = sa.Table(
    "content_items",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("published_version", sa.Integer, nullable=True),
    # where the item came from: "api", "import" or "events" (learned from e-commerce events)
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
    sa.Column("published_at", Timestamp(), nullable=True),
    sa.Index("content_items_type", "type", "id"),
)

# every version of every item as it was saved (JSON), never changed once written: the
# published snapshot is one of these rows
content_versions = sa.Table(
    "content_versions",
    metadata,
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    # what made it: "created", "updated", "rollback", "import", "events"
    sa.Column("change", sa.String(16), nullable=False),
    sa.Column("saved_at", Timestamp(), nullable=False),
)

# one row per placement (a slot on a page or in an app), with its newest version
placements = sa.Table(
    "placements",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)

placement_versions = sa.Table(
    "placement_versions",
    metadata,
    sa.Column("placement_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("saved_at", Timestamp(), nullable=False),
)

# URLs called when an item is published or unpublished; the secret signs each body
content_webhooks = sa.Table(
    "content_webhooks",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    # after a rotation the previous secret signs too (a second v1) until previous_expires_at
    sa.Column("previous_secret", sa.String(128), nullable=True),
    sa.Column("previous_expires_at", Timestamp(), nullable=True),
    # the events it is told of, comma-separated ("content.published,content.unpublished")
    sa.Column("events", sa.String(200), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
)

# one row per (webhook, event): written in the transaction that published, delivered after
# it commits, retried with backoff, and kept as the delivery log
content_webhook_deliveries = sa.Table(
    "content_webhook_deliveries",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", sa.BigInteger, nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("item_version", sa.Integer, nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    # "pending" (to be tried at ``next_attempt_at``), "delivered" or "failed" (gave up)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", Timestamp(), nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("delivered_at", Timestamp(), nullable=True),
    sa.Index("content_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("content_webhook_deliveries_webhook", "webhook_id", "id"),
)

# what each decision showed each user (from the decision engine's exposure events, written by
# the stream worker): the frequency caps read it; one row per (decision, item)
content_exposures = sa.Table(
    "content_exposures",
    metadata,
    sa.Column("decision_id", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("profile_id", sa.String(512), nullable=False),
    sa.Column("placement_id", sa.String(200), nullable=False),
    sa.Column("exposed_at", Timestamp(), nullable=False),
    sa.Index("content_exposures_profile", "profile_id", "item_id", "exposed_at"),
    sa.Index("content_exposures_time", "exposed_at"),
)
