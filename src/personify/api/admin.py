"""Admin routes: everything that is not ingest needs ``Authorization: Bearer <api key>``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from personify.api.services import Services
from personify.auth.keys import ApiKey
from personify.errors import Forbidden, Unauthorized, ValidationError
from personify.ingest.asgi import UnavailableLog
from personify.ingest.routes import json_response

Handler = Callable[[Request], Awaitable[Response]]
# longer than any integer a bounded parameter takes (2**62 has 19 digits): refused before int()
_MAX_INT_CHARS = 20
# ids are at most 512 characters at ingest; names (groups, stages) are short
MAX_ID_CHARS = 512
_MAX_NAME_CHARS = 200


async def authenticate(services: Services, request: Request, *, write: bool = False) -> ApiKey:
    """The API key behind the request's Bearer token; ``write`` needs the admin role."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer " or not header[7:].strip():
        raise Unauthorized(
            "admin endpoints need Authorization: Bearer <api key> (create one with "
            "`personify keys create NAME`)",
            code="missing_api_key",
        )
    key = await run_in_threadpool(services.api_keys.resolve, header[7:].strip())
    if key is None:
        raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
    if write and key.role != "admin":
        raise Forbidden(f"this needs the admin role; the key has {key.role!r}")
    return key


def invalid_parameter(name: str, message: str) -> ValidationError:
    """The 400 for a bad query or path parameter: it names the parameter, never its value."""
    return ValidationError(message, code="invalid_parameter", details={"parameter": name})


def int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter within bounds, or a 400 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if len(raw) > _MAX_INT_CHARS:
        raise invalid_parameter(name, f"{name} must be an integer between {low} and {high}")
    try:
        value = int(raw)
    except ValueError as exc:
        raise invalid_parameter(name, f"{name} must be an integer") from exc
    if not low <= value <= high:
        raise invalid_parameter(name, f"{name} must be between {low} and {high}")
    return value


def text_param(request: Request, name: str, *, max_chars: int = _MAX_NAME_CHARS) -> str | None:
    """A text query parameter of at most ``max_chars`` without NUL, or a 400."""
    raw = request.query_params.get(name)
    if raw is not None:
        check_text(name, raw, max_chars=max_chars)
    return raw


def path_id(request: Request, name: str = "id") -> str:
    """A path parameter that names something by id (such as a userId), or a 400."""
    value: str = request.path_params[name]
    check_text(name, value, max_chars=MAX_ID_CHARS)
    return value


def check_text(name: str, value: str, *, max_chars: int) -> None:
    """Refuse (400) a parameter over ``max_chars`` or holding NUL: PostgreSQL cannot compare
    text with NUL in it, and ingest refuses ids with one."""
    if len(value) > max_chars:
        raise invalid_parameter(name, f"{name} is longer than {max_chars} characters")
    if "\x00" in value:
        raise invalid_parameter(name, f"{name} contains a NUL character")


def admin_routes(services: Services, unavailable: UnavailableLog | None = None) -> list[BaseRoute]:
    """The admin endpoints of the foundation; ``unavailable`` counts the collector's 503s."""
    unavailable = unavailable or UnavailableLog()

    async def failed_events(request: Request) -> Response:
        await authenticate(services, request)
        limit = int_param(request, "limit", 100, low=1, high=1000)
        after = int_param(request, "after", 0, low=0, high=2**62)
        stage = text_param(request, "stage")
        items = await run_in_threadpool(
            services.failed_events.list, stage=stage, after_id=after, limit=limit
        )
        body = {
            "data": [item.to_dict() for item in items],
            "next": items[-1].id if len(items) == limit else None,
        }
        return json_response(body)

    async def log_status(request: Request) -> Response:
        await authenticate(services, request)
        group = text_param(request, "group") or "worker"
        return json_response({"group": group, "lag": await services.log.lag(group)})

    async def ingest_status(request: Request) -> Response:
        await authenticate(services, request)
        return json_response({"unavailable": unavailable.to_dict()})

    return [
        Route("/v1/failed-events", failed_events, methods=["GET"]),
        Route("/v1/log", log_status, methods=["GET"]),
        Route("/v1/ingest/status", ingest_status, methods=["GET"]),
    ]
