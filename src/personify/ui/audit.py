"""The audit log pages (``/console/audit``): who read or changed what, and whether the chain
of records is intact.

The list shows the records newest first, by actor, action and outcome, a page at a time;
the verification walks the whole hash chain (``AuditLog.verify``, as ``GET
/v1/audit/verify`` does) and only reads, so it is a link, not a form. Both need
``audit:read`` (owners and admins).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from litestar import Request, Response, get
from litestar.params import QueryParameter

from personify.runtime import Runtime
from personify.ui.rendering import render
from personify.ui.session import blank_to_none, page

__all__ = ["ROUTES"]

PAGE_ROWS: Final = 50
OUTCOMES: Final = ("ok", "denied", "failed")


@get("/audit", opt=page("audit:read"), name="console:audit")
async def audit_page(
    request: Request[Any, Any, Any],
    actor: Annotated[str | None, QueryParameter(max_length=512)] = None,
    action: Annotated[str | None, QueryParameter(max_length=300)] = None,
    outcome: Annotated[str | None, QueryParameter(max_length=16)] = None,
    before: Annotated[int | None, QueryParameter(ge=1, le=2**62)] = None,
) -> Response[str]:
    """Audit records newest first; ``before`` is the id the previous page ended at."""
    runtime: Runtime = request.app.state.runtime
    actor, action = blank_to_none(actor), blank_to_none(action)
    chosen = outcome if outcome in OUTCOMES else None
    entries = await asyncio.to_thread(
        runtime.audit.query,
        actor=actor,
        action=action,
        limit=PAGE_ROWS,
        outcome=chosen,
        before_id=before,
        newest_first=True,
    )
    query = {"actor": actor or "", "action": action or "", "outcome": chosen or ""}
    return render(
        request,
        "audit.html",
        title="Audit log",
        entries=entries,
        actor=actor,
        action=action,
        outcome=chosen,
        outcomes=OUTCOMES,
        before=before,
        query={k: v for k, v in query.items() if v},
        next_before=entries[-1].id if len(entries) == PAGE_ROWS else None,
    )


@get("/audit/verify", opt=page("audit:read"), name="console:audit-verify")
async def audit_verify(request: Request[Any, Any, Any]) -> Response[str]:
    """Walk the whole chain and show the result (a read: nothing changes)."""
    runtime: Runtime = request.app.state.runtime
    report = await asyncio.to_thread(runtime.audit.verify)
    return render(request, "audit_verify.html", title="Audit chain", report=report)


ROUTES = [audit_page, audit_verify]
