"""The embedded event log: one SQLite file in WAL mode with group commit.

Group commit: ``append`` queues its records and awaits a future. The first append of a
turn of the event loop schedules a flush at its end (or ``linger_ms`` later), which writes
everything queued in one transaction, in the loop itself; with durability ``full`` a helper
process (``personify.eventlog.syncer``) then fsyncs the WAL, and every waiting future is
resolved together, so many concurrent requests share one transaction and one fsync.
Checkpoints run on their own thread and connection (see ``_start_checkpoint``).

Storage: each transaction writes **one row** of table ``chunk`` holding all its records
(their keys, dedupe keys, dedupe hashes and payloads, packed with msgpack) under the offset
of its first record; the records of a chunk have consecutive offsets. A row per record cost
a B-tree insert (and, for the dedupe index, a random page rewritten and fsynced) per event;
a row per transaction costs one. The dedupe index is kept in memory
(``personify.eventlog.dedupe_index``) and rebuilt at start from the hashes the chunks of
the window hold. What a commit does per record (hash the dedupe keys, look them up, pack
the columns, answer the results) runs compiled where ``personify.eventlog.chunks`` was built.
Several processes may share one file: each writer, once it holds the
write lock, first reads the hashes of chunks other writers appended since its last commit.

``iter_records`` and ``count_records`` read a file with nothing but ``sqlite3`` (for tools
and tests); ``SELECT sum(count) FROM chunk`` counts the records from the ``sqlite3`` shell.

Durability (``PERSONIFY_EVENTLOG_DURABILITY``), what a crash can cost once ``append``
has returned:

* ``full`` (default): every commit is fsynced before ``append`` returns, and checkpoints
  run with ``synchronous=FULL``. A process crash or a power loss loses nothing acknowledged.
* ``normal`` — checkpoints with ``synchronous=NORMAL``: the WAL is fsynced only then. A process
  crash loses nothing; a power loss or kernel crash may lose the commits since the last
  checkpoint (the file stays consistent).
* ``off`` — ``synchronous=OFF``: no fsync at all. A process crash loses nothing; a power
  loss may lose recent commits and, rarely, corrupt the file. For tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import sqlite3
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import msgspec
import numpy as np

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import AppendResult, LogEntry, LogRecord
from personify.eventlog.chunks import Columns, chunk_tools
from personify.eventlog.dedupe_index import dedupe_hash, hash_values
from personify.eventlog.syncer import FileSyncer, FsyncFailed
from personify.wal import use_wal

if TYPE_CHECKING:
    from personify.settings import Settings

logger = logging.getLogger("personify.eventlog")

__all__ = ["SQLiteEventLog", "count_records", "dedupe_hash", "iter_records"]

# hashes come before the packed lists so that reading them (catching up on another writer's
# chunks, loading the index) never touches the overflow pages that hold the payloads
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk (
    first_offset INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    appended_at REAL NOT NULL,
    hashes BLOB NOT NULL,
    keys BLOB NOT NULL,
    dedupe_keys BLOB NOT NULL,
    payloads BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_appended_at ON chunk (appended_at);
CREATE TABLE IF NOT EXISTS log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_offset INTEGER NOT NULL
);
INSERT OR IGNORE INTO log_head (id, next_offset) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS consumer_groups (
    name TEXT PRIMARY KEY,
    committed INTEGER NOT NULL
);
"""

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
_POLL_INTERVAL_S = 0.05
_WRITER_CACHE_KIB = 64 * 1024
# another process holds the write lock: retry after 0.1 ms, doubling up to 2 ms, for 10 s
_LOCK_RETRY_MIN_S = 0.0001
_LOCK_RETRY_MAX_S = 0.002
_LOCK_WAIT_S = 10.0
_CHECKPOINT_EVERY_BYTES = 8 * 1024 * 1024
_WAL_LIMIT_BYTES = 64 * 1024 * 1024
# one (time, offset) mark per this many seconds (at most) maps the dedupe window onto offsets
_WINDOW_MARK_EVERY_S = 1.0
_MIGRATE_ROWS = 5000

_T = TypeVar("_T")

_pack = msgspec.msgpack.Encoder().encode
_DUPLICATE = operator.attrgetter("duplicate")
_unpack_keys = msgspec.msgpack.Decoder(list[str]).decode
_unpack_dedupe_keys = msgspec.msgpack.Decoder(list[str | None]).decode
_unpack_payloads = msgspec.msgpack.Decoder(list[bytes]).decode


