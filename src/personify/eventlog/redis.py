"""The event log on one Redis stream, read by Redis consumer groups (a single partition, 0).

URL: ``redis://host:6379/0?stream=events`` (``rediss://`` for TLS). Offsets are stream ids
(``"<ms>-<seq>"``); ``appended_at`` is the millisecond part of the id, i.e. Redis's clock.

* **Append** runs one Lua script per call: for each record it looks up the dedupe key
  (``{stream}:dedupe:<key>``, in the stream's hash slot), and either answers with the
  stored id (a duplicate) or ``XADD``\\s the record and ``SET``\\s the key to its id with the
  dedupe window as TTL. Check and append are one atomic step, so concurrent appenders never
  both append the same dedupe key.
* **Bounded length that never drops unacknowledged entries.** ``XADD MAXLEN ~`` alone
  would trim entries a slow group has not acknowledged (Redis 7.0 has no ``ACKED`` trim
  option). So the same script computes a floor: for every group, its oldest pending id, or
  the id after its last delivered one when nothing is pending. Entries below the floor are
  acknowledged by every group. When the stream is over ``eventlog_stream_max_entries`` it
  trims the oldest entries, but only below the floor (``XTRIM MINID ~``, which never
  removes an id at or above its threshold). A stalled group therefore lets the stream grow
  past the bound instead of losing its entries; watch ``lag``.
* **Read** per (group, consumer): first, once per instance, this consumer's own pending
  entries (what it read but never acknowledged before a restart), then entries pending on
  any consumer of the group for ``eventlog_claim_idle_ms`` (``XAUTOCLAIM``: a dead consumer's
  entries move to a live one), then new entries (``XREADGROUP >``, blocking up to the
  timeout). Re-deliveries carry Redis's delivery counter in ``LogEntry.delivery_count``,
  so the worker can dead-letter poison entries after ``eventlog_max_deliveries``.
* **Commit** ``XACK``\\s the given ids and this consumer's older pending ids.
* **Erase** scans the stream with ``XRANGE`` and ``XDEL``\\s the matching entries; a group
  that had them pending acknowledges them when it next reads (they are gone).
* **Lag** is the group's ``lag`` (not yet delivered) plus its ``pending`` (delivered, not
  acknowledged), from ``XINFO GROUPS``; **truncate** is ``XTRIM MINID`` at the floor, or
  lower, at the retention cutoff (``now - retention``, as an id), when that comes first.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an acknowledged
append survives a crash of Redis; with ``everysec`` up to a second may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import AppendResult, EraseReport, LogEntry, LogRecord
from personify.redis_pool import RedisError, ResponseError, aioredis, connect
from personify.registry import RedisLogConfig, redis_log_config

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from personify.settings import Settings

_HELPERS = """
local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function format_id(ms, seq)
  return string.format('%d-%d', ms, seq)
end

local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then return flat[i + 1] end
  end
  return nil
end

-- the lowest id some group still needs; every entry below it is acknowledged by all groups
local function safe_floor(stream)
  local floor_ms, floor_seq = nil, nil
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local ms, seq
    if tonumber(field(group, 'pending')) > 0 then
      local summary = redis.call('XPENDING', stream, field(group, 'name'))
      ms, seq = parse_id(summary[2])
    else
      ms, seq = parse_id(field(group, 'last-delivered-id'))
      seq = seq + 1
    end
    if floor_ms == nil or ms < floor_ms or (ms == floor_ms and seq < floor_seq) then
      floor_ms, floor_seq = ms, seq
    end
  end
  return floor_ms, floor_seq
end
"""

# KEYS[1] stream, KEYS[2..] the dedupe keys of the records that have one, in order.
# ARGV[1] dedupe TTL (ms), ARGV[2] max entries (0: unbounded), then per record:
# payload, key, '1' when it has a dedupe key else '0'.
_APPEND = (
    _HELPERS
    + """
