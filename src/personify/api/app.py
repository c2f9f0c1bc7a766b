"""The ASGI app factory: builds the services from settings and mounts every router."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from personify.api import errors as api_errors
from personify.api.admin import admin_routes
from personify.api.profiles import profile_routes
from personify.api.services import Services
from personify.errors import BackendUnavailable, PersonifyError
from personify.ingest.asgi import IngestFastPath, UnavailableLog
from personify.ingest.routes import CollectorRoutes, json_response
from personify.settings import Settings

_GC_YOUNG_THRESHOLD = 20_000
# glibc's mallopt parameters, and what the server sets them to (see keep_freed_memory)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
_TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; whether it could (glibc only).

    A group commit builds buffers of a few MB (the chunk's packed columns, and SQLite's copy
    of them) and frees them at once. By default glibc serves such sizes with a fresh mmap and
    gives the pages back on free, so every commit paid a page fault per 4 KB written: about
    450 ns per record of a 2,700-record chunk, eight times the packing itself. Raised
    thresholds keep them on the heap (up to 256 MB of free heap is kept before trimming).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )


def create_app(
    settings: Settings | None = None, *, services: Services | None = None
) -> IngestFastPath:
    """The Personify ASGI app. Settings are read from the environment when not given.

    The collector's POST routes are served by ``IngestFastPath`` before Starlette sees the
    request; the Starlette app behind it (``.app``) serves everything else and the lifespan.
    """
    settings = settings or (services.settings if services else Settings())
    services = services or Services.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        # Everything built at start (modules, settings, connections) lives as long as the
        # process; frozen, the cyclic collector stops rescanning it every few requests.
        gc.freeze()
        # A request allocates a few dozen tracked objects that die with it; at Python's default
        # of 700 allocations the youngest generation was scanned every few requests, about 4 %
        # of a single-event request's instructions. Every 20,000 it costs a few MB at most.
        gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        keep_freed_memory()
        try:
            yield
        finally:
            await services.close()

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(request: Request) -> Response:
        # liveness stays /healthz: a stage that died is restarted in-process, so the process
        # is alive, but not ready while a stage waits to restart
        stages = services.stages()
        down = [stage for stage in stages if stage.is_down]
        if down:
            names = ", ".join(stage.name for stage in down)
            error = BackendUnavailable(
                f"stage {names} is down and restarting; see GET /v1/worker/status",
                code="stage_down",
                details={"stages": [stage.summary() for stage in down]},
            )
            return api_errors.render_error(error)
        return json_response({"status": "ready", "stages": [s.summary() for s in stages]})

    collector_routes = CollectorRoutes(
        services.collector,
        services.sources,
        api_errors.render_error,
        max_event_bytes=settings.max_event_bytes,
        max_batch_bytes=settings.max_batch_bytes,
        public_url=settings.public_url,
        trust_host_header=settings.environment != "production",
    )
    # the collector's 503s, counted for GET /v1/ingest/status
    unavailable = UnavailableLog()
    app = Starlette(
        routes=[
            Route("/healthz", health, methods=["GET"]),
            Route("/readyz", ready, methods=["GET"]),
            *collector_routes.routes(),
            *admin_routes(services, unavailable),
            *profile_routes(services),
        ],
        exception_handlers={
            PersonifyError: api_errors.personify_error_handler,
            HTTPException: api_errors.http_error_handler,
            Exception: api_errors.unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.services = services
    return IngestFastPath(app, collector_routes, unavailable)
