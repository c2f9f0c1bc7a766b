"""Redis clients over a bounded, blocking connection pool, for every adapter that uses Redis.

A burst of concurrent callers waits up to ``wait_s`` for a free connection instead of failing
with "Too many connections". ``max_connections`` and other redis-py options given in the URL's
query string override the adapter's defaults.
"""

from __future__ import annotations

from personify.errors import ConfigurationError

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "Redis-backed backends (the redis:// event log and cache, the kafka:// dedupe index) "
        "need the 'redis' package: pip install 'personify[redis]'",
        code="missing_extra",
    ) from exc

# the adapters take the driver from here, so a missing package fails in one place
__all__ = ["RedisError", "ResponseError", "aioredis", "connect", "pooled_client"]

_CONNECT_TIMEOUT_S = 5.0


def pooled_client(url: str, *, max_connections: int, wait_s: float) -> aioredis.Redis:
    """A client on a new pool of at most ``max_connections``; raises ``ValueError`` on a bad URL."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_s,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
    )
    return aioredis.Redis.from_pool(pool)


async def connect(url: str, *, max_connections: int, wait_s: float) -> aioredis.Redis:
    """``pooled_client`` once Redis answers a ``PING``; raises ``RedisError`` (pool closed)."""
    client = pooled_client(url, max_connections=max_connections, wait_s=wait_s)
    try:
        await client.ping()
    except RedisError:
        await client.aclose()
        raise
    return client
