"""Signing in to the console: the session cookie, where a sign-in may lead, and opening the
session (used by the API-key form in ``ui/console.py`` and the issuer's callback in
``ui/oidc.py``)."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response
from litestar.concurrency import sync_to_thread
from litestar.datastructures import Cookie

from personify.auth.tokens import Principal
from personify.runtime import Runtime
from personify.ui.session import LOGIN_COOKIE, SESSION_COOKIE

__all__ = ["CONSOLE_PATH", "cookie", "safe_next", "secure", "sign_in_as"]

CONSOLE_PATH: Final = "/console"


def secure(request: Request[Any, Any, Any]) -> bool:
    """Cookies are Secure when the console is reached over HTTPS (or in production)."""
    runtime: Runtime = request.app.state.runtime
    return request.url.scheme == "https" or runtime.settings.environment == "production"


def cookie(request: Request[Any, Any, Any], key: str, value: str, max_age: int) -> Cookie:
    """A console cookie: HttpOnly, SameSite=Strict, for ``/console`` only."""
    return Cookie(
        key=key,
        value=value,
        path=CONSOLE_PATH,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path on this server, nothing else (not
    ``/consoles``, not ``/console/../x``, no other host, no header tricks)."""
    if not value:
        return CONSOLE_PATH
    path = value.split("?", 1)[0]
    inside = path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")
    if (
        inside
        and ".." not in path.split("/")
        and not any(mark in value for mark in ("//", "\\", "\r", "\n"))
    ):
        return value
    return CONSOLE_PATH


async def sign_in_as(
    request: Request[Any, Any, Any], principal: Principal, response: Response[Any]
) -> Response[Any]:
    """Open a session for ``principal`` and put its cookie on ``response`` (the API-key form
    in ``ui/console.py``, and the issuer's callback in ``ui/oidc.py``)."""
    runtime: Runtime = request.app.state.runtime
    # the audit log records the sign-in as this principal's
    request.state.principal = principal
    session, token = await sync_to_thread(runtime.console_sessions.open, principal)
    max_age = int((session.expires_at - session.created_at).total_seconds())
    response.set_cookie(cookie(request, SESSION_COOKIE, token, max(max_age, 1)))
    response.delete_cookie(LOGIN_COOKIE, path=CONSOLE_PATH)
    return response
