"""The profile explorer (``/console/profiles``): find a person by any of their ids, and see
everything the system holds about them on one page.

The search resolves an id as ``GET /v1/profiles/{id}`` does (a userId, an anonymousId, a
previousId or the profile id, through the identities table). The profile page reads the same
services as the API's profile routes: the document (traits as stored, so PII is already a
keyed hash; features; consent), its sessions, the event timeline a page at a time, the
versions and a diff between any two of them (each version's stored state replayed as
``personify.profiles.repository.replay_document`` does for ``as_of``), the merges drawn as an
identity graph, the segments it is in, its predictions with their reasons, the experiments
it was assigned in, and its activity over the last 30 days as a chart.

Every page here shows per-user data, so every read is audited (``page(…, per_user=True)``:
the audit log records the path with the person's id as its keyed hash). A role with
``profiles:write`` may also start an erasure, after typing the id again to confirm; its
status page follows the request as ``GET /v1/privacy/requests/{id}`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.enums import RequestEncodingType
from litestar.params import Body, PathParameter, QueryParameter
from litestar.response import Redirect

from personify.errors import NotFound
from personify.experiments.repository import sticky_assignments
from personify.jobs.privacy import PRIVACY_JOB
from personify.predict.stage import explain
from personify.profiles.history import diff_documents
from personify.profiles.repository import MAX_CURSOR_CHARS, replay_document
from personify.profiles.service import ProfileService
from personify.profiles.sessions import Session
from personify.runtime import Runtime
from personify.ui.rendering import page_headers, render
from personify.ui.session import page, runtime_of

__all__ = [
    "ROUTES",
    "GraphEdge",
    "GraphNode",
    "IdentityGraph",
    "daily_activity",
    "identity_graph",
    "profile_path",
    "version_diff",
]

# ids are at most this long everywhere (ingest refuses longer ones)
_MAX_ID_CHARS: Final = 512
# PostgreSQL cannot compare text holding NUL, and ingest refuses ids with one
_NO_NUL: Final = r"^[^\x00]*$"
_TIMELINE_PAGE: Final = 25
_VERSIONS_SHOWN: Final = 50
_SESSIONS_SHOWN: Final = 20
# the activity chart: the last 30 UTC days, read from the timeline 500 events at a time and
# at most this many pages (a profile busier than that shows the newest 10,000 events' days)
ACTIVITY_DAYS: Final = 30
_ACTIVITY_PAGE: Final = 500
_ACTIVITY_PAGES: Final = 20
# the identity graph draws this many ids around the profile; the table lists them all
_GRAPH_NODES: Final = 24
_LABEL_CHARS: Final = 22

ProfileId = Annotated[
    str,
    PathParameter(
        max_length=_MAX_ID_CHARS,
        pattern=_NO_NUL,
        description="a userId, an anonymousId, a previousId or a profile id",
    ),
]
# a version number; 0 is the profile before its first version (nothing)
VersionNumber = Annotated[int | None, QueryParameter(ge=0, le=2**31)]

READ: Final = page("profiles:read", per_user=True)


def profile_path(identity: str) -> str:
    """The console page of the profile behind ``identity`` (the id quoted for a path)."""
    return "/console/profiles/" + quote(identity, safe="")


# -- the identity graph ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One id drawn around the profile: where, its label, and what kind of id it is."""

    x: float
    y: float
    label: str
    title: str
    kind: str
    anchor: str


@dataclass(frozen=True, slots=True)
class GraphEdge:
    """A line between two nodes: an id of the profile, or a merge."""

    x1: float
    y1: float
    x2: float
    y2: float
    kind: str


@dataclass(slots=True)
class IdentityGraph:
    """The profile in the centre, its ids on an ellipse around it, merges as edges."""

    width: int
    height: int
    centre: GraphNode
    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)
    hidden: int = 0


def _label(identity: str) -> str:
    return identity if len(identity) <= _LABEL_CHARS else identity[: _LABEL_CHARS - 1] + "…"


