"""The Kafka log's dedupe index, in Redis: a dedupe key → the offset its record got.

Kafka cannot check and append in one step, so keys are looked up before producing and set
(``SET NX``, TTL = the dedupe window) once the broker acknowledged. A crash between the
acknowledgement and the mark, a failed mark, or two concurrent appends of one key can leave a
duplicate in the log; the worker's ``messageId`` idempotency absorbs it.

Each step is one Lua script call per batch, not one command per key: the look-up answers only
the keys it found (a batch of new events gets an empty reply) and the mark is a single
command, so the per-key work is Redis's, in C, instead of redis-py packing and parsing a
pipeline of commands in the API process. The scripts touch several keys, so the index needs
one Redis (or one cluster slot), which a plain ``redis://`` URL is.
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

# the 1-based positions of the keys that are set, each followed by its value
_KNOWN_LUA = """
local values = redis.call('MGET', unpack(KEYS))
local found = {}
for i = 1, #KEYS do
  if values[i] then
    found[#found + 1] = i
    found[#found + 1] = values[i]
  end
end
return found
"""
# ARGV[1] is the TTL in ms, ARGV[i + 1] the value of KEYS[i]
_MARK_LUA = """
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'PX', ttl)
end
return #KEYS
"""
# Lua's unpack() is bounded by the C stack (LUAI_MAXCSTACK, 8000): larger look-ups go in parts
_KEYS_PER_CALL = 4000

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
        prefix = self.prefix
        known: dict[str, str] = {}
        for start in range(0, len(keys), _KEYS_PER_CALL):
            part = keys[start : start + _KEYS_PER_CALL]
            try:
                found: list[Any] = await script(keys=[prefix + k for k in part])
            except RedisError as exc:
                raise BackendUnavailable(
                    f"the Kafka event log could not check its dedupe index: {exc}",
                    code="log_unavailable",
                ) from exc
            for at in range(0, len(found), 2):
                known[part[int(found[at]) - 1]] = bytes(found[at + 1]).decode()
        return known

    async def mark(self, marks: dict[str, str]) -> None:
        """Remember ``key -> offset`` for keys whose records the broker acknowledged."""
        if not marks:
            return
        script = self._require(self._mark_script)
        prefix = self.prefix
        try:
            await script(keys=[prefix + k for k in marks], args=[self._ttl_ms, *marks.values()])
        except RedisError as exc:
            # the records are in the log already; failing now would only make the client send
            # them again. Without the marks a retry may duplicate them, which the worker absorbs.
            logger.warning("Kafka event log: %d dedupe keys not recorded: %s", len(marks), exc)
