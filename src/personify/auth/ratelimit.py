"""Token-bucket rate limits per key: in memory when embedded, in Redis when scaled out.

Each key (``wk:<source id>`` for a write key, ``ak:<api key id>`` for an API key) owns a
bucket of ``burst`` tokens that refills at ``rate_per_s`` tokens a second; a request takes
``cost`` tokens and is refused, taking nothing, when fewer are left. Refill is lazy: a bucket
is only touched when its key takes, so an idle key costs nothing and a full bucket is the
same as no bucket at all (both backends forget full buckets).

* ``MemoryRateLimiter``: a dict of buckets in this process, bounded in size; the limits
  hold per process (N API processes admit up to N times the rate).
* ``RedisRateLimiter``: one atomic Lua script per take, shared by every API process. A Redis
  that is down or slow never takes the API down: the take is allowed and counted in
  ``failures`` (and Redis is left alone for a second before it is tried again).

``open_rate_limiter(settings)`` picks the backend (``PERSONIFY_RATE_LIMIT_BACKEND``);
``enforce`` is the one call a route or guard makes::

    await enforce(limiter, f"ak:{key.id}", rate_per_s=..., burst=...)  # raises RateLimited
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from personify.clock import Clock, SystemClock
from personify.errors import ConfigurationError, RateLimited

if TYPE_CHECKING:
    from personify.redis_pool import aioredis
    from personify.settings import Settings

__all__ = [
    "MemoryRateLimiter",
    "RateDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "enforce",
    "open_rate_limiter",
    "refusal",
]

logger = logging.getLogger("personify.auth")

# float refill arithmetic can land a hair under a whole token: that hair is not a missing
# token. (Time is whole microseconds, not float epoch seconds, whose steps of 0.24 µs would
# lose a millionth of a token per take.)
_EPSILON = 1e-9
_US = 1_000_000
# what the key prefixes name, and the setting that raises their limit, for the refusal
_SUBJECTS = {
    "wk": ("write key", "PERSONIFY_RATE_LIMIT_WRITE_KEY_PER_S"),
    "ak": ("API key", "PERSONIFY_RATE_LIMIT_API_KEY_PER_S"),
}


# not frozen: a frozen dataclass's __init__ costs several times more, on every request
@dataclass(slots=True)
class RateDecision:
    """The answer to one take: admitted or not, and the bucket's state after it."""

    allowed: bool
    # the bucket's size (its burst)
    limit: int
    # whole tokens left after this take
    remaining: int
    # 0 when allowed; else the seconds until ``cost`` tokens are back
    retry_after_s: float
    # the seconds until the bucket is full again
    reset_s: float


