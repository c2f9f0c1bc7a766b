"""Admin API keys: created with a role, shown once, stored hashed, revocable."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from personify.auth.lookup import ExpiringLookup
from personify.auth.revocations import RevocationListener, announce
from personify.auth.secrets import MAX_SECRET_CHARS, hash_secret, new_secret
from personify.auth.tables import api_keys
from personify.clock import Clock, SystemClock
from personify.errors import NotFound, ValidationError
from personify.store.database import Database, aware

# admin: everything; read: GET endpoints only
ROLES = ("admin", "read")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's public record (never the secret)."""

    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def is_active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None


def _row_to_key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        role=m["role"],
        prefix=m["key_prefix"],
        created_at=aware(m["created_at"]),  # type: ignore[arg-type]
        revoked_at=aware(m["revoked_at"]),
    )


class ApiKeyRepository:
    """Stores API keys hashed and resolves a presented secret, with a short cache.

    Secrets longer than ``MAX_SECRET_CHARS`` are never created, looked up or cached. With a
    ``revocations`` listener, a revocation in another process clears the cache at once.
    """

    def __init__(
        self,
        db: Database,
        *,
        cache_ttl_s: float = 5.0,
        clock: Clock | None = None,
        revocations: RevocationListener | None = None,
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._cache: ExpiringLookup[ApiKey] = ExpiringLookup(cache_ttl_s)
        if revocations is not None:
            revocations.subscribe(self._cache.clear)

    def create(
        self, name: str, role: str = "admin", secret: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key; returns its record and the secret, which is never retrievable again."""
        if role not in ROLES:
            raise ValidationError(f"role must be one of {ROLES}", code="invalid_role")
        if not name.strip():
            raise ValidationError("a key needs a name", code="invalid_name")
        if secret is not None and len(secret) > MAX_SECRET_CHARS:
            raise ValidationError(
                f"an API key has at most {MAX_SECRET_CHARS} characters",
                code="api_key_too_long",
                details={"maxChars": MAX_SECRET_CHARS},
            )
        secret = secret or new_secret("pk")
        key = ApiKey(
            id=uuid.uuid4().hex,
            name=name.strip(),
            role=role,
            prefix=secret[:10],
            created_at=self._clock.now(),
            revoked_at=None,
        )
        with self._db.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    name=key.name,
                    role=key.role,
                    key_hash=hash_secret(secret),
                    key_prefix=key.prefix,
                    created_at=key.created_at,
                )
            )
        # a lookup of this secret before it existed left a negative entry
        self._cache.forget(hash_secret(secret))
        return key, secret

    def list(self) -> list[ApiKey]:
        """Every key, newest first."""
        with self._db.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at.desc()))
            return [_row_to_key(r) for r in rows]

    def revoke(self, key_id_or_name: str) -> ApiKey:
        """Revoke a key by id or name; raises ``NotFound``."""
        now = self._clock.now()
        cond = sa.or_(api_keys.c.id == key_id_or_name, api_keys.c.name == key_id_or_name)
        with self._db.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(cond, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if result.rowcount == 0:
                raise NotFound(f"no active API key {key_id_or_name!r}", code="key_not_found")
            row = conn.execute(sa.select(api_keys).where(cond)).first()
            announce(conn)
        self._cache.clear()
        assert row is not None
        return _row_to_key(row)

    def resolve(self, secret: str) -> ApiKey | None:
        """The active key for ``secret``, or None. Cached for ``cache_ttl_s``."""
        if len(secret) > MAX_SECRET_CHARS:
            # no key has one (create refuses them): nothing to look up or to remember
            return None
        digest = hash_secret(secret)
        hit, cached = self._cache.get(digest)
        if hit:
            return cached
        generation = self._cache.generation
        with self._db.connect() as conn:
            row = conn.execute(
                sa.select(api_keys).where(
                    api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                )
            ).first()
        key = _row_to_key(row) if row is not None else None
        self._cache.put(digest, key, generation=generation)
        return key
