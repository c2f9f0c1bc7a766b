"""OpenTelemetry tracing, opt-in: spans go to an OTLP/HTTP endpoint only when one is set.

``PERSONIFY_OTLP_ENDPOINT`` (``http://collector:4318``) turns it on: the runtime builds one
``TracerProvider`` that batches spans to ``<endpoint>/v1/traces`` and hands a tracer to the
collector, the event log appends, the stream worker and the decision engine. Unset, no
provider exists and those parts hold ``None``: they test it once (or chose their untraced
code at construction) and make no span at all, so tracing costs nothing when it is off.

The OpenTelemetry SDK and exporter are the ``tracing`` extra (``pip install
'personify[tracing]'``); the SDK reads its own ``OTEL_*`` variables as usual
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS``…).

Spans carry the events' ``messageId``: one event's as ``messaging.message.id``, a batch's as
the list ``personify.message_ids``, at most ``MAX_MESSAGE_IDS`` of them (and the count of
events as ``personify.events``), so a span stays small whatever the batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING, Protocol

from personify.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from personify.settings import Settings

__all__ = [
    "EVENTS",
    "MAX_MESSAGE_IDS",
    "MESSAGE_ID",
    "MESSAGE_IDS",
    "TracerSource",
    "message_ids",
    "open_tracer_provider",
]

# the attributes spans carry
MESSAGE_ID = "messaging.message.id"
MESSAGE_IDS = "personify.message_ids"
EVENTS = "personify.events"
# a batch's span names its first events only: ten thousand ids would make a megabyte span
MAX_MESSAGE_IDS = 100
_TRACES_PATH = "/v1/traces"


class TracerSource(Protocol):
    """What the runtime needs of an OpenTelemetry SDK ``TracerProvider``: its tracers, and a
    shutdown that exports the spans it still holds."""

    def get_tracer(self, instrumenting_module_name: str) -> Tracer:
        """The tracer of one part of Personify (``personify.ingest``…)."""
        ...

    def shutdown(self) -> None:
        """Export what is batched and stop."""
        ...


def message_ids(ids: Iterable[str]) -> list[str]:
    """The first ``MAX_MESSAGE_IDS`` of ``ids``, for ``MESSAGE_IDS``."""
    return list(islice(ids, MAX_MESSAGE_IDS))


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base endpoint (as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is given), or of a full traces URL as it is."""
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if endpoint.endswith(_TRACES_PATH) else endpoint + _TRACES_PATH


def open_tracer_provider(settings: Settings) -> TracerSource | None:
    """A provider exporting to ``settings.otlp_endpoint`` in batches, or None when unset.

    Raises ``ConfigurationError`` when the endpoint is set but the ``tracing`` extra is not
    installed."""
    if not settings.otlp_endpoint.strip():
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            "PERSONIFY_OTLP_ENDPOINT needs OpenTelemetry: pip install 'personify[tracing]'",
            code="missing_extra",
        ) from exc
    resource = Resource.create()
    # the SDK names a service it knows nothing of "unknown_service"; OTEL_SERVICE_NAME wins
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "personify"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint)))
    )
    return provider