@runtime_checkable
class RateLimiter(Protocol):
    """Token buckets by key. ``take`` is atomic per key: concurrent takes never admit more
    than the bucket holds (on one process for memory, across processes for Redis)."""

    # takes answered without the backend (allowed, because it failed)
    failures: int

    async def start(self) -> None:
        """Get ready (connect); never raises because a backend is down."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def take(self, key: str, *, rate_per_s: float, burst: int, cost: int = 1) -> RateDecision:
        """Take ``cost`` tokens from ``key``'s bucket (of ``burst``, refilling at
        ``rate_per_s``), or refuse and take none. Raises ``ValueError`` on a rate that is not
        positive or a cost outside ``1..burst`` (such a take could never be admitted)."""
        ...


def _check(rate_per_s: float, burst: int, cost: int) -> None:
    if not 0.0 < rate_per_s < math.inf:
        raise ValueError(f"rate_per_s must be positive and finite, not {rate_per_s!r}")
    if not 1 <= cost <= burst:
        raise ValueError(f"cost must be between 1 and the burst ({burst}), not {cost!r}")


def _decision(
    allowed: bool, tokens: float, *, rate_per_s: float, burst: int, cost: int
) -> RateDecision:
    """The decision for a bucket left with ``tokens`` after the take."""
    # positional: keywords cost a measurable share of a take
    return RateDecision(
        allowed,
        burst,
        int(tokens + _EPSILON),
        0.0 if allowed else (cost - tokens) / rate_per_s,
        (burst - tokens) / rate_per_s,
    )


def refusal(key: str, decision: RateDecision) -> RateLimited:
    """The ``RateLimited`` error (HTTP 429) for a refused take on ``key``."""
    subject, setting = _SUBJECTS.get(key.partition(":")[0], ("key", "the rate limit settings"))
    # whole seconds, rounded up: a client that waits Retry-After finds its token there
    retry_after_s = max(1, math.ceil(decision.retry_after_s - _EPSILON))
    return RateLimited(
        f"this {subject} is over its rate limit ({decision.limit} requests in a burst); "
        f"retry after {retry_after_s} s, send fewer requests (batch events into /v1/batch), "
        f"or have the operator raise {setting}",
        details={
            "limit": decision.limit,
            "remaining": decision.remaining,
            "retryAfterS": retry_after_s,
        },
        retry_after_s=retry_after_s,
        limit=decision.limit,
        remaining=decision.remaining,
        reset_s=max(1, math.ceil(decision.reset_s - _EPSILON)),
    )


async def enforce(
    limiter: RateLimiter | None, key: str, *, rate_per_s: float, burst: int, cost: int = 1
) -> RateDecision | None:
    """Take from ``key``'s bucket; raises ``RateLimited`` when refused. With no limiter
    (``PERSONIFY_RATE_LIMIT_ENABLED=false``) it admits everything and returns ``None``."""
    if limiter is None:
        return None
    decision = await limiter.take(key, rate_per_s=rate_per_s, burst=burst, cost=cost)
    if not decision.allowed:
        raise refusal(key, decision)
    return decision


class MemoryRateLimiter:
    """Token buckets in a dict of this process, refilled lazily by the injectable clock.

    Memory is bounded: every ``sweep_interval_s`` (and whenever there are more than
    ``max_buckets``) the buckets that have refilled to full are dropped, as they are the
    same as absent ones. If more than ``max_buckets`` are still short of full, the least
    recently used are dropped too, forgiving their debt; the keys are those of
    authenticated write and API keys, so that takes far more keys than a deployment has.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_buckets: int = 100_000,
        sweep_interval_s: float = 60.0,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._now_us = (clock or SystemClock()).now_us
        self.max_buckets = max_buckets
        self._sweep_interval_us = round(sweep_interval_s * _US)
        # key -> [tokens, stamp_us, full_at_us]; in least recently used order (a take moves
        # its key to the end)
        self._buckets: dict[str, list[float]] = {}
        self._next_sweep_us: float = self._now_us() + self._sweep_interval_us
        self.failures = 0

    def __len__(self) -> int:
        """How many buckets are held (those short of full, until the next sweep)."""
        return len(self._buckets)

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Forget every bucket."""
        self._buckets.clear()

    async def take(self, key: str, *, rate_per_s: float, burst: int, cost: int = 1) -> RateDecision:
        """Take ``cost`` tokens from ``key``'s bucket, or refuse and take none."""
        if not (0.0 < rate_per_s < math.inf and 1 <= cost <= burst):
            _check(rate_per_s, burst, cost)
        now_us: float = self._now_us()
        # no await below: on one event loop the take is atomic
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            tokens = float(burst)
        else:
            tokens, stamp_us = bucket[0], bucket[1]
            if now_us > stamp_us:
                tokens = min(float(burst), tokens + (now_us - stamp_us) * rate_per_s / _US)
            else:
                # the wall clock stepped back: no refill, and the later stamp is kept, so a
                # step back cannot be used to refill twice
                now_us = stamp_us
        allowed = tokens + _EPSILON >= cost
        if allowed:
            tokens = tokens - cost if tokens > cost else 0.0
        buckets = self._buckets
        buckets[key] = [tokens, now_us, now_us + (burst - tokens) * _US / rate_per_s]
        if now_us >= self._next_sweep_us or len(buckets) > self.max_buckets:
            self._sweep(now_us)
        return RateDecision(
            allowed,
            burst,
            int(tokens + _EPSILON),
            0.0 if allowed else (cost - tokens) / rate_per_s,
            (burst - tokens) / rate_per_s,
        )

    def _sweep(self, now_us: float) -> None:
        self._next_sweep_us = now_us + self._sweep_interval_us
        self._buckets = {k: b for k, b in self._buckets.items() if b[2] > now_us}
        excess = len(self._buckets) - self.max_buckets
        if excess > 0:
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]


# One take, atomic in Redis. The bucket is a hash {t: tokens, s: stamp in microseconds}; the
# caller's clock gives now (exact in a Lua double up to 2^53 µs), and the stamp only moves
# forward, so a process whose clock lags refills
# nothing and can never admit more than the bucket holds. A refused take writes nothing.
# The key expires when the bucket would be full again: an absent key is a full bucket.
_TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
elseif now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * rate / 1000000)
  stamp = now
end
if tokens > burst then
  tokens = burst
end
local allowed = 0
if tokens + 1e-9 >= cost then
  allowed = 1
  tokens = math.max(0, tokens - cost)
  local full_ms = math.ceil((burst - tokens) / rate * 1000) + 1
  redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 's', string.format('%d', stamp))
  redis.call('PEXPIRE', KEYS[1], full_ms)
