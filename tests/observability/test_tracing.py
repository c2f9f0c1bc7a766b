"""OpenTelemetry spans: opt-in, one per ingest request, event-log append, worker batch and
decision, each naming its events' messageIds. Collected with the SDK's own in-memory
exporter, and once sent for real over OTLP/HTTP to a small server this test runs."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from personify.api.app import create_app
from personify.runtime import Runtime
from personify.tracing import MAX_MESSAGE_IDS, traces_url
from tests.api import basic_auth
from tests.conftest import make_settings


class Traced:
    def __init__(self, services: Runtime, client: httpx.AsyncClient, write_key: str) -> None:
        self.services = services
        self.client = client
        self.auth = basic_auth(write_key)


@asynccontextmanager
async def traced_app(
    data_dir: Path, provider: TracerProvider | None = None, **overrides: Any
) -> AsyncIterator[Traced]:
    settings = make_settings(data_dir, run_worker=False, run_lake_sink=False, **overrides)
    services = Runtime.build(settings, tracer_provider=provider)
    app = create_app(settings, services=services)
    await services.start()
    try:
        _, write_key = services.sources.create("web")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Traced(services, client, write_key)
    finally:
        await services.close()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def track(message_id: str, user: str = "u1") -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": "Viewed", "messageId": message_id}


async def test_spans_name_the_events_of_ingest_append_worker_and_decide(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with traced_app(tmp_path / "data", provider) as app:
        response = await app.client.post("/v1/track", json=track("m-1"), headers=app.auth)
        assert response.status_code == 200, response.text
        batch = {"batch": [track(f"b-{n}") for n in range(3)]}
        response = await app.client.post("/v1/batch", json=batch, headers=app.auth)
        assert response.status_code == 200, response.text
        await app.services.worker.run(until_idle=True)
        _, admin = app.services.api_keys.create("admin", "admin")
        decided = await app.client.post(
            "/v1/decide",
            json={"userId": "u1", "placements": [{"id": "home"}]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert decided.status_code == 200, decided.text
    spans = exporter.get_finished_spans()

    [single] = named(spans, "ingest track")
    assert single.attributes is not None
    assert single.attributes["messaging.message.id"] == "m-1"
    assert single.attributes["personify.route"] == "track"
    appends = named(spans, "eventlog append")
    [one] = [s for s in appends if s.parent and s.parent.span_id == single.context.span_id]
    assert one.attributes is not None and one.attributes["messaging.message.id"] == "m-1"
    assert one.context.trace_id == single.context.trace_id

    [batched] = named(spans, "ingest batch")
    assert batched.attributes is not None
    assert list(batched.attributes["personify.message_ids"]) == ["b-0", "b-1", "b-2"]
    assert batched.attributes["personify.events"] == 3

    applied = named(spans, "worker apply")
    ids = {i for span in applied for i in (span.attributes or {}).get("personify.message_ids", ())}
    assert {"m-1", "b-0", "b-1", "b-2"} <= ids

    [decision] = named(spans, "decide")
    assert decision.attributes is not None
    assert decision.attributes["messaging.message.id"] == decided.json()["decisionId"]


async def test_a_batch_span_names_a_bounded_number_of_events(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with traced_app(tmp_path / "data", provider) as app:
        batch = {"batch": [track(f"b-{n}") for n in range(MAX_MESSAGE_IDS + 50)]}
        response = await app.client.post("/v1/batch", json=batch, headers=app.auth)
        assert response.status_code == 200, response.text
    [batched] = named(exporter.get_finished_spans(), "ingest batch")
    assert batched.attributes is not None
    assert len(batched.attributes["personify.message_ids"]) == MAX_MESSAGE_IDS
    assert batched.attributes["personify.events"] == MAX_MESSAGE_IDS + 50


async def test_without_an_endpoint_nothing_traces(tmp_path: Path) -> None:
    async with traced_app(tmp_path / "data") as app:
        services = app.services
        assert services.tracer_provider is None
        assert services.collector.tracer is None
        response = await app.client.post("/v1/track", json=track("m-1"), headers=app.auth)
        assert response.status_code == 200


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps what it is sent."""

    received: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # quiet
        return


async def test_spans_are_exported_over_otlp_http(tmp_path: Path) -> None:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        async with traced_app(tmp_path / "data", otlp_endpoint=endpoint) as app:
            assert app.services.tracer_provider is not None
            response = await app.client.post("/v1/track", json=track("otlp-1"), headers=app.auth)
            assert response.status_code == 200
        # closing the runtime flushed the batched spans
    finally:
        server.shutdown()
        server.server_close()
    assert received, "no span reached the endpoint"
    names: dict[str, dict[str, Any]] = {}
    for path, content_type, body in received:
        assert path == "/v1/traces"
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert service["service.name"] == "personify"
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    names[span.name] = {a.key: a.value.string_value for a in span.attributes}
    assert names["ingest track"]["messaging.message.id"] == "otlp-1"
    assert names["eventlog append"]["messaging.message.id"] == "otlp-1"


def test_the_traces_url_of_an_endpoint() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://x/otlp/v1/traces") == "https://x/otlp/v1/traces"
