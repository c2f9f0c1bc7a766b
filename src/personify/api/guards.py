"""Authentication and scopes of the API, as one Litestar guard (docs/security.md).

Every route behind ``authorize`` declares the one scope it needs (``opt=needs(scope)``; the
OpenAPI document lists it in the route's ``security`` requirement and as
``x-personify-scope``). The caller presents ``Authorization: Bearer <credential>``: an API key
(``pk_…``, ``personify keys create NAME --role ROLE``) or, when an OpenID Connect issuer is
configured, a JWT whose role claim maps to a role. The guard answers 401 without a valid
credential, 403 when the caller's role does not grant the scope, 429 over the caller's rate
limit, and leaves the caller in ``connection.state.principal`` (and an API key in
``connection.state.api_key``) for the handler and the audit log.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar
from litestar.concurrency import sync_to_thread
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme
from litestar.routes import HTTPRoute

from personify.auth.keys import ApiKey, ApiKeyRepository
from personify.auth.ratelimit import enforce
from personify.auth.roles import ROLE_SCOPES, SCOPES, allows
from personify.auth.tokens import Principal, TokenVerifier
from personify.errors import ConfigurationError, Forbidden, Unauthorized

__all__ = [
    "BEARER",
    "BEARER_SECURITY",
    "SECURITY_SCHEMES",
    "authenticate",
    "authorize",
    "document_scopes",
    "needs",
]

# the name of the Bearer scheme in the OpenAPI document
BEARER = "apiKey"
SECURITY_SCHEMES = {
    BEARER: SecurityScheme(
        type="http",
        scheme="bearer",
        description="an API key (`personify keys create NAME --role ROLE`) or, with an OpenID "
        "Connect issuer configured, a JWT; each route lists the scope it needs, and the roles "
        "grant: "
        + "; ".join(f"{role}: {', '.join(sorted(scopes))}" for role, scopes in ROLE_SCOPES.items()),
    ),
}
# a route's ``security`` in the OpenAPI document (``document_scopes`` adds each one's scope)
BEARER_SECURITY: list[dict[str, list[str]]] = [{BEARER: []}]


def needs(scope: str, *, per_user: bool = False) -> dict[str, Any]:
    """A route's ``opt``: the scope it needs, and whether it reads per-user data (such
    reads are audited)."""
    if scope not in SCOPES:
        raise ConfigurationError(f"no scope {scope!r} (personify.auth.roles.SCOPES)")
    return {"scope": scope, "per_user": per_user}


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization", "")
    if header[:7].lower() != "bearer " or not header[7:].strip():
        raise Unauthorized(
            "this route needs Authorization: Bearer <API key or token> (create a key with "
            "`personify keys create NAME --role ROLE`)",
            code="missing_api_key",
        )
    return header[7:].strip()


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller behind the Bearer credential; ``Unauthorized`` when there is none."""
    credential = _bearer(connection)
    state = connection.app.state
    tokens: TokenVerifier | None = state.get("tokens")
    if tokens is not None and TokenVerifier.looks_like_jwt(credential):
        principal = await sync_to_thread(tokens.verify, credential)
    else:
        keys: ApiKeyRepository = state.api_keys
        key: ApiKey | None = await sync_to_thread(keys.resolve, credential)
        if key is None:
            raise Unauthorized("unknown, revoked or expired API key", code="invalid_api_key")
        principal = Principal(
            kind="api_key", id=key.id, name=key.name, role=key.role, expires_at=key.expires_at
        )
        connection.state.api_key = key
    connection.state.principal = principal
    return principal


async def admit(connection: ASGIConnection[Any, Any, Any, Any], scope: str) -> Principal:
    """Authenticate the caller, check that their role grants ``scope``, and take one token
    from the caller's rate limit (``RateLimited``: 429 with ``Retry-After``)."""
    principal = await authenticate(connection)
    if principal.role is None or not allows(principal.role, scope):
        raise Forbidden(
            f"this needs the {scope} scope, which the {principal.role!r} role does not grant",
            code="forbidden",
            details={"scope": scope, "role": principal.role},
        )
    state = connection.app.state
    settings = state.runtime.settings
    await enforce(
        state.get("rate_limiter"),
        f"{'ak' if principal.kind == 'api_key' else 'tk'}:{principal.id}",
        rate_per_s=settings.rate_limit_api_key_per_s,
        burst=settings.rate_limit_api_key_burst,
    )
    return principal


async def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Admit a request whose credential is valid and whose role grants the route's scope."""
    scope = handler.opt.get("scope")
    if scope is None:
        # a route behind the guard without a scope is a bug the route-table test catches
        raise ConfigurationError(f"route {handler.handler_name} declares no scope")
    await admit(connection, scope)


_TYPED = re.compile(r"\{(\w+):[^}]+\}")


def document_scopes(schema: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """The OpenAPI document with each guarded operation's scope in its ``security``
    requirement (OpenAPI 3.1 allows role names there for non-OAuth schemes) and as
    ``x-personify-scope``."""
    paths = schema.get("paths", {})
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = _TYPED.sub(r"{\1}", route.path)
        operations = paths.get(path)
        if operations is None:
            continue
        for method, handlers in route.route_handler_map.items():
            handler = handlers[0] if isinstance(handlers, tuple) else handlers
            scope = handler.opt.get("scope")
            operation = operations.get(method.lower())
            if scope is None or operation is None:
                continue
            operation["security"] = [{BEARER: [scope]}]
            operation["x-personify-scope"] = scope
            if handler.opt.get("per_user"):
                operation["x-personify-per-user"] = True
    return schema
