"""Sources and their write keys. Write keys are stored hashed; an unknown or revoked one gets 401."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from personify.auth.lookup import ExpiringLookup
from personify.auth.revocations import RevocationListener, announce
from personify.auth.secrets import MAX_SECRET_CHARS, hash_secret, new_secret
from personify.clock import Clock, SystemClock
from personify.errors import Conflict, NotFound, ValidationError
from personify.ingest.tables import sources
from personify.store.database import Database, aware


@dataclass(frozen=True, slots=True)
class Source:
    """Where events come from (a website, an app, a server); owns one write key."""

    id: str
    name: str
    write_key_prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def is_active(self) -> bool:
        """Its write key has not been revoked."""
        return self.revoked_at is None


def _row_to_source(row: sa.Row[tuple[object, ...]]) -> Source:
    m = row._mapping
    return Source(
        id=m["id"],
        name=m["name"],
        write_key_prefix=m["write_key_prefix"],
        created_at=aware(m["created_at"]),  # type: ignore[arg-type]
        revoked_at=aware(m["revoked_at"]),
    )


class SourceRepository:
    """Creates sources and resolves write keys to them, with a short cache on the hot path.

    Write keys longer than ``MAX_SECRET_CHARS`` are never created, looked up or cached. With
    a ``revocations`` listener, a revocation in another process clears the cache at once.
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
        self._cache: ExpiringLookup[Source] = ExpiringLookup(cache_ttl_s)
        if revocations is not None:
            revocations.subscribe(self._cache.clear)

    @property
    def cached_keys(self) -> int:
        """How many write keys (known or not) the cache remembers."""
        return len(self._cache)

    def resolve_cached(self, write_key: str) -> tuple[bool, Source | None]:
        """``(True, source or None)`` when the cache knows the key, else ``(False, None)``."""
        if len(write_key) > MAX_SECRET_CHARS:
            return True, None
        return self._cache.get(hash_secret(write_key))

    def create(self, name: str, write_key: str | None = None) -> tuple[Source, str]:
        """A new source; returns it with its write key (shown once)."""
        name = name.strip()
        if not name:
            raise ValidationError("a source needs a name", code="invalid_name")
        if write_key is not None and len(write_key) > MAX_SECRET_CHARS:
            raise ValidationError(
                f"a write key has at most {MAX_SECRET_CHARS} characters",
                code="write_key_too_long",
                details={"maxChars": MAX_SECRET_CHARS},
            )
        write_key = write_key or new_secret("wk")
        digest = hash_secret(write_key)
        source = Source(
            id=uuid.uuid4().hex,
            name=name,
            write_key_prefix=write_key[:10],
            created_at=self._clock.now(),
            revoked_at=None,
        )
        try:
            with self._db.begin() as conn:
                conn.execute(
                    sources.insert().values(
                        id=source.id,
                        name=source.name,
                        write_key_hash=digest,
                        write_key_prefix=source.write_key_prefix,
                        created_at=source.created_at,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"a source named {name!r} exists already", code="source_exists") from exc
        # a lookup of this key before it existed left a negative entry
        self._cache.forget(digest)
        return source, write_key

    def get(self, id_or_name: str) -> Source:
        """A source by id or name; raises ``NotFound``."""
        with self._db.connect() as conn:
            row = conn.execute(
                sa.select(sources).where(
                    sa.or_(sources.c.id == id_or_name, sources.c.name == id_or_name)
                )
            ).first()
        if row is None:
            raise NotFound(f"no source {id_or_name!r}", code="source_not_found")
        return _row_to_source(row)

    def list(self) -> list[Source]:
        """Every source, oldest first."""
        with self._db.connect() as conn:
            rows = conn.execute(sa.select(sources).order_by(sources.c.created_at))
            return [_row_to_source(r) for r in rows]

    def revoke(self, id_or_name: str) -> Source:
        """Revoke a source's write key; its events get 401 from then on."""
        source = self.get(id_or_name)
        with self._db.begin() as conn:
            conn.execute(
                sources.update()
                .where(sources.c.id == source.id, sources.c.revoked_at.is_(None))
                .values(revoked_at=self._clock.now())
            )
            announce(conn)
        self._cache.clear()
        return self.get(source.id)

    def resolve(self, write_key: str) -> Source | None:
        """The active source owning ``write_key``, or None. Cached for ``cache_ttl_s``."""
        if len(write_key) > MAX_SECRET_CHARS:
            # no source has one (create refuses them): nothing to look up or to remember
            return None
        digest = hash_secret(write_key)
        hit, cached = self._cache.get(digest)
        if hit:
            return cached
        generation = self._cache.generation
        with self._db.connect() as conn:
            row = conn.execute(
                sa.select(sources).where(
                    sources.c.write_key_hash == digest,
                    sources.c.revoked_at.is_(None),
                )
            ).first()
        source = _row_to_source(row) if row is not None else None
        self._cache.put(digest, source, generation=generation)
        return source
