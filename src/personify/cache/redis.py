"""The online cache in Redis, shared by every API process and stream worker (scaled out).

URL: ``redis://host:6379/0?prefix=personify:&ttl_s=60&max_connections=64`` (``rediss://`` for
TLS, ``unix:///path/redis.sock?db=0`` for a socket). ``prefix`` (default ``personify:``) is
put before every key, so several deployments or test runs can share one Redis; ``ttl_s``
overrides ``cache_ttl_s``; the other query options are redis-py's (``max_connections``,
``socket_timeout``, ...).

* Every value is a plain string key with a millisecond expiry (``SET … PX``); ``add`` is
  ``SET NX PX``, atomic against any concurrent ``set`` of the key.
* ``get_many`` is one ``MGET`` and ``set_many`` one pipeline (no ``MULTI``): a decision reads
  a profile and its memberships in a single round trip, and the worker's invalidation of a
  batch's profiles is one round trip too.
* Connections come from a bounded pool: a burst waits for a free connection (up to
  ``_POOL_WAIT_S``) instead of opening thousands. Every Redis failure, including that wait
  running out, raises ``BackendUnavailable``.
* Eviction is Redis's own (``maxmemory-policy``); ``allkeys-lru`` suits a cache that holds
  nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from personify.errors import BackendUnavailable, ConfigurationError
from personify.redis_pool import RedisError, aioredis, connect

if TYPE_CHECKING:
    from personify.settings import Settings

DEFAULT_PREFIX = "personify:"
_DEFAULT_MAX_CONNECTIONS = 64
_POOL_WAIT_S = 5.0
# options this adapter reads itself; everything else in the query string is redis-py's
_OWN_OPTIONS = ("prefix", "ttl_s")


def _unavailable(action: str, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(
        f"the Redis cache could not {action}: {exc}", code="cache_unavailable"
    )


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # a URL with ?decode_responses=true makes redis-py hand back str
    return value.encode() if isinstance(value, str) else value


def _ttl_ms(ttl_s: float) -> int:
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    # Redis rejects PX 0; anything positive lives at least a millisecond
    return max(1, round(ttl_s * 1000))


class RedisCache:
    """A ``Cache`` in Redis: string keys under a prefix, each with its own expiry."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        default_ttl_s: float = 60.0,
    ) -> None:
        if default_ttl_s <= 0:
            raise ConfigurationError(
                "the Redis cache needs a positive TTL (PERSONIFY_CACHE_TTL_S or ?ttl_s=)",
                code="invalid_cache",
            )
        self.url = url
        self.prefix = prefix
        self.default_ttl_s = default_ttl_s
        self._client: aioredis.Redis | None = None

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> RedisCache:
        """``redis://host:6379/0?prefix=personify:&ttl_s=60`` over the settings' defaults."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = dict(item for item in query if item[0] in _OWN_OPTIONS)
        rest = [item for item in query if item[0] not in _OWN_OPTIONS]
        try:
            ttl_s = float(own.get("ttl_s", settings.cache_ttl_s))
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid Redis cache URL {url!r}: ttl_s must be a number", code="invalid_cache"
            ) from exc
        driver_url = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(driver_url, prefix=own.get("prefix", DEFAULT_PREFIX), default_ttl_s=ttl_s)

    async def start(self) -> None:
        """Open the connection pool and check that Redis answers."""
        if self._client is not None:
            return
        try:
            self._client = await connect(
                self.url, max_connections=_DEFAULT_MAX_CONNECTIONS, wait_s=_POOL_WAIT_S
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"invalid Redis cache URL {self.url!r}: {exc}", code="invalid_cache"
            ) from exc
        except RedisError as exc:
            raise _unavailable("connect", exc) from exc

    async def close(self) -> None:
        """Close every pooled connection (the values stay in Redis)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        """One ``PING`` round trip."""
        client = self._require()
        try:
            await client.ping()
        except RedisError as exc:
            raise _unavailable("answer a ping", exc) from exc

    def _require(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendUnavailable(
                "the Redis cache is not started (call start())", code="cache_unavailable"
            )
        return self._client

    def _ttl(self, ttl_s: float | None) -> int:
        return _ttl_ms(self.default_ttl_s if ttl_s is None else ttl_s)

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        client = self._require()
        try:
            value = await client.get(self.prefix + key)
        except RedisError as exc:
            raise _unavailable("read", exc) from exc
        return _as_bytes(value)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values present under ``keys``, in one ``MGET``."""
        if not keys:
            return {}
        client = self._require()
        unique = list(dict.fromkeys(keys))
        try:
            values = await client.mget([self.prefix + k for k in unique])
        except RedisError as exc:
            raise _unavailable("read", exc) from exc
        found: dict[str, bytes] = {}
        for key, value in zip(unique, values, strict=True):
            stored = _as_bytes(value)
            if stored is not None:
                found[key] = stored
        return found

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds."""
        ttl_ms = self._ttl(ttl_s)
        client = self._require()
        try:
            await client.set(self.prefix + key, value, px=ttl_ms)
        except RedisError as exc:
            raise _unavailable("write", exc) from exc

    async def add(self, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Store only if ``key`` is absent (``SET NX``); returns whether it stored."""
        ttl_ms = self._ttl(ttl_s)
        client = self._require()
        try:
            stored = await client.set(self.prefix + key, value, px=ttl_ms, nx=True)
        except RedisError as exc:
            raise _unavailable("write", exc) from exc
        return bool(stored)

    async def set_many(self, items: Mapping[str, bytes], *, ttl_s: float | None = None) -> None:
        """Store several values with one expiry, in one pipelined round trip."""
        ttl_ms = self._ttl(ttl_s)
        if not items:
            return
        client = self._require()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self.prefix + key, value, px=ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            raise _unavailable("write", exc) from exc

    async def delete(self, keys: Sequence[str]) -> int:
        """Remove ``keys`` (one ``DEL``); returns how many were present."""
        if not keys:
            return 0
        client = self._require()
        try:
            removed = await client.delete(*(self.prefix + k for k in dict.fromkeys(keys)))
        except RedisError as exc:
            raise _unavailable("delete", exc) from exc
        return int(removed)
