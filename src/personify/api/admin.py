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
from personify.ingest.routes import json_response

Handler = Callable[[Request], Awaitable[Response]]


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


def int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter within bounds, or a 400 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValidationError(
            f"{name} must be an integer", code="invalid_parameter", details={"parameter": name}
        ) from exc
    if not low <= value <= high:
        raise ValidationError(
            f"{name} must be between {low} and {high}",
            code="invalid_parameter",
            details={"parameter": name},
        )
    return value


def admin_routes(services: Services) -> list[BaseRoute]:
    """The admin endpoints of the foundation."""

    async def failed_events(request: Request) -> Response:
        await authenticate(services, request)
        limit = int_param(request, "limit", 100, low=1, high=1000)
        after = int_param(request, "after", 0, low=0, high=2**62)
        stage = request.query_params.get("stage")
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
        group = request.query_params.get("group", "worker")
        return json_response({"group": group, "lag": await services.log.lag(group)})

    return [
        Route("/v1/failed-events", failed_events, methods=["GET"]),
        Route("/v1/log", log_status, methods=["GET"]),
    ]
