"""Data subject rights over HTTP (Bearer API key; docs/privacy.md): erasure of the person
behind any of their ids, the request's status, the export of everything held about them, and
the un-suppression of an erased id.

``DELETE /v1/profiles/{id}`` answers 202 with the request at once: the id is suppressed from
then on, and the erasure itself runs in the background job ``privacy-requests`` (started at
once in this process when it runs the scheduler), through every store's eraser. Asking again
while it runs returns the same request.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from litestar import Router, delete, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from personify.api.admin import MAX_ID_CHARS, NO_NUL
from personify.api.documents import admin_responses, error_response
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.errors import NotFound
from personify.jobs.privacy import PRIVACY_JOB
from personify.runtime import Runtime

__all__ = ["privacy_handlers"]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
WRITE: Final = needs("profiles:write")
EXPORT: Final = needs("profiles:read", per_user=True)

SubjectId = Annotated[
    str,
    PathParameter(
        max_length=MAX_ID_CHARS,
        pattern=NO_NUL,
        description="a userId, an anonymousId, a previousId or a profile id",
    ),
]
RequestId = Annotated[
    str, PathParameter(max_length=64, pattern=NO_NUL, description="a privacy request's id")
]


class ErasureAccepted(msgspec.Struct):
    """An erasure request: follow it at ``GET /v1/privacy/requests/{requestId}``."""

    requestId: str
    status: Annotated[str, msgspec.Meta(description="pending, running, done or failed")]


class PrivacyRequest(msgspec.Struct):
    """A data subject request and each eraser's step (never the id in clear)."""

    requestId: str
    kind: Annotated[str, msgspec.Meta(description="erase or export")]
    status: Annotated[str, msgspec.Meta(description="pending, running, done or failed")]
    steps: Annotated[
        dict[str, Any],
        msgspec.Meta(description="per eraser: {status, result (what went) or error, at}"),
    ]
    attempts: int
    error: str | None
    createdAt: str
    updatedAt: str
    finishedAt: str | None
    nextAttemptAt: str | None


class Unsuppressed(msgspec.Struct):
    """The id's events are accepted again."""

    unsuppressed: bool


# registered on the app itself, beside the profile router's GET of the same path: Litestar
# refuses one path in two routers (each would add its own OPTIONS handler)
@delete(
    "/v1/profiles/{id:str}",
    opt=WRITE,
    status_code=202,
    guards=[authorize],
    security=BEARER_SECURITY,
    tags=["privacy"],
    responses={
        202: ResponseSpec(ErasureAccepted, description="the erasure request (pending or running)"),
        **admin_responses(),
    },
)
async def erase_profile(runtime: NamedDependency[Runtime], id: SubjectId) -> ErasureAccepted:
    """Erase the person behind ``id`` everywhere: their events are suppressed from now on,
    and the erasure runs in the background (its status at ``/v1/privacy/requests/{id}``)."""
    request = await sync_to_thread(runtime.privacy.submit, id)
    if runtime.scheduler is not None and runtime.scheduler.running:
        runtime.scheduler.trigger(PRIVACY_JOB)
    return ErasureAccepted(requestId=request.id, status=request.status)


@get(
    "/v1/privacy/requests/{request_id:str}",
    opt=WRITE,
    responses={
        **admin_responses(),
        404: error_response("privacy_request_not_found"),
    },
)
async def privacy_request(
    runtime: NamedDependency[Runtime], request_id: RequestId
) -> PrivacyRequest:
    """An erasure or export request: its status, and what each eraser removed."""
    request = await sync_to_thread(runtime.privacy.requests.get, request_id)
    return PrivacyRequest(**request.to_dict())


@get(
    "/v1/profiles/{id:str}/export",
    opt=EXPORT,
    responses={
        200: ResponseSpec(
            dict[str, Any],
            description="profile, history, events, memberships, predictions, decisions, "
            "experiments, recommendations, deadLetters, lakeEvents",
        ),
        **admin_responses(found=True),
    },
)
async def export_profile(runtime: NamedDependency[Runtime], id: SubjectId) -> dict[str, Any]:
    """Everything held about the person behind ``id``, as one JSON document (the export is
    recorded as a privacy request, without the id in clear)."""
    document = await sync_to_thread(runtime.exporter.export, id)
    request = await sync_to_thread(runtime.privacy.requests.record_export, id)
    return {"requestId": request.id, **document}


@delete(
    "/v1/privacy/suppressions/{id:str}",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        404: error_response("not_suppressed: the id is not suppressed"),
    },
)
async def unsuppress(runtime: NamedDependency[Runtime], id: SubjectId) -> Unsuppressed:
    """Accept the events of an erased id again (it stays suppressed until this is called)."""
    removed = await sync_to_thread(runtime.suppressions.unsuppress, id)
    if not removed:
        raise NotFound("that id is not suppressed", code="not_suppressed")
    return Unsuppressed(unsuppressed=True)


def privacy_handlers() -> list[Router | HTTPRouteHandler]:
    """The data subject routes, each behind the API key guard: a router, and the erasure
    route for the app itself (see ``erase_profile``)."""
    router = Router(
        "/",
        route_handlers=[privacy_request, export_profile, unsuppress],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["privacy"],
    )
    return [router, erase_profile]
