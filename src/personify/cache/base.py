"""The ``Cache`` port: a small async key-value store with expiry, for hot profiles.

Contract (checked for every adapter by ``tests/contracts/test_cache.py``):

* Keys are strings, values are bytes; a value set is returned unchanged by ``get`` until it
  expires, is overwritten, deleted or evicted.
* ``ttl_s`` bounds how long a value lives; ``None`` means the adapter's default TTL.
* ``add`` stores only when the key is absent (or expired) and says whether it did; it is
  atomic against a concurrent ``set`` of the same key, which is what lets readers fill the
  cache without overwriting a newer invalidation marker.
* ``get_many``, ``set_many`` and ``delete`` act on many keys in one round trip (a decision
  reads a profile and its memberships with one ``get_many``).
* ``ping`` answers cheaply whether the engine is reachable now (``GET /readyz``).
* A cache is an optimisation: an adapter may evict anything at any time. Every failure of the
  engine raises ``BackendUnavailable``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from personify.registry import CACHE_ADAPTERS, load_adapter

if TYPE_CHECKING:
    from personify.settings import Settings


@runtime_checkable
class Cache(Protocol):
    """An async key-value cache with per-key expiry."""

    async def start(self) -> None:
        """Connect (a no-op for in-process caches)."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None`` when absent or expired."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The live values under ``keys``, by key; absent and expired keys are left out."""
        ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds (default TTL when ``None``)."""
        ...

    async def add(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store only if ``key`` is absent; returns whether it stored."""
        ...

    async def set_many(self, items: Mapping[str, bytes], *, ttl_s: float | None = None) -> None:
        """Store several values with one expiry."""
        ...

    async def delete(self, keys: Sequence[str]) -> int:
        """Remove ``keys``; returns how many were present."""
        ...

    async def ping(self) -> None:
        """Return when the engine answers now; raise ``BackendUnavailable`` when it does not."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def open_cache(settings: Settings, url: str | None = None) -> Cache:
    """Build (but not start) the cache adapter that ``url`` (or ``PERSONIFY_CACHE_URL``) names."""
    url = url or settings.cache_url
    adapter = load_adapter(CACHE_ADAPTERS, url, "cache")
    cache: Cache = adapter.from_url(url, settings)
    return cache
