"""The collector's POST endpoints as a thin ASGI layer in front of the whole app.

Ingest is the hottest path of the product: every page view of every customer site lands
here. Going through Starlette's middleware, routing, request and response objects cost more
CPU than everything the collector itself does per request, so the POST ingest paths are
answered here from the raw ASGI scope, before Starlette sees them; every other request (and
the lifespan) passes through untouched.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from personify.api.errors import error_body, error_parts, internal_error_body
from personify.errors import BackendUnavailable, PersonifyError
from personify.events.normalize import EVENT_TYPES, SHORT_TYPES
from personify.ingest.routes import (
    CORS_HEADERS,
    ClientDisconnected,
    CollectorRoutes,
    request_headers,
)

logger = logging.getLogger("personify.ingest")

_SINGLE_PATHS = {f"/v1/{name}": name for name in EVENT_TYPES} | {
    f"/v1/{short}": name for short, name in SHORT_TYPES.items()
}
_BATCH_PATHS = frozenset({"/v1/batch", "/v1/import", "/v1/b"})
# analytics.js reports its own delivery metrics here; there is nothing to keep
_METRICS_PATH = "/v1/m"
_SUCCESS = b'{"success":true}'
# a preflight answer carries every CORS header; an actual answer needs only the origin one
# (Allow-Methods, Allow-Headers and Max-Age mean something on preflight answers alone), and
# each header costs the server's validation on every answer
_PREFLIGHT = [(k.encode(), v.encode()) for k, v in CORS_HEADERS.items()]
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", CORS_HEADERS["access-control-allow-origin"].encode()),
]
_SUCCESS_HEADERS = [*_JSON_HEADERS, (b"content-length", str(len(_SUCCESS)).encode())]


class IngestFastPath:
    """Serves POST/OPTIONS on the ingest paths; hands every other request to ``app``."""

    def __init__(self, app: ASGIApp, routes: CollectorRoutes) -> None:
        self.app = app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        event_type = _SINGLE_PATHS.get(path)
        if event_type is None and path not in _BATCH_PATHS and path != _METRICS_PATH:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, b"", _PREFLIGHT)
            return
        if method != "POST":
            body = error_body("method_not_allowed", f"{method} is not allowed on {path}; use POST")
            await _respond(send, 405, body, [*_JSON_HEADERS, (b"allow", b"POST, OPTIONS")])
            return
        headers = request_headers(scope["headers"])
        try:
            if event_type is not None:
                body = await self._routes.single(event_type, headers, receive)
            elif path == _METRICS_PATH:
                while (await receive()).get("more_body", False):
                    pass
                body = _SUCCESS
            else:
                body = await self._routes.batch(headers, receive)
        except PersonifyError as error:
            if isinstance(error, BackendUnavailable):
                logger.warning("%s %s -> %s: %s", method, path, error.code, error.message)
            status, body, extra = error_parts(error)
            answer = [*_JSON_HEADERS, *((k.encode(), v.encode()) for k, v in extra.items())]
            await _respond(send, status, body, answer)
            return
        except ClientDisconnected:
            return
        except Exception:
            logger.exception("unhandled error on %s %s", method, path)
            await _respond(send, 500, internal_error_body(), _JSON_HEADERS)
            return
        if body == _SUCCESS:
            await send({"type": "http.response.start", "status": 200, "headers": _SUCCESS_HEADERS})
            await send({"type": "http.response.body", "body": _SUCCESS})
            return
        await _respond(send, 200, body, _JSON_HEADERS)


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
