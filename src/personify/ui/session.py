"""Who is looking at the console, and whether they may: the console's one guard.

Every console page declares the scope it needs with ``page(scope)`` (the API's scopes,
``personify.auth.roles``), so a role sees in the console exactly what its API keys may
read. The guard:

* finds the session behind the ``personify_console`` cookie (``personify.auth.sessions``);
  without one, a page redirects to the sign-in page (an htmx request gets 401 and an
  ``HX-Redirect`` there instead);
* leaves the person in ``connection.state.principal``, so the audit log records who read or
  changed what, as it does for the API;
* refuses a role without the page's scope with an HTML 403 page;
* refuses a form post, or any request that is not a read, without the session's CSRF token
  (the ``csrf`` form field or the ``X-CSRF-Token`` header).

The sign-in form, before there is a session, carries a token of its own that must match a
short-lived cookie (a double submit), so a sign-in cannot be forged from another site
either; both cookies are HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

from litestar import Request
from litestar.concurrency import sync_to_thread
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from personify.auth.roles import SCOPES, allows
from personify.auth.sessions import ConsoleSession, ConsoleSessionRepository
from personify.auth.tokens import Principal
from personify.errors import ConfigurationError
from personify.runtime import Runtime

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "CsrfRefused",
    "PageForbidden",
    "SignInRequired",
    "blank_to_none",
    "console_guard",
    "current_session",
    "page",
    "public_page",
    "runtime_of",
]

SESSION_COOKIE: Final = "personify_console"
# the sign-in form's double-submit token (before there is a session)
LOGIN_COOKIE: Final = "personify_console_login"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "x-csrf-token"
_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """No live session: the page redirects to the sign-in page, then back to ``next``."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in to see this page")
        self.next_path = next_path


class PageForbidden(Exception):
    """The person's role does not grant the page's scope."""

    def __init__(self, scope: str, role: str) -> None:
        super().__init__(f"this page needs the {scope} scope, which the {role} role does not grant")
        self.scope = scope
        self.role = role


class CsrfRefused(Exception):
    """A change without the session's CSRF token (or a sign-in without the form's)."""


def page(scope: str, *, per_user: bool = False) -> dict[str, Any]:
    """A console route's ``opt``: the scope it needs, and whether it shows per-user data
    (such reads are audited, as the API's are)."""
    if scope not in SCOPES:
        raise ConfigurationError(f"no scope {scope!r} (personify.auth.roles.SCOPES)")
    return {"scope": scope, "per_user": per_user, "console": True}


def public_page() -> dict[str, Any]:
    """The ``opt`` of the console's routes anyone may reach: sign-in, sign-out, assets."""
    return {"console": True, "public": True}


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    """The runtime the app serves (its services, repositories and settings)."""
    runtime: Runtime = connection.app.state.runtime
    return runtime


def blank_to_none(value: str | None) -> str | None:
    """A form field as a filter: trimmed, and ``None`` when empty."""
    value = (value or "").strip()
    return value or None


def current_session(connection: ASGIConnection[Any, Any, Any, Any]) -> ConsoleSession:
    """The session the guard admitted (only on a page behind ``console_guard``)."""
    session: ConsoleSession = connection.state.console_session
    return session


async def _session_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ConsoleSession | None:
    token = connection.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    sessions: ConsoleSessionRepository = connection.app.state.runtime.console_sessions
    return await sync_to_thread(sessions.resolve, token)


async def _presented_csrf(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = connection.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        # the form is parsed once and kept in the connection's state: the handler reads it
        form = await Request[Any, Any, Any](connection.scope, connection.receive).form()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def same_token(presented: str, expected: str) -> bool:
    """Constant-time comparison of two tokens (an empty one never matches)."""
    return bool(presented) and hmac.compare_digest(presented.encode(), expected.encode())


async def console_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Admit a person with a live session whose role grants the page's scope (module)."""
    if handler.opt.get("public"):
        return
    scope = handler.opt.get("scope")
    if scope is None:
        raise ConfigurationError(f"console route {handler.handler_name} declares no scope")
    session = await _session_of(connection)
    if session is None:
        query = connection.scope.get("query_string", b"").decode("latin-1")
        raise SignInRequired(connection.url.path + (f"?{query}" if query else ""))
    connection.state.console_session = session
    connection.state.principal = Principal(
        kind="api_key" if session.kind == "api_key" else "token",
        id=session.subject,
        name=session.name,
        role=session.role,
        expires_at=session.expires_at,
    )
    if not allows(session.role, scope):
        raise PageForbidden(scope, session.role)
    if connection.scope.get("method", "GET") not in _READS and not same_token(
        await _presented_csrf(connection), session.csrf
    ):
        raise CsrfRefused("this form has expired or did not come from the console; reload it")
