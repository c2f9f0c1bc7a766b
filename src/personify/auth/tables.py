"""The tables auth owns: API keys, and the audit log (hash-chained, append-only)."""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import RowId, Timestamp, metadata

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_prefix", sa.String(16), nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("revoked_at", Timestamp(), nullable=True),
    # a key past its expiry is refused; last use is written at most once a minute
    sa.Column("expires_at", Timestamp(), nullable=True),
    sa.Column("last_used_at", Timestamp(), nullable=True),
    # after a rotation the previous secret still works until ``previous_expires_at``
    sa.Column("previous_hash", sa.String(64), nullable=True),
    sa.Column("previous_expires_at", Timestamp(), nullable=True),
    sa.Index("api_keys_previous_hash", "previous_hash"),
)

# one row per audited action, never updated or deleted by Personify: each row's ``hash``
# covers its fields and the previous row's hash (``personify.auth.audit``)
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("at", Timestamp(), nullable=False),
    # who: "api_key", "token" (an OIDC subject), "cli", "system"; the key id, subject or user
    sa.Column("actor_kind", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(512), nullable=False),
    sa.Column("role", sa.String(32), nullable=True),
    # what: e.g. "PATCH /v1/experiments/{key}" or "cli experiments start"
    sa.Column("action", sa.String(300), nullable=False),
    # which resource: the path with its values, e.g. "/v1/experiments/hero-test"
    sa.Column("resource", sa.String(1000), nullable=False),
    # the outcome: the HTTP status (or the CLI's exit code) and ok / denied / failed
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    # from where: the client address (or the host running the CLI)
    sa.Column("source", sa.String(200), nullable=True),
    sa.Column("details", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("audit_log_at", "at"),
    sa.Index("audit_log_actor", "actor", "id"),
)

# the newest record's id and hash, updated in the transaction that appends: a record removed
# from the end of the chain leaves the head pointing past it
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("last_id", sa.BigInteger, nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
)

# the console's sessions (``personify.auth.sessions``): a person signs in with an API key or
# through OpenID Connect and gets a cookie; only the cookie's hash is stored
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    # "api_key" (``subject`` is the key's id) or "token" (an OIDC subject)
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    # the token every form and htmx request of the session carries (CSRF)
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.Column("expires_at", Timestamp(), nullable=False),
    sa.Index("console_sessions_expires", "expires_at"),
)
