"""Validate and append: the whole of the ingest hot path (it never reads profiles)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import msgspec
from msgspec import UNSET
from starlette.concurrency import run_in_threadpool

from personify.clock import Clock, SystemClock, format_timestamp, from_epoch_us
from personify.errors import ValidationError
from personify.eventlog.base import AppendResult, EventLog, LogRecord, count_duplicates
from personify.events.decoding import Refused
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer, partition_key
from personify.ingest.sources import Source
from personify.ingest.wire import WireEvent, WireNormalizer, wire_to_dict
from personify.store.failed_events import FailedEventRepository, NewFailedEvent
from personify.tally import DurationTally
from personify.tracing import EVENTS, MESSAGE_ID, MESSAGE_IDS, message_ids

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

_encode = msgspec.json.Encoder().encode


class SuppressionList(Protocol):
    """The ids whose events are dropped at ingest (``personify.privacy.suppression``)."""

    def active(self) -> bool:
        """Whether any id is suppressed at all (cheap: asked once per request)."""
        ...

    def is_suppressed(self, identity: str) -> bool:
        """Whether events carrying ``identity`` are dropped."""
        ...


class _EventIds(msgspec.Struct):
    """The ids of a normalised event, decoded alone from its log record."""

    userId: Any = None
    anonymousId: Any = None
    previousId: Any = None


_decode_ids = msgspec.json.Decoder(_EventIds).decode


def names_suppressed(suppressions: SuppressionList, record: LogRecord) -> bool:
    """Whether the event of ``record`` carries a suppressed userId, anonymousId or previousId."""
    ids = _decode_ids(record.payload)
    return any(
        value is not None and suppressions.is_suppressed(str(value))
        for value in (ids.userId, ids.anonymousId, ids.previousId)
    )


def log_record(normalizer: Normalizer, event: dict[str, Any], source_id: str) -> LogRecord:
    """The log record of a normalised event: encoded, size-checked, ordered by its device or
    user, and deduplicated by ``(source, messageId)``. Raises ``PayloadTooLarge``.

    Every way into the log (the HTTP collector, ``personify import``) builds records here, so
    an event sent twice through different paths is still appended once.
    """
    return _record(normalizer, _encode(event), partition_key(event), source_id, event["messageId"])


def wire_log_record(normalizer: Normalizer, event: WireEvent, source_id: str) -> LogRecord:
    """``log_record`` for an event normalised on the wire path: the same record."""
    key = str(event.anonymousId or event.userId or "")
    return _record(normalizer, _encode(event), key, source_id, event.messageId)


def _record(
    normalizer: Normalizer, payload: bytes, key: str, source_id: str, message_id: Any
) -> LogRecord:
    normalizer.check_size(payload)
    return LogRecord(payload, key, f"{source_id}:{message_id}")


def storable_rejection(hasher: PiiHasher, raw: Any, field: str | None = None) -> Any:
    """A rejected payload as it may be kept: without its write key, PII hashed like an
    accepted event's, and without the value of ``field``, the top-level field that failed
    validation."""
    if not isinstance(raw, dict):
        return raw
    payload = dict(raw)
    payload.pop("writeKey", None)
    if field is not None and payload.get(field) is not None:
        # a value that failed its check is of unknown kind (an e-mail sent as the timestamp):
        # it is not kept, as the error's message does not repeat it
        payload[field] = None
    hasher.apply(payload)
    return payload


def _failed_field(error: ValidationError) -> str | None:
    """The top-level field an error is about, when it names one."""
    details = error.details
    name = details.get("field") if isinstance(details, dict) else None
    return name if isinstance(name, str) else None


def _storable_wire(event: WireEvent) -> dict[str, Any] | None:
    """A rejected wire event as a dict to dead-letter; None when its objects cannot be read."""
    try:
        return wire_to_dict(event)
    except ValidationError:
        return None


def _payload_names_suppressed(suppressions: SuppressionList, payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    return any(
        isinstance(payload.get(key), str | int) and suppressions.is_suppressed(str(payload[key]))
        for key in ("userId", "anonymousId", "previousId")
    )


def _message_id(record: LogRecord) -> str:
    """The messageId of a record, from its dedupe key (``<source id>:<messageId>``)."""
    return (record.dedupe_key or "").partition(":")[2]


class IngestOutcome(NamedTuple):
    """What happened to the events of one request; ``errors[i]`` is why ``rejected[i]`` was.
    ``suppressed`` events carried an erased id: dropped, never stored, not an error."""

    accepted: int
    duplicates: int
    rejected: list[NewFailedEvent]
    errors: list[ValidationError]
    suppressed: int = 0


class Collector:
    """Normalises events, appends the valid ones to the log, dead-letters the rest."""

    def __init__(
        self,
        log: EventLog,
        normalizer: Normalizer,
        hasher: PiiHasher,
        failed_events: FailedEventRepository,
        *,
        clock: Clock | None = None,
        native: bool = True,
        suppressions: SuppressionList | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._log = log
        self._normalizer = normalizer
        self._hasher = hasher
        self._failed = failed_events
        self._clock = clock or SystemClock()
        self._wire = WireNormalizer(normalizer, hasher.paths, native=native)
        # whether an event of a request body may have a value at a configured PII path (the
        # wire normaliser's check, bound here: the hot path makes one call, not two)
        self.may_carry_pii = self._wire.may_carry_pii
        self._received_ms = -1
        self._received_text = ""
        self._now_us = self._clock.now_us
        self._native_call = self._wire.native_call
        self._native_constants = self._wire.native_constants
        # events of erased ids are dropped after normalisation, before the append
        self.suppressions = suppressions
        # how many such events were dropped since start
        self.suppressed = 0
        # how long appends took to be durable (GET /metrics); the single-event routes time
        # theirs (``append_one``) into it too
        self.appends = DurationTally()
        # spans of the appends and (the routes') requests, personify.tracing; None: no span,
        # and no test per append
        self.tracer = tracer
        self.append_one: Callable[[LogRecord], Awaitable[Sequence[AppendResult]]] = (
            self._append_one if tracer is None else self._traced_append_one
        )

    def _dead_letter(
        self, raw: Any, source: Source, error: ValidationError, message_id: str | None = None
    ) -> NewFailedEvent:
        if isinstance(raw, dict):
            mid = raw.get("messageId")
            message_id = str(mid)[:512] if isinstance(mid, str | int) else None
        return NewFailedEvent(
            stage="ingest",
            code=error.code,
            reason=error.message,
            payload=storable_rejection(self._hasher, raw, _failed_field(error)),
            source_id=source.id,
            message_id=message_id,
        )

    def _received(self) -> tuple[int, str]:
        """Now, as a request's receive time: microseconds since the epoch, and ``receivedAt``'s
        text (requests of the same millisecond share it)."""
        received_us = self._now_us()
        if received_us // 1000 != self._received_ms:
            self._received_ms = received_us // 1000
            self._received_text = format_timestamp(from_epoch_us(received_us))
        return received_us, self._received_text

    def _append_one(self, record: LogRecord) -> Awaitable[Sequence[AppendResult]]:
        """Append one record (the single-event routes' ``append_one``); durable once awaited.
        The SQLite log lets the single appends of one turn of the event loop share a
        transaction."""
        return self._log.append((record,))

    async def _traced_append_one(self, record: LogRecord) -> Sequence[AppendResult]:
        """``_append_one`` in an ``eventlog append`` span; the request's span (the current
        one) gets the event's messageId too."""
        from opentelemetry import trace

        assert self.tracer is not None
        message_id = _message_id(record)
        trace.get_current_span().set_attribute(MESSAGE_ID, message_id)
        with self.tracer.start_as_current_span(
            "eventlog append", attributes={MESSAGE_ID: message_id, EVENTS: 1}
        ):
            return await self._log.append((record,))

    async def _traced_append(self, records: Sequence[LogRecord]) -> Sequence[AppendResult]:
        """An append of many records in an ``eventlog append`` span naming their messageIds
        (the first of them), as the request's span does."""
        from opentelemetry import trace

        assert self.tracer is not None
        ids = message_ids(_message_id(record) for record in records)
        trace.get_current_span().set_attributes({MESSAGE_IDS: ids, EVENTS: len(records)})
        with self.tracer.start_as_current_span(
            "eventlog append", attributes={MESSAGE_IDS: ids, EVENTS: len(records)}
        ):
            return await self._log.append(records)

    def common_record(self, source: Source, raw: Any, event_type: str | None) -> LogRecord | None:
        """The log record of one event of a single-event request, from the compiled common
        case; None when that does not apply (nothing compiled, not a ``WireEvent``, not the
        common case): then ``collect`` takes the event and decides, errors included.

        The lean way for ``/v1/track`` and its kind: no outcome, no per-event loop. The
        caller appends the record (``append_one``) and awaits it before answering."""
        native = self._native_call
        if native is None or type(raw) is not WireEvent:
            return None
        received_us, received_text = self._received()
        record: LogRecord | None = native(
            raw,
            event_type,
            received_us,
            received_text,
            source.id,
            UNSET,
            *self._native_constants,
        )
        suppressions = self.suppressions
        if (
            record is not None
            and suppressions is not None
            and suppressions.active()
            and names_suppressed(suppressions, record)
        ):
            return None  # ``collect`` drops it and counts it
        return record

    async def collect(
        self,
        source: Source,
        raws: Sequence[Any],
        *,
        event_type: str | None = None,
        defaults: dict[str, Any] | None = None,
        check_pii: bool = True,
        compiled: bool = True,
    ) -> IngestOutcome:
        """Validate each event on its own; append the valid ones in one durable call.

        ``check_pii=False`` says the request body holds no configured PII path at all
        (``may_carry_pii``), so events of the common shape skip the per-event look. The
        compiled path looks at each event's own fields whatever it says. ``compiled=False``
        says the compiled path has already declined these events (``common_record``), so
        they go straight to Python.

        Returns only once the accepted events are durably in the log; a log failure raises
        ``BackendUnavailable`` and nothing of this request is acknowledged.
        """
        received_us, received_text = self._received()
        received_at = from_epoch_us(received_us)
        wire = self._wire
        native = wire.native_call if compiled else None
        sent_at_default = defaults.get("sentAt", UNSET) if defaults else UNSET
        records: list[LogRecord] = []
        rejected: list[NewFailedEvent] = []
        errors: list[ValidationError] = []
        todo: Sequence[Any] = raws
        prebuilt: list[LogRecord | None] | None = None
        native_args = wire.native_args(
            received_us=received_us,
            received_at_text=received_text,
            source_id=source.id,
            event_type=event_type,
            sent_at_default=sent_at_default,
        )
        if compiled and wire.native_many is not None and len(raws) > 1:
            # a batch: every event through the compiled path in one call
            built, fallbacks = wire.native_many(list(raws), *native_args)
            if not fallbacks:
                records, todo = cast(list[LogRecord], built), ()
            else:  # the rest take the Python path below, in the events' order
                prebuilt = built
        for index, raw in enumerate(todo):
            if prebuilt is not None:
                record = prebuilt[index]
                if record is not None:
                    records.append(record)
                    continue
            elif native is not None:
                # straight into C, which leaves events with PII to Python
                record = native(raw, *native_args)
                if record is not None:
                    records.append(record)
                    continue
            if type(raw) is Refused:
                # it broke the acceptance rule on its own: nothing of it can be kept
                rejected.append(self._dead_letter(None, source, raw.error, raw.message_id))
                errors.append(raw.error)
                continue
            if type(raw) is WireEvent and not (check_pii and wire.needs_general_path(raw)):
                try:
                    normalized = wire.normalize(
                        raw,
                        received_at=received_at,
                        received_at_text=received_text,
                        source_id=source.id,
                        event_type=event_type,
                        sent_at_default=sent_at_default,
                    )
                    records.append(wire_log_record(self._normalizer, normalized, source.id))
                except ValidationError as error:
                    rejected.append(self._dead_letter(_storable_wire(raw), source, error))
                    errors.append(error)
                continue
            try:
                if type(raw) is WireEvent:
                    raw = wire_to_dict(raw)
                event = self._normalizer.normalize(
                    raw,
                    received_at=received_at,
                    source_id=source.id,
                    event_type=event_type,
                    defaults=defaults,
                    received_at_text=received_text,
                )
                records.append(log_record(self._normalizer, event, source.id))
            except ValidationError as error:
                # a wire event whose objects could not be read has nothing storable
                storable = None if type(raw) is WireEvent else raw
                rejected.append(self._dead_letter(storable, source, error))
                errors.append(error)
        suppressed = 0
        suppressions = self.suppressions
        if records and suppressions is not None and suppressions.active():
            kept = [r for r in records if not names_suppressed(suppressions, r)]
            suppressed = len(records) - len(kept)
            records = kept
        if rejected and suppressions is not None and suppressions.active():
            # an invalid event of an erased id is not kept as a dead letter either
            pairs = [
                (item, error)
                for item, error in zip(rejected, errors, strict=True)
                if not _payload_names_suppressed(suppressions, item.payload)
            ]
            suppressed += len(rejected) - len(pairs)
            rejected = [item for item, _ in pairs]
            errors = [error for _, error in pairs]
        self.suppressed += suppressed
        duplicates = 0
        if records:
            started = time.perf_counter()
            appended = (
                await self._log.append(records)
                if self.tracer is None
                else await self._traced_append(records)
            )
            duplicates = count_duplicates(appended)
            self.appends.observe(time.perf_counter() - started)
        if rejected:
            await run_in_threadpool(self._failed.add_many, rejected)
        return IngestOutcome(len(records) - duplicates, duplicates, rejected, errors, suppressed)
