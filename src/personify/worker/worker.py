"""The stream worker: read a batch from the log, apply it to profiles, commit, repeat.

Guarantees:

* **Exactly once in effect.** Entries are committed to the log only after the profile
  transaction (which records every applied ``sourceId:messageId``) has committed. A crash
  in between redelivers the batch; the processor skips what it already applied.
* **Poison events do not stop the stream.** An entry that cannot be read (not JSON, no
  messageId or timestamp, or anything else reading it raises) is dead-lettered at once:
  retrying cannot change its bytes. When applying a batch raises anything (other than an
  engine being down), the batch is split in halves until the failing entry is alone;
  that entry is retried ``max_attempts`` times (with backoff), then dead-lettered with its
  reason and attempt count, and committed like any other, so the group's lag does not grow.
  An entry the log has delivered more than ``max_deliveries`` times (the worker died on it
  each time) is dead-lettered without another try.
* **Engines that are down are waited for**, not blamed on events: ``BackendUnavailable``
  retries the same batch with exponential backoff until the engine answers or the worker
  is stopped. A ``Conflict`` (another worker changed a profile first) retries at once.
* **The background worker comes back.** If a run still ends on an error (a bug, a driver
  surprise), the batch in hand is kept, and ``start()``'s supervisor logs the error once,
  reports it and runs the worker again with backoff (``personify.worker.supervisor``).
* The log may reorder across partitions; nothing here depends on order (see
  ``personify.profiles.state``).
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from personify.clock import Clock, SystemClock
from personify.content.exposures import EXPOSURE_SOURCE
from personify.errors import BackendUnavailable, Conflict, PersonifyError, ValidationError
from personify.eventlog.base import EventLog, LogEntry
from personify.profiles.events import ProfileEvent, view_event
from personify.profiles.processor import ApplyResult, ProfileProcessor
from personify.profiles.service import ProfileService
from personify.segments.membership import MEMBERSHIP_SOURCE, is_membership_payload
from personify.store.failed_events import FailedEventRepository, NewFailedEvent
from personify.tally import FRESHNESS_BUCKETS_S, DurationTally
from personify.tracing import EVENTS, MESSAGE_IDS, message_ids
from personify.worker.freshness import RecentFreshness
from personify.worker.heartbeats import Heartbeat, HeartbeatRepository
from personify.worker.supervisor import StageStatus, StageSupervisor

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from personify.settings import Settings

logger = logging.getLogger("personify.worker")

_decode = msgspec.json.decode
_RATE_WINDOW_S = 10.0
_LAG_REFRESH_S = 1.0
_MAX_BACKOFF_S = 5.0
_CONFLICT_RETRIES = 5
_FORGET_WORKERS_AFTER = timedelta(days=1)


def _event_time(data: Mapping[str, Any]) -> datetime:
    """An internal event's time (its ``timestamp``), aware; now when it has none."""
    try:
        moment = datetime.fromisoformat(str(data.get("timestamp")))
    except ValueError:
        return datetime.now(UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def default_consumer() -> str:
    """A consumer name unique to this process."""
    return f"worker-{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class WorkerStats:
    """Counters and rates of one worker (``GET /v1/worker/status``)."""

    started_at: datetime
    batches: int = 0
    entries_read: int = 0
    events_applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    lag: int | None = None
    last_batch_at: datetime | None = None
    last_error: str | None = None
    # from each applied entry's append to the log (when the collector acknowledged it) to
    # its batch's commit (GET /metrics)
    freshness: DurationTally = field(default_factory=lambda: DurationTally(FRESHNESS_BUCKETS_S))
    # the same, over the last five minutes only (the console's freshness p99)
    recent_freshness: RecentFreshness = field(default_factory=RecentFreshness)
    _window: deque[tuple[float, int]] = field(default_factory=deque)

    def record(self, count: int) -> None:
        """Count ``count`` entries handled now (for the rolling rate)."""
        now = time.monotonic()
        self._window.append((now, count))
        while self._window and self._window[0][0] < now - _RATE_WINDOW_S:
            self._window.popleft()

    @property
    def events_per_s(self) -> float:
        """Entries handled per second over the last ten seconds."""
        if not self._window:
            return 0.0
        now = time.monotonic()
        span = max(now - self._window[0][0], 1.0)
        return round(sum(n for t, n in self._window if t >= now - _RATE_WINDOW_S) / span, 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the API returns."""
        return {
            "startedAt": self.started_at.isoformat(),
            "batches": self.batches,
            "entriesRead": self.entries_read,
            "eventsApplied": self.events_applied,
            "duplicates": self.duplicates,
            "deadLettered": self.dead_lettered,
            "retries": self.retries,
            "eventsPerSecond": self.events_per_s,
            "lag": self.lag,
            "lastBatchAt": self.last_batch_at.isoformat() if self.last_batch_at else None,
            "lastError": self.last_error,
        }


# gc=False: a batch keeps one per entry alive until it commits, and none can be part of a
# reference cycle, so the garbage collector need not track them
class _Item(msgspec.Struct, gc=False):
    entry: LogEntry
    event: ProfileEvent
    payload: str


class _Stopped(Exception):
    """The worker was asked to stop while it waited for an engine."""


class StreamWorker:
    """Consumes the event log as one member of a consumer group and applies it to profiles."""

    def __init__(
        self,
        log: EventLog,
        processor: ProfileProcessor,
        failed_events: FailedEventRepository,
        *,
        profiles: ProfileService | None = None,
        heartbeats: HeartbeatRepository | None = None,
        group: str = "worker",
        consumer: str | None = None,
        batch_size: int = 10_000,
        poll_timeout_ms: int = 500,
        max_attempts: int = 3,
        retry_backoff_ms: float = 100.0,
        max_deliveries: int = 5,
        heartbeat_s: float = 2.0,
        after_batch: Sequence[Callable[[], Awaitable[object]]] = (),
        record_exposures: Callable[[Sequence[tuple[Mapping[str, Any], datetime]]], int]
        | None = None,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._log = log
        # a span per batch applied (personify.tracing); None: none
        self._tracer = tracer
        # keeps what the decision engine showed (each exposure event and its time), for the
        # frequency caps (content.exposures) and the experiments' sticky assignments
        self._record_exposures = record_exposures
        self._exposures: list[tuple[Mapping[str, Any], datetime]] = []
        # run after each committed batch (the membership events' relay to the log)
        self._after_batch = tuple(after_batch)
        self._processor = processor
        self._failed = failed_events
        self._profiles = profiles
        self._heartbeats = heartbeats
        self.group = group
        self.consumer = consumer or default_consumer()
        self._batch_size = batch_size
        self._poll_timeout_ms = poll_timeout_ms
        self._max_attempts = max(1, max_attempts)
        self._backoff_s = retry_backoff_ms / 1000.0
        self._max_deliveries = max_deliveries
        self._heartbeat_s = heartbeat_s
        self._clock = clock or SystemClock()
        self._attempts: dict[tuple[int, str], int] = {}
        # entries read but not committed yet: a run that ended on them starts with them again
        self._in_hand: list[LogEntry] = []
        self._stop = asyncio.Event()
        self._stage = StageSupervisor("worker", self._run_stage, clock=self._clock)
        self._last_beat = 0.0
        self._last_lag = 0.0
        self.stats = WorkerStats(started_at=self._clock.now())

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        log: EventLog,
        processor: ProfileProcessor,
        failed_events: FailedEventRepository,
        *,
        profiles: ProfileService | None = None,
        heartbeats: HeartbeatRepository | None = None,
        after_batch: Sequence[Callable[[], Awaitable[object]]] = (),
        record_exposures: Callable[[Sequence[tuple[Mapping[str, Any], datetime]]], int]
        | None = None,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
    ) -> StreamWorker:
        """A worker configured by the ``worker_*`` settings."""
        return cls(
            log,
            processor,
            failed_events,
            profiles=profiles,
            heartbeats=heartbeats,
            group=settings.worker_group,
            batch_size=settings.worker_batch_size,
            poll_timeout_ms=settings.worker_poll_timeout_ms,
            max_attempts=settings.worker_max_attempts,
            retry_backoff_ms=settings.worker_retry_backoff_ms,
            max_deliveries=settings.eventlog_max_deliveries,
            heartbeat_s=settings.worker_heartbeat_s,
            after_batch=after_batch,
            record_exposures=record_exposures,
            clock=clock,
            tracer=tracer,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run in the background of the current event loop (``personify serve``), restarted
        with backoff if the run ever ends on an error (see ``personify.worker.supervisor``)."""
        self._stage.start()

    @property
    def running(self) -> bool:
        """Whether the background task is alive (running, or waiting to restart)."""
        return self._stage.running

    @property
    def stage(self) -> StageStatus:
        """The background stage's state, restarts and last failure."""
        return self._stage.status

    def request_stop(self) -> None:
        """Ask ``run`` to return after the batch in hand (safe from a signal handler)."""
        self._stop.set()
        self._stage.request_stop()

    async def stop(self) -> None:
        """Finish the batch in hand, then stop; uncommitted entries are redelivered later."""
        self._stop.set()
        await self._stage.stop()

    async def _run_stage(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self.run()

    async def run(self, *, until_idle: bool = False) -> None:
        """Process batches until stopped; with ``until_idle``, until the group has no lag.

        An error outside the application of one event (an engine down for good, a bug) ends
        the run; the entries in hand are kept, and the next run starts with them.
        """
        logger.info("worker %s consuming group %r", self.consumer, self.group)
        await self._forget_silent_workers()
        while not self._stop.is_set():
            try:
                handled = await self.step()
            except _Stopped:
                break
            except Exception as exc:
                # kept for the status route; the traceback is logged once by whoever runs
                # this (the stage supervisor, or the command that exits on it)
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                raise
            if handled == 0 and until_idle:
                await self._refresh_lag(force=True)
                if self.stats.lag == 0:
                    break
        await self._beat(force=True)

    async def step(self) -> int:
        """Read one batch, apply it, commit it; returns how many entries it held."""
        # the log delivers an entry to a consumer once: what a failed run read is in hand
        entries = self._in_hand or await self._read(self._poll_timeout_ms)
        if entries:
            self._in_hand = entries
            if self._tracer is None:
                readable = await self._prepare(entries)
                await self._apply_all(readable)
            else:
                readable = await self._traced_apply(self._tracer, entries)
            if self._exposures:
                await self._until_written(self._keep_exposures)
            await self._commit(entries)
            self._in_hand = []
            self._note_freshness(readable)
            for hook in self._after_batch:
                await self._until_written(hook)
            self.stats.batches += 1
            self.stats.entries_read += len(entries)
            self.stats.last_batch_at = self._clock.now()
            self.stats.record(len(entries))
        await self._refresh_lag()
        await self._beat()
        return len(entries)

    # -- one batch ---------------------------------------------------------------------------

    async def _read(self, timeout_ms: int) -> list[LogEntry]:
        try:
            return await self._log.read(
                self.group, self.consumer, max_count=self._batch_size, timeout_ms=timeout_ms
            )
        except BackendUnavailable as exc:
            self._note_error(exc)
            await self._sleep(self._backoff_s * 10)
            return []

    async def _traced_apply(self, tracer: Tracer, entries: Sequence[LogEntry]) -> list[_Item]:
        """``_prepare`` and ``_apply_all`` in a ``worker apply`` span naming the batch's
        messageIds (its first ones: ``personify.tracing``)."""
        with tracer.start_as_current_span(
            "worker apply", attributes={EVENTS: len(entries)}
        ) as span:
            readable = await self._prepare(entries)
            span.set_attribute(MESSAGE_IDS, message_ids(i.event.message_id for i in readable))
            await self._apply_all(readable)
        return readable

    async def _keep_exposures(self) -> None:
        rows, self._exposures = self._exposures, []
        if self._record_exposures is not None:
            try:
                await asyncio.to_thread(self._record_exposures, rows)
            except BackendUnavailable:
                # kept for the retry of ``_until_written``
                self._exposures = rows
                raise

    async def _prepare(self, entries: Sequence[LogEntry]) -> list[_Item]:
        """Decode entries; dead-letter those that cannot be read (retrying cannot help)."""
        # decoding a large batch takes tens of milliseconds: off the event loop
        readable, unreadable = await asyncio.to_thread(self._decode_all, entries)
        for entry, code, reason, attempts in unreadable:
            await self._dead_letter(entry, code, reason, attempts)
        return readable

    def _decode_all(
        self, entries: Sequence[LogEntry]
    ) -> tuple[list[_Item], list[tuple[LogEntry, str, str, int]]]:
        readable: list[_Item] = []
        unreadable: list[tuple[LogEntry, str, str, int]] = []
        for entry in entries:
            if entry.delivery_count > self._max_deliveries:
                reason = (
                    f"delivered {entry.delivery_count} times without being committed "
                    "(the worker stopped while applying it each time)"
                )
                unreadable.append((entry, "redelivered", reason, entry.delivery_count))
                continue
            if is_membership_payload(entry.payload):
                # the relay's own entries and exits (below), known without building them:
                # a batch reads more of them than of the user's events
                continue
            try:
                text = entry.payload.decode("utf-8")
                event = view_event(_decode(text))
                source = event.data.get("sourceId")
                if source == MEMBERSHIP_SOURCE:
                    # the segments' own Segment Entered/Exited: facts about the profile the
                    # membership table holds already, not the user's activity (applied, they
                    # would move last seen and recency, and every rule would run again)
                    continue
                if source == EXPOSURE_SOURCE:
                    # what the decision engine showed: not the user's activity either; kept
                    # for the frequency caps
                    self._exposures.append((event.data, _event_time(event.data)))
                    continue
                readable.append(_Item(entry, event, text))
            except (UnicodeDecodeError, msgspec.DecodeError) as exc:
                unreadable.append((entry, "undecodable", f"not JSON: {exc}", 1))
            except ValidationError as exc:
                unreadable.append((entry, exc.code, exc.message, 1))
            # whatever reading one entry raises concerns that entry alone: it is dead-lettered
            # with the error, and the batch goes on
            except Exception as exc:
                logger.warning("worker %s cannot read an entry", self.consumer, exc_info=exc)
                unreadable.append((entry, "processing_failed", f"{type(exc).__name__}: {exc}", 1))
        return readable, unreadable

    async def _apply_all(self, readable: list[_Item]) -> None:
        """Apply decoded entries, isolating and dead-lettering any that fail."""
        pending: deque[list[_Item]] = deque([readable] if readable else [])
        while pending:
            chunk = pending.popleft()
            try:
                result = await self._apply(chunk)
            except _Stopped:
                raise
            # a poison event may raise anything; it is isolated below and dead-lettered
            # with its reason, which is the point of catching everything here
            except Exception as exc:
                if len(chunk) > 1:
                    middle = len(chunk) // 2
                    pending.appendleft(chunk[middle:])
                    pending.appendleft(chunk[:middle])
                    continue
                item = chunk[0]
                key = (item.entry.partition, item.entry.offset)
                attempts = self._attempts.get(key, 0) + 1
                if attempts < self._max_attempts:
                    self._attempts[key] = attempts
                    self.stats.retries += 1
                    await self._sleep(self._backoff_s * attempts)
                    pending.appendleft(chunk)
                    continue
                self._attempts.pop(key, None)
                code = exc.code if isinstance(exc, PersonifyError) else "processing_failed"
                reason = exc.message if isinstance(exc, PersonifyError) else str(exc)
                logger.warning(
                    "dead-lettering %s after %d attempts: %s: %s",
                    item.event.key,
                    attempts,
                    type(exc).__name__,
                    reason,
                    # a PersonifyError names its cause; anything else is a bug to be found
                    exc_info=None if isinstance(exc, PersonifyError) else exc,
                )
                await self._dead_letter(
                    item.entry, code, f"{type(exc).__name__}: {reason}", attempts, item
                )
                continue
            if self._attempts:
                # (almost always empty: only entries that failed before are in it)
                for item in chunk:
                    self._attempts.pop((item.entry.partition, item.entry.offset), None)
            self.stats.events_applied += result.applied
            self.stats.duplicates += result.duplicates
            if self._profiles is not None and result.touched:
                # committed already: a redelivery would find the events applied and touch
                # nothing, so a cache that is down is waited for here
                await self._until_written(
                    functools.partial(self._profiles.invalidate, result.touched)
                )

    async def _apply(self, chunk: list[_Item]) -> ApplyResult:
        """Apply with waits for a down engine and immediate retries on conflicts."""
        conflicts = 0
        delay = self._backoff_s
        while True:
            try:
                return await asyncio.to_thread(
                    self._processor.apply,
                    [item.event for item in chunk],
                    [item.payload for item in chunk],
                )
            except BackendUnavailable as exc:
                self._note_error(exc)
                await self._sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
            except Conflict:
                conflicts += 1
                self.stats.retries += 1
                if conflicts > _CONFLICT_RETRIES:
                    raise
            if self._stop.is_set():
                raise _Stopped

    async def _commit(self, entries: Sequence[LogEntry]) -> None:
        # stopped while the log is down: applied but uncommitted, so redelivered after a
        # restart, then skipped
        await self._until_written(lambda: self._log.commit(self.group, self.consumer, entries))

    async def _until_written(self, write: Callable[[], Awaitable[object]]) -> None:
        """Run ``write`` until its engine answers, backing off; ``_Stopped`` if asked to stop."""
        delay = self._backoff_s
        while True:
            try:
                await write()
                return
            except BackendUnavailable as exc:
                self._note_error(exc)
                if self._stop.is_set():
                    raise _Stopped from exc
                await self._sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    async def _dead_letter(
        self,
        entry: LogEntry,
        code: str,
        reason: str,
        attempts: int,
        item: _Item | None = None,
    ) -> None:
        payload: Any
        source_id = message_id = None
        if item is not None:
            payload = dict(item.event.data)
            # bounded as the columns are, so that recording the letter cannot fail on them
            message_id = item.event.message_id[:512]
            source = item.event.data.get("sourceId")
            source_id = source[:64] if isinstance(source, str) else None
        else:
            text = entry.payload.decode("utf-8", errors="replace")
            try:
                payload = _decode(text)
            except msgspec.DecodeError:
                payload = text
            if isinstance(payload, dict):
                mid, source = payload.get("messageId"), payload.get("sourceId")
                message_id = mid[:512] if isinstance(mid, str) else None
                source_id = source[:64] if isinstance(source, str) else None
        failed = NewFailedEvent(
            stage="worker",
            code=code[:64],
            reason=reason,
            payload=payload,
            source_id=source_id,
            message_id=message_id,
            attempts=attempts,
        )
        await self._until_written(lambda: asyncio.to_thread(self._failed.add_many, [failed]))
        self.stats.dead_lettered += 1

    # -- bookkeeping -------------------------------------------------------------------------

    def _note_freshness(self, applied: Sequence[_Item]) -> None:
        """Tally how long the committed entries took from the log to their profiles (one
        vectorised pass; the log's append times are its engine's wall clock)."""
        if not applied:
            return
        appended = np.fromiter((item.entry.appended_at for item in applied), float, len(applied))
        now = self._clock.time()
        waited = np.maximum(now - appended, 0.0)
        self.stats.freshness.observe_many(waited)
        self.stats.recent_freshness.observe_many(waited, now=now)

    def _note_error(self, exc: PersonifyError) -> None:
        self.stats.last_error = f"{exc.code}: {exc.message}"
        logger.warning("worker %s: %s", self.consumer, exc.message)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _refresh_lag(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_lag < _LAG_REFRESH_S:
            return
        self._last_lag = now
        try:
            self.stats.lag = await self._log.lag(self.group)
        except BackendUnavailable as exc:
            self._note_error(exc)

    async def _forget_silent_workers(self) -> None:
        # every process start is a new consumer name; the dead ones' rows go after a day
        if self._heartbeats is None:
            return
        try:
            await asyncio.to_thread(
                self._heartbeats.prune, older_than=_FORGET_WORKERS_AFTER, now=self._clock.now()
            )
        except BackendUnavailable as exc:
            self._note_error(exc)

    async def _beat(self, *, force: bool = False) -> None:
        if self._heartbeats is None:
            return
        now = time.monotonic()
        if not force and now - self._last_beat < self._heartbeat_s:
            return
        self._last_beat = now
        beat = Heartbeat(
            consumer=self.consumer,
            group=self.group,
            started_at=self.stats.started_at,
            updated_at=self._clock.now(),
            events_applied=self.stats.events_applied,
            duplicates=self.stats.duplicates,
            events_failed=self.stats.dead_lettered,
            events_per_s=self.stats.events_per_s,
            lag=self.stats.lag,
        )
        try:
            await asyncio.to_thread(self._heartbeats.beat, beat)
        except BackendUnavailable as exc:
            self._note_error(exc)

    def status(self) -> dict[str, Any]:
        """This worker's identity and counters."""
        return {
            "consumer": self.consumer,
            "group": self.group,
            "running": self.running,
            **self.stats.to_dict(),
        }


def heartbeat_horizon(now: datetime, heartbeat_s: float) -> datetime:
    """Workers that beat since this moment count as alive (three missed beats allowed)."""
    return now - timedelta(seconds=max(heartbeat_s * 3, 10.0))