def identity_graph(
    profile_id: str, ids: Mapping[str, Sequence[str]], merges: Sequence[Mapping[str, Any]]
) -> IdentityGraph:
    """Lay out the identity graph: ``ids`` is the document's ``ids`` section, ``merges``
    the history's merges (``from``, ``ids``). An id that came with a merge hangs off the
    profile it came from, which hangs off the centre by a merge edge; the rest hang off the
    centre. Nodes sit on an ellipse in that order, so a merge's ids sit beside it."""
    width, height = 840, 440
    cx, cy = width / 2, height / 2
    # room beside the ellipse for a label of _LABEL_CHARS characters
    rx, ry = width / 2 - 200, height / 2 - 50
    kinds: dict[str, str] = {}
    for kind, key in (("previous", "previousIds"), ("anonymous", "anonymousIds")):
        kinds.update(dict.fromkeys(ids.get(key, ()), kind))
    kinds.update(dict.fromkeys(ids.get("userIds", ()), "user"))
    # the ring, in order: (id, kind, parent) where parent None is the centre
    ring: list[tuple[str, str, str | None]] = []
    placed: set[str] = {profile_id}
    for merge in merges:
        source = str(merge.get("from", ""))
        if not source or source in placed:
            continue
        placed.add(source)
        ring.append((source, kinds.get(source, "merged"), None))
        for identity in merge.get("ids", ()):
            if identity not in placed and identity in kinds:
                placed.add(identity)
                ring.append((identity, kinds[identity], source))
    for identity in sorted(kinds):
        if identity not in placed:
            placed.add(identity)
            ring.append((identity, kinds[identity], None))
    merged_from = {str(m.get("from", "")) for m in merges}
    shown = ring[:_GRAPH_NODES]
    graph = IdentityGraph(
        width,
        height,
        GraphNode(cx, cy, _label(profile_id), profile_id, "centre", "middle"),
        hidden=len(ring) - len(shown),
    )
    where: dict[str, GraphNode] = {}
    for index, (identity, kind, _) in enumerate(shown):
        # start at the top and go clockwise
        angle = -math.pi / 2 + 2 * math.pi * index / max(len(shown), 1)
        x, y = cx + rx * math.cos(angle), cy + ry * math.sin(angle)
        cos = math.cos(angle)
        anchor = "start" if cos > 0.3 else "end" if cos < -0.3 else "middle"
        node = GraphNode(round(x, 1), round(y, 1), _label(identity), identity, kind, anchor)
        where[identity] = node
        graph.nodes.append(node)
    centre = graph.centre
    for identity, _, parent in shown:
        node = where[identity]
        start = where.get(parent) if parent is not None else None
        if start is None:
            start = centre
        kind = "merge" if identity in merged_from else "id"
        graph.edges.append(GraphEdge(start.x, start.y, node.x, node.y, kind))
    return graph


# -- versions and their diff -------------------------------------------------------------


def _path_text(path: Sequence[Any]) -> str:
    return ".".join(str(part) for part in path)


def _lookup(document: Mapping[str, Any], path: Sequence[Any]) -> tuple[bool, Any]:
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return False, None
        value = value[key]
    return True, value


def version_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What changed from one stored state to another, path by path: each row is
    ``{"change": "added" | "removed" | "changed", "path", "before", "after"}``, by path."""
    diff = diff_documents(old, new)
    rows = []
    for path, value in diff["set"]:
        existed, before = _lookup(old, path)
        rows.append(
            {
                "change": "changed" if existed else "added",
                "path": _path_text(path),
                "before": before,
                "after": value,
            }
        )
    for path in diff["unset"]:
        _, before = _lookup(old, path)
        rows.append(
            {"change": "removed", "path": _path_text(path), "before": before, "after": None}
        )
    return sorted(rows, key=lambda row: row["path"])


def _documents_at(
    runtime: Runtime, profile_id: str, versions: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """The profile's own stored state as of each of ``versions``."""
    found = {}
    with runtime.db.connect() as conn:
        for version in versions:
            document = replay_document(conn, profile_id, through_version=version)
            if document is not None:
                found[version] = document
    return found


def _diff_between(
    runtime: Runtime, profile_id: str, older: int, newer: int
) -> list[dict[str, Any]] | None:
    """The diff from version ``older`` to ``newer`` (0: before the first); ``None`` when
    either is no longer kept (retention keeps a profile at rest as its newest version)."""
    wanted = sorted({older, newer} - {0})
    documents: dict[int, dict[str, Any]] = {0: {}}
    documents.update(_documents_at(runtime, profile_id, wanted))
    if older not in documents or newer not in documents:
        return None
    return version_diff(documents[older], documents[newer])


# -- activity ----------------------------------------------------------------------------


