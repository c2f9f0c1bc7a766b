"""The failed events pages (``/console/failed``): the dead letters, why each failed, and a way
to feed the worker's back into the log once the cause is fixed.

Browsing needs ``ops:read`` and is an audited read (a dead letter's payload is one person's
event, PII hashed at ingest). Replaying needs ``ops:write``: the button shows only to roles
that have it, and the guard refuses the post (and one without the session's CSRF token)
with 403 whatever the page showed. A replay goes through ``personify.worker.replay`` as
``personify events replay-failed`` does: only the worker's letters, each appended once.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, PathParameter, QueryParameter
from litestar.response import Redirect

from personify.errors import NotFound
from personify.runtime import Runtime
from personify.store.failed_events import FailedEvent
from personify.ui.rendering import page_headers, render
from personify.ui.session import page
from personify.worker.replay import replay_failed

__all__ = ["ROUTES"]

PAGE_ROWS: Final = 50
# the replay-all button's bound, as the CLI's default
REPLAY_ALL_LIMIT: Final = 1000
# the notices a redirect may carry; the query string only names one, never says it
NOTICES: Final = {
    "replayed": "Replayed: the event is back in the log and the worker will apply it again.",
    "not-replayed": "Not replayed: only the worker's dead letters that were not replayed "
    "yet can be (an ingest rejection never was a valid event).",
    "none-pending": "There were no pending worker dead letters to replay.",
    "replayed-all": "Replayed every pending worker dead letter.",
}
STAGES: Final = ("worker", "ingest")


def _replayable(item: FailedEvent) -> bool:
    return item.stage == "worker" and item.replayed_at is None


@get("/failed", opt=page("ops:read", per_user=True), name="console:failed")
async def failed_page(
    request: Request[Any, Any, Any],
    stage: Annotated[str | None, QueryParameter(max_length=200)] = None,
    pending: Annotated[str | None, QueryParameter(max_length=10)] = None,
    after: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    notice: Annotated[str | None, QueryParameter(max_length=40)] = None,
) -> Response[str]:
    """Dead letters, oldest first, by stage; ``pending`` hides the replayed ones."""
    runtime: Runtime = request.app.state.runtime
    stage = (stage or "").strip() or None
    only_pending = pending == "1"
    items = await asyncio.to_thread(
        runtime.failed_events.list,
        stage=stage,
        after_id=after,
        limit=PAGE_ROWS,
        include_replayed=not only_pending,
    )
    query = {"stage": stage or "", "pending": "1" if only_pending else ""}
    return render(
        request,
        "failed.html",
        title="Failed events",
        items=items,
        stage=stage,
        stages=STAGES,
        only_pending=only_pending,
        query={k: v for k, v in query.items() if v},
        after=after,
        next_after=items[-1].id if len(items) == PAGE_ROWS else None,
        notice=NOTICES.get(notice or ""),
        replayable=_replayable,
    )


@get("/failed/{failed_id:int}", opt=page("ops:read", per_user=True), name="console:failed-one")
async def failed_one(
    request: Request[Any, Any, Any],
    failed_id: Annotated[int, PathParameter(ge=1, le=2**62)],
    notice: Annotated[str | None, QueryParameter(max_length=40)] = None,
) -> Response[str]:
    """One dead letter: where and why it failed, and its payload."""
    runtime: Runtime = request.app.state.runtime
    item = await asyncio.to_thread(runtime.failed_events.get, failed_id)
    if item is None:
        raise NotFound(f"no dead letter {failed_id}", code="failed_event_not_found")
    return render(
        request,
        "failed_one.html",
        title=f"Failed event {item.id}",
        item=item,
        replayable=_replayable(item),
        notice=NOTICES.get(notice or ""),
    )


@post(
    "/failed/{failed_id:int}/replay",
    opt=page("ops:write", per_user=True),
    name="console:failed-replay",
    status_code=303,
)
async def replay_one(
    request: Request[Any, Any, Any],
    failed_id: Annotated[int, PathParameter(ge=1, le=2**62)],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """Append one worker dead letter to the log again (the guard checked the CSRF token)."""
    runtime: Runtime = request.app.state.runtime
    item = await asyncio.to_thread(runtime.failed_events.get, failed_id)
    if item is None:
        raise NotFound(f"no dead letter {failed_id}", code="failed_event_not_found")
    outcome = await replay_failed(runtime.log, runtime.failed_events, ids=[failed_id], limit=1)
    notice = "replayed" if failed_id in outcome.replayed else "not-replayed"
    return Redirect(
        f"/console/failed/{failed_id}?notice={notice}", status_code=303, headers=page_headers()
    )


@post(
    "/failed/replay",
    opt=page("ops:write", per_user=True),
    name="console:failed-replay-all",
    status_code=303,
)
async def replay_all(
    request: Request[Any, Any, Any],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """Append every pending worker dead letter (up to ``REPLAY_ALL_LIMIT``) to the log."""
    runtime: Runtime = request.app.state.runtime
    outcome = await replay_failed(runtime.log, runtime.failed_events, limit=REPLAY_ALL_LIMIT)
    notice = "replayed-all" if outcome.replayed else "none-pending"
    return Redirect(f"/console/failed?notice={notice}", status_code=303, headers=page_headers())


ROUTES = [failed_page, failed_one, replay_one, replay_all]
