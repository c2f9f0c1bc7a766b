"""Suppression: ids whose events the collector drops, until an explicit un-suppress.

An erasure suppresses every id of the person before it erases anything, so nothing that
arrives meanwhile recreates them. The ``suppressions`` table holds each id as a keyed hash
(``id_hash``: HMAC-SHA256 with the PII key, over the id with a prefix of its own, so it never
equals the hash of a trait value and a search for the person's hashed identifiers finds
none of them here).

Every process keeps the hashes in memory: the collector asks ``is_suppressed`` per id, an
O(1) set lookup. The set is read again from the database every ``refresh_s`` seconds (in a
background thread, so the ingest path never waits on the database), and at once in the
process that changes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Final

import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.events.hashing import PiiHasher
from personify.privacy.tables import suppressions
from personify.store.database import Database

__all__ = ["ID_HASH_PREFIX", "Suppressions", "id_hash", "id_hashes"]

logger = logging.getLogger(__name__)

# what an id is prefixed with before it is hashed: a domain of its own (see the docstring)
ID_HASH_PREFIX: Final = "personify-id:"
_CHUNK = 500
_INSERT_ATTEMPTS = 3


def id_hash(hasher: PiiHasher, identity: str) -> str:
    """The keyed hash an id is suppressed and looked up by."""
    return hasher.hash_value("id", ID_HASH_PREFIX + identity)


def id_hashes(hasher: PiiHasher, identity: str) -> tuple[str, ...]:
    """``id_hash`` under every key of the PII keyring, the active key's first: a lookup of an
    id stored before a key rotation matches one of them."""
    return hasher.candidates("id", ID_HASH_PREFIX + identity)


class Suppressions:
    """The suppressed ids of the state database, with an in-memory copy for the collector."""

    def __init__(
        self,
        db: Database,
        hasher: PiiHasher,
        *,
        clock: Clock | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        self._db = db
        self._hasher = hasher
        self._clock = clock or SystemClock()
        self.refresh_s = refresh_s
        self._hashes: frozenset[str] = frozenset()
        self._loaded_at: float | None = None
        self._refreshing = False
        self._lock = threading.Lock()
        # grows with every change this process makes: a refresh that read the table before a
        # change reads it again rather than put the older list back
        self._generation = 0

    # -- the collector's side ---------------------------------------------------------------

    def active(self) -> bool:
        """Whether any id is suppressed (the collector skips every check when not); starts a
        background refresh when the in-memory copy is older than ``refresh_s``."""
        loaded_at = self._loaded_at
        if loaded_at is None or time.monotonic() - loaded_at >= self.refresh_s:
            self._refresh_in_background()
        return bool(self._hashes)

    def is_suppressed(self, identity: str) -> bool:
        """Whether ``identity`` is suppressed, by the in-memory copy."""
        hashes = self._hashes
        if not hashes:
            return False
        if not self._hasher.rotated:
            return id_hash(self._hasher, identity) in hashes
        # after a rotation an id may have been suppressed under a retired key
        return any(hashed in hashes for hashed in id_hashes(self._hasher, identity))

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh_quietly, name="suppressions", daemon=True).start()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        # the database down: the copy in memory stays as it was, and the next look retries
        except Exception:
            logger.exception("suppressed ids not refreshed")
        finally:
            with self._lock:
                self._refreshing = False

    # -- reading and changing the list ------------------------------------------------------

    def refresh(self) -> int:
        """Read the suppressed ids from the database now; returns how many there are."""
        while True:
            generation = self._generation
            with self._db.connect() as conn:
                found = frozenset(
                    str(h) for h in conn.execute(sa.select(suppressions.c.id_hash)).scalars()
                )
            with self._lock:
                if generation == self._generation:
                    self._hashes = found
                    self._loaded_at = time.monotonic()
                    return len(found)

    def suppress(
        self, ids: Iterable[str], *, reason: str = "erasure", request_id: str | None = None
    ) -> int:
        """Suppress every one of ``ids`` (those already suppressed stay as they were);
        returns how many were new. This process's copy changes at once."""
        hashes = sorted({id_hash(self._hasher, identity) for identity in ids})
        if not hashes:
            return 0
        attempts = 0
        while True:
            try:
                added = self._insert(hashes, reason, request_id)
                break
            except sa.exc.IntegrityError:
                # another process suppressed one of them meanwhile: the next pass skips it
                attempts += 1
                if attempts >= _INSERT_ATTEMPTS:
                    raise
        with self._lock:
            self._generation += 1
            self._hashes = self._hashes | frozenset(hashes)
        return added

    def _insert(self, hashes: list[str], reason: str, request_id: str | None) -> int:
        now = self._clock.now()
        added = 0
        with self._db.begin() as conn:
            for start in range(0, len(hashes), _CHUNK):
                chunk = hashes[start : start + _CHUNK]
                present = set(
                    conn.execute(
                        sa.select(suppressions.c.id_hash).where(suppressions.c.id_hash.in_(chunk))
                    ).scalars()
                )
                rows = [
                    {"id_hash": h, "reason": reason, "request_id": request_id, "created_at": now}
                    for h in chunk
                    if h not in present
                ]
                if rows:
                    conn.execute(suppressions.insert(), rows)
                    added += len(rows)
        return added

    def unsuppress(self, identity: str) -> bool:
        """Let events of ``identity`` in again; ``False`` when it was not suppressed."""
        hashed = id_hashes(self._hasher, identity)
        with self._db.begin() as conn:
            removed = conn.execute(
                suppressions.delete().where(suppressions.c.id_hash.in_(hashed))
            ).rowcount
        with self._lock:
            self._generation += 1
            self._hashes = self._hashes - set(hashed)
        return bool(removed)

    def is_stored(self, identity: str) -> bool:
        """Whether the database holds ``identity`` as suppressed (not the in-memory copy)."""
        with self._db.connect() as conn:
            found = conn.execute(
                sa.select(suppressions.c.id_hash).where(
                    suppressions.c.id_hash.in_(id_hashes(self._hasher, identity))
                )
            ).first()
        return found is not None