def _event_time(payload: Any) -> datetime | None:
    if not isinstance(payload, Mapping):
        return None
    raw = payload.get("timestamp")
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def daily_activity(times: Sequence[datetime], now: datetime, days: int) -> dict[str, Any]:
    """Events per UTC day over the last ``days`` days up to ``now``, in the console's chart
    shape: ``{"x": [each day's start, unix seconds], "series": [...], "unit": "events"}``."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days - 1)
    counts = [0] * days
    for moment in times:
        index = (moment.astimezone(UTC) - first).days
        if 0 <= index < days:
            counts[index] += 1
    return {
        "x": [int((first + timedelta(days=i)).timestamp()) for i in range(days)],
        "series": [{"label": "events", "values": counts}],
        "unit": "events",
    }


async def _activity(profiles: ProfileService, profile_id: str, now: datetime) -> dict[str, Any]:
    """The activity chart's data, read from the timeline newest first (the same pages as
    ``GET /v1/profiles/{id}/events``) until it reaches back past the window."""
    since = now - timedelta(days=ACTIVITY_DAYS)
    times: list[datetime] = []
    cursor: str | None = None
    for _ in range(_ACTIVITY_PAGES):
        body = await profiles.timeline(profile_id, cursor=cursor, limit=_ACTIVITY_PAGE)
        page_times = [t for t in map(_event_time, body["data"]) if t is not None]
        times.extend(page_times)
        cursor = body["next"]
        if cursor is None or (page_times and min(page_times) < since):
            break
    return daily_activity(times, now, ACTIVITY_DAYS)


# -- what a timeline entry shows ---------------------------------------------------------


def _event_name(payload: Mapping[str, Any]) -> str:
    kind = str(payload.get("type", "event"))
    if kind == "track":
        return str(payload.get("event", ""))
    if kind in ("page", "screen"):
        return str(payload.get("name") or payload.get("properties", {}).get("path", "") or "")
    if kind == "alias":
        return f"{payload.get('previousId', '')} → {payload.get('userId', '')}"
    if kind == "group":
        return str(payload.get("groupId", ""))
    traits = payload.get("traits")
    if kind == "identify" and isinstance(traits, Mapping) and traits:
        # the names only: the values may be personal data (hashed, but long)
        return "traits: " + ", ".join(sorted(str(name) for name in traits))
    return ""


def _timeline_rows(data: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for payload in data:
        if not isinstance(payload, Mapping):
            continue
        rows.append(
            {
                "at": _event_time(payload),
                "type": str(payload.get("type", "")),
                "name": _event_name(payload),
                "messageId": str(payload.get("messageId", "")),
                "payload": payload,
            }
        )
    return rows


def _sessions(sessions: Mapping[str, Session]) -> list[dict[str, Any]]:
    rows = []
    for start_text, one in sorted(sessions.items(), key=lambda item: -int(item[0])):
        start = int(start_text)
        rows.append(
            {
                "start": datetime.fromtimestamp(start / 1000, UTC),
                "end": datetime.fromtimestamp(one.end / 1000, UTC),
                "duration_s": round((one.end - start) / 1000),
                "pages": one.pages,
                "events": one.events,
            }
        )
        if len(rows) == _SESSIONS_SHOWN:
            break
    return rows


# -- the pages ---------------------------------------------------------------------------


def _missing(request: Request[Any, Any, Any], identity: str) -> Response[str]:
    return render(
        request,
        "profile_missing.html",
        status_code=404,
        title="No such profile",
        query=identity,
        unaddressable=None,
    )


@get("/profiles", opt=READ, name="console:profiles")
async def search(
    request: Request[Any, Any, Any],
    q: Annotated[
        str | None,
        QueryParameter(max_length=_MAX_ID_CHARS, description="any id of the person"),
    ] = None,
) -> Response[Any]:
    """The search box; an id that resolves goes straight to its profile."""
    query = (q or "").strip()
    if not query:
        return render(request, "profiles.html", title="Profiles", query="")
    if "\x00" not in query:
        profile_id = await sync_to_thread(runtime_of(request).profiles.repository.resolve, query)
        if profile_id is not None:
            # a page address cannot hold "/" in one segment: such an id goes to its
            # profile by the profile's own id
            target = next((i for i in (query, profile_id) if "/" not in i), None)
            if target is None:
                return render(
                    request,
                    "profile_missing.html",
                    title="Profile found",
                    query=query,
                    unaddressable=profile_id,
                )
            return Redirect(profile_path(target), status_code=303, headers=page_headers())
    return _missing(request, query)


@get("/profiles/{id:str}", opt=READ, name="console:profile")
async def profile(
    request: Request[Any, Any, Any],
    id: ProfileId,
    cursor: Annotated[
        str | None,
        QueryParameter(max_length=MAX_CURSOR_CHARS, description="the timeline's older page"),
    ] = None,
    diff_from: VersionNumber = None,
    diff_to: VersionNumber = None,
) -> Response[str]:
    """Everything held about the person behind ``id``."""
    runtime = runtime_of(request)
    profiles = runtime.profiles
    try:
        document = await profiles.get(id)
    except NotFound:
        return _missing(request, id)
    profile_id: str = document["profileId"]
    loaded = await profiles.load(profile_id)
    member_of = await sync_to_thread(runtime.segments.profile_segments, profile_id)
    scores = await sync_to_thread(profiles.predictions, profile_id)
    predictions = (
        await sync_to_thread(explain, runtime.models, profiles.features, loaded.state, scores)
        if scores and loaded is not None
        else scores
    )
    timeline = await profiles.timeline(profile_id, cursor=cursor, limit=_TIMELINE_PAGE)
    history = await profiles.history(profile_id, limit=_VERSIONS_SHOWN)
    numbers = [int(v["version"]) for v in history["data"]]
    diff_rows: list[dict[str, Any]] | None = None
    older, newer = diff_from, diff_to
    if numbers:
        # by default the newest version against the one before it
        newer = newer if newer is not None else numbers[0]
        older = older if older is not None else max((n for n in numbers if n < newer), default=0)
        diff_rows = await sync_to_thread(_diff_between, runtime, profile_id, older, newer)
    units = sorted({profile_id, *(await sync_to_thread(profiles.repository.ids, profile_id))})
    assignments = await sync_to_thread(_assignments, runtime, units)
    graph = identity_graph(profile_id, document["ids"], history["merges"])
    activity = await _activity(profiles, profile_id, runtime.clock.now())
    return render(
        request,
        "profile.html",
        title=f"Profile {profile_id}",
        identity=id,
        profile=document,
        features=document["features"],
        sessions=_sessions(loaded.state.sessions) if loaded is not None else [],
        segments=member_of,
        predictions=predictions,
        assignments=assignments,
        timeline=_timeline_rows(timeline["data"]),
        timeline_next=timeline["next"],
        timeline_paged=bool(cursor),
        versions=history["data"],
        merges=history["merges"],
        more_versions=history["next"] is not None,
        diff_from=older,
        diff_to=newer,
        diff=diff_rows,
        graph=graph,
        activity=activity,
        activity_days=[
            {"day": datetime.fromtimestamp(x, UTC).date().isoformat(), "count": count}
            for x, count in zip(activity["x"], activity["series"][0]["values"], strict=True)
        ],
        activity_total=sum(activity["series"][0]["values"]),
        self_path=profile_path(id),
        query="",
    )


def _assignments(runtime: Runtime, units: Sequence[str]) -> list[dict[str, Any]]:
    """The experiments the person was assigned in (first exposure wins), by experiment."""
    with runtime.db.connect() as conn:
        found = sticky_assignments(conn, units)
    return [
        {"experiment": key, "variant": variant, "phase": phase}
        for key, (variant, phase) in sorted(found.items())
    ]


# -- erasure -----------------------------------------------------------------------------


def _erase_page(
    request: Request[Any, Any, Any], identity: str, profile_id: str, *, error: str | None
) -> Response[str]:
    return render(
        request,
        "profile_erase.html",
        status_code=400 if error else 200,
        title="Erase this person",
        identity=identity,
        profile_id=profile_id,
        error=error,
        self_path=profile_path(identity),
    )


@get("/profiles/{id:str}/erase", opt=page("profiles:write", per_user=True), name="console:erase")
async def erase_form(request: Request[Any, Any, Any], id: ProfileId) -> Response[str]:
    """The confirmation step: type the id again to erase the person behind it."""
    profile_id = await sync_to_thread(runtime_of(request).profiles.repository.resolve, id)
    if profile_id is None:
        return _missing(request, id)
    return _erase_page(request, id, profile_id, error=None)


@post(
    "/profiles/{id:str}/erase",
    opt=page("profiles:write", per_user=True),
    name="console:erase-start",
    status_code=303,
)
async def erase(
    request: Request[Any, Any, Any],
    id: ProfileId,
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """Start the erasure (as ``DELETE /v1/profiles/{id}`` does) once the id was typed again,
    and go to the request's status page."""
    runtime = runtime_of(request)
    profile_id = await sync_to_thread(runtime.profiles.repository.resolve, id)
    if profile_id is None:
        return _missing(request, id)
    if data.get("confirm", "").strip() != id:
        return _erase_page(
            request, id, profile_id, error="The id you typed does not match; nothing was erased."
        )
    started = await sync_to_thread(runtime.privacy.submit, id)
    if runtime.scheduler is not None and runtime.scheduler.running:
        runtime.scheduler.trigger(PRIVACY_JOB)
    return Redirect(
        f"/console/privacy/requests/{quote(started.id, safe='')}",
        status_code=303,
        headers=page_headers(),
    )


@get(
    "/privacy/requests/{request_id:str}",
    opt=page("profiles:write"),
    name="console:privacy-request",
)
async def erasure_status(
    request: Request[Any, Any, Any],
    request_id: Annotated[str, PathParameter(max_length=64, pattern=_NO_NUL)],
) -> Response[str]:
    """An erasure request's status, and what each eraser removed (never the id in clear)."""
    found = await sync_to_thread(runtime_of(request).privacy.requests.get, request_id)
    return render(
        request,
        "profile_erasure.html",
        title="Erasure request",
        erasure=found.to_dict(),
    )


ROUTES = [search, profile, erase_form, erase, erasure_status]
