"""The content pages (``/console/content``): the placements the decision engine fills and the
catalog's items, filtered by type and status, and one item with its fields and versions.

The pages read through the same catalog as ``/v1/content`` and ``/v1/placements``, and check
a status filter as that route does. Editing stays in the API and the CLI (the pages say so):
an item is a JSON document with variants, targeting and schedules that the API validates
with a pointer per problem, which a form would only paraphrase.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from litestar import Request, Response, get
from litestar.concurrency import sync_to_thread
from litestar.params import PathParameter, QueryParameter

from personify.content.catalog import STATUSES, ContentCatalog, ContentItem
from personify.errors import ValidationError
from personify.runtime import Runtime
from personify.ui.rendering import render
from personify.ui.session import page

__all__ = ["ROUTES"]

# items on one page of the list
_PAGE: Final = 100
_MAX_ID_CHARS: Final = 200

ItemId = Annotated[str, PathParameter(max_length=_MAX_ID_CHARS, description="an item's id")]
Filter = Annotated[str | None, QueryParameter(max_length=64)]
Cursor = Annotated[str | None, QueryParameter(max_length=_MAX_ID_CHARS)]


def _blank(value: str | None) -> str | None:
    """An empty filter field is no filter."""
    return value.strip() or None if value is not None else None


@get("/content", opt=page("content:read"), name="console:content")
async def content_list(
    request: Request[Any, Any, Any],
    type: Filter = None,
    status: Filter = None,
    cursor: Cursor = None,
) -> Response[str]:
    """The placements, and a page of items filtered by type and status."""
    runtime: Runtime = request.app.state.runtime
    catalog: ContentCatalog = runtime.content
    type, status = _blank(type), _blank(status)
    if status is not None and status not in STATUSES:
        raise ValidationError(
            f"status is one of {', '.join(STATUSES)}",
            code="invalid_parameter",
            details={"parameter": "status"},
        )
    placements = await sync_to_thread(catalog.list_placements)
    found = await sync_to_thread(
        lambda: catalog.list_items(type=type, status=status, limit=_PAGE, after=cursor)
    )
    return render(
        request,
        "content.html",
        title="Content",
        placements=[placement.to_dict() for placement in placements],
        items=[item.to_dict() for item in found.items],
        next_cursor=found.next,
        filters={"type": type or "", "status": status or ""},
        statuses=STATUSES,
    )


def _item_detail(catalog: ContentCatalog, item_id: str) -> tuple[ContentItem, list[Any]]:
    return catalog.get_item(item_id), catalog.item_versions(item_id)


@get("/content/items/{item_id:str}", opt=page("content:read"), name="console:content-item")
async def content_item(request: Request[Any, Any, Any], item_id: ItemId) -> Response[str]:
    """One item: its fields, variants, targeting and schedule, and its versions."""
    runtime: Runtime = request.app.state.runtime
    item, versions = await sync_to_thread(_item_detail, runtime.content, item_id)
    return render(
        request,
        "content_item.html",
        title=f"Content {item.id}",
        item=item.to_dict(),
        versions=versions,
    )


ROUTES = [content_list, content_item]
