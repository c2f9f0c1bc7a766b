"""The in-process cache: an LRU bounded by bytes and entries, with per-entry expiry (the
embedded default).

The bound that matters is the bytes (``PERSONIFY_CACHE_MAX_MB``): a profile takes one entry
and its decision facts another, of a few hundred bytes to tens of kilobytes each, so a count
alone either wastes memory on small entries or evicts a working set that would fit (10,000
users cycled through a 10,000-entry cache missed on every decision: bench/README.md,
"Decisions").

It lives in one process: with several API processes or a separate worker process, each
has its own copy and the worker's invalidations do not reach the others, so scaled-out
deployments use ``redis://``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from personify.clock import Clock, SystemClock
from personify.errors import ConfigurationError

if TYPE_CHECKING:
    from personify.settings import Settings


# what an entry takes beside its key's and value's bytes (the dict slot, the tuple, the
# float, the objects' headers), roughly: the bound is an estimate, not an exact count
_ENTRY_OVERHEAD_BYTES = 200


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value) + _ENTRY_OVERHEAD_BYTES


class MemoryCache:
    """A ``Cache`` in a dict: least-recently-used eviction beyond ``max_entries`` or
    ``max_bytes`` (keys and values, plus an estimate of each entry's overhead), TTL per key."""

    def __init__(
        self,
        *,
        max_entries: int = 1_000_000,
        max_bytes: int = 128 * 1024 * 1024,
        default_ttl_s: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or default_ttl_s <= 0:
            raise ConfigurationError(
                "the memory cache needs max_entries >= 1, max_bytes >= 1 and a positive TTL",
                code="invalid_cache",
            )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.default_ttl_s = default_ttl_s
        self._clock = clock or SystemClock()
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        # API handlers and worker threads may share one instance
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> MemoryCache:
        """``memory://`` with optional ``?max_entries=N&max_mb=M&ttl_s=S`` over the settings'
        defaults."""
        query = parse_qs(urlsplit(url).query)
        try:
            max_entries = int(query.get("max_entries", [settings.cache_max_entries])[0])
            max_mb = float(query.get("max_mb", [settings.cache_max_mb])[0])
            ttl_s = float(query.get("ttl_s", [settings.cache_ttl_s])[0])
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid memory cache URL {url!r}: {exc}", code="invalid_cache"
            ) from exc
        return cls(
            max_entries=max_entries, max_bytes=round(max_mb * 1024 * 1024), default_ttl_s=ttl_s
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """What the entries take, as the bound counts it."""
        return self._bytes

    async def start(self) -> None:
        """Nothing to connect."""

    async def ping(self) -> None:
        """Always reachable: it is this process's memory."""

    async def close(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _expiry(self, ttl_s: float | None) -> float:
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise ValueError("ttl_s must be positive")
        return self._clock.time() + ttl

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def _drop(self, key: str) -> tuple[float, bytes] | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry[1])
        return entry

    def _store(self, key: str, value: bytes, expires: float) -> None:
        self._drop(key)
        self._entries[key] = (expires, value)
        self._bytes += _size(key, value)
        # the newest entry stays even when it alone is over the bound
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            oldest, (_, stored) = self._entries.popitem(last=False)
            self._bytes -= _size(oldest, stored)

    async def get(self, key: str) -> bytes | None:
        """The live value under ``key`` (refreshing its recency), or ``None``."""
        with self._lock:
            return self._live(key, self._clock.time())

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The live values under ``keys``, by key."""
        found: dict[str, bytes] = {}
        with self._lock:
            now = self._clock.time()
            for key in keys:
                value = self._live(key, now)
                if value is not None:
                    found[key] = value
        return found

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        expires = self._expiry(ttl_s)
        with self._lock:
            self._store(key, value, expires)

    async def add(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store only when no live value is there."""
        expires = self._expiry(ttl_s)
        with self._lock:
            if self._live(key, self._clock.time()) is not None:
                return False
            self._store(key, value, expires)
            return True

    async def set_many(self, items: Mapping[str, bytes], *, ttl_s: float | None = None) -> None:
        """Store several values with one expiry."""
        expires = self._expiry(ttl_s)
        with self._lock:
            for key, value in items.items():
                self._store(key, value, expires)

    async def delete(self, keys: Sequence[str]) -> int:
        """Remove ``keys``; counts the live ones removed."""
        now = self._clock.time()
        removed = 0
        with self._lock:
            for key in keys:
                entry = self._drop(key)
                if entry is not None and entry[0] > now:
                    removed += 1
        return removed
