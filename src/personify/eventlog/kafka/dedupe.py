"""The Kafka log's dedupe index, in Redis: a dedupe key → the offset its record got.

Kafka cannot check and append in one step, so keys are looked up before producing and set
(``SET NX``, TTL = the dedupe window) once the broker acknowledged. A crash between the
acknowledgement and the mark, a failed mark, or two concurrent appends of one key can leave a
duplicate in the log; the worker's ``messageId`` idempotency absorbs it.

Each step is one Lua script call per batch, not one command per key, and its keys travel as
two arguments (their byte lengths, then the keys run together) instead of one argument each:
redis-py packs every argument in Python, so per-key commands or arguments would put that work
in the API process, per event. The look-up answers only the keys it found (a batch of new
events gets an empty reply). The scripts name their keys themselves rather than in ``KEYS``,
so the index needs one Redis, not a cluster, which a ``redis://`` URL is.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from personify.errors import BackendUnavailable, ConfigurationError
from personify.redis_pool import RedisError, aioredis, pooled_client

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

logger = logging.getLogger("personify.eventlog")

# Both scripts take ARGV[1] = the key prefix, ARGV[2] = the dedupe keys' byte lengths (space
# separated), ARGV[3] = the dedupe keys run together. The look-up returns the 1-based
# position of each key that is set, followed by its value.
_KNOWN_LUA = """
local prefix, keys, names, at = ARGV[1], ARGV[3], {}, 1
for size in string.gmatch(ARGV[2], '%d+') do
  names[#names + 1] = prefix .. string.sub(keys, at, at + size - 1)
  at = at + size
end
local found = {}
-- unpack() is bounded by Lua's C stack (LUAI_MAXCSTACK, 8000)
for first = 1, #names, 1000 do
  local last = math.min(first + 999, #names)
  local values = redis.call('MGET', unpack(names, first, last))
  for i = first, last do
    local value = values[i - first + 1]
    if value then
      found[#found + 1] = i
      found[#found + 1] = value
    end
  end
end
return found
"""
# ARGV[4] = the TTL in ms, ARGV[5] = the keys' offsets in order, space separated
_MARK_LUA = """
local prefix, keys, ttl, at, n = ARGV[1], ARGV[3], ARGV[4], 1, 0
local sizes = {}
for size in string.gmatch(ARGV[2], '%d+') do
  sizes[#sizes + 1] = tonumber(size)
end
for offset in string.gmatch(ARGV[5], '%S+') do
  n = n + 1
  local size = sizes[n]
  redis.call('SET', prefix .. string.sub(keys, at, at + size - 1), offset, 'NX', 'PX', ttl)
  at = at + size
end
return n
"""


def _packed(keys: Sequence[str]) -> tuple[str, bytes]:
    """The keys as the scripts take them: their byte lengths, and the keys run together."""
    encoded = [key.encode() for key in keys]
    return " ".join(map(str, map(len, encoded))), b"".join(encoded)


_CONNECTIONS = 32  # overridable with ?max_connections=N in the dedupe URL
_WAIT_S = 10.0


class RedisDedupeIndex:
    """Dedupe keys of one topic in Redis, each kept for the dedupe window."""

    def __init__(self, url: str, topic: str, *, window_s: float) -> None:
        if not url:
            raise ConfigurationError(
                "the kafka:// event log keeps its dedupe index in Redis: set "
                "PERSONIFY_EVENTLOG_DEDUPE_URL (e.g. redis://127.0.0.1:6379/0)",
                code="missing_dedupe_url",
            )
        self.url = url
        self.prefix = f"personify:kafka:{topic}:dedupe:"
        self._ttl_ms = max(1, round(window_s * 1000))
        self._client: aioredis.Redis | None = None
        self._known_script: AsyncScript | None = None
        self._mark_script: AsyncScript | None = None

    async def start(self) -> None:
        """Connect and check Redis answers."""
        client = pooled_client(self.url, max_connections=_CONNECTIONS, wait_s=_WAIT_S)
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise BackendUnavailable(
                f"the Kafka event log's dedupe index at {self.url} is unreachable: {exc}",
                code="log_unavailable",
            ) from exc
        self._client = client
        # redis-py sends EVALSHA and loads a script the server does not know (NOSCRIPT) itself
        self._known_script = client.register_script(_KNOWN_LUA)
        self._mark_script = client.register_script(_MARK_LUA)

    async def ping(self) -> None:
        """One ``PING`` round trip to the index's Redis."""
        if self._client is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        try:
            await self._client.ping()
        except RedisError as exc:
            raise BackendUnavailable(
                f"the Kafka event log's dedupe index is unreachable: {exc}",
                code="log_unavailable",
            ) from exc

    async def close(self) -> None:
        """Release the connections."""
        client, self._client = self._client, None
        self._known_script = self._mark_script = None
        if client is not None:
            with contextlib.suppress(RedisError):
                await client.aclose()

    @staticmethod
    def _require(script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        return script

    async def known(self, keys: Sequence[str]) -> dict[str, str]:
        """The offset of each key appended within the window; absent keys are left out."""
        if not keys:
            return {}
        script = self._require(self._known_script)
        sizes, joined = _packed(keys)
        try:
            found: list[Any] = await script(args=[self.prefix, sizes, joined])
        except RedisError as exc:
            raise BackendUnavailable(
                f"the Kafka event log could not check its dedupe index: {exc}",
                code="log_unavailable",
            ) from exc
        return {
            keys[int(found[at]) - 1]: bytes(found[at + 1]).decode()
            for at in range(0, len(found), 2)
        }

    async def mark(self, marks: dict[str, str]) -> None:
        """Remember ``key -> offset`` for keys whose records the broker acknowledged."""
        if not marks:
            return
        script = self._require(self._mark_script)
        sizes, joined = _packed(list(marks))
        try:
            await script(args=[self.prefix, sizes, joined, self._ttl_ms, " ".join(marks.values())])
        except RedisError as exc:
            # the records are in the log already; failing now would only make the client send
            # them again. Without the marks a retry may duplicate them, which the worker absorbs.
            logger.warning("Kafka event log: %d dedupe keys not recorded: %s", len(marks), exc)
