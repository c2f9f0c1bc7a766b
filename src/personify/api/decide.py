"""``POST /v1/decide``: the content to show one user in the placements of a page
(``personify.decide.engine``; docs/decide.md).

Two callers, two shapes:

* a server with an API key (``Authorization: Bearer``, the ``read`` role) gets the full
  answer: each placement's trace (candidates, exclusions and their reasons, matched
  segments and conditions, scores) and the decision's (profile, segments, fallback);
* a browser with a source's write key (HTTP Basic, as the collector takes it, or ``writeKey``
  in the body) gets the public shape: the items and whether each placement fell back, no
  trace and no reason, so that nothing about the user (their segments, whether a profile
  exists) is given to whoever holds the page. CORS is open, and a ``text/plain`` body is
  read as JSON, so browsers send it without a preflight, as the tracker does.

A decision never fails for lack of data (the engine falls back); a body that is not a
decision request is a 400, and credentials that are missing or wrong a 401.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import msgspec
import xxhash
from litestar import MediaType, Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from personify.api.admin import NO_NUL, invalid_parameter
from personify.api.collector import WRITE_KEY
from personify.api.documents import UNAVAILABLE, error_response
from personify.api.guards import BEARER, admit
from personify.auth.secrets import MAX_SECRET_CHARS
from personify.decide.engine import MAX_LIMIT, DecisionEngine, DecisionRequest, PlacementRequest
from personify.errors import NotFound, Unauthorized, ValidationError
from personify.ingest.sources import SourceRepository
from personify.runtime import Runtime

__all__ = ["DecisionDocument", "decide_router"]

# the most placements one decision fills (a page has a handful)
MAX_PLACEMENTS = 20
_MAX_ID_CHARS = 512
CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, OPTIONS",
    "access-control-allow-headers": "Content-Type, Authorization",
    "access-control-max-age": "86400",
}


class PlacementAsk(msgspec.Struct, forbid_unknown_fields=True):
    """A placement to fill."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="its id")]
    limit: Annotated[
        int | None, msgspec.Meta(description=f"1-{MAX_LIMIT} items (the placement's own if null)")
    ] = None


class DecisionContext(msgspec.Struct):
    """Where the decision is shown: kept in the exposure event; ``locale`` also selects
    items by their locale."""

    page: Annotated[Any, msgspec.Meta(description="the page: a path, or {path, url, title}")] = None
    device: Annotated[str | None, msgspec.Meta(description="up to 100 characters")] = None
    locale: Annotated[str | None, msgspec.Meta(description="en, en-GB… (35 characters)")] = None
    timestamp: Annotated[str | None, msgspec.Meta(description="ISO 8601 (40 characters)")] = None


class DecideBody(msgspec.Struct, forbid_unknown_fields=True):
    """A decision request: a userId or an anonymousId, and the placements of the page."""

    placements: Annotated[list[PlacementAsk], msgspec.Meta(min_length=1, max_length=MAX_PLACEMENTS)]
    userId: Annotated[str | None, msgspec.Meta(description="up to 512 characters")] = None
    anonymousId: Annotated[str | None, msgspec.Meta(description="up to 512 characters")] = None
    context: DecisionContext | None = None
    writeKey: Annotated[str | None, msgspec.Meta(description="a source's write key")] = None


class DecidedItem(msgspec.Struct):
    """An item chosen for a placement."""

    id: str
    version: Annotated[int, msgspec.Meta(description="the published version served")]
    variant: Annotated[str | None, msgspec.Meta(description="the variant's key, if any")]
    score: Annotated[float, msgspec.Meta(description="the strategy's score")]
    probability: Annotated[
        float, msgspec.Meta(description="the chance it was shown here (off-policy evaluation)")
    ]
    rank: int
    content: Annotated[dict[str, Any], msgspec.Meta(description="its fields (and variant's)")]


class DecidedPlacement(msgspec.Struct, omit_defaults=True):
    """What one placement shows, and (API keys only) why."""

    items: list[DecidedItem]
    strategy: Annotated[str | None, msgspec.Meta(description="null when it fell back")]
    fallback: Annotated[bool, msgspec.Meta(description="the default was served instead")]
    reason: Annotated[
        str | None,
        msgspec.Meta(
            description="why it fell back: unknown_user, no_consent, profiles_unavailable, "
            "segments_unavailable, catalog_unavailable, unknown_placement, no_eligible_items"
        ),
    ] = None
    experiment: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(
            description="the running experiment that chose what this placement shows: "
            "{key, variant, phase, probability} (and context, for a bandit)"
        ),
    ] = None
    trace: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(description="candidates, excluded (id, reason), matched, scores"),
    ] = None


