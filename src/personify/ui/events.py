"""The live events page (``/console/events``): what is arriving right now, and from whom.

The page lists the newest events the filters match, read from the event log's tail, so it
reads without JavaScript; with it, the htmx Server-Sent Events extension adds each new
matching event on top as it is appended, from ``/console/events/stream``.

The stream polls the log's tail about once a second and sends the entries past its cursor
(the highest offset seen in each partition). It holds no connection between polls (each
poll is one ``EventLog.tail``), ends when the browser goes away (Litestar cancels a stream
whose client disconnected), and ends by itself after a few minutes: ``EventSource``
reconnects on its own, sending the last event id, which is the cursor, so nothing is missed
across the reconnect, and the guard looks at the session again (a revoked key's session
stops receiving). Events in the log carry PII already hashed at ingest; the page shows
them as stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from personify.eventlog.base import EventLog, LogEntry
from personify.events.normalize import EVENT_TYPES
from personify.runtime import Runtime
from personify.ui.rendering import page_headers, render, render_fragment
from personify.ui.session import blank_to_none, page

__all__ = ["ROUTES", "EventFilter", "EventRow", "LogCursor"]

# how many matching events the page lists, and how far back in the log it looks for them
PAGE_ROWS: Final = 50
SCAN_ENTRIES: Final = 2000
# the stream: how often it reads the tail, how much of it, how often it says it is alive
# (proxies close an idle connection), and how long before it ends and the browser reconnects
POLL_S: Final = 1.0
POLL_ENTRIES: Final = 500
KEEP_ALIVE_S: Final = 15.0
STREAM_LIFETIME_S: Final = 300.0
# the reconnection delay the stream asks the browser for
RETRY_MS: Final = 1000
# the cursor travels in Last-Event-ID: bounded before it is parsed
_MAX_CURSOR_CHARS: Final = 4096
_MAX_PARTITIONS: Final = 256
_MAX_ID_CHARS: Final = 512
_ID_FIELDS: Final = ("userId", "anonymousId", "previousId", "groupId")


def _offset_key(offset: str) -> tuple[int, ...]:
    """An offset as numbers that sort as the log orders them: SQLite's and Kafka's offsets
    are integers, a Redis stream's ids ``<ms>-<seq>``. Anything else sorts first."""
    try:
        return tuple(int(part) for part in offset.split("-"))
    except ValueError:
        return ()


@dataclass(frozen=True, slots=True)
class LogCursor:
    """How far a reader has seen the log: the highest offset per partition."""

    offsets: dict[int, str]

    @classmethod
    def after(cls, entries: Iterable[LogEntry]) -> LogCursor:
        """The cursor just past ``entries``."""
        return cls({}).advanced(entries)

    @classmethod
    def parse(cls, text: str | None) -> LogCursor | None:
        """A cursor from its ``text()`` (an SSE event id); None when absent or malformed."""
        if not text or len(text) > _MAX_CURSOR_CHARS:
            return None
        offsets: dict[int, str] = {}
        for part in text.split(",")[:_MAX_PARTITIONS]:
            partition, sep, offset = part.partition(":")
            if not sep or not partition.isdigit() or not offset or not _offset_key(offset):
                return None
            offsets[int(partition)] = offset
        return cls(offsets)

    def text(self) -> str:
        """The cursor as one line (``<partition>:<offset>,…``)."""
        return ",".join(f"{p}:{o}" for p, o in sorted(self.offsets.items()))

    def is_new(self, entry: LogEntry) -> bool:
        """Whether ``entry`` lies past the cursor."""
        seen = self.offsets.get(entry.partition)
        return seen is None or _offset_key(entry.offset) > _offset_key(seen)

    def advanced(self, entries: Iterable[LogEntry]) -> LogCursor:
        """The cursor past ``entries`` too."""
        offsets = dict(self.offsets)
        for entry in entries:
            seen = offsets.get(entry.partition)
            if seen is None or _offset_key(entry.offset) > _offset_key(seen):
                offsets[entry.partition] = entry.offset
        return LogCursor(offsets)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One log entry as the page shows it."""

    partition: int
    offset: str
    appended_at: datetime
    type: str
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    source_id: str | None
    message_id: str | None
    payload: Any

    @classmethod
    def of(cls, entry: LogEntry) -> EventRow:
        """Decode an entry; one that is not a JSON object shows as ``undecodable``."""
        try:
            payload: Any = msgspec.json.decode(entry.payload)
        except msgspec.DecodeError:
            payload = entry.payload.decode("utf-8", "replace")
        event = payload if isinstance(payload, dict) else {}

        def text(name: str) -> str | None:
            value = event.get(name)
            return value if isinstance(value, str) else None

        return cls(
            partition=entry.partition,
            offset=entry.offset,
            appended_at=datetime.fromtimestamp(entry.appended_at, UTC),
            type=text("type") or ("undecodable" if not event else "unknown"),
            name=text("event") or text("name"),
            user_id=text("userId"),
            anonymous_id=text("anonymousId"),
            source_id=text("sourceId"),
            message_id=text("messageId"),
            payload=payload,
        )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the person asked to see; an empty field matches everything."""

    source: str | None = None
    type: str | None = None
    name: str | None = None
    user: str | None = None

    @property
    def active(self) -> bool:
        """Whether any field narrows the events."""
        return any((self.source, self.type, self.name, self.user))

    def matches(self, row: EventRow) -> bool:
        """Whether ``row`` passes every given field (``user`` is any of the event's ids)."""
        if self.source and row.source_id != self.source:
            return False
        if self.type and row.type != self.type:
            return False
        if self.name and row.name != self.name:
            return False
        if self.user:
            event = row.payload if isinstance(row.payload, dict) else {}
            return any(event.get(field) == self.user for field in _ID_FIELDS)
        return True

    def query(self, **extra: str) -> str:
        """The filter (and ``extra`` parameters) as a query string."""
        fields = {"source": self.source, "type": self.type, "name": self.name, "user": self.user}
        return urlencode({**{k: v for k, v in fields.items() if v}, **extra})


