"""The served contract: the OpenAPI document at ``/openapi.json`` and the reference at ``/docs``.

The reference page is Swagger UI from the ``swagger-ui-py`` package's files, served by this
app: an installation behind a firewall, or a browser with a strict Content-Security-Policy,
loads nothing from a CDN.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
    SecurityScheme,
    Tag,
)
from litestar.params import FromPath

from personify.api import collector, guards
from personify.errors import ConfigurationError, NotFound
from personify.http_errors import error_body
from personify.ingest import webhooks as webhooks_in
from personify.ingest.signing import SIGNATURE_HEADER

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
DOCUMENT_PATH = "/openapi.json"

_DESCRIPTION = """\
Personify's HTTP API: the Segment-compatible collector (write key, Basic auth) and the admin
API (an API key as a Bearer token). Every error answers
`{"error": {"code", "message", "details"}}`; collector routes repeat `code` and `message` at
the top level for Segment's and RudderStack's libraries.
"""


def swagger_assets() -> Path:
    """The folder of Swagger UI's files in the installed ``swagger-ui-py`` package."""
    # found without importing the package, which would import its framework adapters
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "the API reference needs the swagger-ui-py package: pip install swagger-ui-py",
            code="missing_swagger_ui",
        )
    return Path(spec.origin).parent / "static"


def _json_not_found(response: Response[Any]) -> Response[Any]:
    # Litestar answers an unknown page under /docs with an HTML 404 of its own; every error
    # of this API is the one JSON shape
    if response.status_code == 404 and response.media_type != "application/json":
        return Response(
            error_body("not_found", "Not Found"), status_code=404, media_type="application/json"
        )
    return response


def openapi_config() -> OpenAPIConfig:
    """Where and how the document and the reference page are served."""
    schemes = {**guards.SECURITY_SCHEMES, **collector.SECURITY_SCHEMES, **WEBHOOK_SCHEMES}
    return OpenAPIConfig(
        title="Personify",
        version=metadata.version("personify"),
        description=_DESCRIPTION,
        path=DOCS_PATH,
        openapi_router=Router(
            DOCS_PATH, route_handlers=[], include_in_schema=False, after_request=_json_not_found
        ),
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                css_url=f"{ASSETS_PATH}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
            )
        ],
        components=Components(security_schemes=schemes),  # type: ignore[arg-type]
        tags=[
            Tag(name="collector", description="Segment-compatible ingest (write key)"),
            Tag(name="admin", description="dead letters, the log, the collector (API key)"),
            Tag(name="profiles", description="profiles and the stream worker (API key)"),
            Tag(name="health", description="liveness and readiness (no key)"),
            Tag(name="webhooks in", description="events third parties sign (docs/webhooks.md)"),
        ],
        use_handler_docstrings=True,
    )