class _Chunk(NamedTuple):
    """A chunk's records, unpacked."""

    first_offset: int
    appended_at: float
    keys: list[str]
    payloads: list[bytes]

    def entry(self, index: int) -> LogEntry:
        """The chunk's ``index``-th record as a log entry."""
        return LogEntry(
            0,
            str(self.first_offset + index),
            self.keys[index],
            self.payloads[index],
            self.appended_at,
        )


def _unpack(row: tuple[Any, ...]) -> _Chunk:
    first_offset, appended_at, keys, payloads = row
    return _Chunk(
        int(first_offset), float(appended_at), _unpack_keys(keys), _unpack_payloads(payloads)
    )


def _hash_array(blob: bytes) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.frombuffer(blob, dtype=np.int64)


class _Pending:
    """One append waiting for its transaction (and its fsync).

    A ``counted`` entry (``append_counted``, ``append_one``) resolves to how many of its
    records were duplicates instead of to their results, which are then built only in a
    chunk that has a duplicate: a batch request needs the count alone, and an
    ``AppendResult`` per record cost an allocation, an offset formatted as text and a free.
    """

    __slots__ = ("counted", "future", "records", "results")

    def __init__(
        self, records: Sequence[LogRecord], future: asyncio.Future[Any], *, counted: bool = False
    ) -> None:
        self.records = records
        self.future = future
        self.counted = counted
        self.results: list[AppendResult] = []


def _resolve_all(batch: list[_Pending]) -> None:
    for item in batch:
        if not item.future.done():
            if item.counted:
                item.future.set_result(sum(map(_DUPLICATE, item.results)))
            else:
                item.future.set_result(item.results)


def _migrate_row_log(conn: sqlite3.Connection) -> None:
    """Move a file written by the row-per-record layout (table ``log``) into chunks.

    Offsets are kept (consumer groups' commits refer to them); a gap in the old offsets
    starts a new chunk. Runs inside the caller's transaction.
    """
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log'"
    ).fetchone()
    if exists is None:
        return
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
    next_offset = (int(row[0]) if row else 0) + 1
    after = 0
    while True:
        rows = conn.execute(
            'SELECT "offset", key, payload, appended_at, dedupe_key FROM log '
            'WHERE "offset" > ? ORDER BY "offset" LIMIT ?',
            (after, _MIGRATE_ROWS),
        ).fetchall()
        if not rows:
            break
        run: list[tuple[Any, ...]] = []
        for current in rows:
            if run and int(current[0]) != int(run[-1][0]) + 1:
                _insert_chunk_rows(conn, run)
                run = []
            run.append(current)
        _insert_chunk_rows(conn, run)
        after = int(rows[-1][0])
        next_offset = max(next_offset, after + 1)
    conn.execute("UPDATE log_head SET next_offset = max(next_offset, ?)", (next_offset,))
    conn.execute("DROP TABLE log")
    conn.execute("DROP TABLE IF EXISTS dedupe")


def _insert_chunk_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    dedupe_keys: list[str | None] = [r[4] for r in rows]
    hashes = array("q", [dedupe_hash(k) if k is not None else 0 for k in dedupe_keys])
    conn.execute(
        "INSERT INTO chunk (first_offset, count, appended_at, hashes, keys, dedupe_keys, "
        "payloads) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            int(rows[0][0]),
            len(rows),
            float(rows[-1][3]),
            hashes.tobytes(),
            _pack([str(r[1]) for r in rows]),
            _pack(dedupe_keys),
            _pack([bytes(r[2]) for r in rows]),
        ),
    )


def _delete_committed(conn: sqlite3.Connection) -> int:
    """Delete the chunks every known group has committed in full; how many records went."""
    floor = conn.execute("SELECT min(committed) FROM consumer_groups").fetchone()[0]
    if floor is None:
        return 0
    condition = "first_offset + count - 1 <= ?"
    gone = conn.execute(
        f"SELECT coalesce(sum(count), 0) FROM chunk WHERE {condition}", (floor,)
    ).fetchone()[0]
    conn.execute(f"DELETE FROM chunk WHERE {condition}", (floor,))
    return int(gone)


