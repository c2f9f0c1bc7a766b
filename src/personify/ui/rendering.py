"""Rendering the console's pages: one Jinja environment over ``ui/templates``, the navigation
each role sees, and the headers every page carries.

Templates autoescape everything; the pages run no inline script (the Content Security Policy
allows scripts from this server only), so data a chart needs travels in a
``<script type="application/json">`` block or a ``data-`` attribute that
``static/console.js`` reads. The front-end libraries (htmx, its Server-Sent Events
extension, uPlot) are served from ``static/vendor`` when ``tools/vendor_console.py`` has put
them there; without them every page still reads, with no live updates.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Final

import jinja2
import markupsafe
from litestar import Request, Response
from litestar.routes import HTTPRoute

from personify.auth.roles import allows
from personify.auth.sessions import ConsoleSession

__all__ = [
    "NAV",
    "NavItem",
    "has_vendor",
    "page_headers",
    "render",
    "render_error",
    "render_fragment",
]


@dataclass(frozen=True, slots=True)
class NavItem:
    """One page in the console's navigation, shown to roles that grant ``scope``."""

    path: str
    label: str
    scope: str


# the console's pages in the order the navigation lists them; a page shows in the navigation
# when its route exists and the person's role grants its scope
NAV: Final = (
    NavItem("/console", "Overview", "aggregates:read"),
    NavItem("/console/events", "Live events", "profiles:read"),
    NavItem("/console/profiles", "Profiles", "profiles:read"),
    NavItem("/console/segments", "Segments", "segments:read"),
    NavItem("/console/models", "Predictions", "models:read"),
    NavItem("/console/content", "Content", "content:read"),
    NavItem("/console/experiments", "Experiments", "experiments:read"),
    NavItem("/console/failed", "Failed events", "ops:read"),
    NavItem("/console/quality", "Quality & lineage", "ops:read"),
    NavItem("/console/sql", "SQL", "sql"),
    NavItem("/console/keys", "Sources & keys", "keys:write"),
    NavItem("/console/audit", "Audit log", "audit:read"),
)

# scripts from this server only; styles from files (uPlot sizes its canvas through the
# CSSOM, which a policy does not restrict); no frames, forms post only here
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def page_headers() -> dict[str, str]:
    """The headers of every console answer (pages, fragments, streams)."""
    return {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        # pages show per-user data and are personal: never cached by a shared cache
        "Cache-Control": "no-store",
    }


def _static_dir() -> Any:
    return resources.files("personify.ui").joinpath("static")


@functools.cache
def has_vendor() -> bool:
    """Whether the npm libraries are in ``static/vendor`` (``tools/vendor_console.py``)."""
    vendor = _static_dir().joinpath("vendor")
    return all(
        vendor.joinpath(name).is_file()
        for name in ("htmx.min.js", "htmx-sse.min.js", "uPlot.iife.min.js", "uPlot.min.css")
    )


def _when(value: datetime | None) -> str:
    """A moment as the console shows it: UTC, to the second."""
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _json_data(value: Any) -> markupsafe.Markup:
    return markupsafe.Markup(json.dumps(value, default=str).replace("<", "\\u003c"))


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("personify.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["number"] = _number
    env.filters["pretty"] = _pretty
    # a value for a <script type="application/json"> block: "<" escaped so that no string
    # can close the block
    env.filters["json_data"] = _json_data
    return env


def _console_paths(request: Request[Any, Any, Any]) -> frozenset[str]:
    """The console paths this app serves (computed once per app)."""
    paths: frozenset[str] | None = request.app.state.get("console_paths")
    if paths is None:
        paths = frozenset(
            route.path
            for route in request.app.routes
            if isinstance(route, HTTPRoute) and route.path.startswith("/console")
        )
        request.app.state.console_paths = paths
    return paths


def _nav(request: Request[Any, Any, Any], session: ConsoleSession | None) -> list[NavItem]:
    if session is None:
        return []
    served = _console_paths(request)
    return [item for item in NAV if item.path in served and allows(session.role, item.scope)]


def _context(request: Request[Any, Any, Any], context: dict[str, Any]) -> dict[str, Any]:
    session: ConsoleSession | None = request.state.get("console_session")
    return {
        "session": session,
        "csrf": session.csrf if session is not None else "",
        "nav": _nav(request, session),
        "path": request.url.path,
        "vendor": has_vendor(),
        "can": (lambda scope: session is not None and allows(session.role, scope)),
        **context,
    }


def render(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response[str]:
    """A whole page: ``template`` (which extends ``base.html``) with ``context``."""
    html = _environment().get_template(template).render(_context(request, context))
    return Response(
        html,
        status_code=status_code,
        media_type="text/html; charset=utf-8",
        headers={**page_headers(), **(headers or {})},
    )


def render_error(
    request: Request[Any, Any, Any], status_code: int, heading: str, message: str, code: str
) -> Response[str]:
    """The console's error page: a heading, the message for people, the code for machines."""
    return render(
        request,
        "error.html",
        status_code=status_code,
        title=heading,
        heading=heading,
        message=message,
        code=code,
    )


def render_fragment(request: Request[Any, Any, Any], template: str, **context: Any) -> str:
    """Part of a page (an htmx swap, a Server-Sent Event's data) as HTML text."""
    return _environment().get_template(template).render(_context(request, context))
