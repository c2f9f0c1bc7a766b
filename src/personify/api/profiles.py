"""Profile and worker routes (Bearer API key): a profile by any id, its history, its events."""

from __future__ import annotations

from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from personify.api.admin import authenticate, int_param, invalid_parameter, path_id, text_param
from personify.api.services import Services
from personify.errors import ValidationError
from personify.events.normalize import parse_timestamp
from personify.ingest.routes import json_response
from personify.profiles.repository import MAX_CURSOR_CHARS, parse_cursor
from personify.worker.worker import heartbeat_horizon

# an ISO-8601 time is some 35 characters, with its fraction and offset
_MAX_TIME_CHARS = 64


def _as_of(request: Request) -> datetime | None:
    raw = text_param(request, "as_of", max_chars=_MAX_TIME_CHARS)
    if raw is None:
        return None
    try:
        return parse_timestamp("as_of", raw)
    except ValidationError as exc:
        raise ValidationError(
            "as_of must be an ISO-8601 time such as 2024-05-01T12:00:00Z",
            code="invalid_parameter",
            details={"parameter": "as_of"},
        ) from exc


def _cursor(request: Request) -> str | None:
    raw = text_param(request, "cursor", max_chars=MAX_CURSOR_CHARS)
    if raw and parse_cursor(raw) is None:
        raise invalid_parameter("cursor", "cursor is not one this API returned")
    return raw


def profile_routes(services: Services) -> list[BaseRoute]:
    """``/v1/profiles/{id}``, ``…/history``, ``…/events`` and ``/v1/worker/status``."""

    async def profile(request: Request) -> Response:
        await authenticate(services, request)
        document = await services.profiles.get(path_id(request), as_of=_as_of(request))
        return json_response(document)

    async def history(request: Request) -> Response:
        await authenticate(services, request)
        limit = int_param(request, "limit", 50, low=1, high=500)
        before = int_param(request, "before", 0, low=0, high=2**31)
        body = await services.profiles.history(path_id(request), before=before or None, limit=limit)
        return json_response(body)

    async def events(request: Request) -> Response:
        await authenticate(services, request)
        limit = int_param(request, "limit", 50, low=1, high=500)
        body = await services.profiles.timeline(
            path_id(request), cursor=_cursor(request), limit=limit
        )
        return json_response(body)

    async def worker_status(request: Request) -> Response:
        await authenticate(services, request)
        group = services.worker.group
        since = heartbeat_horizon(services.clock.now(), services.settings.worker_heartbeat_s)
        beats = await run_in_threadpool(services.heartbeats.recent, since=since, group=group)
        return json_response(
            {
                "group": group,
                "lag": await services.log.lag(group),
                "inProcess": services.worker.status() if services.worker.running else None,
                # this process's background stages: state, restarts, last failure
                "stages": [stage.to_dict() for stage in services.stages()],
                "workers": [beat.to_dict() for beat in beats],
                "cache": {
                    "hits": services.profiles.stats.hits,
                    "misses": services.profiles.stats.misses,
                    "fills": services.profiles.stats.fills,
                    "invalidations": services.profiles.stats.invalidations,
                },
            }
        )

    return [
        Route("/v1/profiles/{id}", profile, methods=["GET"]),
        Route("/v1/profiles/{id}/history", history, methods=["GET"]),
        Route("/v1/profiles/{id}/events", events, methods=["GET"]),
        Route("/v1/worker/status", worker_status, methods=["GET"]),
    ]