@get(DOCUMENT_PATH, include_in_schema=False, sync_to_thread=False)
def openapi_document(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The OpenAPI 3.1 document of this app."""
    document: bytes | None = request.app.state.get("openapi_document")
    if document is None:
        schema = guards.document_scopes(request.app.openapi_schema.to_schema(), request.app)
        document = msgspec.json.encode(schema)
        request.app.state.openapi_document = document
    return Response(document, media_type="application/json")


# the files the reference page loads, and nothing else of the package's folder
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@get(f"{ASSETS_PATH}/{{name:str}}", include_in_schema=False)
async def docs_asset(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """One of the reference page's files."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no file {name[:100]!r} here", code="not_found")
    cache: dict[str, bytes] = request.app.state.setdefault("docs_assets", {})
    if name not in cache:
        cache[name] = await sync_to_thread((swagger_assets() / name).read_bytes)
    return Response(
        cache[name], media_type=media_type, headers={"cache-control": "public, max-age=86400"}
    )


# -- the signed webhooks in -------------------------------------------------------------------
# ``POST /v1/webhooks/{source}`` is answered by the collector's fast path
# (``personify.ingest.webhooks``) before Litestar sees it; the handler below puts it in the
# document, and answers what the fast path leaves to Litestar: an all-digit segment is an
# admin webhook's id (``/v1/webhooks/{webhook_id:int}``), where POST is not allowed

WEBHOOK_SIGNATURE = "webhookSignature"
WEBHOOK_SCHEMES = {
    WEBHOOK_SIGNATURE: SecurityScheme(
        type="apiKey",
        name=SIGNATURE_HEADER,
        security_scheme_in="header",
        description="`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.' + body)>` under one "
        "of the source's webhook secrets (`Stripe-Signature` is read too); within "
        "PERSONIFY_WEBHOOKS_IN_TOLERANCE_S (300 s) of the server's clock, and each signed "
        "request once",
    )
}
_COUNT = Schema(type=OpenAPIType.INTEGER, minimum=0)
_WEBHOOK_ANSWER = Schema(
    type=OpenAPIType.OBJECT,
    required=["success", "accepted", "duplicates", "rejected", "ignored"],
    properties={
        "success": Schema(type=OpenAPIType.BOOLEAN, const=True),
        "accepted": _COUNT,
        "duplicates": Schema(
            type=OpenAPIType.INTEGER, minimum=0, description="resent events (same event id)"
        ),
        "rejected": Schema(
            type=OpenAPIType.INTEGER,
            minimum=0,
            description="the mapped event broke the event contract: dead-lettered",
        ),
        "ignored": Schema(
            type=OpenAPIType.INTEGER,
            minimum=0,
            maximum=1,
            description="1 when the payload's event type has no rule in the source's mapping",
        ),
    },
    description="the collector's batch answer for the mapped event, or ignored: 1",
)
_ERROR = Schema(
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
        )
    },
)
_WEBHOOK_ERRORS = {
    400: "a good signature over a body that is not JSON (invalid_json, too_deep…)",
    401: "invalid_signature (missing, malformed or wrong), stale_signature (the timestamp "
    "is outside the tolerance), replayed_signature (this signed request was taken already)",
    404: "unknown_webhook_source: no active source of that name or id takes webhooks",
    405: "the segment is all digits: that path is an admin webhook's (method_not_allowed)",
    413: "the body is over the batch limit (webhook_too_large)",
    415: "a Content-Encoding (webhooks are taken uncompressed)",
    503: "the event log is full or down: the sender retries",
}


def _webhook_responses() -> dict[str, OpenAPIResponse]:
    answers = {
        "200": OpenAPIResponse(
            description="verified: mapped and taken, or ignored",
            content={"application/json": OpenAPIMediaType(schema=_WEBHOOK_ANSWER)},
        )
    }
    for status, description in _WEBHOOK_ERRORS.items():
        answers[str(status)] = OpenAPIResponse(
            description=description,
            content={"application/json": OpenAPIMediaType(schema=_ERROR)},
        )
    return answers


@dataclass
class _WebhookOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=Schema())},
            description="the sender's event, as it signed it (Stripe's event object for the "
            "stripe mapping)",
            required=True,
        )
        self.responses = _webhook_responses()  # type: ignore[assignment]
        for parameter in self.parameters or []:
            if isinstance(parameter, Parameter) and parameter.name == "source":
                parameter.description = "the source's name or id (not all digits)"
                parameter.schema = Schema(
                    type=OpenAPIType.STRING,
                    min_length=1,
                    max_length=200,
                    pattern="^[^/]*[^/0-9][^/]*$",
                )


@post(
    "/v1/webhooks/{source:str}",
    operation_id="webhooks_in",
    summary="A signed webhook from a third party, mapped to an event",
    operation_class=_WebhookOperation,
    security=[{WEBHOOK_SIGNATURE: []}],
    tags=["webhooks in"],
    include_in_schema=True,
    status_code=405,
    name="webhooks_in",
)
async def webhooks_in_route(source: FromPath[str]) -> Response[bytes]:
    """Verify the signature (HMAC-SHA256 over timestamp and body), refuse stale and replayed
    ones, map the payload with the source's mapping and take it like a ``/v1/batch`` event
    (docs/webhooks.md, "Webhooks in")."""
    if not (source.isascii() and source.isdigit()):
        # the fast path serves these; reached here only without it
        return Response(
            error_body(webhooks_in.UNKNOWN_SOURCE, "no source takes webhooks here"),
            status_code=404,
            media_type="application/json",
        )
    return Response(
        error_body("method_not_allowed", f"POST is not allowed on /v1/webhooks/{source}"),
        status_code=405,
        media_type="application/json",
        headers={"allow": "GET, DELETE"},
    )


def reference_router() -> Router:
    """``/openapi.json``, the reference page's files (the page itself is the plugin's) and the
    document's entry for the signed webhooks in."""
    swagger_assets()  # a missing package is said at start-up, not on the first page view
    return Router(
        "/",
        route_handlers=[openapi_document, docs_asset, webhooks_in_route],
        include_in_schema=False,
    )
