"""The embedded event log: one SQLite file in WAL mode with group commit.

Group commit: ``append`` hands its records to one writer thread and awaits a future.
The writer drains everything queued (waiting up to ``linger_ms`` for more), writes it
in one transaction, and resolves every waiting future together, so many concurrent
requests share one fsync.

Durability (``PERSONIFY_EVENTLOG_DURABILITY``), what a crash can cost once ``append``
has returned:

* ``full`` (default) — ``synchronous=FULL``: every commit is fsynced before ``append``
  returns. A process crash or a power loss loses nothing acknowledged.
* ``normal`` — ``synchronous=NORMAL``: the WAL is fsynced only at checkpoints. A process
  crash loses nothing; a power loss or kernel crash may lose the commits since the last
  checkpoint (the file stays consistent).
* ``off`` — ``synchronous=OFF``: no fsync at all. A process crash loses nothing; a power
  loss may lose recent commits and, rarely, corrupt the file. For tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import AppendResult, LogEntry, LogRecord

if TYPE_CHECKING:
    from personify.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    "offset" INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    appended_at REAL NOT NULL,
    dedupe_key TEXT
);
CREATE TABLE IF NOT EXISTS dedupe (
    hash INTEGER PRIMARY KEY,
    "offset" INTEGER NOT NULL,
    appended_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dedupe_appended_at ON dedupe (appended_at);
CREATE TABLE IF NOT EXISTS consumer_groups (
    name TEXT PRIMARY KEY,
    committed INTEGER NOT NULL
);
"""

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
_DEDUPE_PRUNE_EVERY_S = 60.0
_POLL_INTERVAL_S = 0.05
_WRITER_CACHE_KIB = 64 * 1024


def dedupe_hash(key: str) -> int:
    """A 64-bit signed hash of a dedupe key: the dedupe index's rowid.

    Random text keys dirtied a page of a wide index per event; 8-byte integer keys keep the
    index a fraction of the size. A hash hit is checked against the key stored with the log
    row, so a collision can never drop a distinct event.
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


@dataclass(slots=True)
class _Pending:
    records: Sequence[LogRecord]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[AppendResult]]
    results: list[AppendResult] = field(default_factory=list)


_STOP = object()


def _resolve_all(batch: list[_Pending]) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_result(item.results)


def _fail(future: asyncio.Future[list[AppendResult]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


_SWITCH_INTERVAL_S = 0.0002


# Statement sizes are drawn from a few fixed buckets so that SQLite's statement cache keeps
# every statement compiled: a statement per distinct row count would be parsed anew on
# almost every commit.
_SIZE_BUCKETS = (500, 128, 32, 8, 2, 1)


def _begin_immediate(conn: sqlite3.Connection, timeout_s: float = 10.0) -> None:
    """Take the write lock, retrying every fraction of a millisecond while another process has it.

    SQLite's own busy handler sleeps 1, 2, 5, 10… up to 100 ms between tries, so two API
    processes sharing one log spent most of their time asleep; the writer connection has no
    busy timeout and retries here instead.
    """
    deadline = time.monotonic() + timeout_s
    delay_s = 0.0001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.002)


def _bucket_at_most(count: int) -> int:
    return next(size for size in _SIZE_BUCKETS if size <= count)


def _bucket_at_least(count: int) -> int:
    return min(size for size in _SIZE_BUCKETS if size >= count)


def _insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with multi-row VALUES statements of bucketed sizes.

    ``executemany`` releases and retakes the GIL for every row; under load the HTTP thread
    holds it most of the time, so each retake waits. A few statements per commit keep the
    writer from queueing behind the event loop.
    """
    if not rows:
        return
    group = "(" + ",".join("?" * len(rows[0])) + ")"
    start = 0
    while start < len(rows):
        size = _bucket_at_most(len(rows) - start)
        chunk = rows[start : start + size]
        conn.execute(
            f"{head} VALUES {','.join([group] * size)}", [value for row in chunk for value in row]
        )
        start += size


