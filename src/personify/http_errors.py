"""The one place where errors become HTTP: status codes and the JSON error body.

Every error answer is ``{"error": {"code": "...", "message": "...", "details": ...}}``. On the
collector's routes the answer also repeats ``code`` and ``message`` at the top level (see
``collector_error_body``).

No web framework here: the collector's raw ASGI fast path (``personify.ingest``) and the API
(``personify.api``, which wraps these bodies in its framework's responses) render through
the same functions, so both answer alike.
"""

from __future__ import annotations

import msgspec

from personify import errors

_STATUS: list[tuple[type[errors.PersonifyError], int]] = [
    (errors.PayloadTooLarge, 413),
    (errors.InvalidDefinition, 422),
    (errors.ValidationError, 400),
    (errors.UnsupportedMediaType, 415),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.RateLimited, 429),
    (errors.BackendUnavailable, 503),
    (errors.ConfigurationError, 500),
]

# the message of every 500: what went wrong is in the log, never in the answer
INTERNAL_ERROR_MESSAGE = "an unexpected error occurred; it has been logged"


def status_for(error: errors.PersonifyError) -> int:
    """The HTTP status of a Personify error."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_body(code: str, message: str, details: object = None) -> bytes:
    """The JSON error document."""
    return msgspec.json.encode({"error": {"code": code, "message": message, "details": details}})


def collector_error_body(code: str, message: str, details: object = None) -> bytes:
    """The JSON error document of a collector route: the one shape, plus ``code`` and
    ``message`` at the top level.

    Segment's and RudderStack's server libraries read those two at the top level of an error
    answer; RudderStack's fails with ``KeyError`` without them and then retries the request,
    so a permanent error (a revoked write key) would be sent again and again."""
    return msgspec.json.encode(
        {
            "error": {"code": code, "message": message, "details": details},
            "code": code,
            "message": message,
        }
    )


def internal_error_body() -> bytes:
    """The body of a 500: a bug, logged with its traceback; no internals in the answer."""
    return error_body("internal_error", INTERNAL_ERROR_MESSAGE)


def error_parts(error: errors.PersonifyError) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and extra headers of a Personify error (503s carry ``Retry-After``;
    429s ``Retry-After`` and the ``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` fields of
    the IETF RateLimit header draft, each in whole requests or seconds).

    Shared by Starlette's handlers and the raw ASGI ingest path, so both answer alike.
    """
    headers = {}
    if isinstance(error, errors.BackendUnavailable):
        headers["retry-after"] = str(error.retry_after_s)
    elif isinstance(error, errors.RateLimited):
        headers["retry-after"] = str(error.retry_after_s)
        headers["ratelimit-limit"] = str(error.limit)
        headers["ratelimit-remaining"] = str(error.remaining)
        headers["ratelimit-reset"] = str(error.reset_s)
    return status_for(error), error_body(error.code, error.message, error.details), headers


def collector_error_parts(error: errors.PersonifyError) -> tuple[int, bytes, dict[str, str]]:
    """``error_parts`` with the collector's body (``collector_error_body``)."""
    status, _, headers = error_parts(error)
    return status, collector_error_body(error.code, error.message, error.details), headers
