"""The console's data quality and lineage page: the checks' results over time, the latest run
of every stage check by check, and a graph of what every derived dataset was made from.

The runs are the ones every stage records (``personify.quality.results``: the lake sink's
batches, the lake-wide checks, imports, feature tables); the lake-wide checks can be run from
here too (``personify.lake.monitor.check_lake``, as ``personify quality check`` runs them).

The lineage graph is drawn here, server-side, as an SVG: a page without JavaScript shows it,
and no graph library is needed for a few dozen boxes. Datasets are laid out in layers, left to
right: the lake first, then every dataset one column right of the furthest of its parents; a
column lists its datasets oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Final

import markupsafe
from litestar import Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.params import QueryParameter
from litestar.response import Redirect

from personify.lake.monitor import check_lake
from personify.lake.table import Lake
from personify.quality.lineage import LineageRecord, LineageRepository
from personify.quality.results import QualityRepository
from personify.quality.runner import QualityRun
from personify.runtime import Runtime
from personify.ui.rendering import page_headers, render
from personify.ui.session import page

__all__ = ["ROUTES", "LineageGraph", "lineage_graph"]

# runs per stage in the history, and lineage records in the graph: a page, not an archive
HISTORY_RUNS: Final = 60
LINEAGE_RECORDS: Final = 40
_STATUSES: Final = ("passed", "warned", "failed")

# the graph's geometry, in SVG user units
_NODE_W: Final = 220
_NODE_H: Final = 46
_COLUMN_GAP: Final = 70
_ROW_GAP: Final = 18
_MARGIN: Final = 12
_LABEL_CHARS: Final = 28


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One dataset in the graph, placed."""

    key: str
    label: str
    detail: str
    tooltip: str
    layer: int
    x: int = 0
    y: int = 0


@dataclass(frozen=True, slots=True)
class LineageGraph:
    """Datasets (placed) and derived-from edges (parent key, child key, label)."""

    nodes: list[GraphNode]
    edges: list[tuple[str, str, str]]
    width: int
    height: int

    def svg(self) -> markupsafe.Markup:
        """The graph as an inline SVG (every text escaped; styled by ``console.css``)."""
        return markupsafe.Markup(_svg(self))


