"""``GET /metrics`` through the real ASGI app: it parses with Prometheus' own text parser, and
the counters move as events go through the collector, the stream worker, the cache, the
segments and the decision engine."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from personify.api.metrics import WorkerMetricsServer
from personify.tally import DurationTally
from tests.api import Harness, running_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(harness: Harness) -> Samples:
    """Every sample of ``GET /metrics``, by name and sorted labels."""
    response = await harness.client.get("/metrics", headers=harness.admin)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when it is absent (a counter not moved yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def track(user: str, message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "userId": user,
        "event": "Product Viewed",
        "messageId": message_id,
        "properties": {"category": "shoes"},
        **extra,
    }


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        yield h


async def test_metrics_need_a_key_with_aggregates_read(harness: Harness) -> None:
    assert (await harness.client.get("/metrics")).status_code == 401


async def test_ingest_counts_requests_and_events_by_route_source_and_outcome(
    harness: Harness,
) -> None:
    source = harness.source.id
    before = await scrape(harness)
    for number in range(3):
        response = await harness.client.post(
            "/v1/track", json=track("u1", f"m{number}"), headers=harness.auth
        )
        assert response.status_code == 200, response.text
    # the same messageId again: answered 200, kept once
    again = await harness.client.post("/v1/t", json=track("u1", "m0"), headers=harness.auth)
    assert again.status_code == 200
    batch = {"batch": [{"type": "track", **track("u2", "b1")}, {"type": "nonsense"}]}
    response = await harness.client.post("/v1/batch", json=batch, headers=harness.auth)
    assert response.json()["rejected"] == 1
    unknown = base64.b64encode(b"wk_nobody:").decode()
    refused = await harness.client.post(
        "/v1/track", json=track("u3", "x1"), headers={"Authorization": f"Basic {unknown}"}
    )
    assert refused.status_code == 401

    samples = await scrape(harness)
    requests = "personify_ingest_requests_total"
    events = "personify_ingest_events_total"
    assert value(samples, requests, route="track", source=source, outcome="ok") == 4
    assert value(samples, events, route="track", source=source, outcome="accepted") == 3
    assert value(samples, events, route="track", source=source, outcome="duplicate") == 1
    assert value(samples, requests, route="batch", source=source, outcome="ok") == 1
    assert value(samples, events, route="batch", source=source, outcome="accepted") == 1
    assert value(samples, events, route="batch", source=source, outcome="rejected") == 1
    # refused before a source was known: no key, and no source, in the labels
    assert value(samples, requests, route="track", source="", outcome="invalid_write_key") == 1
    assert not [labels for (name, labels) in samples if "wk_nobody" in str(labels)]
    latency = "personify_ingest_request_duration_seconds"
    assert value(samples, f"{latency}_count", route="track") == 5
    assert value(samples, f"{latency}_bucket", route="track", le="+Inf") == 5
    assert value(samples, f"{latency}_count", route="batch") == 1
    assert value(samples, f"{latency}_sum", route="track") > 0
    appends = "personify_eventlog_append_duration_seconds_count"
    # every append of a batch is timed, and one in eight single-event appends (the 8th)
    assert value(samples, appends) - value(before, appends) == 1
    for number in range(4):
        response = await harness.client.post(
            "/v1/track", json=track("u1", f"n{number}"), headers=harness.auth
        )
        assert response.status_code == 200
    assert value(await scrape(harness), appends) - value(before, appends) == 2
    assert ("personify_eventlog_queued_events", ()) in samples
    # three single events and the batch's good one wait for the worker
    assert value(samples, "personify_eventlog_lag", group="worker") == 4


async def test_the_worker_freshness_cache_segments_and_decisions_are_counted(
    tmp_path: Path,
) -> None:
    async with running_app(
        tmp_path / "data", run_lake_sink=False, cache_invalidation_ttl_s=0.05
    ) as harness:
        await _worker_and_reads(harness)


async def _worker_and_reads(harness: Harness) -> None:
    created = await harness.client.post(
        "/v1/segments",
        json={"key": "pro", "condition": {"trait": "plan", "op": "eq", "value": "pro"}},
        headers=harness.admin,
    )
    assert created.status_code == 201, created.text
    identify = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    batch = {"batch": [identify, *({"type": "track", **track("u1", f"t{n}")} for n in range(4))]}
    response = await harness.client.post("/v1/batch", json=batch, headers=harness.auth)
    assert response.status_code == 200, response.text
    await harness.services.worker.run(until_idle=True)
    # the worker's invalidation keeps the profile out of the cache this long
    await asyncio.sleep(harness.services.settings.cache_invalidation_ttl_s)
    for _ in range(2):
        profile = await harness.client.get("/v1/profiles/u1", headers=harness.admin)
        assert profile.status_code == 200, profile.text
    decided = await harness.client.post(
        "/v1/decide",
        json={"userId": "u1", "placements": [{"id": "home-hero"}]},
        headers=harness.admin,
    )
    assert decided.status_code == 200, decided.text
    # the segment's and the decision's own events are read too (and not applied to profiles)
    await harness.services.worker.run(until_idle=True)

    samples = await scrape(harness)
    assert value(samples, "personify_worker_events_applied_total") == 5
    assert value(samples, "personify_worker_batches_total") >= 1
    assert value(samples, "personify_worker_dead_letters_total") == 0
    assert value(samples, "personify_freshness_seconds_count") == 5
    assert value(samples, "personify_freshness_seconds_sum") >= 0
    assert value(samples, "personify_eventlog_lag", group="worker") == 0
    assert value(samples, "personify_segment_entries_total", segment="pro") == 1
    # the second read, and the decision's, come from the cache
    assert value(samples, "personify_cache_requests_total", result="hit") >= 1
    assert value(samples, "personify_cache_requests_total", result="miss") >= 1
    assert value(samples, "personify_decide_duration_seconds_count") == 1
    assert value(samples, "personify_db_pool_connections", state="size") >= 1
    assert ("personify_db_pool_connections", (("state", "checked_out"),)) in samples


async def test_two_apps_in_one_process_keep_their_own_counts(tmp_path: Path) -> None:
    async with (
        running_app(tmp_path / "one", run_lake_sink=False) as one,
        running_app(tmp_path / "two", run_lake_sink=False) as two,
    ):
        response = await one.client.post("/v1/track", json=track("u1", "m1"), headers=one.auth)
        assert response.status_code == 200
        counted = "personify_ingest_requests_total"
        assert (
            value(await scrape(one), counted, route="track", source=one.source.id, outcome="ok")
            == 1
        )
        assert not [name for name, _ in await scrape(two) if name == counted]


async def test_each_scrape_adds_only_what_changed(harness: Harness) -> None:
    for number in range(2):
        await harness.client.post("/v1/track", json=track("u1", f"m{number}"), headers=harness.auth)
        samples = await scrape(harness)
        await scrape(harness)
    ok = value(
        await scrape(harness),
        "personify_ingest_requests_total",
        route="track",
        source=harness.source.id,
        outcome="ok",
    )
    assert (
        ok == 2
        and value(samples, "personify_ingest_request_duration_seconds_count", route="track") == 2
    )


def test_a_tally_buckets_as_prometheus_does() -> None:
    tally = DurationTally((0.1, 1.0))
    tally.observe(0.1)  # on a bound: in that bucket (le is "less or equal")
    tally.observe(0.5)
    tally.observe(7.0)
    import numpy as np

    tally.observe_many(np.array([0.05, 1.0, 2.0]))
    assert tally.counts == [2, 2, 2]
    assert tally.total_s == pytest.approx(10.65)


async def test_the_metrics_document_is_one_prometheus_parses(harness: Harness) -> None:
    response = await harness.client.get("/metrics", headers=harness.admin)
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert families["personify_ingest_requests"].type == "counter"
    assert families["personify_ingest_request_duration_seconds"].type == "histogram"
    assert families["personify_eventlog_lag"].type == "gauge"
    assert response.status_code == httpx.codes.OK


async def test_a_worker_process_serves_its_metrics_on_its_own_port(harness: Harness) -> None:
    server = WorkerMetricsServer(harness.services, "127.0.0.1", 0)
    await server.start()
    try:
        batch = {"batch": [{"type": "track", **track("u1", f"w{n}")} for n in range(3)]}
        response = await harness.client.post("/v1/batch", json=batch, headers=harness.auth)
        assert response.status_code == 200, response.text
        await harness.services.worker.run(until_idle=True)
        # refreshed every second by a task of this event loop
        await asyncio.sleep(1.5)
        async with httpx.AsyncClient() as client:
            scraped = await client.get(f"http://127.0.0.1:{server.port}/metrics")
        assert scraped.status_code == 200
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(scraped.text)
            for sample in family.samples
        }
        assert value(samples, "personify_worker_events_applied_total") == 3
        assert value(samples, "personify_freshness_seconds_count") == 3
        assert value(samples, "personify_eventlog_lag", group="worker") == 0
    finally:
        await server.stop()
