"""Errors as the API framework's responses: Litestar's exception handlers and the collector's
Starlette routes, both rendering through ``personify.http_errors`` (the statuses and the one
JSON error shape)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar import Request as LitestarRequest
from litestar import Response as LitestarResponse
from litestar.exceptions import HTTPException as LitestarHTTPException
from litestar.exceptions import ValidationException as LitestarValidationException
from starlette.responses import Response

from personify import errors
from personify.http_errors import (
    collector_error_parts,
    error_body,
    error_parts,
    internal_error_body,
)

logger = logging.getLogger("personify.api")

# our codes for the statuses the framework raises itself
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def render_collector_error(error: errors.PersonifyError) -> Response:
    """The response for a Personify error on a collector route."""
    status, body, headers = collector_error_parts(error)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _litestar_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> LitestarResponse[bytes]:
    return LitestarResponse(
        body, status_code=status, media_type="application/json", headers=headers
    )


def personify_error_handler(
    request: LitestarRequest[Any, Any, Any], exc: Exception
) -> LitestarResponse[bytes]:
    """Litestar handler for ``PersonifyError``: the same parts as the ingest fast path's."""
    assert isinstance(exc, errors.PersonifyError)
    if isinstance(exc, errors.BackendUnavailable | errors.ConfigurationError):
        logger.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
    return _litestar_response(*error_parts(exc))


def http_error_handler(
    request: LitestarRequest[Any, Any, Any], exc: Exception
) -> LitestarResponse[bytes]:
    """Litestar's own answers (no route, wrong method, a parameter that fails its type or
    bounds) in our JSON shape; a 5xx among them is answered like any bug."""
    assert isinstance(exc, LitestarHTTPException)
    if exc.status_code >= 500:
        return unexpected_error_handler(request, exc)
    if isinstance(exc, LitestarValidationException):
        # the parameter is named, its value never repeated
        problems = exc.extra if isinstance(exc.extra, list) else []
        first = problems[0] if problems and isinstance(problems[0], dict) else {}
        name = str(first.get("key") or "request")
        reason = str(first.get("message") or "is not valid")
        error = errors.ValidationError(
            f"{name}: {reason}", code="invalid_parameter", details={"parameter": name}
        )
        return _litestar_response(*error_parts(error))
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
    return _litestar_response(exc.status_code, error_body(code, exc.detail), headers)


def unexpected_error_handler(
    request: LitestarRequest[Any, Any, Any], exc: Exception
) -> LitestarResponse[bytes]:
    """A bug: log it with its traceback, answer a JSON 500 without internals."""
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _litestar_response(500, internal_error_body())