local stream = KEYS[1]
local ttl = ARGV[1]
local max_entries = tonumber(ARGV[2])
local results = {}
local next_key = 2
for i = 3, #ARGV, 3 do
  local dedupe_key = nil
  if ARGV[i + 2] == '1' then
    dedupe_key = KEYS[next_key]
    next_key = next_key + 1
  end
  local seen = dedupe_key and redis.call('GET', dedupe_key)
  if seen then
    results[#results + 1] = {seen, 1}
  else
    local id = redis.call('XADD', stream, '*', 'k', ARGV[i + 1], 'p', ARGV[i])
    if dedupe_key then
      redis.call('SET', dedupe_key, id, 'PX', ttl)
    end
    results[#results + 1] = {id, 0}
  end
end
if max_entries > 0 then
  local excess = redis.call('XLEN', stream) - max_entries
  if excess > 0 then
    local upper = '+'
    local floor_ms, floor_seq = safe_floor(stream)
    if floor_ms then
      upper = '(' .. format_id(floor_ms, floor_seq)
    end
    local victims = redis.call('XRANGE', stream, '-', upper, 'COUNT', excess)
    if #victims > 0 then
      local ms, seq = parse_id(victims[#victims][1])
      redis.call('XTRIM', stream, 'MINID', '~', format_id(ms, seq + 1))
    end
  end
end
return results
"""
)

# KEYS[1] stream; ARGV[1] the retention cutoff in epoch ms (entries with an id below it are
# old enough). Trims below min(floor, cutoff). Returns how many entries went.
_TRUNCATE = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local floor_ms, floor_seq = safe_floor(KEYS[1])
if not floor_ms then
  return 0
end
local cutoff_ms = tonumber(ARGV[1])
-- the lower of the two ids: <floor_ms>-<floor_seq> and <cutoff_ms>-0
if cutoff_ms < floor_ms or (cutoff_ms == floor_ms and floor_seq > 0) then
  floor_ms, floor_seq = cutoff_ms, 0
end
return redis.call('XTRIM', KEYS[1], 'MINID', format_id(floor_ms, floor_seq))
"""
)

# each entry as {id, fields, delivery count}: the count is the consumer's pending entry's
_WITH_COUNTS = """
local function with_counts(stream, group, consumer, entries)
  local out = {}
  for _, entry in ipairs(entries) do
    local info = redis.call('XPENDING', stream, group, entry[1], entry[1], 1, consumer)
    local count = 1
    if #info > 0 then
      count = info[1][4]
    end
    out[#out + 1] = {entry[1], entry[2], count}
  end
  return out
end
"""

# KEYS[1] stream; ARGV group, consumer, after-id, count.
# This consumer's pending entries after ``after-id``, each with its delivery count.
_HISTORY = (
    _WITH_COUNTS
    + """
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4],
                         'STREAMS', KEYS[1], ARGV[3])
if not reply or #reply == 0 then
  return {}
end
return with_counts(KEYS[1], ARGV[1], ARGV[2], reply[1][2])
"""
)

# KEYS[1] stream; ARGV group, consumer, min idle (ms), cursor, count.
# Takes over entries idle on any consumer of the group; returns {next cursor, entries}.
# After a full pass it forgets consumers with nothing pending that have not read for the idle
# time (a live one that reads again is recreated by XREADGROUP).
_CLAIM = (
    _WITH_COUNTS
    + """
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                         'COUNT', ARGV[5])
if reply[1] == '0-0' then
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local name, pending, idle = nil, 0, 0
    for i = 1, #info, 2 do
      if info[i] == 'name' then name = info[i + 1]
      elseif info[i] == 'pending' then pending = tonumber(info[i + 1])
      elseif info[i] == 'idle' then idle = tonumber(info[i + 1]) end
    end
    if pending == 0 and idle > tonumber(ARGV[3]) and name ~= ARGV[2] then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    end
  end
end
return {reply[1], with_counts(KEYS[1], ARGV[1], ARGV[2], reply[2])}
"""
)

# KEYS[1] stream; ARGV group, consumer, highest id, then the ids to acknowledge.
# Acknowledges them and every older entry still pending on this consumer.
_COMMIT = """
local stream, group, consumer, highest = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local acked = 0
for i = 4, #ARGV, 500 do
  acked = acked + redis.call('XACK', stream, group, unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
while true do
  local older = redis.call('XPENDING', stream, group, '-', highest, 500, consumer)
  if #older == 0 then
    break
  end
  local ids = {}
  for _, pending in ipairs(older) do
    ids[#ids + 1] = pending[1]
  end
  acked = acked + redis.call('XACK', stream, group, unpack(ids))
end
return acked
"""

# overridable per URL with ?max_connections=N
_MAX_CONNECTIONS = 64
_CONNECTION_WAIT_S = 10.0
_COUNT_CHUNK = 1000


@dataclass(slots=True)
class _ReaderState:
    """Where one (group, consumer) of this instance stands."""

    history_after: str = "0-0"
    history_done: bool = False
    claim_cursor: str = "0-0"
    next_claim_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _fields(raw: Any) -> dict[str, bytes] | None:
    """Entry fields from a parsed reply (a dict) or a script reply (a flat list)."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        return {_text(k): bytes(v) for k, v in raw.items()}
    items = list(raw)
    return {_text(items[i]): bytes(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _entry(entry_id: Any, raw_fields: Any, delivery_count: int = 1) -> LogEntry | None:
    offset = _text(entry_id)
    fields = _fields(raw_fields)
    if fields is None or "p" not in fields:
        return None
    return LogEntry(
        partition=0,
        offset=offset,
        key=fields.get("k", b"").decode(),
        payload=fields["p"],
        appended_at=_id_key(offset)[0] / 1000.0,
        delivery_count=int(delivery_count),
    )


class RedisEventLog:
    """The ``EventLog`` on one Redis stream with consumer groups (one partition, 0)."""

    def __init__(self, config: RedisLogConfig) -> None:
        if not config.stream:
            raise ConfigurationError(f"redis event log URL {config.url!r} names an empty stream")
        if config.claim_idle_ms <= 0:
            raise ConfigurationError("PERSONIFY_EVENTLOG_CLAIM_IDLE_MS must be positive")
        self.config = config
        self.url = config.url
        self.stream = config.stream
        self._dedupe_ttl_ms = max(1, round(config.dedupe_window_s * 1000))
        self._max_entries = max(0, config.max_entries)
        self._claim_idle_ms = config.claim_idle_ms
        # half the idle time: an entry waits at most 1.5x the idle time before it moves
        self._claim_every_s = min(max(config.claim_idle_ms / 2000.0, 0.05), 30.0)
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._readers: dict[tuple[str, str], _ReaderState] = {}
        self._groups: set[str] = set()

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> RedisEventLog:
        """``redis://host:6379/0?stream=events``; other query parameters go to redis-py."""
        return cls(redis_log_config(url, settings))

    @property
    def dedupe_prefix(self) -> str:
        """Where dedupe keys live; the braces keep them in the stream's cluster slot."""
        return f"{{{self.stream}}}:dedupe:"

    # -- lifecycle ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            raise BackendUnavailable(
                f"the Redis event log could not {action}: {exc}", code="log_unavailable"
            ) from exc

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        return self._client

    async def start(self) -> None:
        """Connect to Redis and check it answers."""
        if self._client is not None:
            return
        with self._errors("connect"):
            client = await connect(
                self.url, max_connections=_MAX_CONNECTIONS, wait_s=_CONNECTION_WAIT_S
            )
        self._client = client
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("append", _APPEND),
                ("truncate", _TRUNCATE),
                ("history", _HISTORY),
                ("claim", _CLAIM),
                ("commit", _COMMIT),
            )
        }

    async def close(self) -> None:
        """Release the connections (appends are written when ``append`` returns)."""
        client, self._client = self._client, None
        self._readers.clear()
        self._groups.clear()
        if client is not None:
            with self._errors("close"):
                await client.aclose()

    async def ping(self) -> None:
        """One ``PING`` round trip."""
        with self._errors("answer a ping"):
            await self._redis.ping()

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._client is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        return await self._scripts[script](keys=list(keys), args=list(args))

    # -- append ------------------------------------------------------------------------------

    async def append(self, records: Sequence[LogRecord]) -> list[AppendResult]:
        """Append atomically with the dedupe check; one result per record, in order."""
        if not records:
            return []
        keys = [self.stream]
        args: list[Any] = [self._dedupe_ttl_ms, self._max_entries]
        for record in records:
            has_dedupe = record.dedupe_key is not None
            if has_dedupe:
                keys.append(self.dedupe_prefix + str(record.dedupe_key))
            args.extend((record.payload, record.key, "1" if has_dedupe else "0"))
        with self._errors("append"):
            reply = await self._run("append", keys, args)
        return [AppendResult(_text(entry_id), bool(duplicate)) for entry_id, duplicate in reply]

    # -- read side ---------------------------------------------------------------------------

    async def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        with self._errors("create a consumer group"):
            try:
                # "0": a new group reads the stream from its start, as on every backend
                await self._redis.xgroup_create(self.stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups.add(group)

    def _parse_scripted(self, rows: Sequence[Any]) -> tuple[list[LogEntry], list[str]]:
        """Entries from a script reply, and the ids whose entries are gone from the stream."""
        entries: list[LogEntry] = []
        gone: list[str] = []
        for entry_id, raw_fields, count in rows:
            entry = _entry(entry_id, raw_fields, int(count))
            if entry is None:
                gone.append(_text(entry_id))
            else:
                entries.append(entry)
        return entries, gone

    async def _acknowledge_gone(self, group: str, ids: Sequence[str]) -> None:
        # an entry deleted from the stream can never be processed; keep it off the PEL
        if ids:
            with self._errors("acknowledge deleted entries"):
                await self._redis.xack(self.stream, group, *ids)

    async def _read_history(
        self, group: str, consumer: str, state: _ReaderState, max_count: int
    ) -> list[LogEntry]:
        while True:
            with self._errors("read"):
                rows = await self._run(
                    "history", [self.stream], [group, consumer, state.history_after, max_count]
                )
            if not rows:
                state.history_done = True
                return []
            state.history_after = _text(rows[-1][0])
            entries, gone = self._parse_scripted(rows)
            await self._acknowledge_gone(group, gone)
            if entries:
                return entries

    async def _claim(
        self, group: str, consumer: str, state: _ReaderState, max_count: int
    ) -> list[LogEntry]:
        with self._errors("claim idle entries"):
            cursor, rows = await self._run(
                "claim",
                [self.stream],
                [group, consumer, self._claim_idle_ms, state.claim_cursor, max_count],
            )
        state.claim_cursor = _text(cursor)
        if state.claim_cursor == "0-0":
            # a full pass over the pending entries is done; look again after a while
            state.next_claim_at = time.monotonic() + self._claim_every_s
        entries, gone = self._parse_scripted(rows)
        await self._acknowledge_gone(group, gone)
        return entries

    async def _read_new(
        self, group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[LogEntry]:
        with self._errors("read"):
            reply: Any = await self._redis.xreadgroup(
                group,
                consumer,
                {self.stream: ">"},
                count=max_count,
                # BLOCK 0 would wait forever
                block=block_ms if block_ms > 0 else None,
            )
        entries: list[LogEntry] = []
        for _stream, rows in reply or []:
            for entry_id, raw_fields in rows:
                entry = _entry(entry_id, raw_fields)
                if entry is not None:
                    entries.append(entry)
        return entries

    async def read(
        self, group: str, consumer: str, *, max_count: int = 500, timeout_ms: int = 1000
    ) -> list[LogEntry]:
        """This consumer's unacknowledged entries from before a restart, then entries idle
        on other consumers, then new ones (waiting up to ``timeout_ms`` for them)."""
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000.0
        max_count = max(1, max_count)
        await self._ensure_group(group)
        state = self._readers.setdefault((group, consumer), _ReaderState())
        async with state.lock:
            for attempt in range(2):
                try:
                    return await self._read_once(group, consumer, state, max_count, deadline)
                except BackendUnavailable as exc:
                    # the stream or group was deleted under us: recreate it once
                    if attempt or "NOGROUP" not in str(exc):
                        raise
                    self._groups.discard(group)
                    await self._ensure_group(group)
        return []

    async def _read_once(
        self, group: str, consumer: str, state: _ReaderState, max_count: int, deadline: float
    ) -> list[LogEntry]:
        if not state.history_done:
            entries = await self._read_history(group, consumer, state, max_count)
            if entries:
                return entries
        if time.monotonic() >= state.next_claim_at:
            entries = await self._claim(group, consumer, state, max_count)
            if entries:
                return entries
        block_ms = int((deadline - time.monotonic()) * 1000)
        return await self._read_new(group, consumer, max_count, block_ms)

    async def commit(self, group: str, consumer: str, entries: Sequence[LogEntry]) -> None:
        """Acknowledge ``entries`` and this consumer's older pending entries."""
        if not entries:
            return
        ids = [e.offset for e in entries]
        highest = max(ids, key=_id_key)
        with self._errors("commit"):
            await self._run("commit", [self.stream], [group, consumer, highest, *ids])

    async def _group_info(self, group: str) -> dict[str, Any] | None:
        with self._errors("describe consumer groups"):
            try:
                groups = await self._redis.xinfo_groups(self.stream)
            except ResponseError as exc:
                if "no such key" in str(exc).lower():
                    return None
                raise
        for info in groups:
            if _text(info["name"]) == group:
                return {_text(k): v for k, v in info.items()}
        return None

    async def _count_after(self, after: str) -> int:
        """Entries after ``after``, counted by scanning (when Redis cannot tell the lag)."""
        total = 0
        start = f"({after}"
        while True:
            with self._errors("count entries"):
                rows = await self._redis.xrange(self.stream, min=start, count=_COUNT_CHUNK) or []
            total += len(rows)
            if len(rows) < _COUNT_CHUNK:
                return total
            start = f"({_text(rows[-1][0])}"

    async def lag(self, group: str) -> int:
        """Entries the group has not been delivered plus those delivered but not acknowledged."""
        info = await self._group_info(group)
        if info is None:
            with self._errors("measure the stream"):
                return int(await self._redis.xlen(self.stream))
        pending = int(info["pending"])
        lag = info.get("lag")
        if lag is None:
            # Redis cannot compute the lag after deletions inside the group's range
            return pending + await self._count_after(_text(info["last-delivered-id"]))
        return pending + int(lag)

    async def truncate(self, *, retention_s: float = 0.0, now: float | None = None) -> int:
        """Remove the entries every group has acknowledged and that are older than
        ``retention_s`` (``XTRIM MINID`` at the lower of the two); returns how many went."""
        cutoff_ms = max(0, int(((time.time() if now is None else now) - retention_s) * 1000))
        with self._errors("truncate"):
            return int(await self._run("truncate", [self.stream], [cutoff_ms]))

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries, oldest first."""
        if limit <= 0:
            return []
        with self._errors("read the tail"):
            rows = await self._redis.xrevrange(self.stream, count=limit) or []
        entries = [_entry(entry_id, raw_fields) for entry_id, raw_fields in reversed(rows)]
        return [e for e in entries if e is not None]

    async def erase(
        self, match: Callable[[LogEntry], bool], *, dry_run: bool = False
    ) -> EraseReport:
        """``XRANGE`` over the whole stream, ``XDEL`` of every entry ``match`` is true for."""
        doomed: list[str] = []
        start = "-"
        while True:
            with self._errors("scan the stream"):
                rows = await self._redis.xrange(self.stream, min=start, count=_COUNT_CHUNK) or []
            for entry_id, raw_fields in rows:
                entry = _entry(entry_id, raw_fields)
                if entry is not None and match(entry):
                    doomed.append(entry.offset)
            if len(rows) < _COUNT_CHUNK:
                break
            start = f"({_text(rows[-1][0])}"
        if dry_run:
            return EraseReport(0, tuple(f"0:{offset}" for offset in doomed))
        removed = 0
        for begin in range(0, len(doomed), _COUNT_CHUNK):
            with self._errors("delete entries"):
                removed += int(
                    await self._redis.xdel(self.stream, *doomed[begin : begin + _COUNT_CHUNK])
                )
        return EraseReport(removed)
