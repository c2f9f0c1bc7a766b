"""``GET /metrics``: Prometheus metrics, behind the API key guard (a scraper sends
``Authorization: Bearer <key>``; a ``read`` key is enough).

Each app has its own collector registry, never the process-wide default, so two apps in one
process (tests, embedders) do not share or clash. Today it reports the served churn and
lifetime-value models' health (``personify.predict.gauges``); the observability issue adds
the pipeline's own metrics beside them.
"""

from __future__ import annotations

from litestar import Response, Router, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from personify.api.documents import admin_responses
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.ingest.webhooks import WebhookMetrics
from personify.predict.gauges import PredictionCollector
from personify.runtime import Runtime

__all__ = ["metrics_registry", "metrics_router"]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
AGGREGATES = needs("aggregates:read")

# Prometheus' text format; the framework adds the charset itself
_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


def metrics_registry(runtime: Runtime) -> CollectorRegistry:
    """The app's collector registry: every collector of what it reports."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PredictionCollector(runtime.models, runtime.model_monitor))
    # signed webhooks in: accepted, ignored and refused (by reason)
    registry.register(WebhookMetrics(runtime.webhooks_in))
    return registry


@get(
    "/metrics",
    opt=AGGREGATES,
    media_type=_MEDIA_TYPE,
    responses={
        200: ResponseSpec(
            str, description="metrics in Prometheus' text format", media_type=_MEDIA_TYPE
        ),
        **admin_responses(parameters=False),
    },
)
async def metrics(prometheus: NamedDependency[CollectorRegistry]) -> Response[bytes]:
    """Prometheus metrics: the served models' versions, validation, feature and score drift,
    realised performance and alerts (docs/predict.md, "Monitoring")."""
    body = await sync_to_thread(generate_latest, prometheus)
    return Response(body, media_type=_MEDIA_TYPE)


def metrics_router() -> Router:
    """``/metrics`` behind the API key guard."""
    return Router(
        "/",
        route_handlers=[metrics],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["metrics"],
    )
