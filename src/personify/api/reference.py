"""The served contract: the OpenAPI document at ``/openapi.json`` and the reference at ``/docs``.

The reference page is Swagger UI from the ``swagger-ui-py`` package's files, served by this
app: an installation behind a firewall, or a browser with a strict Content-Security-Policy,
loads nothing from a CDN.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, Router, get
from litestar.concurrency import sync_to_thread
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, Tag
from litestar.params import FromPath

from personify.api import collector, guards
from personify.errors import ConfigurationError, NotFound
from personify.http_errors import error_body

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
    schemes = {**guards.SECURITY_SCHEMES, **collector.SECURITY_SCHEMES}
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
        ],
        use_handler_docstrings=True,
    )


@get(DOCUMENT_PATH, include_in_schema=False, sync_to_thread=False)
def openapi_document(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The OpenAPI 3.1 document of this app."""
    document: bytes | None = request.app.state.get("openapi_document")
    if document is None:
        document = msgspec.json.encode(request.app.openapi_schema.to_schema())
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


def reference_router() -> Router:
    """``/openapi.json`` and the reference page's files (the page itself is the plugin's)."""
    swagger_assets()  # a missing package is said at start-up, not on the first page view
    return Router("/", route_handlers=[openapi_document, docs_asset], include_in_schema=False)
