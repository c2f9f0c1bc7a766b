"""A short-lived cache of secret lookups, for the hot paths that resolve keys per request."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

T = TypeVar("T")


class ExpiringLookup(Generic[T]):
    """Remembers what a key resolved to (``None`` included) for ``ttl_s`` seconds.

    Negative answers are cached too, so a flood of requests with a wrong key costs one
    database query per TTL, not one per request. A revocation takes effect within the TTL
    in other processes, and at once in the process that revoked (it calls ``clear``).
    """

    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, T | None]] = {}

    def get(self, key: str) -> tuple[bool, T | None]:
        """``(True, value)`` while ``key`` is remembered, else ``(False, None)``."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def put(self, key: str, value: T | None) -> None:
        """Remember ``value`` for ``key``; a full cache starts over rather than grow."""
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self._ttl_s, value)

    def forget(self, key: str) -> None:
        """Drop what is remembered for ``key``."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop everything."""
        self._entries.clear()
