"""The Kafka log's dedupe index, in Redis: a dedupe key → the offset its record got.

Kafka cannot check and append in one step, so keys are looked up (``MGET``) before producing
and set (``SET NX``, TTL = the dedupe window) once the broker acknowledged. A crash between
the acknowledgement and the mark, a failed mark, or two concurrent appends of one key can
leave a duplicate in the log; the worker's ``messageId`` idempotency absorbs it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from personify.errors import BackendUnavailable, ConfigurationError
from personify.redis_pool import RedisError, aioredis, pooled_client

logger = logging.getLogger("personify.eventlog")

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

    async def close(self) -> None:
        """Release the connections."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError):
                await client.aclose()

    def _require(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        return self._client

    async def known(self, keys: Sequence[str]) -> dict[str, str]:
        """The offset of each key appended within the window; absent keys are left out."""
        if not keys:
            return {}
        client = self._require()
        try:
            values: list[Any] = await client.mget([self.prefix + k for k in keys])
        except RedisError as exc:
            raise BackendUnavailable(
                f"the Kafka event log could not check its dedupe index: {exc}",
                code="log_unavailable",
            ) from exc
        return {k: bytes(v).decode() for k, v in zip(keys, values, strict=True) if v is not None}

    async def mark(self, marks: dict[str, str]) -> None:
        """Remember ``key -> offset`` for keys whose records the broker acknowledged."""
        if not marks:
            return
        client = self._require()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for key, offset in marks.items():
                    pipe.set(self.prefix + key, offset, nx=True, px=self._ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            # the records are in the log already; failing now would only make the client send
            # them again. Without the marks a retry may duplicate them, which the worker absorbs.
            logger.warning("Kafka event log: %d dedupe keys not recorded: %s", len(marks), exc)
