"""Profile and worker routes (Bearer API key): a profile by any id, its history, its events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Router, get, put
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

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
from personify.errors import NotFound, ValidationError
from personify.events.normalize import parse_timestamp
from personify.ingest.sources import Source
from personify.predict.stage import explain
from personify.profiles.repository import MAX_CURSOR_CHARS, parse_cursor
from personify.profiles.service import ProfileService
from personify.runtime import Runtime
from personify.segments.repository import SegmentRepository
from personify.worker.worker import heartbeat_horizon

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
PER_USER = needs("profiles:read", per_user=True)
OPS = needs("ops:read")
CONSENT = needs("profiles:write")

# the purposes consent is given or withdrawn for (docs/privacy.md)
CONSENT_PURPOSES = ("analytics", "personalization", "advertising")
# what the consent API's events are attributed to: not a source with a write key
_CONSENT_SOURCE = Source(
    id="personify-consent",
    name="consent API",
    write_key_prefix="",
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    revoked_at=None,
)


class ConsentBody(msgspec.Struct, forbid_unknown_fields=True):
    """Consent per purpose; a purpose left out keeps what the profile said before."""

    analytics: bool | None = None
    personalization: bool | None = None
    advertising: bool | None = None


class ConsentChange(msgspec.Struct):
    """The consent event appended to the log (the worker applies it like any event)."""

    profileId: str
    messageId: str
    categoryPreferences: dict[str, bool]


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


@put(
    "/v1/profiles/{id:str}/consent",
    opt=CONSENT,
    status_code=202,
    responses=admin_responses(found=True),
)
async def update_consent(
    runtime: NamedDependency[Runtime],
    profiles: NamedDependency[ProfileService],
    id: ProfileId,
    data: JSONBody[ConsentBody],
) -> ConsentChange:
    """Record the person's consent per purpose (analytics, personalization, advertising)
    as a ``Consent Updated`` event in their history; the stream worker applies it, and a
    withdrawn personalization consent ends decisions, scoring and segments for them."""
    preferences = {
        purpose: value
        for purpose in CONSENT_PURPOSES
        if (value := getattr(data, purpose)) is not None
    }
    if not preferences:
        raise ValidationError(
            f"give consent for at least one of {', '.join(CONSENT_PURPOSES)}",
            code="invalid_consent",
        )
    loaded = await profiles.load(id)
    if loaded is None:
        raise NotFound(f"no profile has the id {id!r}", code="profile_not_found")
    key = "userId" if id in loaded.state.user_ids else "anonymousId"
    message_id = f"consent-{uuid.uuid4().hex}"
    event = {
        "type": "track",
        "event": "Consent Updated",
        key: id,
        "messageId": message_id,
        "properties": dict(preferences),
        "context": {"consent": {"categoryPreferences": dict(preferences)}},
    }
    outcome = await runtime.collector.collect(_CONSENT_SOURCE, [event])
    if outcome.rejected:
        raise ValidationError("the consent event was refused", code="invalid_consent")
    return ConsentChange(
        profileId=loaded.profile_id, messageId=message_id, categoryPreferences=preferences
    )


def profile_router() -> Router:
    """The profile and worker routes, behind the API key guard."""
    return Router(
        "/",
        route_handlers=[profile, history, events, update_consent, worker_status],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["profiles"],
    )
