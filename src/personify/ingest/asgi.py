"""The collector's POST endpoints as a thin ASGI layer in front of the whole app.

Ingest is the hottest path of the product: every page view of every customer site lands
here. Going through Starlette's middleware, routing, request and response objects cost more
CPU than everything the collector itself does per request, so the POST ingest paths are
answered here from the raw ASGI scope, before Starlette sees them; every other request (and
the lifespan) passes through untouched.

The signed webhooks in (``POST /v1/webhooks/{source}``, ``personify.ingest.webhooks``) are
served here too, but only for a single path segment that is not all digits: the admin API's
``/v1/webhooks/{webhook_id:int}…`` routes, and every other method, stay Litestar's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from personify.errors import BackendUnavailable, PayloadTooLarge, PersonifyError
from personify.events.normalize import EVENT_TYPES, SHORT_TYPES
from personify.http_errors import (
    INTERNAL_ERROR_MESSAGE,
    collector_error_body,
    collector_error_parts,
    error_body,
    error_parts,
)
from personify.ingest.routes import (
    CORS_HEADERS,
    ClientDisconnected,
    CollectorRoutes,
    Headers,
    request_headers,
)
from personify.ingest.webhooks import WebhookReceiver

logger = logging.getLogger("personify.ingest")

_SINGLE_PATHS = {f"/v1/{name}": name for name in EVENT_TYPES} | {
    f"/v1/{short}": name for short, name in SHORT_TYPES.items()
}
# each batch path with the route its requests are counted under (``personify.ingest.counts``)
_BATCH_PATHS = {"/v1/batch": "batch", "/v1/import": "import", "/v1/b": "batch"}
# analytics.js reports its own delivery metrics here; there is nothing to keep, so the body
# is read (up to the single-event limit) and dropped
_METRICS_PATH = "/v1/m"
# a client refused with 503 retries, so under backpressure 503s come by the thousand a second
_UNAVAILABLE_LOG_INTERVAL_S = 10.0
_SUCCESS = b'{"success":true}'
_INTERNAL_ERROR = collector_error_body("internal_error", INTERNAL_ERROR_MESSAGE)
# a preflight answer carries every CORS header; an actual answer needs only the origin one
# (Allow-Methods, Allow-Headers and Max-Age mean something on preflight answers alone), and
# each header costs the server's validation on every answer
_PREFLIGHT = [(k.encode(), v.encode()) for k, v in CORS_HEADERS.items()]
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", CORS_HEADERS["access-control-allow-origin"].encode()),
]
_SUCCESS_HEADERS = [*_JSON_HEADERS, (b"content-length", str(len(_SUCCESS)).encode())]
_WEBHOOKS_PREFIX = "/v1/webhooks/"
_WEBHOOK_METHODS = frozenset({"POST", "OPTIONS"})
# senders are servers, not browsers: no CORS headers on these answers
_WEBHOOK_HEADERS = [(b"content-type", b"application/json")]
_WEBHOOK_PREFLIGHT = [(b"allow", b"POST, OPTIONS")]
_WEBHOOK_INTERNAL_ERROR = error_body("internal_error", INTERNAL_ERROR_MESSAGE)


class UnavailableLog:
    """Counts the collector's 503 answers by code, and logs at most one line per code for
    every ``interval_s``, saying how many it left out since the previous one."""

    def __init__(
        self,
        interval_s: float = _UNAVAILABLE_LOG_INTERVAL_S,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._monotonic = monotonic
        # keyed by our own error codes, a small fixed set
        self.counts: dict[str, int] = {}
        self._next_line: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def record(self, method: str, path: str, error: BackendUnavailable) -> None:
        """Count one 503 answer, and log it unless its code was logged within the interval."""
        code = error.code
        self.counts[code] = self.counts.get(code, 0) + 1
        now = self._monotonic()
        if now < self._next_line.get(code, 0.0):
            self._left_out[code] = self._left_out.get(code, 0) + 1
            return
        self._next_line[code] = now + self._interval_s
        logger.warning(
            "%s %s -> 503 %s: %s (%d more 503 %s not logged since the last line; at most "
            "one line per %g s)",
            method,
            path,
            code,
            error.message,
            self._left_out.pop(code, 0),
            code,
            self._interval_s,
        )

    def to_dict(self) -> dict[str, Any]:
        """The counts, as the ingest status shows them."""
        return {"total": sum(self.counts.values()), "byCode": dict(self.counts)}


def webhook_source(path: str) -> str | None:
    """The source of a signed-webhook path (``/v1/webhooks/<one segment, not all digits>``),
    else ``None``: all digits name an admin API webhook (``/v1/webhooks/{webhook_id:int}``)."""
    if not path.startswith(_WEBHOOKS_PREFIX):
        return None
    segment = path[len(_WEBHOOKS_PREFIX) :]
    if not segment or "/" in segment or (segment.isascii() and segment.isdigit()):
        return None
    return segment


class IngestFastPath:
    """Serves POST/OPTIONS on the ingest paths (and, given ``webhooks``, on the signed
    webhook paths); hands every other request to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        routes: CollectorRoutes,
        unavailable: UnavailableLog | None = None,
        *,
        webhooks: WebhookReceiver | None = None,
    ) -> None:
        self.app = app
        self._routes = routes
        self.unavailable = unavailable or UnavailableLog()
        self.webhooks = webhooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        event_type = _SINGLE_PATHS.get(path)
        if event_type is None and path not in _BATCH_PATHS and path != _METRICS_PATH:
            # one prefix check for the requests that are not ingest's
            if path.startswith(_WEBHOOKS_PREFIX) and self.webhooks is not None:
                source = webhook_source(path)
                if source is not None and scope["method"] in _WEBHOOK_METHODS:
                    await self._webhook(self.webhooks, source, scope, receive, send)
                    return
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, b"", _PREFLIGHT)
            return
        if method != "POST":
            body = collector_error_body(
                "method_not_allowed", f"{method} is not allowed on {path}; use POST"
            )
            await _respond(send, 405, body, [*_JSON_HEADERS, (b"allow", b"POST, OPTIONS")])
            return
        headers = request_headers(scope["headers"])
        try:
            if event_type is not None:
                body = await self._routes.single(event_type, headers, receive)
            elif path == _METRICS_PATH:
                await _discard_body(headers, receive, self._routes.max_event_bytes)
                body = _SUCCESS
            else:
                body = await self._routes.batch(headers, receive, _BATCH_PATHS[path])
        except PersonifyError as error:
            if isinstance(error, BackendUnavailable):
                self.unavailable.record(method, path, error)
            status, body, extra = collector_error_parts(error)
            answer = [*_JSON_HEADERS, *((k.encode(), v.encode()) for k, v in extra.items())]
            await _respond(send, status, body, answer)
            return
        except ClientDisconnected:
            return
        except Exception:
            logger.exception("unhandled error on %s %s", method, path)
            await _respond(send, 500, _INTERNAL_ERROR, _JSON_HEADERS)
            return
        if body == _SUCCESS:
            await send({"type": "http.response.start", "status": 200, "headers": _SUCCESS_HEADERS})
            await send({"type": "http.response.body", "body": _SUCCESS})
            return
        await _respond(send, 200, body, _JSON_HEADERS)

    async def _webhook(
        self, webhooks: WebhookReceiver, source: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """One signed webhook: the receiver's answer, or its error in the one error shape."""
        method = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, b"", _WEBHOOK_PREFLIGHT)
            return
        try:
            body = await webhooks.handle(source, request_headers(scope["headers"]), receive)
        except PersonifyError as error:
            if isinstance(error, BackendUnavailable):
                self.unavailable.record(method, scope["path"], error)
            status, body, extra = error_parts(error)
            answer = [*_WEBHOOK_HEADERS, *((k.encode(), v.encode()) for k, v in extra.items())]
            await _respond(send, status, body, answer)
            return
        except ClientDisconnected:
            return
        except Exception:
            logger.exception("unhandled error on %s %s", method, scope["path"])
            await _respond(send, 500, _WEBHOOK_INTERNAL_ERROR, _WEBHOOK_HEADERS)
            return
        await _respond(send, 200, body, _WEBHOOK_HEADERS)


async def _discard_body(headers: Headers, receive: Receive, limit: int) -> None:
    """Read a body the collector does not keep, refusing it (413) past ``limit`` bytes."""
    declared = headers.get(b"content-length", b"").lstrip(b"0")
    # compared as digits first: a header of thousands of digits is no integer to convert
    if declared.isdigit() and (len(declared) > len(str(limit)) or int(declared) > limit):
        raise _metrics_too_large(limit)
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        size += len(message.get("body", b""))
        if size > limit:
            raise _metrics_too_large(limit)
        if not message.get("more_body", False):
            return


def _metrics_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is over the {limit}-byte limit",
        code="metrics_too_large",
        details={"limit": limit},
    )


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