def iter_records(path: Path) -> Iterator[tuple[int, str, bytes]]:
    """Every record in the log file at ``path``, oldest first, as (offset, key, payload)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as conn:
        rows = conn.execute(
            "SELECT first_offset, appended_at, keys, payloads FROM chunk ORDER BY first_offset"
        )
        for row in rows:
            chunk = _unpack(row)
            for index, (key, payload) in enumerate(zip(chunk.keys, chunk.payloads, strict=True)):
                yield chunk.first_offset + index, key, payload


def count_records(path: Path) -> int:
    """How many records the log file at ``path`` holds."""
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as conn:
        return int(conn.execute("SELECT coalesce(sum(count), 0) FROM chunk").fetchone()[0])


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
        native: bool = True,
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
        self._queued: deque[_Pending] = deque()
        # the queued entry append_one adds to (and its records), until a flush takes it
        self._shared: _Pending | None = None
        self._shared_records: list[LogRecord] = []
        self._queued_events = 0
        self._unsynced: list[_Pending] = []
        self._flush_handle: asyncio.Handle | None = None
        self._file_syncer: FileSyncer | None = None
        self._checkpointing = False
        self._commits_paused = False
        self._broken: BaseException | None = None
        self._bytes_since_checkpoint = 0
        self._lock_retry_s = _LOCK_RETRY_MIN_S
        self._locked_since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoints: ThreadPoolExecutor | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._committer: sqlite3.Connection | None = None
        self._committer_lock = threading.Lock()
        self._cursors: dict[tuple[str, str], int] = {}
        self._appended = asyncio.Event()
        self._started = False
        # writer state (event loop): the dedupe index, the offset it has seen up to, window marks
        self._chunks = chunk_tools(native=native)
        self._index = self._chunks.new_index()
        self._next_offset = 1
        self._marks: deque[tuple[float, int]] = deque()
        self._last_mark = (0.0, 0)
        self._mark_every_s = min(_WINDOW_MARK_EVERY_S, dedupe_window_s / 10)
        # the last chunk a reader unpacked: consumers read a big chunk in several steps
        self._read_cache: _Chunk | None = None

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
            native=settings.ingest_native,
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
            use_wal(conn)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"cannot open the event log at {self.path}: {exc}", code="log_unavailable"
            ) from exc
        return conn

    def _prepare_file(self) -> None:
        """Create the tables, move an old-layout file into chunks, load the dedupe index."""
        conn = self._connect()
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")  # waits out other writers (busy_timeout)
            try:
                _migrate_row_log(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._load_index(conn)
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"cannot prepare the event log at {self.path}: {exc}", code="log_unavailable"
            ) from exc
        finally:
            conn.close()

    def _load_index(self, conn: sqlite3.Connection) -> None:
        """Fill the dedupe index from the chunks appended within the window."""
        now = time.time()
        cutoff = now - self._dedupe_window_s
        self._index = self._chunks.new_index()
        self._marks.clear()
        self._last_mark = (0.0, 0)
        head = conn.execute("SELECT next_offset FROM log_head").fetchone()
        self._next_offset = int(head[0])
        rows = conn.execute(
            "SELECT first_offset, count, appended_at, hashes FROM chunk "
            "WHERE appended_at >= ? ORDER BY first_offset",
            (cutoff,),
        ).fetchall()
        # everything before the window's first chunk has expired
        self._index.expire(int(rows[0][0]) if rows else self._next_offset)
        self._absorb(rows)

    def _absorb(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Index chunks (first_offset, count, appended_at, hashes) written elsewhere."""
        if not rows:
            return
        hashes = np.concatenate([_hash_array(row[3]) for row in rows])
        offsets = np.concatenate(
            [np.arange(int(row[0]), int(row[0]) + int(row[1]), dtype=np.int64) for row in rows]
        )
        self._index.add_many(hashes, offsets)
        for first_offset, count, appended_at, _hashes in rows:
            self._mark(float(appended_at), int(first_offset) + int(count))

    def _mark(self, appended_at: float, end_offset: int) -> None:
        """Note that every offset below ``end_offset`` was appended by ``appended_at``."""
        self._last_mark = (appended_at, end_offset)
        if not self._marks or appended_at - self._marks[-1][0] >= self._mark_every_s:
            self._marks.append(self._last_mark)

    def _expire(self, now: float) -> None:
        """Move the index's floor past every offset appended before the window began.

        The floor trails the window by at most one mark interval, so a key is deduplicated
        for at least the window.
        """
        cutoff = now - self._dedupe_window_s
        marks = self._marks
        while len(marks) > 1 and marks[1][0] < cutoff:
            marks.popleft()
        floor = marks[0][1] if marks and marks[0][0] < cutoff else None
        if self._last_mark[0] < cutoff:
            floor = self._last_mark[1]
        if floor is not None:
            self._index.expire(floor)

    async def start(self) -> None:
        """Create the file and tables, load the dedupe index, and open the writer."""
        if self._started:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._prepare_file)
        self._reader = self._connect()
        self._committer = self._connect()
        writer = self._connect()
        try:
            # commits only write the WAL; ``full`` fsyncs it (off the event loop) before
            # answering, and checkpoints run on their own connection with the real setting
            writer.execute("PRAGMA synchronous=OFF")
            writer.execute("PRAGMA wal_autocheckpoint=0")
            writer.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
            # a busy lock is retried from the event loop, never waited for inside SQLite
            writer.execute("PRAGMA busy_timeout=0")
            self._checkpointer = self._connect()
            self._checkpointer.execute("PRAGMA wal_autocheckpoint=0")
            # a WAL that grew past this while a reader held it back is cut down at its restart
            writer.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        except sqlite3.Error as exc:
            writer.close()
            self._reader.close()
            self._committer.close()
            raise BackendUnavailable(
                f"cannot open the event log at {self.path}: {exc}", code="log_unavailable"
            ) from exc
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        if self._synchronous == "FULL":
            self._file_syncer = FileSyncer(Path(f"{self.path}-wal"))
            self._file_syncer.start(self._loop)
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._appended = asyncio.Event()
        self._started = True

    async def close(self) -> None:
        """Write and sync what is queued, then close the connections."""
        if not self._started:
            return
        self._started = False
        syncer = self._file_syncer
        while self._queued or self._checkpointing or (syncer is not None and syncer.pending):
            if self._queued:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._flush()
            await asyncio.sleep(0.001)
        if syncer is not None:
            syncer.close()
        if self._checkpoints is not None:
            self._checkpoints.shutdown()
        # the reader closes last: the last connection to close checkpoints the WAL, and the
        # writer's synchronous=OFF must never be the setting a checkpoint runs with
        for conn in (self._writer, self._checkpointer, self._committer, self._reader):
            if conn is not None:
                conn.close()

    # -- append ------------------------------------------------------------------------------

    def append(self, records: Sequence[LogRecord]) -> asyncio.Future[list[AppendResult]]:
        """Queue ``records`` for the next group commit; the future resolves once they are
        durable. A plain function returning the future, not a coroutine: one coroutine
        frame less on every ingest request."""
        no_results: list[AppendResult] = []
        refused = self._refused(records, no_results)
        if refused is not None:
            return refused
        return self._enqueue(_Pending(records, self._new_future())).future

    def append_counted(self, records: Sequence[LogRecord]) -> asyncio.Future[int]:
        """``append``, resolving to how many of ``records`` were duplicates (see _Pending)."""
        refused = self._refused(records, 0)
        if refused is not None:
            return refused
        return self._enqueue(_Pending(records, self._new_future(), counted=True)).future

    def _refused(self, records: Sequence[LogRecord], empty: _T) -> asyncio.Future[_T] | None:
        """A future that already holds the answer when ``records`` cannot be queued (the
        refusal) or need not be (``empty``, for no records), else None."""
        refusal = self._refusal(len(records))
        if refusal is None and records:
            return None
        # the answer (or the refusal) goes through a future too, as from a coroutine
        done: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        if refusal is not None:
            done.set_exception(refusal)
        else:
            done.set_result(empty)
        return done

    def append_one(self, record: LogRecord) -> asyncio.Future[int]:
        """Queue one record; the future resolves once it is durable, to how many of the
        records that share it were duplicates.

        The records appended this way between two flushes share one queue entry and one
        future (up to ``max_batch_events``): the single-event routes await durability and
        nothing else, and a future and a queue entry per request cost more than the rest of
        the commit's per-record work. They all land in the same transaction, so they succeed
        or fail together.
        """
        if self._refusal(1) is not None:
            return self.append_counted([record])  # the refusal, through its future
        shared = self._shared
        if shared is not None and len(self._shared_records) < self._max_batch_events:
            self._shared_records.append(record)
            self._queued_events += 1
            return shared.future
        records = [record]
        shared = self._enqueue(_Pending(records, self._new_future(), counted=True))
        self._shared, self._shared_records = shared, records
        return shared.future

    def _new_future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        return self._loop.create_future()

    def _enqueue(self, item: _Pending) -> _Pending:
        """Queue ``item`` and make sure a flush is scheduled."""
        self._queued_events += len(item.records)
        self._queued.append(item)
        if self._flush_handle is None:
            # every append of this turn of the event loop (and, with linger, of the next
            # few milliseconds) goes into one transaction
            loop = self._loop
            assert loop is not None
            if self._linger_s > 0:
                self._flush_handle = loop.call_later(self._linger_s, self._flush)
            else:
                self._flush_handle = loop.call_soon(self._flush)
        return item

    def _refusal(self, count: int) -> BackendUnavailable | None:
        """Why an append of ``count`` records cannot be taken now, if it cannot."""
        if not count:
            return None
        if not self._started:
            return BackendUnavailable("the event log is not running", code="log_unavailable")
        if self._broken is not None:
            return BackendUnavailable(
                "an fsync of the event log failed; it takes no appends until the server restarts",
                code="log_unavailable",
            )
        if self._queued_events + count > self._max_pending_events and self._queued_events:
            return BackendUnavailable(
                f"the event log has {self._queued_events} events waiting to be written; "
                "retry shortly",
                code="log_overloaded",
            )
        return None

    def _flush(self) -> None:
        """Commit what is queued, one transaction per ``max_batch_events``; runs in the loop."""
        self._flush_handle = None
        if self._commits_paused:
            return  # the WAL is being restarted; _checkpointed flushes what queued meanwhile
        syncer = self._file_syncer
        if syncer is not None and syncer.pending and self._queued_events < self._max_batch_events:
            # An fsync is running: what queues now could only be acknowledged after the
            # next one, which starts when this one ends, so it is committed then (_synced),
            # together with everything else that queued meanwhile. Under load that makes
            # one transaction per fsync instead of one per turn of the loop, for the same
            # latency.
            return
        # what append_one adds from now on goes into a new entry: this one is being written
        self._shared = None
        while self._queued:
            batch = [self._queued.popleft()]
            size = len(batch[0].records)
            while self._queued and size + len(self._queued[0].records) <= self._max_batch_events:
                item = self._queued.popleft()
                batch.append(item)
                size += len(item.records)
            try:
                outcome = self._commit(batch)
            except Exception as exc:  # a bug must not leave requests hanging
                logger.exception("the event log's group commit failed")
                self._fail_batch(batch, exc)
                outcome = "failed"
            if outcome == "locked":
                # another process holds the write lock: try again in a moment
                self._queued.extendleft(reversed(batch))
                assert self._loop is not None
                self._flush_handle = self._loop.call_later(self._lock_retry_s, self._flush)
                self._lock_retry_s = min(self._lock_retry_s * 2, _LOCK_RETRY_MAX_S)
                return
            self._lock_retry_s = _LOCK_RETRY_MIN_S
            self._queued_events -= size
            if outcome == "failed":
                continue
            self._appended.set()
            if self._file_syncer is not None:
                self._unsynced.extend(batch)
            else:
                _resolve_all(batch)
        if self._unsynced and self._file_syncer is not None:
            group, self._unsynced = self._unsynced, []
            self._file_syncer.sync(lambda error: self._synced(group, error))
        if self._bytes_since_checkpoint >= _CHECKPOINT_EVERY_BYTES and not self._checkpointing:
            self._start_checkpoint()

    def _commit(self, batch: list[_Pending]) -> str:
        """Write ``batch`` as one transaction: ``"ok"``, ``"locked"`` or ``"failed"``."""
        conn = self._writer
        assert conn is not None
        now = time.time()
        records = [record for item in batch for record in item.records]
        # hashed before the write lock is taken: other processes wait only for the rows
        hashes = self._chunks.record_hashes(records)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) and time.monotonic() < self._lock_deadline():
                return "locked"
            self._fail_batch(batch, exc)
            return "failed"
        except sqlite3.Error as exc:
            self._fail_batch(batch, exc)
            return "failed"
        self._locked_since = None
        try:
            try:
                added = self._write_in_transaction(conn, batch, records, hashes, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._fail_batch(batch, exc)
            return "failed"
        # the index learns of the chunk only once it is committed
        if added is not None:
            first_offset, count, hashes, written_bytes = added
            self._index.add_run(hashes, first_offset)
            self._next_offset = first_offset + count
            self._mark(now, first_offset + count)
            self._bytes_since_checkpoint += written_bytes
        return "ok"

    def _lock_deadline(self) -> float:
        if self._locked_since is None:
            self._locked_since = time.monotonic()
        return self._locked_since + _LOCK_WAIT_S

    def _fail_batch(self, batch: list[_Pending], exc: BaseException) -> None:
        self._locked_since = None
        error = BackendUnavailable(
            f"the event log could not write: {exc}", code="log_unavailable", retry_after_s=1
        )
        for item in batch:
            item.results.clear()
            if not item.future.done():
                item.future.set_exception(error)

    def _synced(self, group: list[_Pending], error: BaseException | None) -> None:
        if self._queued and self._flush_handle is None and self._loop is not None:
            # what queued during the fsync (see _flush) is committed now
            self._flush_handle = self._loop.call_soon(self._flush)
        if error is None:
            _resolve_all(group)
            return
        if isinstance(error, FsyncFailed):
            # After a failed fsync the kernel may have dropped the dirty pages, and a retry
            # would be answered "duplicate" from the dedupe index without ever reaching the
            # disk: take no more appends until a restart rebuilds the index from the file.
            logger.error("fsync of %s-wal failed; the event log refuses appends", self.path)
            self._broken = error
        # otherwise (the helper died) the next fsync covers these writes: the client retries,
        # and dedupe answers "duplicate" with the offset the record already has
        self._fail_batch(group, error)

    def _start_checkpoint(self) -> None:
        """Move the WAL into the database file (the writer connection never checkpoints).

        Two steps on the checkpoint thread, on a connection whose ``synchronous`` is the
        configured one (so with ``full`` or ``normal`` the database file is fsynced before the
        WAL may be reused): a PASSIVE checkpoint copies what is there while commits go on;
        then commits pause and a RESTART checkpoint copies the little that came meanwhile and
        lets the next commit start the WAL from its beginning. A passive checkpoint alone,
        racing a writer that never pauses, never catches up and the WAL grows without bound;
        a restart alone, competing with the loop for the write lock, can starve.
        """
        assert self._loop is not None and self._checkpoints is not None
        self._bytes_since_checkpoint = 0
        self._checkpointing = True
        done = self._loop.run_in_executor(self._checkpoints, self._checkpoint, "PASSIVE")
        done.add_done_callback(self._restart_wal)

    def _checkpoint(self, mode: str) -> None:
        if self._checkpointer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})")

    def _restart_wal(self, done: asyncio.Future[None]) -> None:
        assert self._loop is not None and self._checkpoints is not None
        self._commits_paused = True
        restarted = self._loop.run_in_executor(self._checkpoints, self._checkpoint, "RESTART")
        restarted.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._commits_paused = False
        self._checkpointing = False
        if self._queued and self._flush_handle is None:
            self._flush()

    def _catch_up(self, conn: sqlite3.Connection) -> int:
        """Index what other writers appended since this one last wrote; the next offset."""
        head = int(conn.execute("SELECT next_offset FROM log_head").fetchone()[0])
        if head != self._next_offset:
            rows = conn.execute(
                "SELECT first_offset, count, appended_at, hashes FROM chunk "
                "WHERE first_offset >= ? ORDER BY first_offset",
                (self._next_offset,),
            ).fetchall()
            self._absorb(rows)
            self._next_offset = head
        return head

    def _write_in_transaction(
        self,
        conn: sqlite3.Connection,
        batch: list[_Pending],
        records: list[LogRecord],
        hashes: bytes,
        now: float,
    ) -> tuple[int, int, bytes, int] | None:
        """Write the batch as one chunk: (first offset, count, hashes, payload bytes), or None
        if all were duplicates. ``records`` are the batch's, ``hashes`` their dedupe hashes."""
        first_offset = self._catch_up(conn)
        self._expire(now)
        if not self._index.probe(hashes):
            # the usual chunk: no dedupe key seen before or twice in it, so every record is
            # appended, in one pass each (compiled where built), not record by record
            return self._write_all(conn, batch, records, first_offset, hashes, now)
        digests = {
            record.dedupe_key: digest
            for record, digest in zip(records, hash_values(hashes), strict=True)
            if record.dedupe_key is not None
        }
        known = self._known_offsets(conn, digests)
        next_offset = first_offset
        keys: list[str] = []
        payloads: list[bytes] = []
        dedupe_keys: list[str | None] = []
        kept: array[int] = array("q")  # the hashes of the records appended
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
                    kept.append(digests[dedupe_key])
                else:
                    kept.append(0)
                keys.append(record.key)
                payloads.append(record.payload)
                dedupe_keys.append(dedupe_key)
                results.append(AppendResult(str(next_offset), False))
                next_offset += 1
        if next_offset == first_offset:
            return None
        columns = (_pack(keys), _pack(dedupe_keys), _pack(payloads))
        return self._insert_chunk(conn, first_offset, len(keys), now, kept.tobytes(), columns)

    def _write_all(
        self,
        conn: sqlite3.Connection,
        batch: list[_Pending],
        records: list[LogRecord],
        first_offset: int,
        hashes: bytes,
        now: float,
    ) -> tuple[int, int, bytes, int]:
        """``_write_in_transaction`` when every record of ``batch`` is appended."""
        if not all(item.counted for item in batch):
            results = self._chunks.fresh_results(first_offset, len(records))
            start = 0
            for item in batch:
                end = start + len(item.records)
                if not item.counted:
                    item.results = results[start:end]
                start = end
        columns = self._chunks.pack_columns(records)
        return self._insert_chunk(conn, first_offset, len(records), now, hashes, columns)

    def _insert_chunk(
        self,
        conn: sqlite3.Connection,
        first_offset: int,
        count: int,
        now: float,
        hashes: bytes,
        columns: Columns,
    ) -> tuple[int, int, bytes, int]:
        """Insert one chunk row (``columns``: its packed keys, dedupe keys and payloads) and
        move the head past it: (first offset, count, hashes, payload bytes)."""
        keys, dedupe_keys, payloads = columns
        conn.execute(
            "INSERT INTO chunk (first_offset, count, appended_at, hashes, keys, dedupe_keys, "
            "payloads) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (first_offset, count, now, hashes, keys, dedupe_keys, payloads),
        )
        conn.execute("UPDATE log_head SET next_offset = ?", (first_offset + count,))
        return first_offset, count, hashes, len(payloads)

    def _known_offsets(self, conn: sqlite3.Connection, digests: dict[str, int]) -> dict[str, int]:
        """Offsets of the keys already appended within the window (hash hits, verified)."""
        hits = self._index.find(list(set(digests.values())))
        if not hits:
            return {}
        stored = self._stored_dedupe_keys(conn, sorted(set(hits.values())))
        known: dict[str, int] = {}
        for key, digest in digests.items():
            offset = hits.get(digest)
            if offset is None:
                continue
            original = stored.get(offset)
            # a truncated record cannot be checked; its hash is trusted (a 2^-64 risk)
            if original is None or original == key:
                known[key] = offset
        return known

    def _stored_dedupe_keys(
        self, conn: sqlite3.Connection, offsets: list[int]
    ) -> dict[int, str | None]:
        """The dedupe key stored at each offset (ascending); missing chunks are left out."""
        found: dict[int, str | None] = {}
        chunk_first = -1
        chunk_keys: list[str | None] = []
        for offset in offsets:
            if not chunk_first <= offset < chunk_first + len(chunk_keys):
                row = conn.execute(
                    "SELECT first_offset, dedupe_keys FROM chunk WHERE first_offset <= ? "
                    "ORDER BY first_offset DESC LIMIT 1",
                    (offset,),
                ).fetchone()
                if row is None:
                    continue
                chunk_first, chunk_keys = int(row[0]), _unpack_dedupe_keys(row[1])
            if chunk_first <= offset < chunk_first + len(chunk_keys):
                found[offset] = chunk_keys[offset - chunk_first]
        return found

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

    def _in_transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work`` in one write transaction on the connection kept for consumer commits and
        truncation (from worker threads; the event loop's writer connection is its own)."""
        conn = self._committer
        if conn is None:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        try:
            with self._committer_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                return result
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"the event log could not be written: {exc}", code="log_unavailable"
            ) from exc

    def _committed(self, group: str) -> int:
        rows = self._query("SELECT committed FROM consumer_groups WHERE name = ?", (group,))
        if rows:
            return int(rows[0][0])
        self._in_transaction(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO consumer_groups (name, committed) VALUES (?, 0)", (group,)
            )
        )
        return 0

    def _chunks_from(self, position: int, max_count: int) -> list[_Chunk]:
        """Chunks holding the records after ``position``, enough for ``max_count`` of them."""
        wanted = position + 1
        cached = self._read_cache
        if cached is not None and cached.first_offset <= wanted < (
            cached.first_offset + len(cached.payloads)
        ):
            chunks = [cached]
            start = cached.first_offset + len(cached.payloads)
        else:
            chunks = []
            # the chunk holding ``wanted``, or the first one after it
            rows = self._query(
                "SELECT first_offset, count FROM chunk WHERE first_offset <= ? "
                "ORDER BY first_offset DESC LIMIT 1",
                (wanted,),
            )
            start = 0
            if rows:
                first, count = int(rows[0][0]), int(rows[0][1])
                start = first if first + count > wanted else first + count
        have = sum(len(c.payloads) for c in chunks)
        while have < max_count:
            # chunks hold at least one record each, so this many always suffice
            rows = self._query(
                "SELECT first_offset, appended_at, keys, payloads FROM chunk "
                "WHERE first_offset >= ? ORDER BY first_offset LIMIT ?",
                (start, min(max_count - have, 64)),
            )
            if not rows:
                break
            for row in rows:
                chunk = _unpack(row)
                chunks.append(chunk)
                have += len(chunk.payloads)
            start = chunks[-1].first_offset + len(chunks[-1].payloads)
        if chunks:
            self._read_cache = chunks[-1]
        return chunks

    def _read_sync(self, group: str, consumer: str, max_count: int) -> list[LogEntry]:
        cursor_key = (group, consumer)
        position = self._cursors.get(cursor_key)
        if position is None:
            position = self._committed(group)
        entries: list[LogEntry] = []
        for chunk in self._chunks_from(position, max_count):
            skip = max(0, position + 1 - chunk.first_offset)
            take = min(len(chunk.payloads), skip + max_count - len(entries))
            entries.extend(chunk.entry(index) for index in range(skip, take))
            if len(entries) >= max_count:
                break
        self._cursors[cursor_key] = int(entries[-1].offset) if entries else position
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
            self._in_transaction,
            lambda conn: conn.execute(
                "INSERT INTO consumer_groups (name, committed) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET committed = MAX(committed, excluded.committed)",
                (group, highest),
            ),
        )

    def _bounds(self) -> tuple[int, int]:
        """The first offset still stored and the offset the next record will get."""
        rows = self._query(
            "SELECT (SELECT min(first_offset) FROM chunk), (SELECT next_offset FROM log_head)"
        )
        first, head = rows[0]
        head = int(head)
        return (int(first) if first is not None else head), head

    async def lag(self, group: str) -> int:
        """Records after the group's committed offset."""

        def count() -> int:
            # looking at a group must not register it: an unknown group would hold back truncate
            known = self._query("SELECT committed FROM consumer_groups WHERE name = ?", (group,))
            committed = int(known[0][0]) if known else 0
            first, head = self._bounds()
            # offsets are consecutive from the first stored record to the head
            return max(0, head - max(committed + 1, first))

        return await asyncio.to_thread(count)

    async def truncate(self) -> int:
        """Delete the chunks whose every record all known groups have committed."""

        return await asyncio.to_thread(self._in_transaction, _delete_committed)

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries, oldest first."""

        def newest() -> list[LogEntry]:
            entries: list[LogEntry] = []
            before = sys.maxsize
            while len(entries) < limit:
                rows = self._query(
                    "SELECT first_offset, appended_at, keys, payloads FROM chunk "
                    "WHERE first_offset < ? ORDER BY first_offset DESC LIMIT 16",
                    (before,),
                )
                if not rows:
                    break
                for row in rows:
                    chunk = _unpack(row)
                    entries.extend(
                        chunk.entry(index) for index in range(len(chunk.payloads) - 1, -1, -1)
                    )
                    before = chunk.first_offset
                    if len(entries) >= limit:
                        break
            return list(reversed(entries[:limit]))

        return await asyncio.to_thread(newest)
