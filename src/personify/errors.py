"""The exceptions Personify raises, in one tree.

    PersonifyError                 base of everything below; carries a machine-readable ``code``
    ├── ValidationError            the input breaks the contract; fix the request (HTTP 400)
    │   ├── PayloadTooLarge        an event or a batch exceeds its size limit (HTTP 413)
    │   └── InvalidDefinition      a well-formed definition breaks its own rules (HTTP 422)
    ├── UnsupportedMediaType       the body's Content-Type is not JSON or text/plain (HTTP 415)
    ├── Unauthorized               no credentials, or an unknown/revoked key (HTTP 401)
    ├── Forbidden                  valid credentials without the needed role (HTTP 403)
    ├── NotFound                   the thing asked for does not exist (HTTP 404)
    ├── Conflict                   the thing exists already or changed meanwhile (HTTP 409)
    ├── RateLimited                the key sent more than its rate allows; wait and retry (HTTP 429)
    ├── BackendUnavailable         an engine is down, full or over its bound; retry later (HTTP 503)
    └── ConfigurationError         settings are missing or contradictory; fix them and restart

HTTP status codes are assigned in exactly one place: ``personify.http_errors``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "Conflict",
    "Forbidden",
    "InvalidDefinition",
    "NotFound",
    "PayloadTooLarge",
    "PersonifyError",
    "RateLimited",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationError",
]


class PersonifyError(Exception):
    """Base of every Personify error: a ``code`` for machines and a message for people."""

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": self.details}


class ValidationError(PersonifyError):
    """The input breaks the contract. The message says which field and why."""

    default_code = "invalid_input"


class InvalidDefinition(ValidationError):
    """A definition (a segment's condition, …) that parses but breaks its rules: an unknown
    operator, a wrong type, a window that cannot be read, a loop between segments. The
    details list every problem with a JSON pointer to where it is."""

    default_code = "invalid_definition"


class PayloadTooLarge(ValidationError):
    """An event is over 32 KB or a batch over 500 KB: split it and send again."""

    default_code = "payload_too_large"


class UnsupportedMediaType(PersonifyError):
    """Send ``application/json`` (or ``text/plain`` holding JSON, as browser libraries do)."""

    default_code = "unsupported_media_type"


class Unauthorized(PersonifyError):
    """Credentials are missing, unknown or revoked: check the write key or API key."""

    default_code = "unauthorized"


class Forbidden(PersonifyError):
    """The key is valid but lacks the role this action needs."""

    default_code = "forbidden"


class NotFound(PersonifyError):
    """The resource does not exist (or is not visible to this key)."""

    default_code = "not_found"


class Conflict(PersonifyError):
    """The resource exists already, or changed since it was read."""

    default_code = "conflict"


class RateLimited(PersonifyError):
    """The key (a write key or an API key) is over its rate limit: wait ``retry_after_s``
    seconds, then send fewer requests (batch events into ``/v1/batch``) or have the operator
    raise ``PERSONIFY_RATE_LIMIT_WRITE_KEY_PER_S`` / ``PERSONIFY_RATE_LIMIT_API_KEY_PER_S``.

    ``limit`` is the bucket's size (the burst), ``remaining`` the whole requests left in it,
    ``reset_s`` the seconds until it is full again; all in whole numbers, as the
    ``RateLimit-*`` headers carry them.
    """

    default_code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        retry_after_s: int = 1,
        limit: int = 0,
        remaining: int = 0,
        reset_s: int = 1,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after_s = retry_after_s
        self.limit = limit
        self.remaining = remaining
        self.reset_s = reset_s


class BackendUnavailable(PersonifyError):
    """An engine (database, log, cache) is unreachable, full or over its bound: retry later.

    ``retry_after_s`` hints how long a client should wait before retrying.
    """

    default_code = "backend_unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        retry_after_s: int = 1,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after_s = retry_after_s


class ConfigurationError(PersonifyError):
    """Settings are missing or contradictory; the message names the setting to fix."""

    default_code = "configuration_error"
