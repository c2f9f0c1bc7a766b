"""``GET /metrics``: Prometheus metrics, behind the API key guard (a scraper sends
``Authorization: Bearer <key>``; a key with ``aggregates:read``, such as a ``read`` key).

Every metric, its labels and the alerts over them are listed in docs/observability.md.

Two kinds of facts, two ways to report them:

* **Facts of one process** (requests answered, events applied, latencies, connections in
  use) are counted by the code that does the work, in plain attributes it already keeps for
  its status routes (``WorkerStats``, ``CacheStats``, the lake writer's counts) or in plain
  dicts and tallies (``personify.ingest.counts``, ``personify.tally``): no lock and no
  library call on the hot paths. ``PipelineMetrics.sync`` moves what changed since the last
  sync into prometheus_client's own ``Counter``, ``Histogram`` and ``Gauge`` objects. These
  must be library objects: with ``personify serve --workers N`` each process writes them to
  files in ``PROMETHEUS_MULTIPROC_DIR``, and the library's ``MultiProcessCollector`` sums
  them over every process when one of them is scraped (per-process gauges as ``livesum``, or
  ``livemin`` for "is every process's stage running").
* **Facts of the shared engines** (how far the worker and lake consumer groups lag behind the
  log, the data folder's disk, the served models' health in the state database) are the
  same whichever process is asked, so they are read when scraped by custom collectors and
  never summed.

When it syncs: at every scrape, in the process scraped, so a single process is always exact;
and with multiprocess mode on, every second in every process too (a task of the app's
lifespan), so that the processes not scraped are at most a second behind.

Each app keeps its own ``CollectorRegistry``, never the process-wide default, and creates
its library metrics in it, so two apps in one process (tests, embedders) neither share nor
clash. Multiprocess mode is a process-wide switch of prometheus_client (its values live in
per-process files), made by ``personify serve`` for one app per process; there the app's
registry holds the ``MultiProcessCollector`` and the shared-engine collectors, and the library
metrics, registered nowhere, only write their files.

A ``personify worker`` process serves no API; ``WorkerMetricsServer`` gives it the same
metrics on a port of its own (``PERSONIFY_WORKER_METRICS_PORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable
from wsgiref.simple_server import WSGIServer

import sqlalchemy as sa
from litestar import Response, Router, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from personify.api.documents import admin_responses
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.errors import BackendUnavailable
from personify.ingest.counts import IngestCounts
from personify.ingest.routes import ROUTES
from personify.predict.gauges import PredictionCollector
from personify.runtime import Runtime
from personify.tally import FRESHNESS_BUCKETS_S, LATENCY_BUCKETS_S, DurationTally

__all__ = ["PipelineMetrics", "WorkerMetricsServer", "metrics_registry", "metrics_router"]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
AGGREGATES = needs("aggregates:read")

# Prometheus' text format; the framework adds the charset itself
_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")
# how often every process moves its counts into the shared files (multiprocess mode)
SYNC_INTERVAL_S = 1.0

Labels = tuple[str, ...]


@runtime_checkable
class _QueuedLog(Protocol):
    """An event log that queues appends in the process (the SQLite log's group commit)."""

    @property
    def queued_events(self) -> int:
        """Events waiting for their transaction."""
        ...


class _CounterSync:
    """Adds to ``counter`` what ``read``'s cumulative values grew by since the last sync."""

    def __init__(self, counter: Counter, read: Callable[[], Mapping[Labels, float]]) -> None:
        self._counter = counter
        self._read = read
        self._last: dict[Labels, float] = {}

    def sync(self) -> None:
        for labels, value in self._read().items():
            delta = value - self._last.get(labels, 0)
            if delta > 0:
                (self._counter.labels(*labels) if labels else self._counter).inc(delta)
            # a count that went down was reset (a stage rebuilt): counted on from there
            self._last[labels] = value


class _HistogramSync:
    """Adds to ``histogram`` the durations ``read``'s tallies counted since the last sync."""

    def __init__(
        self, histogram: Histogram, read: Callable[[], Mapping[Labels, DurationTally]]
    ) -> None:
        self._histogram = histogram
        self._read = read
        self._last: dict[Labels, tuple[list[int], float]] = {}

    def sync(self) -> None:
        for labels, tally in self._read().items():
            counts, total = list(tally.counts), tally.total_s
            before, before_total = self._last.get(labels, ([0] * len(counts), 0.0))
            deltas = [now - then for now, then in zip(counts, before, strict=True)]
            if any(deltas):
                child = self._histogram.labels(*labels) if labels else self._histogram
                _add_observations(child, tally, deltas, total - before_total)
            self._last[labels] = (counts, total)


def _add_observations(
    child: Histogram, tally: DurationTally, deltas: list[int], seconds: float
) -> None:
    """Add counted observations to a histogram child, bucket by bucket.

    prometheus_client observes one value at a time; a tally has counted many already, so
    its counts go into the child's bucket values directly (the same values ``observe``
    increments, one per bucket, not yet cumulative). The bounds must be the tally's."""
    if child._upper_bounds[:-1] != list(tally.bounds):
        raise ValueError("the histogram's buckets are not the tally's")
    for bucket, delta in zip(child._buckets, deltas, strict=True):
        if delta:
            bucket.inc(delta)
    child._sum.inc(seconds)


def _stat(stats: object, attribute: str) -> dict[Labels, float]:
    value: float = getattr(stats, attribute)
    return {(): value}


class _SharedState(Collector):
    """The consumer groups' lag behind the log, and the data folder's disk: the same from
    every process, so read at scrape time (``PipelineMetrics.refresh``) and reported as they
    are, never summed."""

    def __init__(self) -> None:
        self.lags: dict[str, int] = {}
        # the data folder's file system: (free, total) bytes
        self.disk: tuple[int, int] | None = None

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "personify_eventlog_lag",
            "Records a consumer group (worker, lake) has not committed yet",
            labels=["group"],
        )
        for group, value in sorted(self.lags.items()):
            lag.add_metric([group], value)
        yield lag
        free = GaugeMetricFamily(
            "personify_disk_free_bytes",
            "Bytes free on the file system of the data folder (log, state, lake when local)",
        )
        total = GaugeMetricFamily(
            "personify_disk_size_bytes", "Size of the file system of the data folder"
        )
        if self.disk is not None:
            free.add_metric([], self.disk[0])
            total.add_metric([], self.disk[1])
        yield free
        yield total


