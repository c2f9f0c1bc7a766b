"""HTTP routes of the collector, shaped like Segment's HTTP Tracking API.

Auth is HTTP Basic with the write key as user name and an empty password, or ``writeKey``
in the body. Bodies may be gzip-compressed. Each write key has a rate limit (a token bucket
per source, ``personify.auth.ratelimit``): every POST request takes one token, whatever
number of events it carries, once its write key resolves to a source; a refused request
is answered 429 and none of its events is kept. CORS is open on these routes (any origin, no
credentials) because browsers post to them directly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive

from personify.auth.ratelimit import RateLimiter, enforce
from personify.auth.secrets import MAX_SECRET_CHARS
from personify.errors import (
    ConfigurationError,
    PayloadTooLarge,
    PersonifyError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from personify.events.decoding import (
    MAX_DEPTH,
    check_document,
    decode_batch_events,
    decode_document,
)
from personify.events.normalize import EVENT_TYPES
from personify.ingest.collector import Collector, IngestOutcome
from personify.ingest.counts import OK, IngestCounts
from personify.ingest.sources import Source, SourceRepository
from personify.ingest.wire import WireBatch, WireEvent, decode_wire_batch, decode_wire_event

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

_encode = msgspec.json.Encoder().encode
_perf_counter = time.perf_counter
logger = logging.getLogger("personify.ingest")

# the routes requests are counted by (``personify.ingest.counts``): an event type for the
# single-event paths (``/v1/t`` counts as ``track``), ``batch`` (``/v1/b`` too) and ``import``
BATCH_ROUTES = ("batch", "import")
ROUTES = (*sorted(EVENT_TYPES), *BATCH_ROUTES)
# what a request that raised something unexpected counts as (it is answered 500)
_INTERNAL_ERROR_CODE = "internal_error"
# one single-event append in eight is timed for the append latency (a distribution needs no
# more; its request is timed whole all the same), to keep two clock reads and a tally off
# the hottest path
_APPEND_SAMPLE_MASK = 7
# an ingest span's attribute: the route, as the counts name it
_ROUTE = "personify.route"

CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, GET, OPTIONS",
    # every header Segment's libraries send: analytics.js adds X-Retry-Count to each retry,
    # and a browser blocks a request with a header the preflight answer does not allow
    "access-control-allow-headers": "Content-Type, Authorization, Content-Encoding, X-Retry-Count",
    "access-control-max-age": "86400",
}
# analytics.js reports counters of its own (to POST {host}/m, which the collector discards):
# none are sampled, and the host is ours, so that no visitor's browser talks to a third party
# even when a page turns the sampling back on
_METRICS_SAMPLE_RATE = 0
_SUCCESS = b'{"success":true}'
_GZIP_SLACK_BYTES = 4096
# the base64 of the longest write key with room for a password: Basic credentials beyond it
# are refused before they are decoded or cached
_MAX_BASIC_CREDENTIALS_BYTES = 2048
# how far below a batch body its events sit (the body, then its "batch" array)
_BATCH_LEVELS = 2
# the acceptance rule's codes that belong to one event of a batch, not to the request
_EVENT_LEVEL_CODES = frozenset({"number_out_of_range", "too_deep"})

Handler = Callable[[Request], Awaitable[Response]]
# a request's headers: lower-case name -> raw value (see request_headers)
Headers = Mapping[bytes, bytes]
ErrorRenderer = Callable[[PersonifyError], Response]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded with msgspec."""
    return Response(
        _encode(body), status_code=status, media_type="application/json", headers=headers
    )


