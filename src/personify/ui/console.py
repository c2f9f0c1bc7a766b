"""The console's router: sign-in and sign-out, the static files, the error pages, and every
page module's routes, all under ``/console`` and behind ``console_guard``.

A page module (``ui/overview.py``, ``ui/profiles.py``, …) exports ``ROUTES``, its route
handlers; each declares its scope with ``page(scope)``. The console is not in the OpenAPI
document: it is HTML for people, over the same services the API's routes use.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from importlib import resources
from typing import Annotated, Any, Final
from urllib.parse import quote

from litestar import Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body, QueryParameter
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from personify.auth.ratelimit import enforce
from personify.auth.tokens import Principal
from personify.errors import PersonifyError, RateLimited
from personify.http_errors import status_for
from personify.runtime import Runtime
from personify.ui import (
    audit,
    content,
    events,
    experiments,
    failed,
    keys,
    models,
    oidc,
    overview,
    profiles,
    quality,
    segments,
    sql,
)
from personify.ui.rendering import page_headers, render, render_error
from personify.ui.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    CsrfRefused,
    PageForbidden,
    SignInRequired,
    console_guard,
    public_page,
    same_token,
)
from personify.ui.signin import CONSOLE_PATH, cookie, safe_next, sign_in_as

__all__ = ["console_router"]

logger = logging.getLogger(__name__)

# sign-in attempts per client address (a key is 32 random bytes; this only keeps a flood off)
_SIGN_IN_PER_S: Final = 1.0
_SIGN_IN_BURST: Final = 10
# the sign-in form's token lives this long
_LOGIN_FORM_TTL: Final = timedelta(hours=1)


def _oidc_name(request: Request[Any, Any, Any]) -> str | None:
    """The issuer's host, when the console offers single sign-on (``ui/oidc.py``)."""
    runtime: Runtime = request.app.state.runtime
    return oidc.issuer_name(runtime.settings)


def _login_page(
    request: Request[Any, Any, Any], *, next_path: str, error: str | None, status: int
) -> Response[str]:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status_code=status,
        title="Sign in",
        login_csrf=token,
        next_path=next_path,
        error=error,
        oidc=_oidc_name(request),
    )
    response.set_cookie(cookie(request, LOGIN_COOKIE, token, int(_LOGIN_FORM_TTL.total_seconds())))
    return response


@get("/login", opt=public_page(), name="console:login")
async def login_form(
    request: Request[Any, Any, Any],
    next: Annotated[str | None, QueryParameter(max_length=2000)] = None,
) -> Response[Any]:
    """The sign-in form (or the overview, for a person already signed in)."""
    token = request.cookies.get(SESSION_COOKIE)
    runtime: Runtime = request.app.state.runtime
    if token and await sync_to_thread(runtime.console_sessions.resolve, token) is not None:
        return Redirect(safe_next(next))
    return _login_page(request, next_path=safe_next(next), error=None, status=200)


