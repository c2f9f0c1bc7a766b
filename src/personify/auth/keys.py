"""API keys: created with a role (``personify.auth.roles``) and an optional expiry, shown
once, stored hashed, rotated with an overlap, revocable; their last use is kept."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from personify.auth.lookup import ExpiringLookup
from personify.auth.revocations import RevocationListener, announce
from personify.auth.roles import ROLES, legacy_role
from personify.auth.secrets import MAX_SECRET_CHARS, hash_secret, new_secret
from personify.auth.tables import api_keys
from personify.clock import Clock, SystemClock
from personify.errors import NotFound, ValidationError
from personify.store.database import Database, aware

__all__ = ["ROLES", "ApiKey", "ApiKeyRepository"]

# last use is written at most this often per key (a read path must not write every time)
_LAST_USED_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's public record (never the secret)."""

    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    # after a rotation: until when the previous secret still works
    previous_expires_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        """Not revoked (an expired key is refused when it is presented)."""
        return self.revoked_at is None

    def has_expired(self, now: datetime) -> bool:
        """Whether the key is past its expiry."""
        return self.expires_at is not None and now >= self.expires_at


def _row_to_key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        role=m["role"],
        prefix=m["key_prefix"],
        created_at=aware(m["created_at"]),  # type: ignore[arg-type]
        revoked_at=aware(m["revoked_at"]),
        expires_at=aware(m["expires_at"]),
        last_used_at=aware(m["last_used_at"]),
        previous_expires_at=aware(m["previous_expires_at"]),
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
        self._used: dict[str, float] = {}
        self._used_lock = threading.Lock()

    def create(
        self,
        name: str,
        role: str = "admin",
        secret: str | None = None,
        *,
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key; returns its record and the secret, which is never retrievable again.
        ``role`` is one of ``ROLES`` (``read``, the old reading role, is ``analyst``)."""
        role = legacy_role(role)
        if role not in ROLES:
            raise ValidationError(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
        if expires_at is not None and expires_at <= self._clock.now():
            raise ValidationError("a key's expiry is in the future", code="invalid_expiry")
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
            expires_at=expires_at,
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
                    # only when set: the insert then works on a schema before revision 0011
                    **({"expires_at": expires_at} if expires_at is not None else {}),
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

    def rotate(self, key_id_or_name: str, *, overlap: timedelta) -> tuple[ApiKey, str]:
        """Give an active key a new secret; the old one keeps working for ``overlap`` (so
        that clients can be moved over), then never again. Returns the record and the new
        secret (shown once). Raises ``NotFound``."""
        if overlap < timedelta(0):
            raise ValidationError("the overlap is zero or more", code="invalid_overlap")
        now = self._clock.now()
        secret = new_secret("pk")
        cond = sa.or_(api_keys.c.id == key_id_or_name, api_keys.c.name == key_id_or_name)
        with self._db.begin() as conn:
            row = conn.execute(
                sa.select(api_keys).where(cond, api_keys.c.revoked_at.is_(None))
            ).first()
            if row is None:
                raise NotFound(f"no active API key {key_id_or_name!r}", code="key_not_found")
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == row.id)
                .values(
                    key_hash=hash_secret(secret),
                    key_prefix=secret[:10],
                    previous_hash=row.key_hash,
                    previous_expires_at=now + overlap,
                )
            )
            updated = conn.execute(sa.select(api_keys).where(api_keys.c.id == row.id)).one()
            # other processes drop the old secret's cached entry (it now expires)
            announce(conn)
        self._cache.clear()
        return _row_to_key(updated), secret

    def resolve(self, secret: str) -> ApiKey | None:
        """The active, unexpired key for ``secret`` (its current secret, or its previous one
        within a rotation's overlap), or None. Cached for ``cache_ttl_s``; the key's last
        use is recorded at most once a minute."""
        if len(secret) > MAX_SECRET_CHARS:
            # no key has one (create refuses them): nothing to look up or to remember
            return None
        digest = hash_secret(secret)
        hit, cached = self._cache.get(digest)
        if not hit:
            generation = self._cache.generation
            with self._db.connect() as conn:
                row = conn.execute(
                    sa.select(api_keys, sa.literal(False).label("previous")).where(
                        api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                    )
                ).first()
                if row is None:
                    row = conn.execute(
                        sa.select(api_keys, sa.literal(True).label("previous")).where(
                            api_keys.c.previous_hash == digest, api_keys.c.revoked_at.is_(None)
                        )
                    ).first()
            cached = None
            if row is not None:
                cached = _row_to_key(row)
                if row._mapping["previous"]:
                    # the previous secret stands for the key until its overlap ends
                    cached = dataclasses.replace(
                        cached, expires_at=_earliest(cached.expires_at, cached.previous_expires_at)
                    )
            self._cache.put(digest, cached, generation=generation)
        key = cached
        now = self._clock.now()
        if key is None or key.has_expired(now):
            return None
        self._touch(key.id, now)
        return key

    def _touch(self, key_id: str, now: datetime) -> None:
        """Record a use, at most once a minute per key (and per process)."""
        moment = now.timestamp()
        with self._used_lock:
            if moment - self._used.get(key_id, float("-inf")) < _LAST_USED_EVERY_S:
                return
            self._used[key_id] = moment
        with self._db.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=now))


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    found = [moment for moment in (first, second) if moment is not None]
    return min(found) if found else None
