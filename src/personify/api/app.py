"""The ASGI app factory: the Litestar app over one ``Runtime``, with the collector's fast path
in front.

Nothing here tunes the process (garbage collector, allocator): an embedder's or a test's
process is its own. ``personify serve`` and ``personify worker`` do that at start-up
(``personify.cli.tuning``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any, cast

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from starlette.routing import Router as StarletteRouter
from starlette.types import ASGIApp

from personify.api import errors as api_errors
from personify.api.admin import admin_router
from personify.api.audit import AuditMiddleware, audit_router
from personify.api.clusterings import clustering_router
from personify.api.collector import collector_handlers
from personify.api.content import content_router
from personify.api.decide import decide_router
from personify.api.demo_page import demo_shop
from personify.api.experiments import experiments_router
from personify.api.health import health, ready
from personify.api.metrics import PipelineMetrics, metrics_registry, metrics_router
from personify.api.models import model_router
from personify.api.privacy import privacy_handlers
from personify.api.profiles import profile_router
from personify.api.recommend import recommend_router
from personify.api.reference import openapi_config, reference_router
from personify.api.segments import segment_router
from personify.api.sql import sql_router
from personify.api.webhooks import webhook_router
from personify.auth.tokens import TokenVerifier
from personify.errors import PersonifyError
from personify.ingest.asgi import IngestFastPath, UnavailableLog
from personify.ingest.routes import CollectorRoutes
from personify.privacy.suppression import id_hash
from personify.runtime import Runtime
from personify.settings import Settings
from personify.ui.console import console_router


def _dependencies(
    runtime: Runtime, unavailable: UnavailableLog, metrics: PipelineMetrics
) -> dict[str, Provide]:
    """What handlers may ask for by name: the runtime and the ports they use."""

    def value(thing: Any) -> Provide:
        def provide() -> Any:
            return thing

        return Provide(provide, use_cache=True, sync_to_thread=False)

    return {
        "runtime": value(runtime),
        "log": value(runtime.log),
        "profiles": value(runtime.profiles),
        "segments": value(runtime.segments),
        "clusterings": value(runtime.clusterings),
        "models": value(runtime.models),
        "model_monitor": value(runtime.model_monitor),
        "webhooks": value(runtime.webhooks),
        "content": value(runtime.content),
        "decisions": value(runtime.decisions),
        "recommendations": value(runtime.recommendations),
        "experiments": value(runtime.experiments),
        "api_keys": value(runtime.api_keys),
        "sources": value(runtime.sources),
        "audit": value(runtime.audit),
        "prometheus": value(metrics),
        "dead_letters": value(runtime.failed_events),
        "unavailable": value(unavailable),
    }


def create_app(
    settings: Settings | None = None, *, services: Runtime | None = None
) -> IngestFastPath:
    """The Personify ASGI app. Settings are read from the environment when not given.

    ``services`` is a runtime built by the caller (a test, an embedder); without it one is
    built from ``settings``. Either way the app's lifespan starts and closes it. The
    collector's POST routes are served by ``IngestFastPath`` before Litestar sees the
    request; the Litestar app behind it (``.app``) serves everything else and the lifespan.
    """
    settings = settings or (services.settings if services else Settings())
    runtime = services or Runtime.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start()
        # multiprocess mode: this process's counts reach the shared files every second
        metrics.start()
        try:
            yield
        finally:
            await metrics.stop()
            await runtime.close()

    collector_routes = CollectorRoutes(
        runtime.collector,
        runtime.sources,
        api_errors.render_collector_error,
        max_event_bytes=settings.max_event_bytes,
        max_batch_bytes=settings.max_batch_bytes,
        public_url=settings.public_url,
        trust_host_header=settings.environment != "production",
        rate_limiter=runtime.rate_limiter,
        write_key_rate_per_s=settings.rate_limit_write_key_per_s,
        write_key_burst=settings.rate_limit_write_key_burst,
        # an ingest span per request when tracing is on (personify.tracing)
        tracer=runtime.collector.tracer,
    )
    # the collector's 503s, counted for GET /v1/ingest/status
    unavailable = UnavailableLog()
    # GET /metrics: this app's registry over the runtime and the collector's counts
    metrics = metrics_registry(
        runtime, collector_routes.counts, multiprocess_dir=settings.prometheus_multiproc_dir
    )
    app = Litestar(
        route_handlers=[
            health,
            ready,
            admin_router(),
            profile_router(),
            *privacy_handlers(),
            segment_router(),
            clustering_router(),
            model_router(),
            webhook_router(),
            content_router(),
            experiments_router(),
            decide_router(),
            demo_shop,
            recommend_router(),
            metrics_router(),
            *collector_handlers(),
            reference_router(),
            audit_router(),
            sql_router(),
            console_router(),
        ],
        dependencies=_dependencies(runtime, unavailable, metrics),
        # one instance wraps every route: changes, per-user reads and denials are recorded
        middleware=[
            AuditMiddleware(
                runtime.audit,
                audit_reads=settings.audit_reads,
                pseudonymize=functools.partial(id_hash, runtime.hasher),
            )
        ],
        exception_handlers={
            PersonifyError: api_errors.personify_error_handler,
            HTTPException: api_errors.http_error_handler,
            Exception: api_errors.unexpected_error_handler,
        },
        lifespan=[lifespan],
        openapi_config=openapi_config(),
        state=State(
            {
                "runtime": runtime,
                # the guard reads the keys, the token verifier (None without an OpenID
                # Connect issuer) and the rate limiter from here (guards take no dependencies)
                "api_keys": runtime.api_keys,
                "tokens": TokenVerifier.from_settings(settings, clock=runtime.clock),
                "rate_limiter": runtime.rate_limiter,
                # the collector's GET routes are its own Starlette endpoints
                "collector_pages": StarletteRouter(routes=collector_routes.routes()),
            }
        ),
        # logging is the process's to configure, not the app's
        logging_config=None,
    )
    # Litestar's own signature names its ASGI message types; it is an ASGI app all the same
    fast_path = IngestFastPath(
        cast("ASGIApp", app), collector_routes, unavailable, webhooks=runtime.webhooks_in
    )
    app.state.ingest = fast_path
    return fast_path
