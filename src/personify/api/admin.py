"""Admin routes (Bearer API key): dead letters, the log's lag, the collector's 503 counts."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Annotated, Any, TypeVar

from litestar import Router, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from personify.api.documents import (
    FailedEventPage,
    IngestStatus,
    LogStatus,
    UnavailableCounts,
    admin_responses,
)
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.errors import InvalidDefinition, ValidationError
from personify.eventlog.base import EventLog
from personify.ingest.asgi import UnavailableLog
from personify.store.failed_events import FailedEventRepository

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
OPS = needs("ops:read")
OPS_PER_USER = needs("ops:read", per_user=True)

# ids are at most 512 characters at ingest; names (groups, stages) are short
MAX_ID_CHARS = 512
MAX_NAME_CHARS = 200
# PostgreSQL cannot compare text holding NUL, and ingest refuses ids with one
NO_NUL = r"^[^\x00]*$"


def invalid_parameter(name: str, message: str) -> ValidationError:
    """The 400 for a bad query or path parameter: it names the parameter, never its value."""
    return ValidationError(message, code="invalid_parameter", details={"parameter": name})


@get("/v1/failed-events", opt=OPS_PER_USER, responses=admin_responses())
async def failed_events(
    dead_letters: NamedDependency[FailedEventRepository],
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="page size")] = 100,
    after: Annotated[
        int, QueryParameter(ge=0, le=2**62, description="the `next` of the previous page")
    ] = 0,
    stage: Annotated[
        str | None,
        QueryParameter(
            max_length=MAX_NAME_CHARS, pattern=NO_NUL, description="only this stage's (ingest…)"
        ),
    ] = None,
) -> FailedEventPage:
    """Dead letters (events refused at ingest or by a stage) with their reason, oldest first."""
    items = await sync_to_thread(dead_letters.list, stage=stage, after_id=after, limit=limit)
    return FailedEventPage(
        data=[item.to_dict() for item in items],
        next=items[-1].id if len(items) == limit else None,
    )


@get("/v1/log", opt=OPS, responses=admin_responses())
async def log_status(
    log: NamedDependency[EventLog],
    group: Annotated[
        str | None,
        QueryParameter(max_length=MAX_NAME_CHARS, pattern=NO_NUL, description="a consumer group"),
    ] = None,
) -> LogStatus:
    """How many records a consumer group (``worker`` unless named) has not committed yet."""
    name = group or "worker"
    return LogStatus(group=name, lag=await log.lag(name))


@get("/v1/ingest/status", opt=OPS, responses=admin_responses(parameters=False))
async def ingest_status(unavailable: NamedDependency[UnavailableLog]) -> IngestStatus:
    """The collector's 503 answers since this process started, by code."""
    counts = unavailable.to_dict()
    return IngestStatus(
        unavailable=UnavailableCounts(total=counts["total"], byCode=counts["byCode"])
    )


def admin_router() -> Router:
    """The admin routes, behind the API key guard."""
    return Router(
        "/",
        route_handlers=[failed_events, log_status, ingest_status],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["admin"],
    )


T = TypeVar("T")


async def unprocessable_in_thread(codes: Collection[str], call: Callable[..., T], *args: Any) -> T:
    """``call`` in a thread; a ``ValidationError`` whose code is in ``codes`` (a definition or
    file the caller sent that breaks its rules) becomes a 422 with the same code and details."""
    try:
        return await sync_to_thread(call, *args)
    except ValidationError as exc:
        if exc.code in codes and not isinstance(exc, InvalidDefinition):
            raise InvalidDefinition(exc.message, code=exc.code, details=exc.details) from exc
        raise
