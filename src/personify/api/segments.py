"""Segment routes (Bearer API key): rule segments, their versions, members and sizes; RFM runs.

Reads need the ``read`` role, writes the ``admin`` role. A condition that breaks the language
(``docs/segments.md``) is a 422 whose ``error.details.errors`` points at each problem.

A clustering's segments have two-part keys, ``CLUSTERING/CLUSTER``: their reads are the same
routes with the key in two path segments (``/v1/segments/shoppers/whales/members``). The one-part
routes' own tails (``members``, ``stats``, ``versions``) are never a cluster's key, and Litestar
matches a path's literal segments before its parameters, so neither shadows the other.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, delete, get, patch, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from personify.api.admin import MAX_ID_CHARS, MAX_NAME_CHARS, NO_NUL
from personify.api.documents import (
    RfmRun,
    Segment,
    SegmentList,
    SegmentMember,
    SegmentMembers,
    SegmentStats,
    SegmentVersion,
    SegmentVersions,
    admin_responses,
    error_response,
)
from personify.api.errors import personify_error_handler
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.errors import NotFound, ValidationError
from personify.runtime import Runtime
from personify.segments.repository import SegmentDefinition, SegmentRepository

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
READ = needs("segments:read")
WRITE = needs("segments:write")
PER_USER = needs("profiles:read", per_user=True)

SegmentKey = Annotated[
    str,
    PathParameter(max_length=MAX_NAME_CHARS, pattern=NO_NUL, description="a segment key"),
]
ClusteringKey = Annotated[
    str,
    PathParameter(
        max_length=MAX_NAME_CHARS,
        pattern=NO_NUL,
        description="a clustering's key: the first part of its segments' keys",
    ),
]
ClusterKey = Annotated[
    str,
    PathParameter(
        max_length=MAX_NAME_CHARS,
        pattern=NO_NUL,
        description="a cluster's key: the second part of its segment's key",
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="page size")]
Cursor = Annotated[
    str | None,
    QueryParameter(
        max_length=MAX_ID_CHARS, pattern=NO_NUL, description="the `next` of the previous page"
    ),
]
Days = Annotated[int, QueryParameter(ge=1, le=366, description="days of daily sizes in `series`")]


class NewSegment(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/segments``."""

    key: Annotated[
        str,
        msgspec.Meta(description="1-100 letters, digits, '-', '_' or '.', starting with one"),
    ]
    condition: Annotated[Any, msgspec.Meta(description="the JSON condition (docs/segments.md)")]
    name: Annotated[
        str | None, msgspec.Meta(description="up to 200 characters (the key when absent)")
    ] = None
    description: Annotated[str, msgspec.Meta(description="up to 10,000 characters")] = ""