class DecisionDocument(msgspec.Struct, omit_defaults=True):
    """A decision: its id (in the exposure event too) and each placement's items."""

    decisionId: str
    placements: dict[str, DecidedPlacement]
    trace: dict[str, Any] | None = None


def _basic_user(header: str) -> str | None:
    try:
        decoded = base64.b64decode(header, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


async def _caller(
    request: Request[Any, Any, Any],
    body: DecideBody,
    sources: SourceRepository,
) -> bool:
    """Whether the caller may see traces (an API key) or not (a write key); 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        # an API key or a token: its role must grant the decide scope (service and up)
        await admit(request, "decide")
        return True
    write_key = _basic_user(credential.strip()) if scheme.lower() == "basic" else None
    write_key = write_key or body.writeKey
    if not write_key:
        raise Unauthorized(
            "send an API key (Authorization: Bearer) or a source's write key (Basic, or "
            "writeKey in the body)",
            code="missing_credentials",
        )
    if (
        len(write_key) > MAX_SECRET_CHARS
        or await sync_to_thread(sources.resolve, write_key) is None
    ):
        raise Unauthorized("unknown or revoked write key", code="invalid_write_key")
    return False


# the longest value each optional text field may hold
_LENGTHS = {"userId": _MAX_ID_CHARS, "anonymousId": _MAX_ID_CHARS}
_CONTEXT_LENGTHS = {"device": 100, "locale": 35, "timestamp": 40}


def _too_long(field: str, limit: int) -> ValidationError:
    return ValidationError(
        f"{field} has at most {limit} characters",
        code="invalid_parameter",
        details={"field": field},
    )


def _request(body: DecideBody) -> DecisionRequest:
    if not body.userId and not body.anonymousId:
        raise ValidationError(
            "give a userId or an anonymousId", code="missing_user", details={"field": "userId"}
        )
    for field, limit in _LENGTHS.items():
        value = getattr(body, field)
        if value is not None and len(value) > limit:
            raise _too_long(field, limit)
    for ask in body.placements:
        if ask.limit is not None and not 1 <= ask.limit <= MAX_LIMIT:
            raise ValidationError(
                f"a placement's limit is 1 to {MAX_LIMIT}",
                code="invalid_parameter",
                details={"field": "placements.limit"},
            )
    context = msgspec.structs.asdict(body.context) if body.context is not None else {}
    for field, limit in _CONTEXT_LENGTHS.items():
        value = context.get(field)
        if value is not None and len(value) > limit:
            raise _too_long(f"context.{field}", limit)
    return DecisionRequest(
        placements=[PlacementRequest(p.id, p.limit) for p in body.placements],
        user_id=body.userId,
        anonymous_id=body.anonymousId,
        context={k: v for k, v in context.items() if v is not None},
    )


_encode_answer = msgspec.json.Encoder().encode


def _public(decision: dict[str, Any]) -> dict[str, Any]:
    return {
        "decisionId": decision["decisionId"],
        "placements": {
            key: {
                "items": placement["items"],
                "strategy": placement["strategy"],
                "fallback": placement["fallback"],
                # the page's own analytics may report the variant it shows
                **({"experiment": placement["experiment"]} if "experiment" in placement else {}),
            }
            for key, placement in decision["placements"].items()
        },
    }


@post(
    "/v1/decide",
    status_code=200,
    security=[{BEARER: []}, {WRITE_KEY: []}],
    responses={
        400: error_response("invalid_json, invalid_parameter (not a DecideBody), or missing_user"),
        401: error_response("missing_credentials, invalid_api_key or invalid_write_key"),
        503: UNAVAILABLE,
    },
)
async def decide(
    request: Request[Any, Any, Any],
    decisions: NamedDependency[DecisionEngine],
    sources: NamedDependency[SourceRepository],
    data: JSONBody[DecideBody],
) -> Response[DecisionDocument]:
    """The content for one user in the placements of a page, with a trace of why (API keys)
    or without (write keys, from browsers). Never an error for lack of data: a placement
    that cannot be personalized gets its default with ``fallback: true``."""
    full = await _caller(request, data, sources)
    decision = await decisions.decide(_request(data), trace=full)
    shaped = decision if full else _public(decision)
    # the engine's answer is the document already (DecisionDocument describes it): encoded
    # as it is, without a conversion on every decision
    return Response(
        _encode_answer(shaped),  # type: ignore[arg-type]
        media_type=MediaType.JSON,
        headers={**CORS_HEADERS, "cache-control": "no-store"},
    )


class EdgeItem(msgspec.Struct):
    """An item of an edge answer."""

    id: str
    version: int
    variant: str | None
    content: dict[str, Any]


class EdgeContent(msgspec.Struct):
    """A placement's content for everyone in exactly these segments (docs/edge.md)."""

    placement: str
    segments: Annotated[list[str], msgspec.Meta(description="sorted, without repeats")]
    locale: str | None
    items: list[EdgeItem]
    fallback: Annotated[bool, msgspec.Meta(description="no item matched: the default")]


_encode_edge = msgspec.json.Encoder().encode
_MAX_SEGMENTS = 50


def _accept_language(header: str | None) -> str | None:
    """The first language tag of an Accept-Language header (``en-GB,en;q=0.8`` → ``en-GB``)."""
    if not header:
        return None
    first = header.split(",", 1)[0].split(";", 1)[0].strip()
    return first if first and first != "*" and len(first) <= 35 else None


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # weak comparison (RFC 9110, 13.1.2): W/ prefixes do not count
    wanted = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag.removeprefix("W/") in wanted


@get(
    "/v1/content/{placement_id:str}",
    security=[],
    responses={
        304: ResponseSpec(None, description="not modified: the ETag in If-None-Match is current"),
        400: error_response("invalid_parameter: details.parameter names it"),
        404: error_response("placement_not_found"),
        503: UNAVAILABLE,
    },
)
async def edge_content(
    request: Request[Any, Any, Any],
    decisions: NamedDependency[DecisionEngine],
    runtime: NamedDependency[Runtime],
    placement_id: Annotated[
        str, PathParameter(max_length=200, pattern=NO_NUL, description="a placement's id")
    ],
    segment_keys: Annotated[
        str | None,
        QueryParameter(
            name="segments",
            max_length=10_000,
            pattern=NO_NUL,
            description="comma-separated segment keys the visitor is in (order does not matter)",
        ),
    ] = None,
    locale: Annotated[
        str | None,
        QueryParameter(
            max_length=35, pattern=NO_NUL, description="en, en-GB… (else Accept-Language)"
        ),
    ] = None,
    limit: Annotated[
        int | None, QueryParameter(ge=1, le=MAX_LIMIT, description="items (the placement's own)")
    ] = None,
) -> Response[EdgeContent]:
    """A placement's published content for a combination of segments, not a user: the same
    answer for everyone in them, so a CDN caches one per combination (``Cache-Control``,
    ``ETag``, ``Vary``; ``304`` on ``If-None-Match``). Public: published content only."""
    keys = sorted({key.strip() for key in (segment_keys or "").split(",") if key.strip()})
    if len(keys) > _MAX_SEGMENTS:
        raise invalid_parameter("segments", f"at most {_MAX_SEGMENTS} segments")
    wanted_locale = locale or _accept_language(request.headers.get("accept-language"))
    found = await decisions.for_segments(placement_id, keys, locale=wanted_locale, limit=limit)
    if found is None:
        raise NotFound(f"no placement {placement_id!r}", code="placement_not_found")
    document = EdgeContent(
        placement=found["placement"],
        segments=found["segments"],
        locale=found["locale"],
        items=[msgspec.convert(item, EdgeItem) for item in found["items"]],
        fallback=found["fallback"],
    )
    body = _encode_edge(document)
    etag = f'"{xxhash.xxh3_64_hexdigest(body)}"'
    max_age = runtime.settings.decide_edge_max_age_s
    headers = {
        "etag": etag,
        "cache-control": f"public, max-age={max_age}, stale-if-error=86400",
        # the locale may come from Accept-Language; the segments are in the URL itself
        "vary": "Accept-Language, Accept-Encoding",
        **CORS_HEADERS,
    }
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(None, status_code=304, headers=headers)  # type: ignore[arg-type]
    return Response(document, headers=headers)


def _cors(app: ASGIApp) -> ASGIApp:
    """CORS for browsers on these routes: the preflight (OPTIONS) answered here, and the
    headers on every answer, errors included (a browser hides an error's status and body
    from the page without them)."""
    cors = [(name.encode(), value.encode()) for name, value in CORS_HEADERS.items()]

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "OPTIONS":
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 204,
                "headers": cors,
            }
            body: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": b"",
                "more_body": False,
            }
            await send(start)
            await send(body)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {bytes(name).lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in cors if name not in present]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await app(scope, receive, send_with_cors)

    return middleware


def decide_router() -> Router:
    """The decision route (its own authentication: an API key or a write key)."""
    return Router("/", route_handlers=[decide, edge_content], tags=["decide"], middleware=[_cors])
