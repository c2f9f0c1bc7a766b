"""The one place where errors become HTTP: status codes and the JSON error body.

Every error answer is ``{"error": {"code": "...", "message": "...", "details": ...}}``.
"""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from personify import errors

logger = logging.getLogger("personify.api")

_STATUS: list[tuple[type[errors.PersonifyError], int]] = [
    (errors.PayloadTooLarge, 413),
    (errors.ValidationError, 400),
    (errors.UnsupportedMediaType, 415),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.BackendUnavailable, 503),
    (errors.ConfigurationError, 500),
]

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def status_for(error: errors.PersonifyError) -> int:
    """The HTTP status of a Personify error."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_body(code: str, message: str, details: object = None) -> bytes:
    """The JSON error document."""
    return msgspec.json.encode({"error": {"code": code, "message": message, "details": details}})


def internal_error_body() -> bytes:
    """The body of a 500: a bug, logged with its traceback; no internals in the answer."""
    return error_body("internal_error", "an unexpected error occurred; it has been logged")


def error_parts(error: errors.PersonifyError) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and extra headers of a Personify error (503s carry ``Retry-After``).

    Shared by Starlette's handlers and the raw ASGI ingest path, so both answer alike.
    """
    headers = {}
    if isinstance(error, errors.BackendUnavailable):
        headers["retry-after"] = str(error.retry_after_s)
    return status_for(error), error_body(error.code, error.message, error.details), headers


def render_error(error: errors.PersonifyError) -> Response:
    """The response for a Personify error."""
    status, body, headers = error_parts(error)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def personify_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette handler for ``PersonifyError``."""
    assert isinstance(exc, errors.PersonifyError)
    if isinstance(exc, errors.BackendUnavailable | errors.ConfigurationError):
        logger.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
    return render_error(exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, in our JSON shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return Response(
        error_body(code, str(exc.detail)),
        status_code=exc.status_code,
        media_type="application/json",
        headers=exc.headers,
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    """A bug: log it with its traceback, answer a JSON 500 without internals."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(
        internal_error_body(),
        status_code=500,
        media_type="application/json",
    )