end
return {allowed, string.format('%.17g', tokens)}
"""

# options of the cache URL this adapter reads or drops; the rest are redis-py's
_OWN_OPTIONS = ("prefix", "ttl_s")
_DEFAULT_PREFIX = "personify:"
_KEY_SPACE = "ratelimit:"
# a rate-limit check waits this long at most for Redis (connect, pool, answer) before it
# lets the request through
_TIMEOUT_S = 0.25
_MAX_CONNECTIONS = 128
# after a failure, Redis is left alone this long (takes are allowed and counted meanwhile),
# so a Redis that times out costs one request a timeout, not every request
_BACKOFF_S = 1.0
_FAILURE_LOG_INTERVAL_S = 10.0


class RedisRateLimiter:
    """Token buckets in Redis, shared by every process: one Lua script call per take.

    Keys are ``<prefix>ratelimit:<key>`` with an expiry at the moment the bucket would be
    full again. Every Redis failure (down, slow past ``timeout_s``, pool exhausted) allows
    the take and counts it in ``failures``; it never raises.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = _DEFAULT_PREFIX,
        clock: Clock | None = None,
        timeout_s: float = _TIMEOUT_S,
        max_connections: int = _MAX_CONNECTIONS,
        backoff_s: float = _BACKOFF_S,
    ) -> None:
        self.url = url
        self.prefix = prefix + _KEY_SPACE
        self._now_us = (clock or SystemClock()).now_us
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._backoff_s = backoff_s
        self._client: aioredis.Redis | None = None
        self._script: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._down_until_us = 0
        self._next_log = 0.0
        self.failures = 0

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> RedisRateLimiter:
        """From the cache URL (``redis://host:6379/0?prefix=personify:``): its ``prefix``
        is kept, its ``ttl_s`` dropped, the other options are redis-py's."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = dict(item for item in query if item[0] in _OWN_OPTIONS)
        rest = [item for item in query if item[0] not in _OWN_OPTIONS]
        driver_url = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(driver_url, prefix=own.get("prefix", _DEFAULT_PREFIX), clock=clock)

    async def start(self) -> None:
        """Open the connection pool and load the script; a Redis that is down is logged,
        not raised (takes are allowed until it answers)."""
        if self._client is not None:
            return
        # the driver is imported here only: a deployment without Redis never needs it
        from personify.redis_pool import RedisError, aioredis

        self._errors = (RedisError, OSError)
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self._max_connections,
                timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                socket_timeout=self._timeout_s,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"invalid Redis URL for the rate limits {self.url!r}: {exc}",
                code="invalid_rate_limit",
            ) from exc
        self._client = aioredis.Redis.from_pool(pool)
        self._script = self._client.register_script(_TAKE_SCRIPT)
        try:
            await self._client.ping()
        except self._errors as exc:
            self._failed(exc)

    async def close(self) -> None:
        """Close every pooled connection (the buckets stay in Redis until they expire)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def take(self, key: str, *, rate_per_s: float, burst: int, cost: int = 1) -> RateDecision:
        """Take ``cost`` tokens from ``key``'s bucket in Redis, or refuse and take none;
        allowed (and counted in ``failures``) when Redis does not answer."""
        _check(rate_per_s, burst, cost)
        now_us = self._now_us()
        if self._client is None or now_us < self._down_until_us:
            return self._allowed_without_redis(burst, cost)
        try:
            allowed, tokens = await self._script(
                keys=[self.prefix + key], args=[repr(float(rate_per_s)), burst, cost, now_us]
            )
        except self._errors as exc:
            self._failed(exc)
            return self._allowed_without_redis(burst, cost)
        return _decision(
            bool(allowed), float(tokens), rate_per_s=rate_per_s, burst=burst, cost=cost
        )

    def _allowed_without_redis(self, burst: int, cost: int) -> RateDecision:
        self.failures += 1
        return RateDecision(
            allowed=True, limit=burst, remaining=burst - cost, retry_after_s=0.0, reset_s=0.0
        )

    def _failed(self, exc: BaseException) -> None:
        self._down_until_us = self._now_us() + round(self._backoff_s * _US)
        # one line per interval: under load a Redis outage fails thousands of takes a second
        monotonic = time.monotonic()
        if monotonic >= self._next_log:
            self._next_log = monotonic + _FAILURE_LOG_INTERVAL_S
            logger.warning(
                "rate limits: Redis at %s does not answer (%s); requests are let through "
                "unlimited, and counted, until it does (at most one line per %g s)",
                urlsplit(self.url).netloc.rpartition("@")[2],
                exc,
                _FAILURE_LOG_INTERVAL_S,
            )


def open_rate_limiter(settings: Settings, *, clock: Clock | None = None) -> RateLimiter | None:
    """The limiter the settings ask for (not started), or ``None`` when rate limits are off.

    ``PERSONIFY_RATE_LIMIT_BACKEND=auto`` is Redis when ``PERSONIFY_CACHE_URL`` is a Redis
    URL (the processes share it), memory otherwise.
    """
    if not settings.rate_limit_enabled:
        return None
    is_redis_cache = urlsplit(settings.cache_url).scheme in ("redis", "rediss")
    backend = settings.rate_limit_backend
    if backend == "auto":
        backend = "redis" if is_redis_cache else "memory"
    if backend == "memory":
        return MemoryRateLimiter(clock=clock)
    if not is_redis_cache:
        raise ConfigurationError(
            "PERSONIFY_RATE_LIMIT_BACKEND=redis keeps the buckets in the cache's Redis: set "
            "PERSONIFY_CACHE_URL=redis://host:6379/0 (or the backend to auto or memory)",
            code="invalid_rate_limit",
        )
    return RedisRateLimiter.from_url(settings.cache_url, clock=clock)