class PipelineMetrics:
    """One app's metrics: its registry, the library metrics, and their sync (module
    docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        ingest: IngestCounts,
        *,
        multiprocess_dir: Path | None = None,
    ) -> None:
        self._runtime = runtime
        self._ingest = ingest
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        # where the library metrics live: this registry, or (multiprocess) their files only
        own = None if multiprocess_dir is not None else self.registry
        if multiprocess_dir is not None:
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.registry, path=str(multiprocess_dir)
            )
        self._shared = _SharedState()
        self.registry.register(self._shared)
        self.registry.register(PredictionCollector(runtime.models, runtime.model_monitor))
        self._syncs: list[_CounterSync | _HistogramSync] = []
        self._gauges: list[tuple[Gauge, Callable[[], Mapping[Labels, float]]]] = []
        self._task: asyncio.Task[None] | None = None
        self._define(own)

    # -- what is reported -------------------------------------------------------------------

    def _counter(
        self,
        registry: CollectorRegistry | None,
        name: str,
        text: str,
        labels: tuple[str, ...],
        read: Callable[[], Mapping[Labels, float]],
    ) -> None:
        counter = Counter(name, text, labels, registry=registry)
        self._syncs.append(_CounterSync(counter, read))

    def _histogram(
        self,
        registry: CollectorRegistry | None,
        name: str,
        text: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...],
        read: Callable[[], Mapping[Labels, DurationTally]],
    ) -> None:
        histogram = Histogram(name, text, labels, registry=registry, buckets=buckets)
        self._syncs.append(_HistogramSync(histogram, read))

    def _gauge(
        self,
        registry: CollectorRegistry | None,
        name: str,
        text: str,
        labels: tuple[str, ...],
        read: Callable[[], Mapping[Labels, float]],
        mode: str = "livesum",
    ) -> None:
        gauge = Gauge(name, text, labels, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]
        self._gauges.append((gauge, read))

    def _define(self, own: CollectorRegistry | None) -> None:
        runtime, ingest = self._runtime, self._ingest
        worker = runtime.worker
        route_source_outcome = ("route", "source", "outcome")
        self._counter(
            own,
            "personify_ingest_requests",
            "Collector requests answered, by route, source and outcome (ok or an error code)",
            route_source_outcome,
            ingest.request_totals,
        )
        self._counter(
            own,
            "personify_ingest_events",
            "Events of collector requests, by route, source and outcome "
            "(accepted, duplicate, rejected, suppressed)",
            route_source_outcome,
            ingest.event_totals,
        )
        self._histogram(
            own,
            "personify_ingest_request_duration_seconds",
            "Collector request latency, from the first body byte read to the answer ready",
            ("route",),
            LATENCY_BUCKETS_S,
            lambda: {(route,): tally for route, tally in ingest.latency.items() if tally.count},
        )
        self._histogram(
            own,
            "personify_eventlog_append_duration_seconds",
            "How long the collector's appends took to be durable in the event log",
            (),
            LATENCY_BUCKETS_S,
            lambda: {(): runtime.collector.appends},
        )
        self._gauge(
            own,
            "personify_eventlog_queued_events",
            "Events waiting in this process for the event log's next transaction",
            (),
            self._queued_events,
        )
        for name, text, attribute in (
            ("events_applied", "Events the stream worker applied to profiles", "events_applied"),
            ("events_read", "Log entries the stream worker read", "entries_read"),
            ("duplicates", "Entries skipped as applied already (redelivered)", "duplicates"),
            ("batches", "Batches the stream worker committed", "batches"),
            ("retries", "Retries of a failing event or a conflicting batch", "retries"),
            ("dead_letters", "Entries the stream worker dead-lettered", "dead_lettered"),
        ):
            self._counter(
                own,
                f"personify_worker_{name}",
                text,
                (),
                functools.partial(_stat, worker.stats, attribute),
            )
        self._histogram(
            own,
            "personify_freshness_seconds",
            "From the event's append to the log (its acknowledgement) to its profile commit",
            (),
            FRESHNESS_BUCKETS_S,
            lambda: {(): worker.stats.freshness},
        )
        self._counter(
            own,
            "personify_stage_restarts",
            "Restarts of a background stage (worker, lake) after it failed",
            ("stage",),
            lambda: {(stage.name,): stage.restarts for stage in runtime.stages()},
        )
        self._gauge(
            own,
            "personify_stage_running",
            "1 while a background stage runs, 0 while it waits to restart (min over processes)",
            ("stage",),
            lambda: {
                (stage.name,): float(stage.state == "running")
                for stage in runtime.stages()
                if stage.state != "stopped"
            },
            mode="livemin",
        )
        sink = runtime.lake_sink
        if sink is not None:
            self._counter(
                own,
                "personify_lake_events_written",
                "Events the lake writer wrote to the lake",
                (),
                lambda: {(): sink.events_written},
            )
            self._counter(
                own,
                "personify_lake_batches_written",
                "Delta commits the lake writer made",
                (),
                lambda: {(): sink.batches_written},
            )
        cache = runtime.profiles.stats
        self._counter(
            own,
            "personify_cache_requests",
            "Profile reads through the online cache, by result (hit, miss)",
            ("result",),
            lambda: {("hit",): cache.hits, ("miss",): cache.misses},
        )
        self._counter(
            own,
            "personify_cache_fills",
            "Profiles put in the cache after a miss",
            (),
            lambda: {(): cache.fills},
        )
        self._counter(
            own,
            "personify_cache_invalidations",
            "Cache entries the worker invalidated after applying events",
            (),
            lambda: {(): cache.invalidations},
        )
        self._gauge(
            own,
            "personify_db_pool_connections",
            "State database connections of this process's pool, by state (checked_out, size)",
            ("state",),
            self._pool,
        )
        decisions = runtime.decisions
        self._histogram(
            own,
            "personify_decide_duration_seconds",
            "Decision latency (POST /v1/decide), from the request read to the answer built",
            (),
            LATENCY_BUCKETS_S,
            lambda: {(): decisions.latency},
        )
        self._counter(
            own,
            "personify_decide_exposures_lost",
            "Exposure events a decision could not append (the answer went out regardless)",
            (),
            lambda: {(): decisions.exposures_lost},
        )
        relay = runtime.segment_relay
        self._counter(
            own,
            "personify_segment_entries",
            "Profiles that entered a segment (its Segment Entered events), by segment",
            ("segment",),
            lambda: {(key,): n for key, n in relay.entries.items()},
        )
        self._counter(
            own,
            "personify_segment_exits",
            "Profiles that left a segment (its Segment Exited events), by segment",
            ("segment",),
            lambda: {(key,): n for key, n in relay.exits.items()},
        )
        webhooks = runtime.webhooks_in
        self._counter(
            own,
            "personify_webhooks_in_rejected",
            "Webhook requests refused, by reason (nothing of them is stored)",
            ("reason",),
            lambda: {(reason,): n for reason, n in webhooks.rejected.items()},
        )
        self._counter(
            own,
            "personify_webhooks_in_taken",
            "Verified webhook requests: mapped to an event, or ignored (no rule for their type)",
            ("outcome",),
            lambda: {("mapped",): webhooks.mapped, ("ignored",): webhooks.ignored},
        )

    def _queued_events(self) -> dict[Labels, float]:
        log = self._runtime.log
        return {(): float(log.queued_events)} if isinstance(log, _QueuedLog) else {}

    def _pool(self) -> dict[Labels, float]:
        pool = self._runtime.db.engine.pool
        if not isinstance(pool, sa.pool.QueuePool):
            return {}
        return {("checked_out",): float(pool.checkedout()), ("size",): float(pool.size())}

    # -- moving counts ----------------------------------------------------------------------

    def sync(self) -> None:
        """Move what this process counted since the last sync into the library metrics."""
        for item in self._syncs:
            item.sync()
        for gauge, read in self._gauges:
            for labels, value in read().items():
                (gauge.labels(*labels) if labels else gauge).set(value)

    async def refresh(self) -> None:
        """Sync, and read the shared engines' figures (the consumer groups' lag)."""
        self.sync()
        runtime = self._runtime
        groups = [runtime.worker.group]
        if runtime.lake_sink is not None:
            groups.append(runtime.lake_sink.group)
        lags: dict[str, int] = {}
        for group in groups:
            try:
                lags[group] = await runtime.log.lag(group)
            except BackendUnavailable:
                # a log that is down has no lag to tell: the sample is left out, which an
                # ``absent()`` alert notices
                continue
        self._shared.lags = lags
        try:
            usage = shutil.disk_usage(runtime.settings.data_dir)
        except OSError:
            # no data folder (a scaled-out node keeps nothing locally): nothing to report
            self._shared.disk = None
        else:
            self._shared.disk = (usage.free, usage.total)

    async def render(self) -> bytes:
        """The metrics in Prometheus' text format, as of now."""
        await self.refresh()
        return await sync_to_thread(generate_latest, self.registry)

    # -- multiprocess mode ------------------------------------------------------------------

    def start(self) -> None:
        """Sync every second in the background (multiprocess mode only: otherwise a scrape
        syncs the one process there is)."""
        if self.multiprocess_dir is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def stop(self) -> None:
        """Stop syncing; in multiprocess mode, sync a last time and drop this process's live
        gauges (its counters stay in the files: they count what happened)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.multiprocess_dir is not None:
            self.sync()
            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), path=str(self.multiprocess_dir)
            )

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            self.sync()


class WorkerMetricsServer:
    """``GET /metrics`` of a ``personify worker`` process, which serves no API: the same
    metrics on their own port (no key: keep the port on a private network), refreshed every
    second by a task of the worker's event loop and read by prometheus_client's small HTTP
    server thread."""

    def __init__(self, runtime: Runtime, host: str, port: int) -> None:
        self.metrics = PipelineMetrics(
            runtime,
            IngestCounts(ROUTES),
            multiprocess_dir=runtime.settings.prometheus_multiproc_dir,
        )
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one given for 0)."""
        return self._server.server_port if self._server is not None else self._port

    async def start(self) -> None:
        """Read the metrics once, listen, and refresh them every second."""
        await self.metrics.refresh()
        self._server, _ = start_http_server(
            self._port, addr=self._host, registry=self.metrics.registry
        )
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        """Stop listening and refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            await self.metrics.refresh()


def metrics_registry(
    runtime: Runtime, ingest: IngestCounts, *, multiprocess_dir: Path | None = None
) -> PipelineMetrics:
    """The app's metrics over ``runtime`` and the collector's counts (module docstring)."""
    return PipelineMetrics(runtime, ingest, multiprocess_dir=multiprocess_dir)


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
async def metrics(prometheus: NamedDependency[PipelineMetrics]) -> Response[bytes]:
    """Prometheus metrics: ingest, the event log, the stream worker, freshness, the lake
    writer, the cache, the state database's pool, decisions, segments, webhooks in and the
    served models' health (docs/observability.md)."""
    return Response(await prometheus.render(), media_type=_MEDIA_TYPE)


def metrics_router() -> Router:
    """``/metrics`` behind the API key guard."""
    return Router(
        "/",
        route_handlers=[metrics],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["metrics"],
    )
