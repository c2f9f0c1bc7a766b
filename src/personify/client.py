"""The Python client of a Personify server: events in, decisions and recommendations out.

``track``, ``identify`` and ``page`` never wait for the network: each checks its arguments,
gives the event a ``messageId`` and a timestamp, queues it and returns the ``messageId``. A
daemon thread sends the queue to ``POST /v1/batch`` in batches (by count, by bytes under the
collector's limits, and by time), and retries a batch that could not be delivered with the
same ``messageId``s, so that the collector, which dedupes by ``messageId``, keeps each event
once. ``decide`` and ``recommend`` are synchronous, with a short timeout, and hand back the
caller's ``fallback`` instead of raising when the server cannot answer. docs/clients.md
describes the semantics.
"""

from __future__ import annotations

import atexit
import email.utils
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from personify.clock import format_timestamp
from personify.errors import (
    BackendUnavailable,
    ConfigurationError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PersonifyError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from personify.experiments.assignment import Assigner, Assignment

__all__ = ["MAX_BATCH_BYTES", "MAX_EVENT_BYTES", "Client", "ErrorCallback"]

logger = logging.getLogger("personify.client")

T = TypeVar("T")

# what _call gives back when the server did not answer with JSON (it has been reported)
_NO_ANSWER: Any = object()

ErrorCallback = Callable[[PersonifyError, list[dict[str, Any]]], None]
"""``on_error(error, events)``: a failure the client absorbed, and the events it concerns
(empty for ``decide`` and ``recommend``)."""

# the collector's default limits (PERSONIFY_MAX_BATCH_BYTES, PERSONIFY_MAX_EVENT_BYTES)
MAX_BATCH_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
# the most items GET /v1/recommendations gives in one answer
MAX_RECOMMENDATIONS = 100
# the exposures assign() remembers having tracked (oldest forgotten first)
_MAX_TRACKED = 100_000
# the collector measures an event once it has added its own fields (receivedAt, sourceId,
# the corrected timestamps) and hashed PII, which makes it longer than the client sent it
_EVENT_HEADROOM_BYTES = 1024
_BATCH_PREFIX = b'{"batch":['
_SENT_AT_FIELD = b'],"sentAt":"'
_BATCH_SUFFIX = b'"}'
# the envelope around the events: the prefix, the sentAt field, its 24-character value
_BATCH_OVERHEAD_BYTES = len(_BATCH_PREFIX) + len(_SENT_AT_FIELD) + 24 + len(_BATCH_SUFFIX)
# exponential backoff between delivery attempts: 0.2 s, 0.4 s, 0.8 s… up to 10 s, each
# scaled by a random factor in [0.5, 1] so that many clients do not retry in step
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 10.0
# a server's Retry-After is honoured up to this long; beyond it flush() would seem to hang
_RETRY_AFTER_CAP_S = 30.0
_RETRYABLE_STATUSES = frozenset({408, 429})
# how long a process that ends waits for its last events: a server that hangs must not hold
# the exit for the whole retry schedule
_AT_EXIT_TIMEOUT_S = 10.0
_ERROR_BY_STATUS: dict[int, type[PersonifyError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
}


def _library_version() -> str:
    try:
        return version("personify")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0"


def _encode_extra(value: Any) -> Any:
    """msgspec's hook for types it does not know: refused, named in the error."""
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# Decimal as a JSON number (as Segment's library sends it), not as a string
_encode = msgspec.json.Encoder(enc_hook=_encode_extra, decimal_format="number").encode


@dataclass(frozen=True, slots=True)
class _Message:
    """A queued event: its id and its JSON, encoded once at call time."""

    message_id: str
    payload: bytes


def _decoded(messages: Iterable[_Message]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for message in messages:
        events.append(msgspec.json.decode(message.payload))
    return events


def _error_from(response: httpx.Response) -> PersonifyError:
    """The Personify error an HTTP error answer stands for, with the server's code."""
    code = f"http_{response.status_code}"
    message = f"the server answered {response.status_code}"
    details: Any = None
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = f"{message}: {error.get('message')}"
        details = error.get("details")
    status = response.status_code
    if status in _RETRYABLE_STATUSES or status >= 500:
        return BackendUnavailable(message, code=code, details=details)
    return _ERROR_BY_STATUS.get(status, PersonifyError)(message, code=code, details=details)


def _retry_after_s(response: httpx.Response) -> float | None:
    """The wait a ``Retry-After`` header asks for (seconds or an HTTP date), if any."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw[:6])  # bounded: the wait is capped below anyway
    try:
        moment = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _backoff_s(attempt: int, retry_after_s: float | None) -> float:
    """How long to wait before delivery attempt ``attempt + 1`` (``attempt`` >= 1)."""
    delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    delay *= random.uniform(0.5, 1.0)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, _RETRY_AFTER_CAP_S))
    return delay


def _placement_asks(placements: Iterable[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    asks: list[dict[str, Any]] = []
    for placement in placements:
        if isinstance(placement, str):
            asks.append({"id": placement})
        elif isinstance(placement, Mapping) and isinstance(placement.get("id"), str):
            asks.append(dict(placement))
        else:
            raise ValidationError(
                'a placement is its id, or {"id": ..., "limit": ...}',
                code="invalid_placement",
                details={"placement": repr(placement)[:200]},
            )
    if not asks:
        raise ValidationError("give at least one placement", code="missing_placements")
    return asks


class Client:
    """A connection to one Personify server, for one source (its write key).

    Thread-safe: share one client across a process. Events are sent by a daemon thread; call
    ``flush()`` to wait for them, and ``close()`` (or use the client as a context manager) to
    send what is queued and stop. At interpreter exit a client not closed is closed, waiting
    at most 10 s for its last events.

    ``on_error(error, events)`` is called, from whichever thread met it, for every failure
    the client absorbs instead of raising: a batch refused by the server (a 4xx other than
    429: it is dropped), a batch still undelivered after ``max_retries`` retries, an event
    dropped because the queue held ``max_queue`` events, and a ``decide``/``recommend`` that
    returned its fallback. Without it these are logged as warnings on ``personify.client``.
    """

    def __init__(
        self,
        write_key: str,
        *,
        host: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        flush_at: int = 100,
        flush_interval_s: float = 0.5,
        max_queue: int = 10_000,
        timeout_s: float = 5.0,
        max_retries: int = 5,
        decide_timeout_s: float = 0.25,
        experiments_refresh_s: float = 60.0,
        on_error: ErrorCallback | None = None,
    ) -> None:
        if not write_key:
            raise ConfigurationError(
                "a Client needs a source's write key (personify sources create)"
            )
        for name, value in (
            ("flush_at", flush_at),
            ("max_queue", max_queue),
            ("flush_interval_s", flush_interval_s),
            ("timeout_s", timeout_s),
            ("decide_timeout_s", decide_timeout_s),
            ("experiments_refresh_s", experiments_refresh_s),
        ):
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, not {value!r}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be 0 or more, not {max_retries!r}")
        self.write_key = write_key
        self.host = host.rstrip("/")
        self.api_key = api_key
        self.flush_at = flush_at
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.decide_timeout_s = decide_timeout_s
        self.experiments_refresh_s = experiments_refresh_s
        self._on_error = on_error
        # the running experiments for assign(), and when they were fetched (monotonic)
        self._assigner: Assigner | None = None
        self._assigner_at = -float("inf")
        self._assigner_lock = threading.Lock()
        # (experiment, unit, variant) whose exposure was tracked already by this process
        self._tracked: dict[tuple[str, str, str], None] = {}
        agent = _library_version()
        self._library = {"name": "personify-python", "version": agent}
        headers = {"user-agent": f"personify-python/{agent}", "content-type": "application/json"}
        write_auth = httpx.BasicAuth(write_key, "")
        # one connection pool per thread role: the sender's own, and one shared by callers
        self._sender_http = httpx.Client(
            base_url=self.host, headers=headers, auth=write_auth, timeout=timeout_s
        )
        self._calls_http = httpx.Client(base_url=self.host, headers=headers, timeout=timeout_s)
        self._write_auth = write_auth
        self._queue: deque[_Message] = deque()
        self._queued_bytes = 0
        self._in_flight = 0
        self._flush_requests = 0
        self._closed = False
        self._stopping = False
        self._cond = threading.Condition()
        self._sender = threading.Thread(target=self._run, name="personify-client", daemon=True)
        self._sender.start()
        atexit.register(self._close_at_exit)

    # --- events -----------------------------------------------------------------------------

    def track(
        self,
        user_id: str | None = None,
        event: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> str:
        """Queue a track event (``event`` is its name); returns its ``messageId``.

        Raises ``ValidationError`` without a user id or anonymous id or without a name,
        ``PayloadTooLarge`` for an event the collector would refuse for its size."""
        if not isinstance(event, str) or not event:
            raise ValidationError("a track event needs a name (event=...)", code="missing_event")
        return self._enqueue(
            "track",
            {"event": event, "properties": dict(properties or {})},
            user_id,
            anonymous_id,
            context,
            timestamp,
            message_id,
        )

    def identify(
        self,
        user_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        *,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> str:
        """Queue an identify event (the user's ``traits``); returns its ``messageId``."""
        return self._enqueue(
            "identify",
            {"traits": dict(traits or {})},
            user_id,
            anonymous_id,
            context,
            timestamp,
            message_id,
        )

    def page(
        self,
        user_id: str | None = None,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        category: str | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> str:
        """Queue a page view (``properties`` such as ``url``, ``path``); returns its ``messageId``."""
        fields: dict[str, Any] = {"properties": dict(properties or {})}
        if name is not None:
            fields["name"] = name
        if category is not None:
            fields["category"] = category
        return self._enqueue("page", fields, user_id, anonymous_id, context, timestamp, message_id)

    def _enqueue(
        self,
        event_type: str,
        fields: dict[str, Any],
        user_id: str | None,
        anonymous_id: str | None,
        context: Mapping[str, Any] | None,
        timestamp: datetime | None,
        message_id: str | None,
    ) -> str:
        if not user_id and not anonymous_id:
            raise ValidationError(
                "give a user_id or an anonymous_id",
                code="missing_user",
                details={"field": "userId"},
            )
        for field, value in (("user_id", user_id), ("anonymous_id", anonymous_id)):
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"{field} must be text", code="invalid_id")
        if message_id is not None and (not isinstance(message_id, str) or not message_id):
            raise ValidationError("message_id must be non-empty text", code="invalid_id")
        if timestamp is not None and not isinstance(timestamp, datetime):
            raise ValidationError("timestamp must be a datetime", code="invalid_timestamp")
        moment = timestamp or datetime.now(UTC)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # a naive datetime is read as UTC
        message_id = message_id or str(uuid.uuid4())
        event: dict[str, Any] = {"type": event_type, "messageId": message_id, **fields}
        if user_id:
            event["userId"] = user_id
        if anonymous_id:
            event["anonymousId"] = anonymous_id
        event["timestamp"] = format_timestamp(moment)
        event["context"] = {**(context or {}), "library": self._library}
        try:
            # encoded now: the event is what it was at call time, even if the caller's
            # dicts change afterwards, and its size is known before it is queued
            payload = _encode(event)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(
                f"the event cannot be sent as JSON: {exc}", code="invalid_json"
            ) from exc
        limit = MAX_EVENT_BYTES - _EVENT_HEADROOM_BYTES
        if len(payload) > limit:
            raise PayloadTooLarge(
                f"the event is {len(payload)} bytes; the client sends at most {limit}",
                code="event_too_large",
                details={"bytes": len(payload), "limit": limit},
            )
        message = _Message(message_id, payload)
        with self._cond:
            if self._closed:
                dropped: PersonifyError | None = ConfigurationError(
                    "the client is closed; the event was dropped", code="client_closed"
                )
            elif len(self._queue) >= self.max_queue:
                # the newest is dropped: the caller is never blocked, and the queued events
                # keep their order
                dropped = BackendUnavailable(
                    f"the client's queue holds {self.max_queue} events; the event was dropped",
                    code="queue_full",
                )
            else:
                dropped = None
                self._queue.append(message)
                self._queued_bytes += len(payload)
                if len(self._queue) == 1 or self._batch_ready():
                    self._cond.notify_all()
        if dropped is not None:
            self._report(dropped, _decoded([message]))
        return message_id

    # --- delivery -----------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send everything queued now, and wait until it is delivered or given up on.

        Returns False when ``timeout_s`` passed first (the events are still being sent), or
        when called from ``on_error`` on the sender thread, which cannot wait for itself."""
        if threading.current_thread() is self._sender:
            return False
        with self._cond:
            self._flush_requests += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(
                    lambda: not self._queue and self._in_flight == 0, timeout_s
                )
            finally:
                self._flush_requests -= 1

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is queued, stop the sender thread and release the connections.

        Events given after ``close`` are dropped and reported (``client_closed``)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
        atexit.unregister(self._close_at_exit)
        if threading.current_thread() is self._sender:
            return  # called from on_error: the sender stops once this batch is done
        self._sender.join(timeout_s)
        if not self._sender.is_alive():
            self._sender_http.close()
        self._calls_http.close()

    def _close_at_exit(self) -> None:
        self.close(timeout_s=_AT_EXIT_TIMEOUT_S)
        with self._cond:
            left = len(self._queue) + self._in_flight
        if left:
            logger.warning("personify client: %s events were not delivered before exit", left)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _batch_ready(self) -> bool:
        """Whether the queue fills a batch already (call with the lock held)."""
        if len(self._queue) >= self.flush_at:
            return True
        body_bytes = _BATCH_OVERHEAD_BYTES + self._queued_bytes + len(self._queue) - 1
        return body_bytes >= MAX_BATCH_BYTES

    def _take_batch(self) -> list[_Message]:
        """The next batch off the queue: at most ``flush_at`` events and MAX_BATCH_BYTES."""
        batch: list[_Message] = []
        size = _BATCH_OVERHEAD_BYTES - 1  # n events need n - 1 commas
        while self._queue and len(batch) < self.flush_at:
            cost = len(self._queue[0].payload) + 1
            if batch and size + cost > MAX_BATCH_BYTES:
                break
            message = self._queue.popleft()
            self._queued_bytes -= len(message.payload)
            size += cost
            batch.append(message)
        self._in_flight += len(batch)
        return batch

    def _run(self) -> None:
        """The sender thread: gather a batch, deliver it, until closed and drained."""
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                # wait for a full batch, a flush or the interval, whichever comes first
                deadline = time.monotonic() + self.flush_interval_s
                while not (self._stopping or self._flush_requests or self._batch_ready()):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._take_batch()
            try:
                self._deliver(batch)
            finally:
                with self._cond:
                    self._in_flight -= len(batch)
                    self._cond.notify_all()

    def _batch_body(self, batch: list[_Message]) -> bytes:
        # sentAt is the time of this attempt: the collector corrects the events' clock by it
        sent_at = format_timestamp(datetime.now(UTC)).encode()
        return b"".join(
            (
                _BATCH_PREFIX,
                b",".join(message.payload for message in batch),
                _SENT_AT_FIELD,
                sent_at,
                _BATCH_SUFFIX,
            )
        )

    def _deliver(self, batch: list[_Message]) -> None:
        """POST one batch, retrying with the same events (and messageIds) while it may help."""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = self._sender_http.post("/v1/batch", content=self._batch_body(batch))
            except httpx.HTTPError as exc:
                # timeouts and connection errors: the batch may or may not have landed, and a
                # retry with the same messageIds is deduplicated by the collector either way
                error: PersonifyError = BackendUnavailable(
                    f"the server could not be reached: {exc!r}", code="unreachable"
                )
            else:
                status = response.status_code
                if status < 300:
                    self._check_accepted(response, batch)
                    return
                error = _error_from(response)
                if not isinstance(error, BackendUnavailable):
                    self._report(error, _decoded(batch))  # permanent: retrying cannot help
                    return
                retry_after = _retry_after_s(response)
            attempt += 1
            if attempt > self.max_retries:
                self._report(
                    BackendUnavailable(
                        f"the batch was not delivered after {attempt} attempts: {error.message}",
                        code=error.code,
                        details=error.details,
                    ),
                    _decoded(batch),
                )
                return
            time.sleep(_backoff_s(attempt, retry_after))

    def _check_accepted(self, response: httpx.Response, batch: list[_Message]) -> None:
        """Report events the collector dead-lettered (a 200 may refuse some of a batch)."""
        try:
            answer = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            return
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        if isinstance(rejected, int) and rejected > 0:
            self._report(
                ValidationError(
                    f"the server refused {rejected} event(s) of the batch; "
                    "GET /v1/failed-events says which and why",
                    code="events_rejected",
                    details={"rejected": rejected},
                ),
                _decoded(batch),
            )

    def _report(self, error: PersonifyError, events: list[dict[str, Any]]) -> None:
        if self._on_error is None:
            logger.warning("personify client: %s (%s events)", error.message, len(events))
            return
        try:
            self._on_error(error, events)
        except Exception:
            # the caller's callback must not stop the sender thread (or fail a decide call)
            logger.exception("personify client: on_error raised")

    # --- decisions and recommendations --------------------------------------------------------

    def decide(
        self,
        placements: Iterable[str | Mapping[str, Any]],
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        fallback: T | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any] | T | None:
        """The content for one user in ``placements`` (ids, or ``{"id", "limit"}``).

        Returns the server's decision, ``{"decisionId", "placements": {id: {"items",
        "strategy", "fallback"}}}`` (with traces when the client has an ``api_key``), or
        ``fallback`` when the server does not answer well within ``timeout_s`` (default
        ``decide_timeout_s``): a timeout, a connection error, an error status or a body that
        is not a decision. Raises only for a call that can never succeed (no user id or
        anonymous id, no placements)."""
        if not user_id and not anonymous_id:
            raise ValidationError(
                "give a user_id or an anonymous_id",
                code="missing_user",
                details={"field": "userId"},
            )
        body: dict[str, Any] = {"placements": _placement_asks(placements)}
        if user_id:
            body["userId"] = user_id
        if anonymous_id:
            body["anonymousId"] = anonymous_id
        if context:
            body["context"] = dict(context)
        try:
            content = _encode(body)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(
                f"the request cannot be sent as JSON: {exc}", code="invalid_json"
            ) from exc
        answer = self._call("POST", "/v1/decide", timeout_s, content=content, api_key_only=False)
        if (
            isinstance(answer, dict)
            and isinstance(answer.get("decisionId"), str)
            and isinstance(answer.get("placements"), dict)
        ):
            return answer
        if answer is not _NO_ANSWER:
            self._report(_bad_answer("/v1/decide"), [])
        return fallback

    def assign(
        self,
        experiment: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        sticky: MutableMapping[str, str] | None = None,
        track: bool = True,
    ) -> Assignment | None:
        """The variant of running ``experiment`` for a user, computed in-process (no call
        per assignment): the same deterministic hash of (seed, unit) the server uses, with
        the unit the ``user_id`` when given, else the ``anonymous_id`` (docs/experiments.md).

        The running experiments are fetched with the client's ``api_key`` and refreshed every
        ``experiments_refresh_s``; until the first fetch succeeds every call returns
        ``None`` (not in the experiment), as do an unknown or stopped experiment and a user
        outside its coverage or namespace range. Targeting is not applied here (it needs
        the profile: use ``decide`` for targeted experiments), nor bandit allocations.

        ``sticky`` is the caller's own store (a session, a cookie's dict): a variant once
        given is kept there, whatever the weights say later; with both ids, a variant
        stored under the anonymous id follows the user. With ``track`` (default), the first
        assignment of each user and variant in this process sends an ``Experiment Viewed``
        event, so that the server keeps it sticky and can analyse the experiment."""
        unit = user_id or anonymous_id
        if not unit:
            raise ValidationError(
                "give a user_id or an anonymous_id",
                code="missing_user",
                details={"field": "userId"},
            )
        assigner = self._experiments()
        if assigner is None:
            return None
        aliases = [anonymous_id] if user_id and anonymous_id else []
        assignment = assigner.assign(experiment, unit, sticky=sticky, aliases=aliases)
        if assignment is not None and track:
            seen = (experiment, unit, assignment.variant)
            if seen not in self._tracked:
                if len(self._tracked) >= _MAX_TRACKED:
                    self._tracked.pop(next(iter(self._tracked)))
                self._tracked[seen] = None
                self.track(
                    user_id,
                    "Experiment Viewed",
                    anonymous_id=anonymous_id,
                    properties={
                        "experiment_id": experiment,
                        "variation_id": assignment.variant,
                        "phase": assigner.phase(experiment),
                        "probability": assignment.probability,
                    },
                )
        return assignment

    def _experiments(self) -> Assigner | None:
        """The running experiments, fetched again when older than the refresh interval (a
        failed fetch keeps the last ones, and is retried at the next interval)."""
        now = time.monotonic()
        if now - self._assigner_at < self.experiments_refresh_s:
            return self._assigner
        with self._assigner_lock:
            if now - self._assigner_at < self.experiments_refresh_s:
                return self._assigner
            self._assigner_at = now
            if self.api_key is None:
                raise ConfigurationError(
                    "assign() needs an API key: Client(..., api_key=...) (personify keys create)"
                )
            answer = self._call(
                "GET",
                "/v1/experiments",
                self.decide_timeout_s * 4,
                params={"status": "running"},
                api_key_only=True,
            )
            listed = answer.get("data") if isinstance(answer, dict) else None
            if isinstance(listed, list):
                try:
                    self._assigner = Assigner.from_definitions(listed)
                except ValidationError as exc:
                    self._report(exc, [])
            elif answer is not _NO_ANSWER:
                self._report(_bad_answer("/v1/experiments"), [])
            return self._assigner

    def recommend(
        self,
        user_id: str,
        *,
        limit: int = 10,
        exclude_seen: bool = True,
        fallback: T | None = None,
        timeout_s: float | None = None,
    ) -> list[dict[str, Any]] | T | None:
        """Recommended items for ``user_id`` (any of the user's ids), best first.

        Returns the answer's ``items``: ``[{"id", "score", "source", "anchor", "type",
        "content"}]`` (an unknown user gets popular items), or ``fallback`` on the same
        failures as ``decide``. ``exclude_seen`` leaves out the items the user interacted
        with lately. Needs the client's ``api_key`` (``ConfigurationError`` without one);
        raises ``ValidationError`` for an empty id or a ``limit`` outside 1-100."""
        if self.api_key is None:
            raise ConfigurationError(
                "recommend() needs an API key: Client(..., api_key=...) (personify keys create)"
            )
        if not isinstance(user_id, str) or not user_id:
            raise ValidationError(
                "give a user_id", code="missing_user", details={"field": "userId"}
            )
        if not 1 <= limit <= MAX_RECOMMENDATIONS:
            raise ValidationError(
                f"limit is 1 to {MAX_RECOMMENDATIONS}",
                code="invalid_parameter",
                details={"field": "limit"},
            )
        answer = self._call(
            "GET",
            f"/v1/recommendations/{quote(user_id, safe='')}",
            timeout_s,
            params={"limit": limit, "exclude": "seen" if exclude_seen else "none"},
            api_key_only=True,
        )
        items = answer.get("items") if isinstance(answer, dict) else None
        if isinstance(items, list) and all(isinstance(item, dict) for item in items):
            return items
        if answer is not _NO_ANSWER:
            self._report(_bad_answer("/v1/recommendations"), [])
        return fallback

    def _call(
        self,
        method: str,
        path: str,
        timeout_s: float | None,
        *,
        api_key_only: bool,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One request with the short timeout: its decoded JSON body, or ``_NO_ANSWER`` after
        reporting why there is none."""
        if self.api_key is not None:
            auth: httpx.Auth | None = None
            headers = {"authorization": f"Bearer {self.api_key}"}
        else:
            auth, headers = (None if api_key_only else self._write_auth), {}
        timeout = self.decide_timeout_s if timeout_s is None else timeout_s
        if self._closed:
            self._report(ConfigurationError("the client is closed", code="client_closed"), [])
            return _NO_ANSWER
        try:
            response = self._calls_http.request(
                method,
                path,
                content=content,
                params=params,
                headers=headers,
                auth=auth,
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            self._report(
                BackendUnavailable(f"{path} did not answer: {exc!r}", code="unreachable"), []
            )
            return _NO_ANSWER
        if response.status_code != 200:
            self._report(_error_from(response), [])
            return _NO_ANSWER
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            self._report(_bad_answer(path), [])
            return _NO_ANSWER


def _bad_answer(path: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"{path} answered with something else than JSON of its shape", code="bad_answer"
    )
