"""Authentication and roles of the admin API, as Litestar guards.

A route guarded by ``api_key`` needs ``Authorization: Bearer <api key>``; the role it needs
is the handler's ``opt["role"]`` (``read`` unless said otherwise; an ``admin`` key has every
role). The resolved key is left in ``connection.state.api_key`` for the handler.
"""

from __future__ import annotations

from typing import Any

from litestar.concurrency import sync_to_thread
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from personify.auth.keys import ApiKey, ApiKeyRepository
from personify.errors import Forbidden, Unauthorized

# the name of the Bearer scheme in the OpenAPI document
BEARER = "apiKey"
SECURITY_SCHEMES = {
    BEARER: SecurityScheme(
        type="http",
        scheme="bearer",
        description="an API key (`personify keys create NAME --role read|admin`)",
    ),
}
# a route's ``security`` in the OpenAPI document
BEARER_SECURITY: list[dict[str, list[str]]] = [{BEARER: []}]


async def api_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Admit a request whose Bearer key is active and has the handler's role."""
    header = connection.headers.get("authorization", "")
    if header[:7].lower() != "bearer " or not header[7:].strip():
        raise Unauthorized(
            "admin endpoints need Authorization: Bearer <api key> (create one with "
            "`personify keys create NAME`)",
            code="missing_api_key",
        )
    keys: ApiKeyRepository = connection.app.state.api_keys
    key: ApiKey | None = await sync_to_thread(keys.resolve, header[7:].strip())
    if key is None:
        raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
    role = handler.opt.get("role", "read")
    if role != key.role and key.role != "admin":
        raise Forbidden(f"this needs the {role} role; the key has {key.role!r}")
    connection.state.api_key = key