def request_headers(scope_headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """A request's headers by name, as bytes; the first of a repeated header wins.

    ASGI servers hand names over lower-cased. Built in C by ``dict`` (reversed, so that the
    first of a name is the one left), with no value decoded until a route reads it."""
    pairs = scope_headers if type(scope_headers) is list else list(scope_headers)
    return dict(reversed(pairs))


def _check_content_type(raw: bytes | None) -> None:
    if raw is None or raw == b"application/json":
        return
    media = raw.split(b";", 1)[0].strip().lower().decode("latin-1")
    # the browser library sends text/plain to avoid a CORS preflight
    if media in ("", "application/json", "text/plain") or media.endswith("+json"):
        return
    raise UnsupportedMediaType(
        f"Content-Type {media!r} is not supported; send application/json",
        details={"contentType": media},
    )


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


async def read_body(
    headers: Headers,
    receive: Receive,
    limit: int,
    code: str,
    first: Message | None = None,
) -> bytes:
    """The request body, inflated when gzip-encoded, refused past ``limit`` bytes.
    ``first`` is the body's first message when the caller has received it already."""
    encoding = headers.get(b"content-encoding", b"").strip().lower().decode("latin-1")
    declared = headers.get(b"content-length")
    wire_limit = limit + _GZIP_SLACK_BYTES if encoding else limit
    if declared is not None and declared.isdigit() and int(declared) > wire_limit:
        raise _too_large(limit, code)
    message = first if first is not None else await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if message.get("more_body", False):
        parts = [body]
        size = len(body)
        while True:
            if size > wire_limit:
                raise _too_large(limit, code)
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
    if len(body) > wire_limit:
        raise _too_large(limit, code)
    if not encoding or encoding == "identity":
        return body
    if encoding != "gzip":
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; use gzip or none",
            code="unsupported_encoding",
        )
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValidationError("the gzip body is corrupt", code="invalid_gzip") from exc
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise _too_large(limit, code)
    if not inflater.eof:
        # a cut-off stream inflates without error to a prefix of the body
        raise ValidationError("the gzip body is truncated", code="invalid_gzip")
    return inflated


def _too_large(limit: int, code: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is over the {limit}-byte limit", code=code, details={"limit": limit}
    )


