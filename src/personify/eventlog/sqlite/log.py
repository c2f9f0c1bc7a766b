"""The embedded event log: one SQLite file in WAL mode with group commit.

Group commit: ``append`` queues its records and returns a future. The first append of a
turn of the event loop schedules a flush at its end (or ``linger_ms`` later), which writes
everything queued in one transaction (``writer.ChunkWriter``), in the loop itself; with
durability ``full`` a helper process (``syncer``) then fsyncs the WAL, and every waiting
future is resolved together, so many concurrent requests share one transaction and one
fsync. Single-record appends (one per ``/v1/track`` request) between two flushes share one
queue entry: a queue entry per request cost more than the rest of the commit's per-record
work. Checkpoints run on their own thread and connection (``checkpoints``).

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
import dataclasses
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personify.errors import BackendUnavailable, ConfigurationError
from personify.eventlog.base import AppendResult, EraseReport, LogEntry, LogRecord
from personify.eventlog.sqlite.checkpoints import CHECKPOINT_EVERY_BYTES, Checkpointer
from personify.eventlog.sqlite.chunks import SCHEMA
from personify.eventlog.sqlite.dedupe import record_hashes
from personify.eventlog.sqlite.groups import ConsumerGroups
from personify.eventlog.sqlite.migrations import migrate
from personify.eventlog.sqlite.syncer import FileSyncer, FsyncFailed
from personify.eventlog.sqlite.writer import ChunkWriter
from personify.registry import SQLiteLogConfig, sqlite_log_config
from personify.wal import use_wal

if TYPE_CHECKING:
    from personify.settings import Settings

logger = logging.getLogger("personify.eventlog")

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
_WRITER_CACHE_KIB = 64 * 1024
# another process holds the write lock: retry after 0.1 ms, doubling up to 2 ms, for 10 s
_LOCK_RETRY_MIN_S = 0.0001
_LOCK_RETRY_MAX_S = 0.002
_LOCK_WAIT_S = 10.0
_WAL_LIMIT_BYTES = 64 * 1024 * 1024


class _Pending:
    """Appends waiting for their transaction (and its fsync): one call's records and future,
    or (``futures``) the single-record calls that share this entry, one future each."""

    __slots__ = ("future", "futures", "records", "results")

    def __init__(
        self,
        records: Sequence[LogRecord],
        future: asyncio.Future[Sequence[AppendResult]] | None,
        futures: list[asyncio.Future[Sequence[AppendResult]]] | None = None,
    ) -> None:
        self.records = records
        self.future = future
        self.futures = futures
        self.results: Sequence[AppendResult] = ()

    def resolve(self) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_result(self.results)
            return
        assert self.futures is not None
        for future, result in zip(self.futures, self.results, strict=True):
            if not future.done():
                future.set_result([result])

    def fail(self, error: BaseException) -> None:
        self.results = ()
        for future in [self.future] if self.future is not None else self.futures or []:
            if not future.done():
                future.set_exception(error)


def _resolve_all(batch: list[_Pending]) -> None:
    for item in batch:
        item.resolve()


class SQLiteEventLog:
    """The ``EventLog`` on one SQLite file (a single partition, numbered 0).

    Built from a ``SQLiteLogConfig``; ``SQLiteEventLog(path, durability="off", ...)`` is
    shorthand for ``SQLiteEventLog(SQLiteLogConfig(path, durability="off", ...))``.
    """

    def __init__(self, config: SQLiteLogConfig | Path, **options: Any) -> None:
        if not isinstance(config, SQLiteLogConfig):
            config = SQLiteLogConfig(Path(config), **options)
        elif options:
            config = dataclasses.replace(config, **options)
        if config.durability not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"eventlog durability must be one of {sorted(_SYNCHRONOUS)}, "
                f"not {config.durability!r}"
            )
        self.config = config
        self.path = config.path
        self._synchronous = _SYNCHRONOUS[config.durability]
        self._linger_s = config.linger_ms / 1000.0
        self._max_batch_events = config.max_batch_events
        self._max_pending_events = config.max_pending_events
        self._queued: deque[_Pending] = deque()
        # the entry single-record appends join, until a flush takes it
        self._shared: _Pending | None = None
        self._shared_records: list[LogRecord] = []
        self._shared_futures: list[asyncio.Future[Sequence[AppendResult]]] = []
        self._queued_events = 0
        self._unsynced: list[_Pending] = []
        self._flush_handle: asyncio.Handle | None = None
        self._file_syncer: FileSyncer | None = None
        self._checkpointer: Checkpointer | None = None
        self._broken: BaseException | None = None
        self._bytes_since_checkpoint = 0
        self._lock_retry_s = _LOCK_RETRY_MIN_S
        self._locked_since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._groups: ConsumerGroups | None = None
        self._started = False
        self._writer = ChunkWriter(
            dedupe_window_s=config.dedupe_window_s,
            memory_bytes=config.dedupe_memory_bytes,
            spill_folder=config.path.parent,
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> SQLiteEventLog:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        return cls(sqlite_log_config(url, settings))

    @property
    def dedupe_index_bytes(self) -> int:
        """What the dedupe index holds in memory."""
        return self._writer.index.memory_bytes

    @property
    def queued_events(self) -> int:
        """Events appended but not yet in a transaction (the group commit's queue; GET
        /metrics reports it as the log's queue depth)."""
        return self._queued_events

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
        """Create the tables, bring an older layout up to date, load the dedupe index."""
        conn = self._connect()
        try:
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")  # waits out other writers (busy_timeout)
            try:
                migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._writer.load(conn)
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"cannot prepare the event log at {self.path}: {exc}", code="log_unavailable"
            ) from exc
        finally:
            conn.close()

    async def start(self) -> None:
        """Create the file and tables, load the dedupe index, and open the writer."""
        if self._started:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._prepare_file)
        reader = self._connect()
        committer = self._connect()
        writer = self._connect()
        loop = asyncio.get_running_loop()
        try:
            # commits only write the WAL; ``full`` fsyncs it (off the event loop) before
            # answering, and checkpoints run on their own connection with the real setting
            writer.execute("PRAGMA synchronous=OFF")
            writer.execute("PRAGMA wal_autocheckpoint=0")
            writer.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
            # a busy lock is retried from the event loop, never waited for inside SQLite
            writer.execute("PRAGMA busy_timeout=0")
            # a WAL that grew past this while a reader held it back is cut down at its restart
            writer.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
            self._checkpointer = Checkpointer(self._connect(), loop)
        except sqlite3.Error as exc:
            for conn in (writer, reader, committer):
                conn.close()
            raise BackendUnavailable(
                f"cannot open the event log at {self.path}: {exc}", code="log_unavailable"
            ) from exc
        self._writer_conn = writer
        self._groups = ConsumerGroups(reader, committer)
        self._loop = loop
        if self._synchronous == "FULL":
            self._file_syncer = FileSyncer(Path(f"{self.path}-wal"))
            self._file_syncer.start(loop)
        self._started = True

    async def ping(self) -> None:
        """Whether appends can be taken: the log is open, no fsync has failed, and its file
        is still there (a file system lost under the process fails here, not at the next
        append)."""
        if not self._started:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        if self._broken is not None:
            raise BackendUnavailable(
                "an fsync of the event log failed; it takes no appends until the server restarts",
                code="log_unavailable",
            )
        if not await asyncio.to_thread(self.path.exists):
            raise BackendUnavailable(
                f"the event log's file {self.path} is gone", code="log_unavailable"
            )

    async def close(self) -> None:
        """Write and sync what is queued, then close the connections."""
        if not self._started:
            return
        self._started = False
        syncer = self._file_syncer
        checkpointer = self._checkpointer
        while (
            self._queued
            or (checkpointer is not None and checkpointer.running)
            or (syncer is not None and syncer.pending)
        ):
            if self._queued:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._flush()
            await asyncio.sleep(0.001)
        if syncer is not None:
            syncer.close()
        # the reader closes last: the last connection to close checkpoints the WAL, and the
        # writer's synchronous=OFF must never be the setting a checkpoint runs with
        if self._writer_conn is not None:
            self._writer_conn.close()
        if checkpointer is not None:
            checkpointer.close()
        if self._groups is not None:
            self._groups.close()
        self._writer.close()

    # -- append ------------------------------------------------------------------------------

    def append(self, records: Sequence[LogRecord]) -> asyncio.Future[Sequence[AppendResult]]:
        """Queue ``records`` for the next group commit; the future resolves, once they are
        durable, to one result per record. A plain function returning the future, not a
        coroutine: one coroutine frame less on every ingest request.

        Single records appended between two flushes share one queue entry (up to
        ``max_batch_events``), and land in the same transaction: they succeed or fail
        together."""
        count = len(records)
        refusal = self._refusal(count)
        if refusal is not None or not count:
            # the answer (or the refusal) goes through a future too, as from a coroutine
            done: asyncio.Future[Sequence[AppendResult]] = (
                asyncio.get_running_loop().create_future()
            )
            if refusal is not None:
                done.set_exception(refusal)
            else:
                done.set_result([])
            return done
        assert self._loop is not None
        future: asyncio.Future[Sequence[AppendResult]] = self._loop.create_future()
        if count > 1:
            self._enqueue(_Pending(records, future))
            return future
        if self._shared is not None and len(self._shared_records) < self._max_batch_events:
            self._shared_records.append(records[0])
            self._shared_futures.append(future)
            self._queued_events += 1
            return future
        self._shared_records, self._shared_futures = [records[0]], [future]
        self._shared = self._enqueue(_Pending(self._shared_records, None, self._shared_futures))
        return future

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
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.commits_paused:
            return  # the WAL is being restarted; _checkpointed flushes what queued meanwhile
        syncer = self._file_syncer
        if syncer is not None and syncer.pending and self._queued_events < self._max_batch_events:
            # An fsync is running: what queues now could only be acknowledged after the
            # next one, which starts when this one ends, so it is committed then (_synced),
            # together with everything else that queued meanwhile. Under load that makes
            # one transaction per fsync instead of one per turn of the loop, for the same
            # latency.
            return
        # single appends from now on go into a new entry: this one is being written
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
            if self._groups is not None:
                self._groups.appended.set()
            if self._file_syncer is not None:
                self._unsynced.extend(batch)
            else:
                _resolve_all(batch)
        if self._unsynced and self._file_syncer is not None:
            group, self._unsynced = self._unsynced, []
            self._file_syncer.sync(lambda error: self._synced(group, error))
        if (
            self._bytes_since_checkpoint >= CHECKPOINT_EVERY_BYTES
            and checkpointer is not None
            and not checkpointer.running
        ):
            self._bytes_since_checkpoint = 0
            checkpointer.start(self._checkpointed)

    def _checkpointed(self) -> None:
        if self._queued and self._flush_handle is None:
            self._flush()

    def _commit(self, batch: list[_Pending]) -> str:
        """Write ``batch`` as one transaction: ``"ok"``, ``"locked"`` or ``"failed"``."""
        conn = self._writer_conn
        assert conn is not None
        now = time.time()
        records = [record for item in batch for record in item.records]
        # hashed before the write lock is taken: other processes wait only for the rows
        hashes = record_hashes(records)
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
                added, written_bytes = self._writer.write(conn, batch, records, hashes, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._fail_batch(batch, exc)
            return "failed"
        # the index learns of the chunk only once it is committed
        self._writer.committed(added, now)
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
            item.fail(error)

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

    # -- read side ---------------------------------------------------------------------------

    @property
    def _consumers(self) -> ConsumerGroups:
        if self._groups is None or not self._started:
            raise BackendUnavailable("the event log is not running", code="log_unavailable")
        return self._groups

    async def read(
        self, group: str, consumer: str, *, max_count: int = 500, timeout_ms: int = 1000
    ) -> list[LogEntry]:
        """Entries after this consumer's position (its group's commit on first read)."""
        return await self._consumers.read(
            group, consumer, max_count=max_count, timeout_ms=timeout_ms
        )

    async def commit(self, group: str, consumer: str, entries: Sequence[LogEntry]) -> None:
        """Move the group's committed offset forward to the highest entry given."""
        await self._consumers.commit(group, consumer, entries)

    async def lag(self, group: str) -> int:
        """Records after the group's committed offset."""
        return await self._consumers.lag(group)

    async def truncate(self, *, retention_s: float = 0.0, now: float | None = None) -> int:
        """Delete the chunks whose every record all known groups have committed and that
        are older than ``retention_s``."""
        return await self._consumers.truncate(retention_s=retention_s, now=now)

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries, oldest first."""
        return await self._consumers.tail(limit)

    async def erase(
        self, match: Callable[[LogEntry], bool], *, dry_run: bool = False
    ) -> EraseReport:
        """Remove every stored record ``match`` is true for; the others keep their offsets."""
        return await self._consumers.erase(match, dry_run=dry_run)
