"""The collector's routes as the Litestar app and its OpenAPI document see them.

The POST routes (``/v1/track``… ``/v1/batch``, ``/v1/m``) are answered by ``IngestFastPath``
before Litestar sees the request, so their Litestar handlers exist to put them in the one
OpenAPI document. Should a request reach one anyway, the handler hands it to the fast path
(an ASGI app, stored in ``app.state.ingest``), so the document and the behaviour cannot part.
The GET routes (the analytics.js settings, the tracker script) are the collector's own
Starlette endpoints, mounted the same way (``app.state.collector_pages``).

Segment's event shapes are declared here by hand: the collector reads bodies with its own
decoder, so no handler signature carries them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Request, get, post, route
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.params import FromPath
from litestar.types import ASGIApp

from personify.auth.secrets import MAX_SECRET_CHARS
from personify.events.normalize import SHORT_TYPES

# the name of the write-key scheme in the OpenAPI document
WRITE_KEY = "writeKey"
SECURITY_SCHEMES = {
    WRITE_KEY: SecurityScheme(
        type="http",
        scheme="basic",
        description="the source's write key as the user name and an empty password (or "
        "`writeKey` in the body)",
    ),
}
_SECURITY: list[dict[str, list[str]]] = [{WRITE_KEY: []}]
# ingest refuses longer ids
_MAX_ID_CHARS = 512
_TAGS = ["collector"]


def _text(description: str, *, max_length: int | None = _MAX_ID_CHARS) -> Schema:
    return Schema(
        type=[OpenAPIType.STRING, OpenAPIType.NULL], max_length=max_length, description=description
    )


def _time(description: str) -> Schema:
    return Schema(
        type=[OpenAPIType.STRING, OpenAPIType.NULL],
        format=OpenAPIFormat.DATE_TIME,
        description=description,
    )


def _object(description: str) -> Schema:
    return Schema(type=OpenAPIType.OBJECT, description=description)


_EVENT_FIELDS: dict[str, Schema | Reference] = {
    "userId": _text("your id of the user"),
    "anonymousId": _text("a device or visitor id, before the user is known"),
    "messageId": _text("the event's unique id: a resent event with the same one is a duplicate"),
    "timestamp": _time("when it happened (ISO-8601); the collector corrects client clock skew"),
    "originalTimestamp": _time("when it happened, on the client's clock"),
    "sentAt": _time("when the client sent it, on its clock"),
    "context": _object("where it happened (page, device, library, traits…)"),
    "integrations": _object("per-destination switches, kept as sent"),
    "properties": _object("the event's properties"),
    "traits": _object("the user's or group's traits; e-mails and phones are hashed at ingest"),
    "event": _text("the action (track)", max_length=None),
    "name": _text("the page or screen name", max_length=None),
    "category": _text("the page's category", max_length=None),
    "previousId": _text("the id being aliased (alias)"),
    "groupId": _text("the group (group)"),
    "channel": _text("browser, server, mobile…", max_length=None),
    "writeKey": _text("the write key, when not sent as Basic auth", max_length=MAX_SECRET_CHARS),
}
_IDENTIFIED = [
    Schema(required=["userId"], properties={"userId": Schema(type=OpenAPIType.STRING)}),
    Schema(required=["anonymousId"], properties={"anonymousId": Schema(type=OpenAPIType.STRING)}),
]
# what each event type needs besides an identity
_REQUIRED = {
    "track": ["event"],
    "identify": [],
    "page": [],
    "screen": [],
    "group": ["groupId"],
    "alias": ["previousId"],
}
_TYPES = list(_REQUIRED)


def _event_schema(kind: str | None) -> Schema:
    fields: dict[str, Schema | Reference] = dict(_EVENT_FIELDS)
    fields["type"] = Schema(
        type=OpenAPIType.STRING,
        enum=_TYPES,
        description="the event type (the route gives it for single events)",
    )
    if kind is None:
        return Schema(
            type=OpenAPIType.OBJECT,
            properties=fields,
            required=["type"],
            any_of=_IDENTIFIED,
            description="one event of a batch: any Segment event type",
        )
    return Schema(
        type=OpenAPIType.OBJECT,
        properties=fields,
        required=_REQUIRED[kind] or None,
        any_of=_IDENTIFIED,
        description=f"a Segment {kind} event; it needs userId or anonymousId",
    )


def _error_schema() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["error"],
        properties={
            "error": Schema(
                type=OpenAPIType.OBJECT,
                required=["code", "message", "details"],
                properties={
                    "code": Schema(type=OpenAPIType.STRING),
                    "message": Schema(type=OpenAPIType.STRING),
                    "details": Schema(description="what the code needs said; may be null"),
                },
            ),
            "code": Schema(
                type=OpenAPIType.STRING, description="error.code again, for Segment's clients"
            ),
            "message": Schema(
                type=OpenAPIType.STRING, description="error.message again, for Segment's clients"
            ),
        },
        description="the one error shape; collector routes repeat code and message at the top",
    )


# inlined where used: Litestar's document keeps only the components its own types produce
SCHEMAS: dict[str, Schema] = {
    **{f"{kind.title()}Event": _event_schema(kind) for kind in _TYPES},
    "Batch": Schema(
        type=OpenAPIType.OBJECT,
        required=["batch"],
        properties={
            "batch": Schema(type=OpenAPIType.ARRAY, items=_event_schema(None)),
            "sentAt": _time("when the client sent the batch; each event's skew is corrected"),
            "context": _object("defaults for every event's context"),
            "integrations": _object("defaults for every event's integrations"),
            "writeKey": _EVENT_FIELDS["writeKey"],
        },
        description="events of any type; a bad one is refused (and dead-lettered), not the batch",
    ),
    "Accepted": Schema(
        type=OpenAPIType.OBJECT,
        required=["success"],
        properties={"success": Schema(type=OpenAPIType.BOOLEAN, const=True)},
    ),
    "BatchAccepted": Schema(
        type=OpenAPIType.OBJECT,
        required=["success", "accepted", "duplicates", "rejected"],
        properties={
            "success": Schema(type=OpenAPIType.BOOLEAN, const=True),
            "accepted": Schema(type=OpenAPIType.INTEGER, minimum=0),
            "duplicates": Schema(type=OpenAPIType.INTEGER, minimum=0),
            "rejected": Schema(
                type=OpenAPIType.INTEGER, minimum=0, description="dead-lettered with a reason"
            ),
            "suppressed": Schema(
                type=OpenAPIType.INTEGER,
                minimum=1,
                description="events of erased (suppressed) ids, dropped and not stored; "
                "present only when there were any",
            ),
        },
    ),
    "CollectorError": _error_schema(),
    "ProjectSettings": Schema(
        type=OpenAPIType.OBJECT,
        required=["integrations"],
        properties={"integrations": _object("Segment.io points analytics.js at this server")},
        description="what analytics.js loads from its CDN, pointing it back at this collector",
    ),
}


_CORS = {
    "Access-Control-Allow-Origin": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING), description="browsers post from any origin"
    )
}


def _json(schema: str, description: str, *, cors: bool = True) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={"application/json": OpenAPIMediaType(schema=SCHEMAS[schema])},
        headers=dict(_CORS) if cors else None,
    )


def _errors(*statuses: int) -> dict[str, OpenAPIResponse]:
    described = {
        400: "the body or an event breaks the contract (invalid_json, missing_identity…)",
        401: "missing_write_key, or invalid_write_key (unknown or revoked)",
        413: "over the size limit (event_too_large, batch_too_large)",
        415: "not JSON (unsupported_media_type) or an unknown Content-Encoding",
        503: "the event log is full or down: retry after Retry-After",
    }
    return {str(status): _json("CollectorError", described[status]) for status in statuses}


def _operation(body: RequestBody | None, responses: dict[str, OpenAPIResponse]) -> type[Operation]:
    """An ``Operation`` whose body and answers are the ones declared here."""

    @dataclass
    class CollectorOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body
            self.responses = responses  # type: ignore[assignment]

    return CollectorOperation


def _body(schema: str, description: str) -> RequestBody:
    return RequestBody(
        content={"application/json": OpenAPIMediaType(schema=SCHEMAS[schema])},
        description=description + " (text/plain holding JSON and gzip bodies are taken too)",
        required=True,
    )


async def _fast_path(request: Request[Any, Any, Any]) -> ASGIApp:
    ingest: ASGIApp = request.app.state.ingest
    return ingest


async def _pages(request: Request[Any, Any, Any]) -> ASGIApp:
    pages: ASGIApp = request.app.state.collector_pages
    return pages


def _post(
    path: str, operation_id: str, summary: str, body: RequestBody, answer: str, **kw: Any
) -> HTTPRouteHandler:
    responses = {"200": _json(answer, "taken"), **_errors(400, 401, 413, 415, 503)}
    return post(
        path,
        operation_id=operation_id,
        summary=summary,
        operation_class=_operation(body, responses),
        security=_SECURITY,
        tags=_TAGS,
        name=operation_id,
        **kw,
    )(_fast_path)


def collector_handlers() -> Sequence[HTTPRouteHandler]:
    """Every collector route, described for the OpenAPI document."""
    handlers: list[HTTPRouteHandler] = []
    short = {name: letter for letter, name in SHORT_TYPES.items()}
    for kind in _TYPES:
        body = _body(f"{kind.title()}Event", f"one {kind} event")
        handlers.append(
            _post(f"/v1/{kind}", f"ingest_{kind}", f"Send a {kind} event", body, "Accepted")
        )
        handlers.append(
            _post(
                f"/v1/{short[kind]}",
                f"ingest_{kind}_short",
                f"Send a {kind} event (analytics.js's short path)",
                body,
                "Accepted",
            )
        )
    batch = _body("Batch", "a batch of events of any type, at most 500 KB")
    for path, operation_id in [("/v1/batch", "ingest_batch"), ("/v1/import", "ingest_import")]:
        handlers.append(_post(path, operation_id, "Send a batch of events", batch, "BatchAccepted"))
    handlers.append(
        _post(
            "/v1/b",
            "ingest_batch_short",
            "Send a batch of events (analytics.js's short path)",
            batch,
            "BatchAccepted",
        )
    )
    handlers.append(
        post(
            "/v1/m",
            operation_id="ingest_metrics",
            summary="analytics.js's delivery metrics: read and discarded",
            operation_class=_operation(
                RequestBody(
                    content={"application/json": OpenAPIMediaType(schema=Schema())},
                    description="anything, up to the single-event limit",
                ),
                {"200": _json("Accepted", "discarded"), **_errors(413)},
            ),
            tags=_TAGS,
            name="ingest_metrics",
        )(_fast_path)
    )
    # the browser's CORS preflight is the collector's to answer, not Litestar's
    handlers.append(
        route(
            "/v1/projects/{write_key:str}/settings",
            http_method=["OPTIONS"],
            include_in_schema=False,
            name="project_settings_preflight",
        )(_settings)
    )
    settings_answers = {
        "200": _json("ProjectSettings", "the settings document"),
        **_errors(401, 503),
    }
    handlers.append(
        get(
            "/v1/projects/{write_key:str}/settings",
            operation_id="project_settings",
            summary="The analytics.js settings of a write key",
            operation_class=_operation(None, settings_answers),
            tags=_TAGS,
            name="project_settings",
        )(_settings)
    )
    tracker = {
        "200": OpenAPIResponse(
            description="the tracker script",
            content={
                "application/javascript": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
            },
        )
    }
    handlers.append(
        get(
            "/personify.js",
            operation_id="tracker_script",
            summary="The browser tracker script",
            operation_class=_operation(None, tracker),
            tags=_TAGS,
            name="tracker_script",
        )(_pages)
    )
    return handlers


async def _settings(request: Request[Any, Any, Any], write_key: FromPath[str]) -> ASGIApp:
    return await _pages(request)
