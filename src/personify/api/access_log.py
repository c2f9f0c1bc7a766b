"""One log line per HTTP request, with a request id, and nothing a person could be found by.

``AccessLog`` is a pure ASGI layer around the whole app, the collector's fast path included
(it answers the ingest routes before Litestar sees them, so a Litestar middleware would
miss most of the traffic). Each request gets an id: a sane incoming ``X-Request-ID`` (from
a load balancer or a client's retry) is kept, anything else is replaced by a fresh one.
The id is echoed in the response's ``X-Request-ID`` header and is the ``request_id`` of
every log record emitted while the request is handled (``current_request_id``).

The line (logger ``personify.access``, INFO; WARNING for 5xx) carries the request id, the
method, the route *template* (``/v1/profiles/{profile_id}``, never the raw path: paths hold
user ids, which are personal data), the status and the duration in milliseconds. It never
carries the query string, a header (``Authorization`` least of all), the client's address
or anything of the body. A request that matches no route is logged as ``<unmatched>``; one
that ends without an answer as status 499 (the client went away) or 500 (the app raised).

What the line looks like on disk is the process's choice (``personify serve`` configures
JSON or text, ``personify.cli.logs``); the app itself configures no handler.

Cost: a context variable, a wrapper around ``send`` and, when INFO is enabled for the
logger, one log record per request (a batch request carries 100 events); bench/README.md
has the figures. ``PERSONIFY_LOG_LEVEL=warning`` keeps only the 5xx lines.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any, cast

from litestar.exceptions import HTTPException
from litestar.utils import normalize_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from litestar import Litestar

    from personify.ingest.asgi import IngestFastPath

__all__ = [
    "REQUEST_ID_HEADER",
    "UNMATCHED",
    "AccessLog",
    "current_request_id",
    "logged",
]

logger = logging.getLogger("personify.access")

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "<unmatched>"
_HEADER = REQUEST_ID_HEADER.lower().encode()
# what we take from a client: an opaque token of URL-safe characters (a UUID, a load
# balancer's trace id); no spaces, quotes or "@", so no e-mail address or log injection
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{8,128}")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "personify_request_id", default=None
)


def current_request_id() -> str | None:
    """The id of the HTTP request being handled in this context, if any."""
    return _request_id.get()


def _new_request_id() -> str:
    # 96 random bits: unique enough to find one request among years of logs
    return os.urandom(12).hex()


def _incoming_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _HEADER:
            return value.decode("ascii") if _SANE_ID.fullmatch(value) else None
    return None


class AccessLog:
    """Logs every HTTP request ``app`` answers; ``router`` names the route of the requests
    answered before Litestar routed them (the collector's fast path)."""

    def __init__(self, app: ASGIApp, *, router: Litestar | None = None) -> None:
        self.app = app
        self._router = router

    def route_of(self, scope: Scope) -> str:
        """The route template of a handled request, or ``UNMATCHED``."""
        template: str | None = scope.get("path_template")
        if template:
            return template
        if self._router is not None:
            try:
                # the collector's POST routes are in Litestar's table too (for the
                # OpenAPI document), so it names them; the lookup is cached per path
                routed = self._router.asgi_router.handle_routing(
                    path=normalize_path(scope["path"]), method=scope["method"]
                )
            except HTTPException:
                return UNMATCHED
            return routed[4] or UNMATCHED
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope["headers"]) or _new_request_id()
        header = (_HEADER, request_id.encode("ascii"))
        # 0 until the app answers: a request that ends without an answer is logged 499 (the
        # client went away, nginx's code for it), or 500 when the app raised
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # a new dict and list: the app may send module-level constants
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500
            raise
        finally:
            _request_id.reset(token)
            status = status or 499
            level = logging.WARNING if status >= 500 else logging.INFO
            if logger.isEnabledFor(level):
                fields: dict[str, Any] = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": self.route_of(scope),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
                }
                # the record made directly: Logger.log would walk the stack for the caller's
                # file and line (a third of the line's cost), which say nothing here
                logger.handle(
                    logger.makeRecord(logger.name, level, "", 0, "request", (), None, extra=fields)
                )


def logged(app: IngestFastPath) -> AccessLog:
    """``app`` (what ``create_app`` returns) inside an ``AccessLog`` that also names the
    fast path's routes."""
    return AccessLog(app, router=cast("Litestar", app.app))
