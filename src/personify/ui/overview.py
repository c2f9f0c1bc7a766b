"""The console's landing page: the pipeline at a glance, from the collector to the profiles.

What it shows, and where each number comes from:

* **events per minute by source** over the last hour, from the lake (``received_at``, the
  collector's clock): every API and worker process writes there through the lake sink, so
  the chart is the whole deployment's, not this process's. Only the last hour is read: the
  Delta log's statistics on ``received_at`` leave out every file written before the window.
  The chart reloads ``/console/overview/series``.
* **ingest errors**: the collector's 503 answers (this process's count, as
  ``GET /v1/ingest/status`` gives it) and the events rejected in the last hour (their dead
  letters, shared by every process);
* **dead letters** waiting for a replay, by stage (the state database);
* **worker lag** and **lake sink lag**: what the ``worker`` and ``lake`` consumer groups have
  not committed yet (the event log, shared), and how long ago the newest event reached the
  lake;
* **freshness p99**: from the log's acknowledgement to the profile, over the last five
  minutes, as this process's stream worker measures it (``personify.worker.freshness``);
* **the last quality check** (``personify.quality.results``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import duckdb
import pyarrow.dataset as pads
from deltalake.exceptions import DeltaError
from litestar import Request, Response, get
from litestar.concurrency import sync_to_thread

from personify.errors import BackendUnavailable
from personify.ingest.asgi import UnavailableLog
from personify.lake.sink import LAKE_GROUP
from personify.lake.table import Lake
from personify.quality.results import QualityRepository
from personify.quality.runner import QualityRun
from personify.runtime import Runtime
from personify.settings import Settings
from personify.store.database import Database
from personify.ui.rendering import page_headers, render
from personify.ui.session import page

__all__ = ["ROUTES", "MinuteSeries", "duration", "events_per_minute"]

T = TypeVar("T")

WINDOW_MINUTES: Final = 60
_MINUTE_S: Final = 60
# events carry the id of the source whose write key sent them; these have none
_NO_SOURCE: Final = "(no source)"

# per minute of arrival and source, over [start, end); the newest append to the log among them
_PER_MINUTE: Final = """
SELECT
    CAST(floor(epoch(received_at) / 60) AS BIGINT) * 60 AS minute,
    coalesce(source_id, '') AS source_id,
    count(*) AS events,
    max(appended_at) AS newest_appended_at
FROM events_raw
WHERE received_at >= $start AND received_at < $end
GROUP BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class MinuteSeries:
    """Events per minute of the window, one list of counts per source (in ``labels`` order)."""

    minutes: list[int]
    labels: list[str]
    counts: list[list[int]]
    newest_appended_at: datetime | None = None
    error: str | None = None

    @property
    def total(self) -> int:
        """Every event of the window."""
        return sum(sum(values) for values in self.counts)

    def chart(self) -> dict[str, Any]:
        """The chart convention's JSON (``static/console.js``)."""
        return {
            "x": self.minutes,
            "series": [
                {"label": label, "values": values}
                for label, values in zip(self.labels, self.counts, strict=True)
            ],
            "unit": "events/min",
        }

    def rows(self) -> list[tuple[datetime, list[int], int]]:
        """The table without JavaScript: each minute (newest first), its counts and total."""
        found = []
        for index, minute in enumerate(self.minutes):
            values = [counts[index] for counts in self.counts]
            found.append((datetime.fromtimestamp(minute, UTC), values, sum(values)))
        return list(reversed(found))


def _window(now: datetime) -> list[int]:
    """The minutes of the last hour, the current (partial) one last, in unix seconds."""
    current = math.floor(now.timestamp() / _MINUTE_S) * _MINUTE_S
    return [current - _MINUTE_S * back for back in range(WINDOW_MINUTES - 1, -1, -1)]


def _received_since(lake: Lake, start: datetime) -> pads.Dataset | None:
    """The lake's files that may hold events received at or after ``start`` (None before the
    lake's first write). The Delta log's per-file statistics choose them, so an hour's
    chart reads the last hour's few files whatever the size of the lake."""
    if not lake.exists():
        return None
    table = lake.open()
    try:
        return table.to_pyarrow_dataset(file_pruning_predicate=[("received_at", ">=", start)])
    except (DeltaError, OSError) as exc:
        raise BackendUnavailable(
            f"the lake at {lake.uri} could not be read: {exc}", code="lake_unavailable"
        ) from exc


