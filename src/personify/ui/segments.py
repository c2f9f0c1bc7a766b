"""The segment pages (``/console/segments``): every segment and clustering with its size, and
one segment's definition, size over time and, for roles that may read per-user data, members.

The pages read through the same repositories as ``/v1/segments`` and ``/v1/clusterings``.
A segment's size over time comes from its membership history (each stay's entry and exit),
so the chart is exact, not sampled. Members are per-user data: they have their own route,
``…/members``, which needs ``profiles:read`` and is an audited read, as the API's is; the
detail page loads it in place with htmx and links to it without.

Segments are changed through the API or the CLI; these pages only read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from litestar import Request, Response, get
from litestar.concurrency import sync_to_thread
from litestar.params import PathParameter, QueryParameter

from personify.runtime import Runtime
from personify.segments.clusterings import ClusteringDefinition, ClusteringRepository, RunRecord
from personify.segments.repository import SegmentDefinition, SegmentRepository
from personify.ui.rendering import render
from personify.ui.session import page

__all__ = ["ROUTES"]

# days of daily sizes the detail page charts
_HISTORY_DAYS: Final = 30
# members shown on one page
_MEMBERS_PAGE: Final = 100
_MAX_KEY_CHARS: Final = 200

Key = Annotated[str, PathParameter(max_length=_MAX_KEY_CHARS, description="a segment key")]
Cursor = Annotated[str | None, QueryParameter(max_length=_MAX_KEY_CHARS)]


def _segment_rows(segments: SegmentRepository) -> list[dict[str, Any]]:
    """Every active segment with its size now (one figure per segment, from its stays)."""
    rows = []
    for definition in segments.definitions():
        stats = segments.stats(definition.key, days=1)
        rows.append({"definition": definition, "size": stats["size"]})
    return rows


def _clusterings(
    clusterings: ClusteringRepository,
) -> list[tuple[ClusteringDefinition, RunRecord | None]]:
    """Every active clustering with its current run (as ``GET /v1/clusterings`` lists them)."""
    return [
        (d, clusterings.run(d.key, d.current_run) if d.current_run is not None else None)
        for d in clusterings.definitions()
    ]


def _clustering_view(definition: ClusteringDefinition, run: RunRecord | None) -> dict[str, Any]:
    report = (run.report if run is not None else None) or {}
    document = definition.to_dict()
    return {
        "key": definition.key,
        "name": definition.name,
        "status": definition.status,
        "schedule": definition.schedule,
        "run": run,
        "k": report.get("k"),
        "silhouette": report.get("silhouette"),
        "clusters": [
            {
                "segment": f"{definition.key}/{cluster['key']}",
                # the name a person gave wins over the run's automatic one
                "name": definition.names.get(cluster["key"], cluster["name"]),
                "size": cluster["size"],
            }
            for cluster in report.get("clusters", [])
        ],
        "spec": {
            name: value
            for name, value in document.items()
            if name not in {"key", "name", "description", "status", "createdAt", "updatedAt"}
        },
    }


@get("/segments", opt=page("segments:read"), name="console:segments")
async def segment_list(request: Request[Any, Any, Any]) -> Response[str]:
    """Every segment and clustering, with sizes and definitions."""
    runtime: Runtime = request.app.state.runtime
    rows = await sync_to_thread(_segment_rows, runtime.segments)
    found = await sync_to_thread(_clusterings, runtime.clusterings)
    return render(
        request,
        "segments.html",
        title="Segments",
        segments=rows,
        clusterings=[_clustering_view(definition, run) for definition, run in found],
    )


def _chart(stats: dict[str, Any]) -> dict[str, Any]:
    """The daily sizes in the console's chart shape."""
    points = [(datetime.fromisoformat(point["at"]), point["size"]) for point in stats["series"]]
    return {
        "x": [int(at.timestamp()) for at, _ in points],
        "series": [{"label": "members", "values": [size for _, size in points]}],
        "unit": "members",
    }


def _detail(
    segments: SegmentRepository, key: str
) -> tuple[SegmentDefinition, dict[str, Any], list[dict[str, Any]]]:
    definition = segments.get(key)
    return definition, segments.stats(key, days=_HISTORY_DAYS), segments.versions(key)


async def _segment_page(request: Request[Any, Any, Any], key: str) -> Response[str]:
    runtime: Runtime = request.app.state.runtime
    definition, stats, versions = await sync_to_thread(_detail, runtime.segments, key)
    return render(
        request,
        "segment.html",
        title=f"Segment {definition.name}",
        segment=definition,
        stats=stats,
        chart=_chart(stats),
        versions=versions,
        days=_HISTORY_DAYS,
    )


@get("/segments/{key:str}", opt=page("segments:read"), name="console:segment")
async def segment_detail(request: Request[Any, Any, Any], key: Key) -> Response[str]:
    """One segment: its definition, its size over the last days, its versions."""
    return await _segment_page(request, key)


@get(
    "/segments/{clustering:str}/{cluster:str}",
    opt=page("segments:read"),
    name="console:cluster-segment",
)
async def cluster_segment_detail(
    request: Request[Any, Any, Any], clustering: Key, cluster: Key
) -> Response[str]:
    """A cluster's segment ``CLUSTERING/CLUSTER``, as other segments show."""
    return await _segment_page(request, f"{clustering}/{cluster}")


async def _members_page(
    request: Request[Any, Any, Any], key: str, cursor: str | None
) -> Response[str]:
    runtime: Runtime = request.app.state.runtime
    found = await sync_to_thread(
        lambda: runtime.segments.members(key, limit=_MEMBERS_PAGE, after=cursor)
    )
    fragment = request.headers.get("hx-request") == "true"
    return render(
        request,
        "segment_members_part.html" if fragment else "segment_members.html",
        title=f"Members of {key}",
        key=key,
        members=found.members,
        next_cursor=found.next,
        cursor=cursor,
    )


@get(
    "/segments/{key:str}/members",
    opt=page("profiles:read", per_user=True),
    name="console:segment-members",
)
async def segment_members(
    request: Request[Any, Any, Any], key: Key, cursor: Cursor = None
) -> Response[str]:
    """A page of the segment's current members by profile id (an audited read)."""
    return await _members_page(request, key, cursor)


@get(
    "/segments/{clustering:str}/{cluster:str}/members",
    opt=page("profiles:read", per_user=True),
    name="console:cluster-segment-members",
)
async def cluster_segment_members(
    request: Request[Any, Any, Any], clustering: Key, cluster: Key, cursor: Cursor = None
) -> Response[str]:
    """A page of a cluster's current members by profile id (an audited read)."""
    return await _members_page(request, f"{clustering}/{cluster}", cursor)


ROUTES = [
    segment_list,
    segment_detail,
    cluster_segment_detail,
    segment_members,
    cluster_segment_members,
]