def _short(text: str, limit: int = _LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lake_key(uri: str) -> str:
    return f"lake:{uri}"


def _record_label(record: LineageRecord) -> str:
    if record.output:
        return PurePosixPath(record.output.replace("\\", "/")).name or record.output
    return f"{record.kind} {record.id[:8]}"


def _tooltip(record: LineageRecord) -> str:
    parts = [
        f"{record.kind} {record.id}",
        f"made {record.created_at:%Y-%m-%d %H:%M} UTC",
        f"{record.row_count} rows" if record.row_count is not None else "",
        record.output or "",
        record.code_version,
    ]
    return "\n".join(part for part in parts if part)


def lineage_graph(records: Sequence[LineageRecord]) -> LineageGraph:
    """Lay out ``records``: each is a dataset derived from the lake versions and the
    datasets (lineage ids) it names; a parent outside ``records`` is shown by its id."""
    by_id = {record.id: record for record in records}
    parents: dict[str, list[tuple[str, str]]] = {}
    outside: dict[str, GraphNode] = {}
    for record in records:
        found: list[tuple[str, str]] = []
        if record.lake_uri:
            key = _lake_key(record.lake_uri)
            versions = ", ".join(f"{name} v{v}" for name, v in sorted(record.lake_versions.items()))
            found.append((key, versions))
            if key not in outside:
                outside[key] = GraphNode(
                    key, "events", f"lake {_short(record.lake_uri, 22)}", record.lake_uri, 0
                )
        for parent in record.inputs:
            if parent not in by_id and parent not in outside:
                outside[parent] = GraphNode(
                    parent, _short(parent, 16), "older dataset", f"lineage {parent}", 0
                )
            found.append((parent, ""))
        parents[record.id] = found

    layers: dict[str, int] = {key: 0 for key in outside}

    def layer_of(key: str, seen: frozenset[str]) -> int:
        if key in layers:
            return layers[key]
        if key in seen:  # a cycle cannot come from real lineage; draw it rather than loop
            return 0
        above = [layer_of(p, seen | {key}) for p, _ in parents.get(key, [])]
        layers[key] = 1 + max(above, default=-1)
        return layers[key]

    for record in records:
        layer_of(record.id, frozenset())
    unplaced = list(outside.values()) + [
        GraphNode(
            record.id,
            _short(_record_label(record)),
            f"{record.kind} · {record.created_at:%b %d %H:%M}",
            _tooltip(record),
            layers[record.id],
        )
        for record in sorted(records, key=lambda r: (r.created_at, r.id))
    ]
    columns: dict[int, list[GraphNode]] = {}
    for node in unplaced:
        columns.setdefault(node.layer, []).append(node)
    nodes: list[GraphNode] = []
    for layer in sorted(columns):
        for row, node in enumerate(columns[layer]):
            x = _MARGIN + layer * (_NODE_W + _COLUMN_GAP)
            y = _MARGIN + row * (_NODE_H + _ROW_GAP)
            nodes.append(GraphNode(node.key, node.label, node.detail, node.tooltip, layer, x, y))
    edges = [(parent, child, label) for child, found in parents.items() for parent, label in found]
    width = _MARGIN * 2 + (max(columns, default=0) + 1) * (_NODE_W + _COLUMN_GAP) - _COLUMN_GAP
    tallest = max((len(column) for column in columns.values()), default=1)
    height = _MARGIN * 2 + tallest * (_NODE_H + _ROW_GAP) - _ROW_GAP
    return LineageGraph(nodes, edges, width, height)


def _svg(graph: LineageGraph) -> str:
    esc = markupsafe.escape
    placed = {node.key: node for node in graph.nodes}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" viewBox="0 0 {graph.width} '
        f'{graph.height}" width="{graph.width}" height="{graph.height}" role="img" '
        'aria-labelledby="lineage-svg-title">',
        '<title id="lineage-svg-title">Lineage: each dataset points to the datasets it was '
        "made from</title>",
        '<defs><marker id="lineage-arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" class="lineage-arrow"/></marker></defs>',
    ]
    for parent, child, label in graph.edges:
        start, end = placed.get(parent), placed.get(child)
        if start is None or end is None:
            continue
        x1, y1 = start.x + _NODE_W, start.y + _NODE_H // 2
        x2, y2 = end.x, end.y + _NODE_H // 2
        bend = max((x2 - x1) // 2, 20)
        parts.append(
            f'<path class="lineage-edge" d="M {x1} {y1} C {x1 + bend} {y1}, {x2 - bend} {y2}, '
            f'{x2} {y2}" marker-end="url(#lineage-arrow)"><title>{esc(label or "derived from")}'
            "</title></path>"
        )
    for node in graph.nodes:
        kind = "lineage-source" if node.layer == 0 else "lineage-node"
        parts.append(
            f'<g class="{kind}"><title>{esc(node.tooltip)}</title>'
            f'<rect x="{node.x}" y="{node.y}" width="{_NODE_W}" height="{_NODE_H}" rx="7"/>'
            f'<text x="{node.x + 10}" y="{node.y + 19}" class="lineage-label">{esc(node.label)}'
            f'</text><text x="{node.x + 10}" y="{node.y + 36}" class="lineage-detail">'
            f"{esc(_short(node.detail, 36))}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _moment(run: QualityRun) -> float:
    return round(run.created_at.timestamp(), 3)


def _history_chart(runs: Sequence[QualityRun], value: str) -> dict[str, Any]:
    """One series per stage over the runs' times (``failed`` checks or ``rows`` checked);
    a stage without a run at a moment has no point there."""
    stages = sorted({run.stage for run in runs})
    # to the millisecond: two runs of a stage in one second stay two points
    moments = sorted({_moment(run) for run in runs})
    index = {moment: position for position, moment in enumerate(moments)}
    values: dict[str, list[int | None]] = {stage: [None] * len(moments) for stage in stages}
    for run in runs:
        number = len(run.failed) if value == "failed" else run.row_count
        slot = index[_moment(run)]
        known = values[run.stage][slot]
        values[run.stage][slot] = number if known is None else known + number
    return {
        "x": moments,
        "series": [{"label": stage, "values": values[stage]} for stage in stages],
        "unit": "failed checks" if value == "failed" else "rows",
    }


@dataclass(frozen=True, slots=True)
class _Loaded:
    latest: list[QualityRun]
    history: list[QualityRun]
    records: list[LineageRecord]


def _load(runtime: Runtime) -> _Loaded:
    repository = QualityRepository(runtime.db)
    history = repository.latest(limit=HISTORY_RUNS)
    latest = sorted(repository.latest(), key=lambda run: run.created_at, reverse=True)
    records = LineageRepository(runtime.db, clock=runtime.clock).list(limit=LINEAGE_RECORDS)
    return _Loaded(latest, history, records)


@get("/quality", opt=page("ops:read"), name="console:quality")
async def quality_page(
    request: Request[Any, Any, Any],
    checked: Annotated[str | None, QueryParameter(max_length=16)] = None,
) -> Response[str]:
    """Quality checks over time, the latest run of each stage, and the lineage graph."""
    runtime: Runtime = request.app.state.runtime
    loaded = await sync_to_thread(_load, runtime)
    history = sorted(loaded.history, key=lambda run: run.created_at, reverse=True)
    return render(
        request,
        "quality.html",
        title="Quality & lineage",
        latest=loaded.latest,
        history=history,
        failed_chart=_history_chart(loaded.history, "failed"),
        rows_chart=_history_chart(loaded.history, "rows"),
        records=loaded.records,
        graph=lineage_graph(loaded.records) if loaded.records else None,
        checked=checked if checked in _STATUSES else None,
    )


def _check_now(runtime: Runtime) -> QualityRun:
    return check_lake(
        Lake.from_settings(runtime.settings),
        runtime.settings,
        now=runtime.clock.now(),
        record=QualityRepository(runtime.db).record,
        raise_on_failure=False,
    )


@post("/quality/check", opt=page("ops:write"), name="console:quality-check", status_code=303)
async def run_check(request: Request[Any, Any, Any]) -> Response[Any]:
    """Run the lake-wide checks now and record them (as ``personify quality check`` does)."""
    runtime: Runtime = request.app.state.runtime
    run = await sync_to_thread(_check_now, runtime)
    return Redirect(
        f"/console/quality?checked={run.status}", status_code=303, headers=page_headers()
    )


ROUTES = [quality_page, run_check]