def events_per_minute(settings: Settings, names: dict[str, str], *, now: datetime) -> MinuteSeries:
    """Events received per minute and source over the last hour, read from the lake.

    ``names`` maps source ids to the names shown. Raises ``BackendUnavailable`` when the lake
    cannot be read.
    """
    minutes = _window(now)
    start = datetime.fromtimestamp(minutes[0], UTC)
    end = datetime.fromtimestamp(minutes[-1] + _MINUTE_S, UTC)
    recent = _received_since(Lake.from_settings(settings), start)
    rows: list[tuple[Any, ...]] = []
    if recent is not None:
        # nothing is fetched at run time: json and parquet are built in
        conn = duckdb.connect(
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        try:
            conn.execute("SET TimeZone = 'UTC'")
            conn.register("events_raw", recent)
            rows = conn.execute(_PER_MINUTE, {"start": start, "end": end}).fetchall()
        except duckdb.Error as exc:
            raise BackendUnavailable(
                f"the lake could not be read: {exc}", code="warehouse_unavailable"
            ) from exc
        finally:
            conn.close()
    position = {minute: index for index, minute in enumerate(minutes)}
    by_source: dict[str, list[int]] = {}
    newest: datetime | None = None
    for minute, source_id, events, appended_at in rows:
        index = position.get(int(minute))
        if index is None:
            continue
        values = by_source.setdefault(str(source_id), [0] * len(minutes))
        values[index] += int(events)
        if appended_at is not None and (newest is None or appended_at > newest):
            newest = appended_at
    # the busiest source first: it keeps its colour while the others come and go
    ordered = sorted(by_source.items(), key=lambda item: (-sum(item[1]), item[0]))
    return MinuteSeries(
        minutes=minutes,
        labels=[names.get(source_id, source_id or _NO_SOURCE) for source_id, _ in ordered],
        counts=[values for _, values in ordered],
        newest_appended_at=newest,
    )


async def _series(runtime: Runtime) -> MinuteSeries:
    now = runtime.clock.now()
    try:
        sources = await sync_to_thread(runtime.sources.list)
        names = {source.id: source.name for source in sources}
        return await sync_to_thread(events_per_minute, runtime.settings, names, now=now)
    except BackendUnavailable as exc:
        return MinuteSeries(minutes=_window(now), labels=[], counts=[], error=exc.message)


async def _or_error(call: Awaitable[T]) -> tuple[T | None, str | None]:
    """A number for the page, or why there is none (an engine that is down)."""
    try:
        return await call, None
    except BackendUnavailable as exc:
        return None, exc.message


def _unavailable_counts(request: Request[Any, Any, Any]) -> dict[str, Any] | None:
    # the collector's fast path counts its 503s (set up by the API's app factory)
    ingest = request.app.state.get("ingest")
    counter = getattr(ingest, "unavailable", None)
    return counter.to_dict() if isinstance(counter, UnavailableLog) else None


def duration(seconds: float | None) -> str:
    """A duration as people read it: 850 ms, 2.4 s, 3 min, 2.5 h."""
    if seconds is None:
        return "—"
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60.0:
        return f"{seconds:.1f} s"
    if seconds < 3600.0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _latest_check(db: Database) -> QualityRun | None:
    runs = QualityRepository(db).latest()
    return max(runs, key=lambda run: run.created_at) if runs else None


@get("/", opt=page("aggregates:read"), name="console:overview")
async def overview(request: Request[Any, Any, Any]) -> Response[str]:
    """The pipeline at a glance."""
    runtime: Runtime = request.app.state.runtime
    now = runtime.clock.now()
    series = await _series(runtime)
    lag, lag_error = await _or_error(runtime.log.lag(runtime.worker.group))
    lake_lag: int | None = None
    lake_lag_error: str | None = None
    if runtime.settings.run_lake_sink:
        lake_lag, lake_lag_error = await _or_error(runtime.log.lag(LAKE_GROUP))
    letters, letters_error = await _or_error(
        sync_to_thread(runtime.failed_events.counts, since=now - timedelta(hours=1))
    )
    check, check_error = await _or_error(sync_to_thread(_latest_check, runtime.db))
    summary = runtime.worker.stats.recent_freshness.summary(now=runtime.clock.time())
    # an API-only process (``--no-worker``) applies nothing: its workers measure freshness
    freshness = summary if summary.count or runtime.settings.run_worker else None
    newest = series.newest_appended_at
    stats = runtime.profiles.stats
    lookups = stats.hits + stats.misses
    return render(
        request,
        "overview.html",
        title="Overview",
        series=series,
        lag=lag,
        lag_error=lag_error,
        lake_sink_on=runtime.settings.run_lake_sink,
        lake_lag=lake_lag,
        lake_lag_error=lake_lag_error,
        lake_age=duration(max((now - newest).total_seconds(), 0.0)) if newest else None,
        letters=letters,
        letters_error=letters_error,
        unavailable=_unavailable_counts(request),
        freshness=freshness,
        freshness_p99=duration(freshness.p99_s) if freshness is not None else None,
        freshness_p50=duration(freshness.p50_s) if freshness is not None else None,
        check=check,
        check_error=check_error,
        stages=[stage.to_dict() for stage in runtime.stages()],
        hit_rate=(stats.hits / lookups) if lookups else None,
    )


@get("/overview/series", opt=page("aggregates:read"), name="console:overview-series")
async def overview_series(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The events-per-minute chart's data (the chart reloads it every ten seconds)."""
    runtime: Runtime = request.app.state.runtime
    series = await _series(runtime)
    if series.error is not None:
        body = {"error": {"code": "warehouse_unavailable", "message": series.error}}
        return Response(body, status_code=503, headers=page_headers())
    return Response(series.chart(), headers=page_headers())


ROUTES = [overview, overview_series]