def _matching(entries: Sequence[LogEntry], wanted: EventFilter) -> list[EventRow]:
    """The entries ``wanted`` matches, newest first."""
    rows = (EventRow.of(entry) for entry in reversed(entries))
    return [row for row in rows if wanted.matches(row)]


def _filter_of(
    source: str | None, type: str | None, name: str | None, user: str | None
) -> EventFilter:
    return EventFilter(
        blank_to_none(source), blank_to_none(type), blank_to_none(name), blank_to_none(user)
    )


Source = Annotated[str | None, QueryParameter(max_length=_MAX_ID_CHARS, description="source id")]
Type = Annotated[str | None, QueryParameter(max_length=20, description="event type")]
Name = Annotated[str | None, QueryParameter(max_length=_MAX_ID_CHARS, description="event name")]
User = Annotated[str | None, QueryParameter(max_length=_MAX_ID_CHARS, description="any id")]


@get("/events", opt=page("profiles:read", per_user=True), name="console:events")
async def events_page(
    request: Request[Any, Any, Any],
    source: Source = None,
    type: Type = None,
    name: Name = None,
    user: User = None,
) -> Response[str]:
    """The newest events the filters match, and (with JavaScript) the live stream."""
    runtime: Runtime = request.app.state.runtime
    wanted = _filter_of(source, type, name, user)
    entries = await runtime.log.tail(SCAN_ENTRIES)
    rows = _matching(entries, wanted)[:PAGE_ROWS]
    sources = await asyncio.to_thread(runtime.sources.list)
    cursor = LogCursor.after(entries)
    return render(
        request,
        "events.html",
        title="Live events",
        rows=rows,
        wanted=wanted,
        scanned=len(entries),
        page_rows=PAGE_ROWS,
        sources=sources,
        source_names={s.id: s.name for s in sources},
        types=sorted(EVENT_TYPES),
        # the stream starts where this page's list ends: nothing appended in between is lost
        stream_url=f"/console/events/stream?{wanted.query(after=cursor.text())}",
    )


async def _follow(
    request: Request[Any, Any, Any], log: EventLog, wanted: EventFilter, cursor: LogCursor | None
) -> AsyncIterator[ServerSentEventMessage]:
    """The stream's messages: new matching rows as ``event`` messages (HTML), a keep-alive
    comment now and then, until ``STREAM_LIFETIME_S`` has passed."""
    started = last_sent = time.monotonic()
    if cursor is None:
        cursor = LogCursor.after(await log.tail(1))
    # the browser reconnects this fast when the stream ends
    yield ServerSentEventMessage(data=None, comment="following the event log", retry=RETRY_MS)
    runtime: Runtime = request.app.state.runtime
    names = {s.id: s.name for s in await asyncio.to_thread(runtime.sources.list)}
    while time.monotonic() - started < STREAM_LIFETIME_S:
        await asyncio.sleep(POLL_S)
        fresh = [entry for entry in await log.tail(POLL_ENTRIES) if cursor.is_new(entry)]
        if fresh:
            cursor = cursor.advanced(fresh)
            rows = _matching(fresh, wanted)
            if rows:
                html = render_fragment(request, "events_rows.html", rows=rows, source_names=names)
                last_sent = time.monotonic()
                yield ServerSentEventMessage(data=html, event="event", id=cursor.text())
                continue
        if time.monotonic() - last_sent >= KEEP_ALIVE_S:
            last_sent = time.monotonic()
            # the id keeps the browser's cursor current when nothing matched for a while
            yield ServerSentEventMessage(data=None, comment="keep-alive", id=cursor.text())


@get(
    "/events/stream",
    opt=page("profiles:read", per_user=True),
    name="console:events-stream",
)
async def events_stream(
    request: Request[Any, Any, Any],
    source: Source = None,
    type: Type = None,
    name: Name = None,
    user: User = None,
    after: Annotated[
        str | None,
        QueryParameter(max_length=_MAX_CURSOR_CHARS, description="start past this cursor"),
    ] = None,
) -> ServerSentEvent:
    """New matching events as Server-Sent Events, each an HTML fragment of table rows."""
    runtime: Runtime = request.app.state.runtime
    wanted = _filter_of(source, type, name, user)
    # a reconnecting EventSource says where it was; a first connection may name a cursor
    cursor = LogCursor.parse(request.headers.get("last-event-id")) or LogCursor.parse(after)
    return ServerSentEvent(
        _follow(request, runtime.log, wanted, cursor),
        headers={**page_headers(), "X-Accel-Buffering": "no"},
    )


ROUTES = [events_page, events_stream]