class SegmentChange(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PATCH /v1/segments/{key}``: what is given changes, the rest is kept."""

    name: str | None = None
    description: str | None = None
    condition: Any = None


def _not_found() -> dict[int, ResponseSpec]:
    return {404: error_response("segment_not_found: no segment has that key")}


def _document(definition: SegmentDefinition) -> Segment:
    return msgspec.convert(definition.to_dict(), Segment)


def _too_deep(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A body nested past what the JSON decoder recurses into is bad input, not a bug."""
    error = ValidationError(
        "the JSON body nests too deeply (a condition nests at most 16 levels)",
        code="invalid_json",
    )
    return personify_error_handler(request, error)


@get("/v1/segments", opt=READ, responses=admin_responses())
async def list_segments(
    segments: NamedDependency[SegmentRepository],
    archived: Annotated[bool, QueryParameter(description="include archived segments")] = False,
) -> SegmentList:
    """Every segment by key (active ones unless ``archived=true``)."""
    found = await sync_to_thread(segments.definitions, include_archived=archived)
    return SegmentList(data=[_document(definition) for definition in found])


@post(
    "/v1/segments",
    opt=WRITE,
    responses={
        **admin_responses(),
        400: error_response(
            "invalid_key, invalid_field (details.field), invalid_json, or invalid_parameter "
            "(a body that is not the documented object)"
        ),
        409: error_response("segment_exists: an active segment has that key"),
        422: error_response("invalid_condition: details.errors has a JSON pointer per problem"),
    },
)
async def create_segment(
    segments: NamedDependency[SegmentRepository], data: JSONBody[NewSegment]
) -> Segment:
    """Save a new rule segment (version 1, or the next version of an archived key)."""
    definition = await sync_to_thread(
        segments.create,
        data.key,
        name=data.name,
        description=data.description,
        condition=data.condition,
    )
    return _document(definition)


async def _show(segments: SegmentRepository, key: str) -> Segment:
    return _document(await sync_to_thread(segments.get, key))


async def _versions(segments: SegmentRepository, key: str) -> SegmentVersions:
    versions = await sync_to_thread(segments.versions, key)
    return SegmentVersions(key=key, data=msgspec.convert(versions, list[SegmentVersion]))


async def _members(
    segments: SegmentRepository, key: str, limit: int, cursor: str | None
) -> SegmentMembers:
    page = await sync_to_thread(segments.members, key, limit=limit, after=cursor)
    return SegmentMembers(
        data=[
            SegmentMember(
                profileId=member.profile_id,
                since=member.entered_at.isoformat(),
                segmentVersion=member.segment_version,
            )
            for member in page.members
        ],
        next=page.next,
    )


async def _stats(segments: SegmentRepository, key: str, days: int) -> SegmentStats:
    return msgspec.convert(await sync_to_thread(segments.stats, key, days=days), SegmentStats)


@get("/v1/segments/{key:str}", opt=READ, responses={**admin_responses(), **_not_found()})
async def show_segment(segments: NamedDependency[SegmentRepository], key: SegmentKey) -> Segment:
    """A segment's newest version (archived ones too)."""
    return await _show(segments, key)


@patch(
    "/v1/segments/{key:str}",
    opt=WRITE,
    responses={
        **admin_responses(),
        **_not_found(),
        400: error_response(
            "nothing_to_change, invalid_field (details.field), invalid_json, or "
            "invalid_parameter (a body that is not the documented object)"
        ),
        409: error_response("segment_changed: it changed meanwhile; read it again"),
        422: error_response("invalid_condition: details.errors has a JSON pointer per problem"),
    },
)
async def update_segment(
    segments: NamedDependency[SegmentRepository], key: SegmentKey, data: JSONBody[SegmentChange]
) -> Segment:
    """Save a new version of an active segment with the given name, description, condition."""
    if data.name is None and data.description is None and data.condition is None:
        raise ValidationError(
            "give at least one of name, description or condition", code="nothing_to_change"
        )
    definition = await sync_to_thread(
        segments.update,
        key,
        name=data.name,
        description=data.description,
        condition=data.condition,
    )
    return _document(definition)


@delete(
    "/v1/segments/{key:str}",
    opt=WRITE,
    # the archived definition is the answer, so not the 204 Litestar gives a DELETE
    status_code=200,
    responses={
        **admin_responses(),
        **_not_found(),
        409: error_response("segment_in_use: active segments read it (details.usedBy)"),
    },
)
async def archive_segment(segments: NamedDependency[SegmentRepository], key: SegmentKey) -> Segment:
    """Archive a segment (a new version; its members exit); refused while another reads it."""
    return _document(await sync_to_thread(segments.archive, key))


@get("/v1/segments/{key:str}/versions", opt=READ, responses={**admin_responses(), **_not_found()})
async def segment_versions(
    segments: NamedDependency[SegmentRepository], key: SegmentKey
) -> SegmentVersions:
    """Every saved version of a segment, newest first."""
    return await _versions(segments, key)


@get(
    "/v1/segments/{key:str}/members", opt=PER_USER, responses={**admin_responses(), **_not_found()}
)
async def segment_members(
    segments: NamedDependency[SegmentRepository],
    key: SegmentKey,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> SegmentMembers:
    """A page of the segment's current members, by profile id."""
    return await _members(segments, key, limit, cursor)


@get("/v1/segments/{key:str}/stats", opt=READ, responses={**admin_responses(), **_not_found()})
async def segment_stats(
    segments: NamedDependency[SegmentRepository], key: SegmentKey, days: Days = 30
) -> SegmentStats:
    """The segment's size now, entries and exits ever, and its size at the end of each day."""
    return await _stats(segments, key, days)


@get(
    "/v1/segments/{clustering:str}/{cluster:str}",
    opt=READ,
    responses={**admin_responses(), **_not_found()},
)
async def show_cluster_segment(
    segments: NamedDependency[SegmentRepository], clustering: ClusteringKey, cluster: ClusterKey
) -> Segment:
    """A cluster's segment ``CLUSTERING/CLUSTER``, as ``GET /v1/segments/{key}`` shows others."""
    return await _show(segments, f"{clustering}/{cluster}")


@get(
    "/v1/segments/{clustering:str}/{cluster:str}/versions",
    opt=READ,
    responses={**admin_responses(), **_not_found()},
)
async def cluster_segment_versions(
    segments: NamedDependency[SegmentRepository], clustering: ClusteringKey, cluster: ClusterKey
) -> SegmentVersions:
    """Every saved version of a cluster's segment, newest first."""
    return await _versions(segments, f"{clustering}/{cluster}")


@get(
    "/v1/segments/{clustering:str}/{cluster:str}/members",
    opt=PER_USER,
    responses={**admin_responses(), **_not_found()},
)
async def cluster_segment_members(
    segments: NamedDependency[SegmentRepository],
    clustering: ClusteringKey,
    cluster: ClusterKey,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> SegmentMembers:
    """A page of a cluster's current members, by profile id."""
    return await _members(segments, f"{clustering}/{cluster}", limit, cursor)


@get(
    "/v1/segments/{clustering:str}/{cluster:str}/stats",
    opt=READ,
    responses={**admin_responses(), **_not_found()},
)
async def cluster_segment_stats(
    segments: NamedDependency[SegmentRepository],
    clustering: ClusteringKey,
    cluster: ClusterKey,
    days: Days = 30,
) -> SegmentStats:
    """A cluster's size now, entries and exits ever, and its size at the end of each day."""
    return await _stats(segments, f"{clustering}/{cluster}", days)


@get(
    "/v1/rfm",
    opt=READ,
    responses={
        **admin_responses(),
        404: error_response("rfm_not_run: no RFM run yet (POST /v1/rfm/runs)"),
    },
)
async def rfm_model(runtime: NamedDependency[Runtime]) -> RfmRun:
    """The newest RFM run: its quintile cut points and the cells (segments ``rfm-<cell>``)."""
    model = await sync_to_thread(runtime.rfm.current)
    if model is None:
        raise NotFound("no RFM run yet; POST /v1/rfm/runs makes one", code="rfm_not_run")
    return msgspec.convert(model.to_dict(), RfmRun)


@post(
    "/v1/rfm/runs",
    opt=WRITE,
    responses={
        **admin_responses(),
        503: error_response("lake_unavailable or warehouse_unavailable: the lake cannot be read"),
    },
)
async def rfm_run(runtime: NamedDependency[Runtime]) -> RfmRun:
    """Score every buyer in the lake now: a new run's cut points; a backfill then puts every
    buyer in its cell (``backfill`` of ``GET /v1/segments/rfm-champions``)."""
    result = await sync_to_thread(runtime.run_rfm)
    return msgspec.convert(result.to_dict(), RfmRun)


def segment_router() -> Router:
    """The segment routes, behind the API key guard (writes need the admin role)."""
    return Router(
        "/",
        route_handlers=[
            list_segments,
            create_segment,
            show_segment,
            update_segment,
            archive_segment,
            segment_versions,
            segment_members,
            segment_stats,
            show_cluster_segment,
            cluster_segment_versions,
            cluster_segment_members,
            cluster_segment_stats,
            rfm_model,
            rfm_run,
        ],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["segments"],
        # msgspec raises RecursionError (not a decode error) on a body nested thousands deep
        exception_handlers={RecursionError: _too_deep},
    )
