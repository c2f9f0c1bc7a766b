"""Profile and worker routes (Bearer API key): a profile by any id, its history, its events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Router, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter, QueryParameter

from personify.api.admin import MAX_ID_CHARS, NO_NUL, invalid_parameter
from personify.api.documents import (
    CacheStats,
    Profile,
    ProfileEvents,
    ProfileHistory,
    WorkerStatus,
    admin_responses,
)
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.errors import ValidationError
from personify.events.normalize import parse_timestamp
from personify.predict.stage import explain
from personify.profiles.repository import MAX_CURSOR_CHARS, parse_cursor
from personify.profiles.service import ProfileService
from personify.runtime import Runtime
from personify.segments.repository import SegmentRepository
from personify.worker.worker import heartbeat_horizon

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
PER_USER = needs("profiles:read", per_user=True)
OPS = needs("ops:read")

# an ISO-8601 time is some 35 characters, with its fraction and offset
_MAX_TIME_CHARS = 64

ProfileId = Annotated[
    str,
    PathParameter(
        max_length=MAX_ID_CHARS,
        pattern=NO_NUL,
        description="a userId, an anonymousId or a profile id",
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=500, description="page size")]


def _as_of(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return parse_timestamp("as_of", raw)
    except ValidationError as exc:
        raise invalid_parameter(
            "as_of", "as_of must be an ISO-8601 time such as 2024-05-01T12:00:00Z"
        ) from exc


@get(
    "/v1/profiles/{id:str}",
    opt=PER_USER,
    responses={
        200: ResponseSpec(Profile, description="the profile document"),
        **admin_responses(found=True),
    },
)
async def profile(
    profiles: NamedDependency[ProfileService],
    segments: NamedDependency[SegmentRepository],
    runtime: NamedDependency[Runtime],
    id: ProfileId,
    as_of: Annotated[
        str | None,
        QueryParameter(
            max_length=_MAX_TIME_CHARS,
            description="an ISO-8601 time: the profile as it was then",
        ),
    ] = None,
) -> dict[str, Any]:
    """The profile that any of its ids belongs to: ids, traits, features, consent, the
    segments it is in, and its churn and lifetime-value predictions with their reasons."""
    moment = _as_of(as_of)
    document = await profiles.get(id, as_of=moment)
    member_of = await sync_to_thread(segments.profile_segments, document["profileId"], at=moment)
    # a new dict: the service may hand out the document it keeps in its cache
    body = {**document, "segments": member_of}
    if moment is None:
        # predictions are kept as of now only: a past version has none to show
        scores = await sync_to_thread(profiles.predictions, document["profileId"])
        loaded = await profiles.load(document["profileId"]) if scores else None
        body["predictions"] = (
            await sync_to_thread(explain, runtime.models, profiles.features, loaded.state, scores)
            if loaded is not None
            else scores
        )
    return body


@get("/v1/profiles/{id:str}/history", opt=PER_USER, responses=admin_responses(found=True))
async def history(
    profiles: NamedDependency[ProfileService],
    id: ProfileId,
    limit: Limit = 50,
    before: Annotated[
        int, QueryParameter(ge=0, le=2**31, description="the `next` of the previous page")
    ] = 0,
) -> ProfileHistory:
    """The profile's versions, newest first, and the merges that formed it."""
    body = await profiles.history(id, before=before or None, limit=limit)
    return ProfileHistory(**body)


@get("/v1/profiles/{id:str}/events", opt=PER_USER, responses=admin_responses(found=True))
async def events(
    profiles: NamedDependency[ProfileService],
    id: ProfileId,
    limit: Limit = 50,
    cursor: Annotated[
        str | None,
        QueryParameter(max_length=MAX_CURSOR_CHARS, description="the `next` of the previous page"),
    ] = None,
) -> ProfileEvents:
    """The events applied to the profile, newest first."""
    if cursor and parse_cursor(cursor) is None:
        raise invalid_parameter("cursor", "cursor is not one this API returned")
    body = await profiles.timeline(id, cursor=cursor, limit=limit)
    return ProfileEvents(**body)


@get("/v1/worker/status", opt=OPS, responses=admin_responses(parameters=False))
async def worker_status(runtime: NamedDependency[Runtime]) -> WorkerStatus:
    """The stream worker: lag, this process's worker and stages, every live worker's beat."""
    group = runtime.worker.group
    since = heartbeat_horizon(runtime.clock.now(), runtime.settings.worker_heartbeat_s)
    beats = await sync_to_thread(runtime.heartbeats.recent, since=since, group=group)
    stats = runtime.profiles.stats
    return WorkerStatus(
        group=group,
        lag=await runtime.log.lag(group),
        inProcess=runtime.worker.status() if runtime.worker.running else None,
        # this process's background stages: state, restarts, last failure
        stages=[stage.to_dict() for stage in runtime.stages()],
        workers=[beat.to_dict() for beat in beats],
        cache=CacheStats(
            hits=stats.hits,
            misses=stats.misses,
            fills=stats.fills,
            invalidations=stats.invalidations,
        ),
        jobs=[job.to_dict() for job in runtime.scheduler.status()]
        if runtime.scheduler is not None and runtime.scheduler.running
        else [],
    )


def profile_router() -> Router:
    """The profile and worker routes, behind the API key guard."""
    return Router(
        "/",
        route_handlers=[profile, history, events, worker_status],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["profiles"],
    )
