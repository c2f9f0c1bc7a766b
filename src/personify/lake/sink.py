"""The lake writer: the event log's ``lake`` consumer group, written to Delta in micro-batches.

A batch closes when it holds ``max_batch_events`` entries or ``max_batch_bytes`` of payload,
or ``linger_ms`` after its first entry. It is written in one Delta commit that also records
the batch's highest log offset per partition (see ``personify.lake.table``), and only then
committed to the log. On start, and before every write, the offsets are read back from the
table and entries at or below them are skipped, so a crash anywhere (before the write,
between the write and the log commit, after both) leaves each event in the lake once.

No event stops the writer: one that cannot become a row is dead-lettered at once, and when
writing a batch raises anything but a stage error (an engine down, a failed critical
check), the batch is split until the event to blame is alone; it is dead-lettered after
``max_attempts`` tries and the offsets move past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import pyarrow as pa

from personify.clock import Clock, SystemClock
from personify.errors import BackendUnavailable, ConfigurationError, Conflict
from personify.eventlog.base import EventLog, LogEntry
from personify.lake.schema import (
    InvalidLakeEvent,
    check_timestamps,
    decode_payload,
    events_to_table,
    timestamps_parse,
)
from personify.lake.table import Lake, offset_version
from personify.quality.checks import QualityContext, lake_batch_checks
from personify.quality.results import QualityRepository
from personify.quality.runner import QualityCheckFailed, QualityRun, enforce, run_checks
from personify.store.failed_events import FailedEventRepository, NewFailedEvent

if TYPE_CHECKING:
    from personify.settings import Settings
    from personify.store.database import Database

logger = logging.getLogger("personify.lake")

LAKE_GROUP = "lake"
_QUALITY_COLUMNS = (
    "message_id",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "source_id",
    "timestamp",
    "received_at",
    "event_date",
    "appended_at",
)
_RETRY_MAX_S = 30.0
_CONFLICT_ATTEMPTS = 5
# what stops the whole sink rather than one event: an engine that is down, a critical check
# that failed on the batch, settings that cannot work; anything else a write raises is
# narrowed down to the event that causes it
_STAGE_ERRORS = (BackendUnavailable, QualityCheckFailed, ConfigurationError)


@dataclass(frozen=True, slots=True)
class SinkBatch:
    """What one ``process_once`` did."""

    read: int = 0
    written: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    version: int | None = None

    def __add__(self, other: SinkBatch) -> SinkBatch:
        """Two writes of one batch taken together (the later version wins)."""
        return SinkBatch(
            read=self.read + other.read,
            written=self.written + other.written,
            skipped=self.skipped + other.skipped,
            dead_lettered=self.dead_lettered + other.dead_lettered,
            version=other.version if other.version is not None else self.version,
        )


def default_consumer() -> str:
    """A consumer name unique to this process."""
    return f"lake-{socket.gethostname()}-{os.getpid()}"


class LakeSink:
    """Consumes the event log as the ``lake`` group and appends every event to the lake once."""

    def __init__(
        self,
        log: EventLog,
        lake: Lake,
        *,
        group: str = LAKE_GROUP,
        consumer: str | None = None,
        max_batch_events: int = 10_000,
        max_batch_bytes: int = 16 * 1024 * 1024,
        linger_ms: float = 1000.0,
        max_promoted_properties: int = 200,
        failed_events: FailedEventRepository | None = None,
        quality: QualityContext | None = None,
        record_quality: Callable[[QualityRun], None] | None = None,
        max_attempts: int = 3,
        retry_backoff_ms: float = 100.0,
        clock: Clock | None = None,
    ) -> None:
        self._log = log
        self._lake = lake
        self.group = group
        self.consumer = consumer or default_consumer()
        self._max_events = max_batch_events
        self._max_bytes = max_batch_bytes
        self._linger_s = linger_ms / 1000.0
        self._max_promoted = max_promoted_properties
        self._failed = failed_events
        self._quality = quality
        self._record_quality = record_quality
        self._max_attempts = max(1, max_attempts)
        self._backoff_s = retry_backoff_ms / 1000.0
        self._clock = clock or SystemClock()
        # entries read but not yet in the lake and committed; kept across a failed write
        self._pending: list[LogEntry] = []
        # entries of the batch in hand already dead-lettered, so a retry does not repeat them
        self._dead_lettered: set[tuple[int, str]] = set()
        # failed writes of an entry alone, by (partition, offset)
        self._attempts: dict[tuple[int, str], int] = {}
        self._pending_bytes = 0
        self._watermarks: dict[int, int] = {}
        self._last_quality_record = 0.0
        self.events_written = 0
        self.batches_written = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        log: EventLog,
        *,
        db: Database | None = None,
        consumer: str | None = None,
        clock: Clock | None = None,
    ) -> LakeSink:
        """A sink on the settings' lake; with ``db``, dead letters and quality runs are stored."""
        clock = clock or SystemClock()
        quality = None
        if settings.lake_quality_checks:
            quality = QualityContext(
                now=clock.now(),
                freshness_hours=settings.quality_freshness_hours,
                future_tolerance_hours=settings.future_tolerance_hours,
            )
        return cls(
            log,
            Lake.from_settings(settings),
            consumer=consumer,
            max_batch_events=settings.lake_batch_max_events,
            max_batch_bytes=settings.lake_batch_max_bytes,
            linger_ms=settings.lake_linger_ms,
            max_promoted_properties=settings.lake_max_promoted_properties,
            failed_events=FailedEventRepository(db, clock=clock) if db is not None else None,
            quality=quality,
            record_quality=QualityRepository(db).record if db is not None else None,
            clock=clock,
        )

    @property
    def lake_uri(self) -> str:
        """Where the sink writes."""
        return self._lake.uri

    # -- one batch ---------------------------------------------------------------------------

    async def _fill(self) -> None:
        deadline = time.monotonic() + self._linger_s
        while len(self._pending) < self._max_events and self._pending_bytes < self._max_bytes:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            entries = await self._log.read(
                self.group,
                self.consumer,
                max_count=min(5000, self._max_events - len(self._pending)),
                timeout_ms=remaining_ms,
            )
            self._pending.extend(entries)
            self._pending_bytes += sum(len(e.payload) for e in entries)
            if not entries or time.monotonic() >= deadline:
                return

    async def process_once(self) -> SinkBatch:
        """Read one micro-batch (waiting up to ``linger_ms``), write it, commit it to the log.

        Raises ``BackendUnavailable`` when the lake or the log fails (the batch is kept and
        written on the next call) and ``QualityCheckFailed`` when a critical check fails (the
        batch is neither written nor committed). Anything else that writing raises is blamed
        on one event: see ``_write_isolating``.
        """
        await self._fill()
        if not self._pending:
            return SinkBatch()
        batch = self._take_batch()
        result = await self._write_isolating(batch)
        await self._log.commit(self.group, self.consumer, batch)
        # what a read brought beyond the batch's bounds waits for the next batch
        self._pending = self._pending[len(batch) :]
        self._pending_bytes = sum(len(e.payload) for e in self._pending)
        self._dead_lettered.clear()
        self._attempts.clear()
        return result

    async def _write_isolating(self, batch: list[LogEntry]) -> SinkBatch:
        """Write ``batch``; a failure that is not a stage error is narrowed to its event.

        The failing part is split in halves, each written on its own (in log order, so each
        partition's offsets only grow), until the entry that fails is alone. That entry is
        tried ``max_attempts`` times, then dead-lettered (code ``lake_write_failed``) and
        the offsets move past it, so one event never stops the sink.
        """
        total = SinkBatch()
        parts: deque[list[LogEntry]] = deque([batch])
        while parts:
            part = parts.popleft()
            try:
                total += await asyncio.to_thread(self._write, part)
                continue
            except _STAGE_ERRORS:
                raise
            # one event may make the row building, a check or the Delta writer raise
            # anything; it is found below and dead-lettered with the error as its reason
            except Exception as exc:  # noqa: BLE001
                failure = exc
            if len(part) > 1:
                middle = len(part) // 2
                parts.extendleft([part[middle:], part[:middle]])
                continue
            entry = part[0]
            key = (entry.partition, entry.offset)
            attempts = self._attempts.get(key, 0) + 1
            if attempts < self._max_attempts and key not in self._dead_lettered:
                self._attempts[key] = attempts
                await asyncio.sleep(self._backoff_s * attempts)
                parts.appendleft(part)
                continue
            write_poison = functools.partial(self._write_poison, entry, failure, attempts)
            total += await asyncio.to_thread(self._retrying, write_poison)
            self._attempts.pop(key, None)
        return total

    def _write_poison(self, entry: LogEntry, failure: Exception, attempts: int) -> SinkBatch:
        """Dead-letter ``entry`` and commit the lake's offsets past it (with no rows)."""
        key = (entry.partition, entry.offset)
        self._watermarks = self._lake.watermarks(self.group, {entry.partition})
        if offset_version(entry.offset) <= self._watermarks.get(entry.partition, -1):
            return SinkBatch(read=1, skipped=1)
        if key not in self._dead_lettered:
            reason = f"{type(failure).__name__}: {failure}"
            logger.warning(
                "lake: dead-lettering the entry at %s/%s after %d attempts: %s",
                entry.partition,
                entry.offset,
                attempts,
                reason,
                exc_info=failure,
            )
            self._dead_letter([_letter(entry, "lake_write_failed", reason, attempts)], log=False)
            self._dead_lettered.add(key)
        rows = events_to_table([], partitions=[], offsets=[], existing=self._lake.schema())
        version = self._lake.append(rows, group=self.group, offsets={entry.partition: entry.offset})
        return SinkBatch(read=1, dead_lettered=1, version=version)

    def _take_batch(self) -> list[LogEntry]:
        size = 0
        for count, entry in enumerate(self._pending):
            size += len(entry.payload)
            if count and (count >= self._max_events or size > self._max_bytes):
                return self._pending[:count]
        return self._pending

    def _write(self, batch: Sequence[LogEntry]) -> SinkBatch:
        return self._retrying(lambda: self._write_once(batch, self._dead_lettered))

    def _retrying(self, write: Callable[[], SinkBatch]) -> SinkBatch:
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            try:
                return write()
            except Conflict as exc:
                if attempt == _CONFLICT_ATTEMPTS:
                    raise
                # another writer committed first (these offsets, or a clashing column):
                # start over from the table as it is now
                logger.info("lake sink: %s; writing the batch again", exc.message)
        raise AssertionError("unreachable")

    def _write_once(
        self, batch: Sequence[LogEntry], dead_lettered: set[tuple[int, str]]
    ) -> SinkBatch:
        partitions = {e.partition for e in batch}
        # re-read every time: another writer (or our previous life) may have moved them
        self._watermarks = self._lake.watermarks(self.group, partitions)
        fresh = [
            e for e in batch if offset_version(e.offset) > self._watermarks.get(e.partition, -1)
        ]
        skipped = len(batch) - len(fresh)
        events: list[dict[str, Any]] = []
        kept: list[LogEntry] = []
        dead: list[NewFailedEvent] = []
        seen: set[tuple[str, str]] = set()
        duplicates = 0
        decoded: list[tuple[LogEntry, dict[str, Any] | InvalidLakeEvent]] = []
        for entry in fresh:
            try:
                decoded.append((entry, decode_payload(entry.payload)))
            except InvalidLakeEvent as exc:
                decoded.append((entry, exc))
        if not timestamps_parse([e for _, e in decoded if isinstance(e, dict)]):
            # the slow path, only when some timestamp is broken: find which
            decoded = [(entry, _checked(event)) for entry, event in decoded]
        invalid = 0
        for entry, event in decoded:
            if isinstance(event, InvalidLakeEvent):
                invalid += 1
                if (entry.partition, entry.offset) not in dead_lettered:
                    dead.append(_letter(entry, "invalid_lake_event", str(event)))
                continue
            identity = (str(event.get("sourceId") or ""), event["messageId"])
            if identity in seen:
                # the same event appended twice beyond the log's dedupe window
                duplicates += 1
                continue
            seen.add(identity)
            events.append(event)
            kept.append(entry)
        # dead letters first: a crash may repeat one, never lose one
        if dead:
            self._dead_letter(dead)
            dead_lettered.update(
                (e.partition, e.offset) for e, v in decoded if isinstance(v, InvalidLakeEvent)
            )
        version: int | None = None
        if fresh:
            rows = events_to_table(
                events,
                partitions=[e.partition for e in kept],
                offsets=[e.offset for e in kept],
                appended_at=[e.appended_at for e in kept],
                existing=self._lake.schema(),
                max_promoted=self._max_promoted,
            )
            if rows.num_rows:
                self._check_quality(rows)
            # even with nothing writable left (all dead letters), the offsets move past them
            version = self._lake.append(rows, group=self.group, offsets=_highest_offsets(batch))
        self.events_written += len(events)
        self.batches_written += 1 if events else 0
        return SinkBatch(
            read=len(batch),
            written=len(events),
            skipped=skipped + duplicates,
            dead_lettered=invalid,
            version=version,
        )

    def _check_quality(self, rows: pa.Table) -> None:
        if self._quality is None:
            return
        now = self._clock.now()
        frame = rows.select(list(_QUALITY_COLUMNS)).to_pandas()
        context = QualityContext(
            now=now,
            freshness_hours=self._quality.freshness_hours,
            future_tolerance_hours=self._quality.future_tolerance_hours,
        )
        run = run_checks(lake_batch_checks(context), frame, dataset=self._lake.uri, now=now)
        record = self._record_quality
        # a passing batch is recorded at most once a minute; anything else every time
        if record is not None and run.status == "passed":
            if time.monotonic() - self._last_quality_record < 60.0:
                record = None
            else:
                self._last_quality_record = time.monotonic()
        enforce(run, record)

    def _dead_letter(self, dead: list[NewFailedEvent], *, log: bool = True) -> None:
        for item in dead if log else ():
            logger.warning("lake: dead-lettered an event: %s", item.reason)
        if self._failed is not None:
            self._failed.add_many(dead)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write batches until ``stop`` is set; lake or log outages are retried with backoff.

        An event that cannot be written is dead-lettered (see ``process_once``). A failed
        critical quality check ends the loop by raising ``QualityCheckFailed``, and so does
        anything else no single event is to blame for; the batch in hand is kept, so a next
        ``run`` (the server's supervisor starts one with backoff) writes it first.
        """
        backoff = 0.5
        while not stop.is_set():
            try:
                await self.process_once()
                backoff = 0.5
            except BackendUnavailable as exc:
                logger.warning("lake sink: %s; retrying in %.1f s", exc.message, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)
        if self._pending:
            # stopping: write what was read so nothing waits for the next start
            with contextlib.suppress(BackendUnavailable):
                linger, self._linger_s = self._linger_s, 0.0
                try:
                    await self.process_once()
                finally:
                    self._linger_s = linger


def _letter(entry: LogEntry, code: str, reason: str, attempts: int = 1) -> NewFailedEvent:
    payload = entry.payload.decode("utf-8", "replace")
    message_id = source_id = None
    with contextlib.suppress(msgspec.DecodeError):
        event = msgspec.json.decode(payload)
        if isinstance(event, dict):
            mid, source = event.get("messageId"), event.get("sourceId")
            # bounded as the columns are, so that recording the letter cannot fail on them
            message_id = mid[:512] if isinstance(mid, str) else None
            source_id = source[:64] if isinstance(source, str) else None
    return NewFailedEvent(
        stage="lake",
        code=code,
        reason=reason,
        payload=payload,
        source_id=source_id,
        message_id=message_id,
        attempts=attempts,
    )


def _checked(event: dict[str, Any] | InvalidLakeEvent) -> dict[str, Any] | InvalidLakeEvent:
    if isinstance(event, InvalidLakeEvent):
        return event
    try:
        check_timestamps(event)
    except InvalidLakeEvent as exc:
        return exc
    return event


def _highest_offsets(entries: Sequence[LogEntry]) -> dict[int, str]:
    highest: dict[int, tuple[int, str]] = {}
    for entry in entries:
        version = offset_version(entry.offset)
        known = highest.get(entry.partition)
        if known is None or version > known[0]:
            highest[entry.partition] = (version, entry.offset)
    return {partition: offset for partition, (_, offset) in highest.items()}