@post("/login", opt=public_page(), name="console:sign-in", status_code=303)
async def login(
    request: Request[Any, Any, Any],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """Exchange an API key for a session cookie."""
    runtime: Runtime = request.app.state.runtime
    next_path = safe_next(data.get("next"))
    if not same_token(data.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")):
        return _login_page(
            request,
            next_path=next_path,
            error="The sign-in form expired; please try again.",
            status=403,
        )
    client = request.client.host if request.client else "unknown"
    try:
        await enforce(
            runtime.rate_limiter,
            f"console-login:{client}",
            rate_per_s=_SIGN_IN_PER_S,
            burst=_SIGN_IN_BURST,
        )
    except RateLimited:
        return _login_page(
            request,
            next_path=next_path,
            error="Too many sign-in attempts; wait a minute and try again.",
            status=429,
        )
    key = await sync_to_thread(runtime.api_keys.resolve, data.get("key", "").strip())
    if key is None:
        return _login_page(
            request,
            next_path=next_path,
            error="That key is unknown, revoked or expired.",
            status=401,
        )
    principal = Principal(
        kind="api_key", id=key.id, name=key.name, role=key.role, expires_at=key.expires_at
    )
    return await sign_in_as(
        request, principal, Redirect(next_path, status_code=303, headers=page_headers())
    )


@post("/logout", opt=public_page(), name="console:sign-out", status_code=303)
async def logout(
    request: Request[Any, Any, Any],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """End the session (the form carries its CSRF token) and go back to the sign-in page."""
    runtime: Runtime = request.app.state.runtime
    token = request.cookies.get(SESSION_COOKIE, "")
    session = await sync_to_thread(runtime.console_sessions.resolve, token) if token else None
    if session is not None:
        if not same_token(data.get("csrf", ""), session.csrf):
            raise CsrfRefused("this form has expired or did not come from the console; reload it")
        await sync_to_thread(runtime.console_sessions.close, token)
    response = Redirect(f"{CONSOLE_PATH}/login", status_code=303, headers=page_headers())
    response.delete_cookie(SESSION_COOKIE, path=CONSOLE_PATH)
    return response


# -- error pages -------------------------------------------------------------------------


def _is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


def _error_page(
    request: Request[Any, Any, Any], status: int, heading: str, message: str, code: str
) -> Response[Any]:
    if _is_htmx(request) or "text/html" not in request.headers.get("accept", "text/html"):
        # a fragment or a data request gets the API's JSON error shape
        return Response(
            {"error": {"code": code, "message": message}},
            status_code=status,
            headers=page_headers(),
        )
    return render_error(request, status, heading, message, code)


def _sign_in_required(request: Request[Any, Any, Any], exc: SignInRequired) -> Response[Any]:
    target = f"{CONSOLE_PATH}/login?next={quote(safe_next(exc.next_path), safe='/')}"
    if _is_htmx(request):
        return Response(
            {"error": {"code": "sign_in_required", "message": str(exc)}},
            status_code=401,
            headers={**page_headers(), "HX-Redirect": target},
        )
    response = Redirect(target, status_code=303, headers=page_headers())
    # a session that ended leaves no stale cookie behind
    if request.cookies.get(SESSION_COOKIE):
        response.delete_cookie(SESSION_COOKIE, path=CONSOLE_PATH)
    return response


def _forbidden(request: Request[Any, Any, Any], exc: PageForbidden) -> Response[Any]:
    return _error_page(request, 403, "Not for your role", str(exc), "forbidden")


def _csrf(request: Request[Any, Any, Any], exc: CsrfRefused) -> Response[Any]:
    return _error_page(request, 403, "Form refused", str(exc), "csrf_failed")


def _personify_error(request: Request[Any, Any, Any], exc: PersonifyError) -> Response[Any]:
    return _error_page(request, status_for(exc), "Something is not right", exc.message, exc.code)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, NotFoundException) or exc.status_code == 404:
        return _error_page(request, 404, "Not found", "There is no such page.", "not_found")
    if exc.status_code >= 500:
        logger.error("console %s failed: %s", request.url.path[:200], exc.detail)
        return _error_page(
            request,
            exc.status_code,
            "Something went wrong",
            "The console could not answer this request; the server log has the details.",
            "internal_error",
        )
    return _error_page(request, exc.status_code, "Request refused", str(exc.detail), "bad_request")


# the longest asset path served: the folder's names are short, and a longer one would reach
# the file system only to fail there
_MAX_ASSET_PATH = 200


async def _asset_path_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Refuse an asset path no asset has (too long, or with a NUL) before the file system
    sees it."""
    path = connection.scope.get("path", "")
    if len(path) > _MAX_ASSET_PATH or "\x00" in path:
        raise NotFoundException()


def _static() -> Router:
    folder = resources.files("personify.ui").joinpath("static")
    return create_static_files_router(
        path="/static",
        directories=[str(folder)],
        opt=public_page(),
        guards=[_asset_path_guard],
        name="console:static",
        include_in_schema=False,
    )


def console_router() -> Router:
    """Every console route under ``/console``, behind the console's guard."""
    handlers: list[ControllerRouterHandler] = [
        login_form,
        login,
        logout,
        _static(),
        *overview.ROUTES,
        *quality.ROUTES,
        *oidc.ROUTES,
        *events.ROUTES,
        *failed.ROUTES,
        *audit.ROUTES,
        *segments.ROUTES,
        *models.ROUTES,
        *content.ROUTES,
        *experiments.ROUTES,
        *profiles.ROUTES,
        *keys.ROUTES,
        *sql.ROUTES,
    ]
    return Router(
        CONSOLE_PATH,
        route_handlers=handlers,
        guards=[console_guard],
        include_in_schema=False,
        exception_handlers={
            SignInRequired: _sign_in_required,
            PageForbidden: _forbidden,
            CsrfRefused: _csrf,
            PersonifyError: _personify_error,
            HTTPException: _http_error,
        },
    )