def _decode_shaped(body: bytes, decode_wire: Callable[[bytes], Any], max_depth: int) -> Any:
    """``body`` as the wire struct when it has the common shape, else as plain JSON; either
    way held to the acceptance rule (``personify.events.decoding``), so that what is taken
    here can be read by every later stage. Raises ``ValidationError``."""
    if not body.strip():
        raise ValidationError("the request body is empty", code="invalid_json")
    try:
        shaped = decode_wire(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # not the common shape (or not JSON at all: decode_document says which)
        return decode_document(body, max_depth=max_depth)
    # the wire struct keeps nested objects as raw bytes, unread: hold them to the rule too
    check_document(body, max_depth=max_depth)
    return shaped


def _basic_user(credentials: bytes) -> str:
    """The user name of Basic credentials; over-long ones are refused unread and uncached."""
    if len(credentials) > _MAX_BASIC_CREDENTIALS_BYTES:
        raise _write_key_too_long()
    return _decoded_basic_user(credentials)


@functools.lru_cache(maxsize=1024)
def _decoded_basic_user(credentials: bytes) -> str:
    # cached because a site sends the same header on every request; the length bound above
    # keeps the cache small
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("the Basic credentials are malformed", code="invalid_write_key") from exc
    return decoded.split(":", 1)[0]


def _write_key(headers: Headers, body: Any) -> str:
    header = headers.get(b"authorization")
    if header is not None and header[:6].lower() == b"basic ":
        user = _basic_user(header[6:])
        if user:
            if len(user) > MAX_SECRET_CHARS:
                raise _write_key_too_long()
            return user
    key = body.writeKey if isinstance(body, WireEvent | WireBatch) else None
    if isinstance(body, dict):
        key = body.get("writeKey")
    if isinstance(key, str) and key:
        if len(key) > MAX_SECRET_CHARS:
            raise _write_key_too_long()
        return key
    raise Unauthorized(
        "no write key: send it as the Basic auth user name or as writeKey in the body",
        code="missing_write_key",
    )


def _write_key_too_long() -> Unauthorized:
    # no write key is this long (sources refuse them), so it is refused without a lookup
    return Unauthorized(
        f"unknown write key: write keys have at most {MAX_SECRET_CHARS} characters",
        code="invalid_write_key",
        details={"maxChars": MAX_SECRET_CHARS},
    )


class _Seen:
    """The source a batch request's write key named, once it is known (for its counts)."""

    __slots__ = ("source_id",)

    def __init__(self) -> None:
        self.source_id = ""


def _count_outcome(
    counts: IngestCounts, route: str, source_id: str, outcome: IngestOutcome
) -> None:
    took = counts.took
    took(route, source_id, "accepted", outcome.accepted)
    took(route, source_id, "duplicate", outcome.duplicates)
    took(route, source_id, "rejected", len(outcome.rejected))
    took(route, source_id, "suppressed", outcome.suppressed)


def _batch_answer(outcome: IngestOutcome) -> bytes:
    answer = {
        "success": True,
        "accepted": outcome.accepted,
        "duplicates": outcome.duplicates,
        "rejected": len(outcome.rejected),
    }
    if outcome.suppressed:
        # events of erased ids, dropped (docs/privacy.md); the key is there only when any were
        answer["suppressed"] = outcome.suppressed
    return _encode(answer)


class CollectorRoutes:
    """The ingest endpoints, bound to one collector and one source repository.

    The POST endpoints are served by ``IngestFastPath`` (an ASGI layer in front of the
    router, see ``personify.ingest.asgi``); the GET ones are ordinary Starlette routes.
    """

    def __init__(
        self,
        collector: Collector,
        sources: SourceRepository,
        render_error: ErrorRenderer,
        *,
        max_event_bytes: int,
        max_batch_bytes: int,
        public_url: str = "",
        trust_host_header: bool = True,
        rate_limiter: RateLimiter | None = None,
        write_key_rate_per_s: float = 0.0,
        write_key_burst: int = 0,
        tracer: Tracer | None = None,
    ) -> None:
        if rate_limiter is not None and not (write_key_rate_per_s > 0 and write_key_burst >= 1):
            raise ValueError("a rate limiter needs a positive write_key_rate_per_s and burst")
        self._collector = collector
        self._sources = sources
        self._render_error = render_error
        self.max_event_bytes = max_event_bytes
        self.max_batch_bytes = max_batch_bytes
        self._tracker_js: bytes | None = None
        self._cached_source = sources.resolve_cached
        self._append_one = collector.append_one
        # what the routes answered (GET /metrics); bound here for the single-event path
        self.counts = IngestCounts(ROUTES)
        self._singles = self.counts.singles
        self._latency = self.counts.latency
        self._appends = collector.appends
        self._ticks = 0
        # the POST endpoints ``IngestFastPath`` calls: in an ``ingest`` span each when traced
        # (personify.tracing), chosen here so that untraced requests test nothing
        self._tracer = tracer
        self.single: Callable[[str, Headers, Receive], Awaitable[bytes]] = (
            self._single if tracer is None else self._traced_single
        )
        self.batch: Callable[[Headers, Receive, str], Awaitable[bytes]] = (
            self._counted_batch if tracer is None else self._traced_batch
        )
        self._lookups: dict[str, asyncio.Future[Source | None]] = {}
        # where browsers reach this server, as analytics.js wants it: "host[/path]/v1" and a
        # scheme; without it the request's Host header stands in (development only)
        public = urlsplit(public_url)
        self._public_api: tuple[str, str] | None = (
            (f"{public.netloc}{public.path.rstrip('/')}/v1", public.scheme) if public_url else None
        )
        self._trust_host_header = trust_host_header
        self.rate_limiter = rate_limiter
        self._write_key_rate_per_s = write_key_rate_per_s
        self._write_key_burst = write_key_burst
        if not public_url and not trust_host_header:
            logger.warning(
                "PERSONIFY_PUBLIC_URL is not set: GET /v1/projects/{writeKey}/settings (the "
                "analytics.js settings) answers 500 missing_public_url until it is"
            )

    async def _resolve(self, write_key: str) -> Source:
        hit, source = self._cached_source(write_key)
        if not hit:
            # one lookup per key at a time: when a cached key expires under load, every
            # concurrent request would otherwise query the database on its own thread
            lookup = self._lookups.get(write_key)
            if lookup is None:
                lookup = asyncio.ensure_future(run_in_threadpool(self._sources.resolve, write_key))
                self._lookups[write_key] = lookup
                lookup.add_done_callback(lambda _: self._lookups.pop(write_key, None))
            source = await asyncio.shield(lookup)
        if source is None:
            raise Unauthorized("unknown or revoked write key", code="invalid_write_key")
        return source

    async def _admit(self, source: Source) -> None:
        """Take one token from the source's bucket, or raise ``RateLimited`` (HTTP 429).

        One per request, not per event: a batch costs what a single event does, because
        batching is what a busy sender is asked to do (and the batch's size has its own
        bound). Taken before anything is appended, so a refused request leaves no event."""
        await enforce(
            self.rate_limiter,
            "wk:" + source.id,
            rate_per_s=self._write_key_rate_per_s,
            burst=self._write_key_burst,
        )

    def _with_cors(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=CORS_HEADERS)
            try:
                response = await handler(request)
            except PersonifyError as error:
                response = self._render_error(error)
            response.headers.update(CORS_HEADERS)
            return response

        return endpoint

    async def _single(self, event_type: str, headers: Headers, receive: Receive) -> bytes:
        """One event (``/v1/track`` …); returns the success body or raises the event's error.

        Written for the common request (one body message, not compressed, the common event
        shape, a cached write key): every ingest request takes this path, so it makes as
        few calls as it can and hands anything else to the general helpers. It counts what
        it answered (``counts``) with a dict update and two tallies."""
        started = _perf_counter()
        source_id = ""
        failure = _INTERNAL_ERROR_CODE
        try:
            _check_content_type(headers.get(b"content-type"))
            limit = self.max_event_bytes
            message = await receive()
            body: bytes = message.get("body", b"")
            if (
                message.get("more_body", False)
                or message["type"] != "http.request"
                or b"content-encoding" in headers
                or len(body) > limit
            ):
                body = await read_body(headers, receive, limit, "event_too_large", message)
            raw = _decode_shaped(body, decode_wire_event, MAX_DEPTH)
            write_key = _write_key(headers, raw)
            hit, source = self._cached_source(write_key)
            if not hit or source is None:
                source = await self._resolve(write_key)
            source_id = source.id
            if self.rate_limiter is not None:
                await self._admit(source)
            record = self._collector.common_record(source, raw, event_type)
            if record is not None:
                self._ticks = ticks = self._ticks + 1
                if ticks & _APPEND_SAMPLE_MASK:
                    results = await self._append_one(record)
                    done = _perf_counter()
                else:
                    appending = _perf_counter()
                    results = await self._append_one(record)
                    done = _perf_counter()
                    self._appends.observe(done - appending)
                if results and results[0].duplicate:
                    self.counts.took(event_type, source_id, "duplicate", 1)
                    self.counts.answered(event_type, source_id, OK, done - started)
                else:
                    # one request ok and one event accepted, in one update
                    key = (event_type, source_id)
                    self._singles[key] = self._singles.get(key, 0) + 1
                    self._latency[event_type].observe(done - started)
                failure = ""
                return _SUCCESS
            outcome = await self._collector.collect(
                source,
                [raw],
                event_type=event_type,
                check_pii=self._collector.may_carry_pii(body),
                compiled=False,  # common_record has tried it
            )
            _count_outcome(self.counts, event_type, source_id, outcome)
            if outcome.errors:
                # the original error keeps its class (413 for an oversized event) and details
                raise outcome.errors[0]
            failure = OK
            return _SUCCESS
        except PersonifyError as error:
            failure = error.code
            raise
        except ClientDisconnected:
            failure = "client_disconnected"
            raise
        finally:
            if failure:
                self.counts.answered(event_type, source_id, failure, _perf_counter() - started)

    async def _traced_single(self, event_type: str, headers: Headers, receive: Receive) -> bytes:
        from opentelemetry.trace import SpanKind

        assert self._tracer is not None
        with self._tracer.start_as_current_span(
            f"ingest {event_type}", kind=SpanKind.SERVER, attributes={_ROUTE: event_type}
        ):
            return await self._single(event_type, headers, receive)

    async def _traced_batch(self, headers: Headers, receive: Receive, route: str) -> bytes:
        from opentelemetry.trace import SpanKind

        assert self._tracer is not None
        with self._tracer.start_as_current_span(
            f"ingest {route}", kind=SpanKind.SERVER, attributes={_ROUTE: route}
        ):
            return await self._counted_batch(headers, receive, route)

    async def _counted_batch(self, headers: Headers, receive: Receive, route: str) -> bytes:
        """A batch (``/v1/batch``, ``/v1/import``): bad events are dead-lettered, not fatal.
        ``route`` names the path in the counts (``batch`` or ``import``)."""
        started = _perf_counter()
        seen = _Seen()
        answer = _INTERNAL_ERROR_CODE
        try:
            body = await self._batch(headers, receive, route, seen)
            answer = OK
            return body
        except PersonifyError as error:
            answer = error.code
            raise
        except ClientDisconnected:
            answer = "client_disconnected"
            raise
        finally:
            self.counts.answered(route, seen.source_id, answer, _perf_counter() - started)

    async def _batch(self, headers: Headers, receive: Receive, route: str, seen: _Seen) -> bytes:
        _check_content_type(headers.get(b"content-type"))
        body = await read_body(headers, receive, self.max_batch_bytes, "batch_too_large")
        try:
            # the events sit two levels down: the body, then its batch array
            raw = _decode_shaped(body, decode_wire_batch, MAX_DEPTH + _BATCH_LEVELS)
        except ValidationError as error:
            if error.code not in _EVENT_LEVEL_CODES:
                raise
            # a number or nesting problem is the event's own: refuse it, keep the others
            envelope, events = decode_batch_events(body)
            return await self._collect_batch(headers, envelope, events, route, seen, compiled=False)
        if isinstance(raw, WireBatch):
            write_key = _write_key(headers, raw)
            source = await self._resolve(write_key)
            seen.source_id = source.id
            await self._admit(source)
            outcome = await self._collector.collect(
                source,
                raw.batch,
                defaults=None if raw.sentAt is UNSET else {"sentAt": raw.sentAt},
                check_pii=self._collector.may_carry_pii(body),
            )
            _count_outcome(self.counts, route, source.id, outcome)
            return _batch_answer(outcome)
        if not isinstance(raw, dict) or not isinstance(raw.get("batch"), list):
            raise ValidationError(
                'a batch body is a JSON object with a "batch" array', code="invalid_batch"
            )
        return await self._collect_batch(headers, raw, raw["batch"], route, seen)

    async def _collect_batch(
        self,
        headers: Headers,
        envelope: dict[str, Any],
        events: list[Any],
        route: str,
        seen: _Seen,
        *,
        compiled: bool = True,
    ) -> bytes:
        """A batch decoded as plain JSON: the envelope's fields are the events' defaults."""
        write_key = _write_key(headers, envelope)
        source = await self._resolve(write_key)
        seen.source_id = source.id
        await self._admit(source)
        defaults: dict[str, Any] = {
            k: envelope[k] for k in ("context", "integrations", "sentAt") if k in envelope
        }
        outcome = await self._collector.collect(
            source, events, defaults=defaults, compiled=compiled
        )
        _count_outcome(self.counts, route, source.id, outcome)
        return _batch_answer(outcome)

    async def _project_settings(self, request: Request) -> Response:
        """What analytics.js fetches from its CDN, pointing it back at this server.

        The address is ``PERSONIFY_PUBLIC_URL``'s: the Host header is the client's to choose,
        and a cache in front could hand a forged one to every browser. Outside production an
        unset URL falls back to the Host header, so a development server works as it is."""
        write_key = request.path_params["write_key"]
        await self._resolve(write_key)
        if self._public_api is not None:
            api_host, protocol = self._public_api
        elif self._trust_host_header:
            host = request.headers.get("host", f"{request.url.hostname}:{request.url.port}")
            api_host, protocol = f"{host}/v1", request.url.scheme
        else:
            raise ConfigurationError(
                "set PERSONIFY_PUBLIC_URL (such as https://collect.example.com) to serve the "
                "analytics.js settings in production",
                code="missing_public_url",
            )
        return json_response(
            {
                "integrations": {
                    "Segment.io": {
                        "apiKey": write_key,
                        "apiHost": api_host,
                        "protocol": protocol,
                    }
                },
                "metrics": {"host": api_host, "sampleRate": _METRICS_SAMPLE_RATE},
                "plan": {"track": {"__default": {"enabled": True}}},
                "edgeFunction": {},
                "analyticsNextEnabled": True,
            }
        )

    async def _tracker(self, request: Request) -> Response:
        if self._tracker_js is None:
            self._tracker_js = (
                resources.files("personify.ingest").joinpath("personify.js").read_bytes()
            )
        return Response(
            self._tracker_js,
            media_type="application/javascript",
            headers={"cache-control": "public, max-age=300"},
        )

    def routes(self) -> list[BaseRoute]:
        """The GET routes of the collector (its POST routes live in ``IngestFastPath``)."""
        return [
            Route(
                "/v1/projects/{write_key}/settings",
                self._with_cors(self._project_settings),
                methods=["GET", "OPTIONS"],
            ),
            Route("/personify.js", self._tracker, methods=["GET"]),
        ]
