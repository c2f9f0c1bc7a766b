"""A short-lived cache of secret lookups, for the hot paths that resolve keys per request."""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class ExpiringLookup(Generic[T]):
    """Remembers what a key's digest resolved to (``None`` included) for ``ttl_s`` seconds.

    Entries are keyed by the digest of the secret (``hash_secret``), never by the secret: every
    entry has the same small size whatever clients send, so ``max_entries`` bounds the memory
    too. Negative answers are cached as well, so a flood of requests with a wrong key costs
    one database query per TTL, not one per request. When the cache is full, expired and
    negative entries go first, so a flood of distinct wrong keys cannot push out the keys in
    use; only if the live keys alone fill it does it start over.

    A revocation takes effect at once in the process that revoked (it calls ``clear``), in
    every process listening on a revocation channel as soon as the notice arrives (see
    ``personify.auth.revocations``), and everywhere else within the TTL.
    """

    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, T | None]] = {}
        # lookups run on worker threads; reads stay lock-free (one dict.get)
        self._lock = threading.Lock()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> tuple[bool, T | None]:
        """``(True, value)`` while ``digest`` is remembered, else ``(False, None)``."""
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def put(self, digest: str, value: T | None, *, generation: int | None = None) -> None:
        """Remember ``value`` for ``digest``.

        ``generation`` is ``self.generation`` read before the lookup started: when a
        ``clear`` came in between, the answer may predate a revocation and is not kept."""
        with self._lock:
            if generation is not None and generation != self.generation:
                return
            if len(self._entries) >= self._max_entries:
                self._evict()
            self._entries[digest] = (time.monotonic() + self._ttl_s, value)

    def _evict(self) -> None:
        now = time.monotonic()
        self._entries = {
            digest: entry
            for digest, entry in self._entries.items()
            if entry[1] is not None and entry[0] > now
        }
        if len(self._entries) >= self._max_entries:
            self._entries.clear()

    def forget(self, digest: str) -> None:
        """Drop what is remembered for ``digest``."""
        with self._lock:
            self._entries.pop(digest, None)

    def clear(self) -> None:
        """Drop everything, including answers of lookups still under way."""
        with self._lock:
            self._entries.clear()
            self.generation += 1