def _select_in(
    conn: sqlite3.Connection, sql: str, values: Sequence[Any], *extra: Any
) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (with one ``{marks}`` IN list) for every value, in bucketed statements.

    Short lists are padded with their first value (a repeat in IN changes nothing), so the
    statement is one SQLite has compiled already.
    """
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(values), _SIZE_BUCKETS[0]):
        chunk = list(values[start : start + _SIZE_BUCKETS[0]])
        size = _bucket_at_least(len(chunk))
        chunk += [chunk[0]] * (size - len(chunk))
        found.extend(conn.execute(sql.format(marks=",".join("?" * size)), (*chunk, *extra)))
    return found


class SQLiteEventLog:
    """The ``EventLog`` on one SQLite file (a single partition, numbered 0)."""

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "full",
        linger_ms: float = 0.0,
        max_batch_events: int = 5000,
        max_pending_events: int = 50_000,
        dedupe_window_s: float = 24 * 3600.0,
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"eventlog durability must be one of {sorted(_SYNCHRONOUS)}, not {durability!r}"
            )
        self.path = path
        self._synchronous = _SYNCHRONOUS[durability]
        self._linger_s = linger_ms / 1000.0
        self._max_batch_events = max_batch_events
        self._max_pending_events = max_pending_events
        self._dedupe_window_s = dedupe_window_s
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._pending_events = 0
        self._pending_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._cursors: dict[tuple[str, str], int] = {}
        self._appended = asyncio.Event()
        self._started = False

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> SQLiteEventLog:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        parts = urlsplit(url)
        raw = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not raw:
            raise ConfigurationError(f"sqlite event log URL {url!r} names no file")
        return cls(
            Path(raw),
            durability=settings.eventlog_durability,
            linger_ms=settings.eventlog_linger_ms,
            max_batch_events=settings.eventlog_max_batch_events,
            max_pending_events=settings.eventlog_max_pending_events,
            dedupe_window_s=settings.dedupe_window_hours * 3600.0,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=10.0,
                cached_statements=256,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"cannot open the event log at {self.path}: {exc}", code="log_unavailable"
            ) from exc
        return conn

    async def start(self) -> None:
        """Create the file and tables, and start the writer thread."""
        if self._started:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.close()
        self._reader = self._connect()
        # The writer thread drops the GIL at each SQLite call; while the HTTP thread is busy,
        # taking it back waits out the interpreter's switch interval (5 ms by default), and
        # every request in the group commit waits with it. A shorter interval bounds that wait.
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
        self._writer = threading.Thread(
            target=self._write_loop, name="eventlog-writer", daemon=True
        )
        self._writer.start()
        self._appended = asyncio.Event()
        self._started = True

    async def close(self) -> None:
        """Write what is queued, then stop the writer and close connections."""
        if not self._started:
            return
        self._started = False
        self._queue.put(_STOP)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        if self._reader is not None:
            self._reader.close()

    # -- append ------------------------------------------------------------------------------

    async def append(self, records: Sequence[LogRecord]) -> list[AppendResult]:
        """Queue ``records`` for the writer and wait until they are committed."""
        if not records:
            return []
        if not self._started:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        count = len(records)
        with self._pending_lock:
            if self._pending_events + count > self._max_pending_events and self._pending_events:
                raise BackendUnavailable(
                    f"the event log has {self._pending_events} events waiting to be written; "
                    "retry shortly",
                    code="log_overloaded",
                )
            self._pending_events += count
        loop = asyncio.get_running_loop()
        pending = _Pending(records, loop, loop.create_future())
        self._queue.put(pending)
        results = await pending.future
        self._appended.set()
        return results

    def _write_loop(self) -> None:
        conn = self._connect()
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
            # waits for the write lock happen in _begin_immediate, at a finer grain
            conn.execute("PRAGMA busy_timeout=0")
        last_prune = 0.0
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                assert isinstance(first, _Pending)
                batch = [first]
                size = len(first.records)
                stop = False
                # what queued while the last commit was being fsynced goes into this one;
                # linger_ms > 0 additionally waits for stragglers
                deadline = time.monotonic() + self._linger_s
                while size < self._max_batch_events:
                    try:
                        remaining = deadline - time.monotonic()
                        item = (
                            self._queue.get(timeout=remaining)
                            if remaining > 0
                            else self._queue.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    assert isinstance(item, _Pending)
                    batch.append(item)
                    size += len(item.records)
                self._write_batch(conn, batch)
                with self._pending_lock:
                    self._pending_events -= size
                now = time.time()
                if now - last_prune > _DEDUPE_PRUNE_EVERY_S:
                    last_prune = now
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(
                            "DELETE FROM dedupe WHERE appended_at < ?",
                            (now - self._dedupe_window_s,),
                        )
                if stop:
                    return
        finally:
            conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        now = time.time()
        try:
            _begin_immediate(conn)
            try:
                self._write_in_transaction(conn, batch, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = BackendUnavailable(
                f"the event log could not write: {exc}", code="log_unavailable", retry_after_s=1
            )
            for item in batch:
                item.loop.call_soon_threadsafe(_fail, item.future, error)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        # one wake-up per event loop, not one per request
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, items)

    def _write_in_transaction(
        self, conn: sqlite3.Connection, batch: list[_Pending], now: float
    ) -> None:
        hashes = {
            r.dedupe_key: dedupe_hash(r.dedupe_key)
            for item in batch
            for r in item.records
            if r.dedupe_key is not None
        }
        known = self._known_offsets(conn, hashes, now - self._dedupe_window_s)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        next_offset = (row[0] if row else 0) + 1
        log_rows: list[tuple[int, str, bytes, float, str | None]] = []
        dedupe_rows: list[tuple[int, int, float]] = []
        claimed: set[int] = set(known.values())
        for item in batch:
            results = item.results
            for record in item.records:
                dedupe_key = record.dedupe_key
                if dedupe_key is not None:
                    seen = known.get(dedupe_key)
                    if seen is not None:
                        results.append(AppendResult(str(seen), True))
                        continue
                    known[dedupe_key] = next_offset
                    digest = hashes[dedupe_key]
                    if digest not in claimed:
                        claimed.add(digest)
                        dedupe_rows.append((digest, next_offset, now))
                log_rows.append((next_offset, record.key, record.payload, now, dedupe_key))
                results.append(AppendResult(str(next_offset)))
                next_offset += 1
        _insert_rows(
            conn, 'INSERT INTO log ("offset", key, payload, appended_at, dedupe_key)', log_rows
        )
        _insert_rows(
            conn, 'INSERT OR REPLACE INTO dedupe (hash, "offset", appended_at)', dedupe_rows
        )

    def _known_offsets(
        self, conn: sqlite3.Connection, hashes: dict[str, int], cutoff: float
    ) -> dict[str, int]:
        """Offsets of the keys already appended within the window (hash hits, verified)."""
        if not hashes:
            return {}
        by_hash: dict[int, list[str]] = {}
        for key, digest in hashes.items():
            by_hash.setdefault(digest, []).append(key)
        digests = list(by_hash)
        hits: dict[int, int] = dict(
            _select_in(
                conn,
                'SELECT hash, "offset" FROM dedupe WHERE hash IN ({marks}) AND appended_at >= ?',
                digests,
                cutoff,
            )
        )
        if not hits:
            return {}
        stored: dict[int, str | None] = dict(
            _select_in(
                conn,
                'SELECT "offset", dedupe_key FROM log WHERE "offset" IN ({marks})',
                list(hits.values()),
            )
        )
        known: dict[str, int] = {}
        for digest, offset in hits.items():
            original = stored.get(offset)
            for key in by_hash[digest]:
                # a truncated row cannot be checked; its hash is trusted (a 2^-64 risk)
                if original is None or original == key:
                    known[key] = offset
        return known

    # -- read side ---------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if self._reader is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        try:
            with self._reader_lock:
                return list(self._reader.execute(sql, params))
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"the event log could not be read: {exc}", code="log_unavailable"
            ) from exc

    def _execute_write(self, sql: str, params: Sequence[object] = ()) -> int:
        conn = self._connect()
        try:
            cursor = conn.execute(sql, params)
            return cursor.rowcount
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"the event log could not be written: {exc}", code="log_unavailable"
            ) from exc
        finally:
            conn.close()

    def _committed(self, group: str) -> int:
        rows = self._query("SELECT committed FROM consumer_groups WHERE name = ?", (group,))
        if rows:
            return int(rows[0][0])
        self._execute_write(
            "INSERT OR IGNORE INTO consumer_groups (name, committed) VALUES (?, 0)", (group,)
        )
        return 0

    def _read_sync(self, group: str, consumer: str, max_count: int) -> list[LogEntry]:
        cursor_key = (group, consumer)
        position = self._cursors.get(cursor_key)
        if position is None:
            position = self._committed(group)
        rows = self._query(
            'SELECT "offset", key, payload, appended_at FROM log WHERE "offset" > ? '
            'ORDER BY "offset" LIMIT ?',
            (position, max_count),
        )
        entries = [
            LogEntry(0, str(offset), str(key), bytes(payload), float(appended_at))
            for offset, key, payload, appended_at in rows
        ]
        if entries:
            self._cursors[cursor_key] = int(entries[-1].offset)
        else:
            self._cursors[cursor_key] = position
        return entries

    async def read(
        self, group: str, consumer: str, *, max_count: int = 500, timeout_ms: int = 1000
    ) -> list[LogEntry]:
        """Entries after this consumer's position (its group's commit on first read)."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            self._appended.clear()
            entries = await asyncio.to_thread(self._read_sync, group, consumer, max_count)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            # woken early by an append in this process; appends by others are polled
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._appended.wait(), timeout=min(remaining, _POLL_INTERVAL_S)
                )

    async def commit(self, group: str, consumer: str, entries: Sequence[LogEntry]) -> None:
        """Move the group's committed offset forward to the highest entry given."""
        if not entries:
            return
        highest = max(int(e.offset) for e in entries)
        await asyncio.to_thread(
            self._execute_write,
            "INSERT INTO consumer_groups (name, committed) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET committed = MAX(committed, excluded.committed)",
            (group, highest),
        )

    async def lag(self, group: str) -> int:
        """Records after the group's committed offset."""

        def count() -> int:
            # looking at a group must not register it: an unknown group would hold back truncate
            known = self._query("SELECT committed FROM consumer_groups WHERE name = ?", (group,))
            committed = int(known[0][0]) if known else 0
            rows = self._query('SELECT count(*) FROM log WHERE "offset" > ?', (committed,))
            return int(rows[0][0])

        return await asyncio.to_thread(count)

    async def truncate(self) -> int:
        """Delete the records every known group has committed."""

        def run() -> int:
            rows = self._query("SELECT min(committed) FROM consumer_groups")
            floor = rows[0][0] if rows else None
            if floor is None:
                return 0
            return self._execute_write('DELETE FROM log WHERE "offset" <= ?', (floor,))

        return await asyncio.to_thread(run)

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries, oldest first."""
        rows = await asyncio.to_thread(
            self._query,
            'SELECT "offset", key, payload, appended_at FROM log ORDER BY "offset" DESC LIMIT ?',
            (limit,),
        )
        return [
            LogEntry(0, str(offset), str(key), bytes(payload), float(appended_at))
            for offset, key, payload, appended_at in reversed(rows)
        ]
