"""The console's sessions: a person signs in once and carries a cookie instead of a key.

Signing in with an API key (or, with an OpenID Connect issuer configured, through the
issuer) opens a session: a random token goes to the browser as an HttpOnly, SameSite=Strict
cookie; the state database keeps only its SHA-256, who signed in, their role, a CSRF token
every form of the session must carry, and when the session ends. A session stands only as
long as what opened it: revoking or expiring the API key ends its sessions at their next
request, and a session never outlives the key's expiry. Signing out deletes the row.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from personify.auth.secrets import MAX_SECRET_CHARS, hash_secret
from personify.auth.tables import api_keys, console_sessions
from personify.auth.tokens import Principal
from personify.clock import Clock, SystemClock
from personify.errors import ValidationError
from personify.store.database import Database, aware

__all__ = ["ConsoleSession", "ConsoleSessionRepository"]


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in person: who, with which role, and the CSRF token of their forms."""

    id: str
    kind: str
    subject: str
    name: str
    role: str
    csrf: str
    created_at: datetime
    expires_at: datetime


class ConsoleSessionRepository:
    """Opens, resolves and closes console sessions (rows in ``console_sessions``)."""

    def __init__(self, db: Database, *, ttl: timedelta, clock: Clock | None = None) -> None:
        if ttl <= timedelta(0):
            raise ValidationError("a console session lasts a positive time", code="invalid_ttl")
        self._db = db
        self._ttl = ttl
        self._clock = clock or SystemClock()

    def open(self, principal: Principal) -> tuple[ConsoleSession, str]:
        """A new session for ``principal``; returns it and the cookie's token (never stored).
        It ends after the repository's lifetime, or when the credential expires if sooner."""
        if principal.role is None or principal.kind not in ("api_key", "token"):
            raise ValidationError("only API keys and tokens with a role sign in", code="no_role")
        now = self._clock.now()
        expires_at = now + self._ttl
        if principal.expires_at is not None:
            expires_at = min(expires_at, principal.expires_at)
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(
            id=hash_secret(token),
            kind=principal.kind,
            subject=principal.id,
            name=principal.name[:200],
            role=principal.role,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=expires_at,
        )
        with self._db.begin() as conn:
            # a sign-in is a good moment to forget the sessions that have ended
            conn.execute(console_sessions.delete().where(console_sessions.c.expires_at <= now))
            conn.execute(
                console_sessions.insert().values(
                    id=session.id,
                    kind=session.kind,
                    subject=session.subject,
                    name=session.name,
                    role=session.role,
                    csrf=session.csrf,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return session, token

    def resolve(self, token: str) -> ConsoleSession | None:
        """The live session behind a cookie's token, or None: unknown, ended, or opened by
        an API key that has since been revoked or has expired."""
        if not token or len(token) > MAX_SECRET_CHARS:
            return None
        now = self._clock.now()
        query = (
            sa.select(
                console_sessions,
                api_keys.c.id.label("key_id"),
                api_keys.c.revoked_at,
                api_keys.c.expires_at.label("key_expires_at"),
            )
            .select_from(
                console_sessions.outerjoin(
                    api_keys,
                    sa.and_(
                        console_sessions.c.kind == "api_key",
                        api_keys.c.id == console_sessions.c.subject,
                    ),
                )
            )
            .where(console_sessions.c.id == hash_secret(token))
        )
        with self._db.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        m = row._mapping
        expires_at = aware(m["expires_at"])
        assert expires_at is not None
        if now >= expires_at:
            return None
        if m["kind"] == "api_key":
            key_expiry = aware(m["key_expires_at"])
            # the key is gone, revoked or past its expiry: so is the session
            if m["key_id"] is None or m["revoked_at"] is not None:
                return None
            if key_expiry is not None and now >= key_expiry:
                return None
        created_at = aware(m["created_at"])
        assert created_at is not None
        return ConsoleSession(
            id=m["id"],
            kind=m["kind"],
            subject=m["subject"],
            name=m["name"],
            role=m["role"],
            csrf=m["csrf"],
            created_at=created_at,
            expires_at=expires_at,
        )

    def close(self, token: str) -> bool:
        """End the session behind ``token`` (signing out); whether there was one."""
        if not token or len(token) > MAX_SECRET_CHARS:
            return False
        with self._db.begin() as conn:
            result = conn.execute(
                console_sessions.delete().where(console_sessions.c.id == hash_secret(token))
            )
        return result.rowcount > 0
