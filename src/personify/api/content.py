"""Content catalog routes (Bearer API key): items with their versions, publishing and
rollback; placements; bulk import and export (docs/content.md).

Reads need the ``read`` role, writes the ``admin`` role. Items live under
``/v1/content/items/{id}``, so that ``/v1/content/{placement}`` stays free for the edge's
per-segment answers; ``items``, ``export`` and ``import`` are never placement ids. An item or
placement that breaks the rules is a 422 whose ``error.details.errors`` points at each
problem with a JSON pointer into the body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, Router, delete, get, patch, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from personify.api.admin import NO_NUL
from personify.api.documents import admin_responses, error_response
from personify.api.errors import personify_error_handler
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.content.catalog import STATUSES, ContentCatalog, ContentItem, Placement
from personify.decide.engine import DecisionEngine
from personify.errors import ValidationError

__all__ = ["content_router"]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
READ = needs("content:read")
WRITE = needs("content:write")
# item and placement ids are at most 200 characters (``personify.content.validation``)
_MAX_ID_CHARS = 200
_MAX_VERSION = 2**31 - 1
_UNSET: Any = msgspec.UNSET

ItemId = Annotated[
    str,
    PathParameter(max_length=_MAX_ID_CHARS, pattern=NO_NUL, description="a content item's id"),
]
PlacementId = Annotated[
    str, PathParameter(max_length=_MAX_ID_CHARS, pattern=NO_NUL, description="a placement's id")
]
Version = Annotated[int, PathParameter(ge=1, le=_MAX_VERSION, description="a version number")]
Publish = Annotated[
    bool, QueryParameter(description="publish the saved version at once (default false)")
]


class Variant(msgspec.Struct):
    """A variant of an item: its fields replace the item's own where both have one."""

    key: Annotated[str, msgspec.Meta(description="unique within the item")]
    fields: Annotated[dict[str, Any], msgspec.Meta(description="fields that differ")]
    weight: Annotated[float, msgspec.Meta(description="relative share when variants rotate")]


class Targeting(msgspec.Struct):
    """Who may see an item: a member of any listed segment, and matching the condition."""

    segments: Annotated[list[str], msgspec.Meta(description="segment keys (any of them)")]
    condition: Annotated[
        Any, msgspec.Meta(description="a condition in the segments' language, or null")
    ]


class Schedule(msgspec.Struct):
    """When an item may be served; times without an offset are read in ``timezone``."""

    start: Annotated[str | None, msgspec.Meta(description="ISO 8601, e.g. 2026-12-24T09:00")]
    end: Annotated[str | None, msgspec.Meta(description="ISO 8601; after start")]
    timezone: Annotated[str, msgspec.Meta(description="an IANA time zone (UTC when absent)")]


class FrequencyCap(msgspec.Struct):
    """At most ``max`` exposures of the item to one user within ``window``."""

    max: int
    window: Annotated[str, msgspec.Meta(description="30m, 12h, 7d, 2w…")]


class ContentItemDocument(msgspec.Struct):
    """A content item: its newest version, and where its publishing stands."""

    id: str
    status: Annotated[str, msgspec.Meta(description="draft, published or archived")]
    version: Annotated[int, msgspec.Meta(description="the newest version's number")]
    publishedVersion: Annotated[
        int | None, msgspec.Meta(description="the version served (null unless published)")
    ]
    hasUnpublishedChanges: Annotated[
        bool, msgspec.Meta(description="published, with a newer version not yet published")
    ]
    origin: Annotated[str, msgspec.Meta(description="api, import or events")]
    type: Annotated[str, msgspec.Meta(description="banner, article, product, offer…")]
    fields: dict[str, Any]
    tags: list[str]
    placements: Annotated[list[str], msgspec.Meta(description="the placements it may fill")]
    variants: list[Variant]
    targeting: Targeting | None
    priority: int
    schedule: Schedule | None
    locale: Annotated[str | None, msgspec.Meta(description="en, en-US…; null: every locale")]
    frequencyCap: FrequencyCap | None
    createdAt: str
    updatedAt: str
    publishedAt: str | None


class ContentItemList(msgspec.Struct):
    """A page of items by id."""

    data: list[ContentItemDocument]
    next: Annotated[str | None, msgspec.Meta(description="the cursor of the next page")]


class ContentVersion(msgspec.Struct):
    """One saved version of an item."""

    version: int
    change: Annotated[str, msgspec.Meta(description="created, updated, rollback, import, events")]
    savedAt: str
    type: str
    fields: dict[str, Any]
    tags: list[str]
    placements: list[str]
    variants: list[Variant]
    targeting: Targeting | None
    priority: int
    schedule: Schedule | None
    locale: str | None
    frequencyCap: FrequencyCap | None


class ContentVersionList(msgspec.Struct):
    """Every saved version of an item, newest first."""

    id: str
    data: list[ContentVersion]


class ItemBody(msgspec.Struct):
    """An item to save: ``type`` is required on creation; on a change, the fields given
    replace the old ones. Every field is checked by the catalog, so that a problem is a 422
    with a JSON pointer (docs/content.md)."""

    id: Annotated[Any, msgspec.Meta(description="1-200 letters, digits, . _ : - (creation)")] = (
        _UNSET
    )
    type: Annotated[Any, msgspec.Meta(description="banner, article, product, offer…")] = _UNSET
    fields: Annotated[Any, msgspec.Meta(description="a JSON object (at most 64 KiB)")] = _UNSET
    tags: Annotated[Any, msgspec.Meta(description="a list of text")] = _UNSET
    placements: Annotated[Any, msgspec.Meta(description="placement ids")] = _UNSET
    variants: Annotated[Any, msgspec.Meta(description="[{key, fields, weight}]")] = _UNSET
    targeting: Annotated[Any, msgspec.Meta(description="{segments, condition} or null")] = _UNSET
    priority: Annotated[Any, msgspec.Meta(description="higher first (default 0)")] = _UNSET
    schedule: Annotated[Any, msgspec.Meta(description="{start, end, timezone} or null")] = _UNSET
    locale: Annotated[Any, msgspec.Meta(description="en, en-US… or null")] = _UNSET
    frequencyCap: Annotated[Any, msgspec.Meta(description='{"max": 3, "window": "1d"}')] = _UNSET


class Rollback(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a rollback."""

    version: Annotated[
        int, msgspec.Meta(ge=1, le=_MAX_VERSION, description="the version to restore")
    ]


class Strategy(msgspec.Struct):
    """How a placement ranks its candidates (docs/decide.md)."""

    name: Annotated[
        str, msgspec.Meta(description="priority, affinity, recommendations, prediction, random")
    ]
    params: dict[str, Any]


class PlacementDocument(msgspec.Struct):
    """A placement: a slot that the decision engine fills."""

    id: str
    status: Annotated[str, msgspec.Meta(description="active or archived")]
    version: int
    description: str
    defaultItem: Annotated[
        str | None, msgspec.Meta(description="the item served when nothing else can be")
    ]
    strategy: Strategy
    limit: Annotated[int, msgspec.Meta(description="items per answer unless asked otherwise")]
    createdAt: str
    updatedAt: str


class PlacementList(msgspec.Struct):
    """Every placement by id."""

    data: list[PlacementDocument]


class PlacementVersion(msgspec.Struct):
    """One saved version of a placement."""

    version: int
    status: str
    description: str
    defaultItem: str | None
    strategy: Strategy
    limit: int
    savedAt: str


class PlacementVersionList(msgspec.Struct):
    """Every saved version of a placement, newest first."""

    id: str
    data: list[PlacementVersion]


class PlacementBody(msgspec.Struct):
    """A placement to save; on a change, the fields given replace the old ones."""

    id: Annotated[Any, msgspec.Meta(description="1-200 letters, digits, . _ : - (creation)")] = (
        _UNSET
    )
    description: Annotated[Any, msgspec.Meta(description="up to 2,000 characters")] = _UNSET
    defaultItem: Annotated[Any, msgspec.Meta(description="an item id, or null")] = _UNSET
    strategy: Annotated[Any, msgspec.Meta(description='"priority" or {"name", "params"}')] = _UNSET
    limit: Annotated[Any, msgspec.Meta(description="1-50 (default 1)")] = _UNSET


class CatalogExport(msgspec.Struct):
    """The whole catalog, in the shape an import reads."""

    items: Annotated[
        list[dict[str, Any]], msgspec.Meta(description="each item's newest version and status")
    ]
    placements: list[dict[str, Any]]


class CatalogImport(msgspec.Struct):
    """The body of an import: what an export gives."""

    items: Annotated[Any, msgspec.Meta(description="items, each optionally with a status")] = _UNSET
    placements: Annotated[Any, msgspec.Meta(description="placements")] = _UNSET


class EntryProblem(msgspec.Struct):
    """An entry an import refused, with every problem found in it."""

    index: int
    id: Any
    errors: list[dict[str, Any]]


class ImportCounts(msgspec.Struct):
    """What an import did with one kind of entry."""

    created: int
    updated: int
    unchanged: int
    refused: int
    errors: list[EntryProblem]


class ImportReport(msgspec.Struct):
    """What an import did: counts per kind, and every refused entry (the rest were kept)."""

    items: ImportCounts
    placements: ImportCounts


def _given(body: msgspec.Struct) -> dict[str, Any]:
    return {
        name: value
        for name, value in msgspec.structs.asdict(body).items()
        if value is not msgspec.UNSET
    }


T = TypeVar("T")


async def _write(decisions: DecisionEngine, call: Callable[..., T], *args: Any, **kw: Any) -> T:
    """A catalog change in a thread; then every process serving decisions reloads."""
    result = await sync_to_thread(call, *args, **kw)
    await decisions.catalog_changed()
    return result


def _item(item: ContentItem) -> ContentItemDocument:
    return msgspec.convert(item.to_dict(), ContentItemDocument)


def _placement(placement: Placement) -> PlacementDocument:
    return msgspec.convert(placement.to_dict(), PlacementDocument)


def _too_deep(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A body nested past what the JSON decoder recurses into is bad input, not a bug."""
    error = ValidationError("the JSON body nests too deeply", code="invalid_json")
    return personify_error_handler(request, error)


def _item_missing() -> dict[int, ResponseSpec]:
    return {404: error_response("content_not_found: no item has that id")}


def _placement_missing() -> dict[int, ResponseSpec]:
    return {404: error_response("placement_not_found: no placement has that id")}


_BODY_ERRORS = error_response(
    "invalid_id (details.field), invalid_json, or invalid_parameter (not the documented object)"
)
_ITEM_INVALID = error_response(
    "invalid_content: details.errors has a JSON pointer, a code and a message per problem"
)
_PLACEMENT_INVALID = error_response(
    "invalid_placement: details.errors has a JSON pointer, a code and a message per problem"
)


@get("/v1/content", opt=READ, responses=admin_responses())
async def list_items(
    content: NamedDependency[ContentCatalog],
    type: Annotated[
        str | None, QueryParameter(max_length=64, pattern=NO_NUL, description="only this type")
    ] = None,
    status: Annotated[
        str | None,
        QueryParameter(
            max_length=16,
            pattern=NO_NUL,
            description="draft, published or archived (archived only when asked)",
        ),
    ] = None,
    tag: Annotated[
        str | None, QueryParameter(max_length=100, pattern=NO_NUL, description="with this tag")
    ] = None,
    placement: Annotated[
        str | None,
        QueryParameter(max_length=_MAX_ID_CHARS, pattern=NO_NUL, description="for this placement"),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="page size")] = 100,
    cursor: Annotated[
        str | None,
        QueryParameter(
            max_length=_MAX_ID_CHARS, pattern=NO_NUL, description="the `next` of the last page"
        ),
    ] = None,
) -> ContentItemList:
    """A page of items by id (their newest versions), filtered."""
    if status is not None and status not in STATUSES:
        raise ValidationError(
            f"status is one of {', '.join(STATUSES)}",
            code="invalid_parameter",
            details={"parameter": "status"},
        )
    page = await sync_to_thread(
        content.list_items,
        type=type,
        status=status,
        tag=tag,
        placement=placement,
        limit=limit,
        after=cursor,
    )
    return ContentItemList(data=[_item(item) for item in page.items], next=page.next)


@post(
    "/v1/content",
    opt=WRITE,
    responses={
        **admin_responses(),
        400: _BODY_ERRORS,
        409: error_response("content_exists: an item that is not archived has that id"),
        422: _ITEM_INVALID,
    },
)
async def create_item(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    data: JSONBody[ItemBody],
    publish: Publish = False,
) -> ContentItemDocument:
    """Save a new item as a draft (version 1), or published with ``publish=true``."""
    return _item(await _write(decisions, content.create_item, _given(data), publish=publish))


@get("/v1/content/export", opt=READ, responses=admin_responses())
async def export_catalog(
    content: NamedDependency[ContentCatalog],
    archived: Annotated[bool, QueryParameter(description="include archived items")] = False,
) -> CatalogExport:
    """Every item (newest version, with its status) and placement, as an import reads them."""
    found = await sync_to_thread(content.export, include_archived=archived)
    return CatalogExport(items=found["items"], placements=found["placements"])


@post(
    "/v1/content/import",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        400: error_response("invalid_import (not items and placements lists), or invalid_json"),
    },
)
async def import_catalog(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    data: JSONBody[CatalogImport],
    publish: Annotated[
        bool, QueryParameter(description="publish items that give no status of their own")
    ] = False,
) -> ImportReport:
    """Create or update every entry: items first, then placements. A refused entry is
    reported with pointers from the body's root; the others are kept."""
    result = await _write(decisions, content.import_catalog, _given(data), publish=publish)
    return msgspec.convert(result.to_dict(), ImportReport)


@get(
    "/v1/content/items/{item_id:str}", opt=READ, responses={**admin_responses(), **_item_missing()}
)
async def show_item(
    content: NamedDependency[ContentCatalog], item_id: ItemId
) -> ContentItemDocument:
    """An item's newest version (archived ones too)."""
    return _item(await sync_to_thread(content.get_item, item_id))


@patch(
    "/v1/content/items/{item_id:str}",
    opt=WRITE,
    responses={
        **admin_responses(),
        **_item_missing(),
        400: _BODY_ERRORS,
        409: error_response("content_changed: it changed meanwhile; read it again"),
        422: _ITEM_INVALID,
    },
)
async def update_item(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    item_id: ItemId,
    data: JSONBody[ItemBody],
    publish: Publish = False,
) -> ContentItemDocument:
    """Save the next version with the fields given (none written when nothing changes)."""
    changes = _given(data)
    return _item(await _write(decisions, content.update_item, item_id, changes, publish=publish))


@delete(
    "/v1/content/items/{item_id:str}",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        **_item_missing(),
        409: error_response("content_in_use: a placement falls back to it (details.usedBy)"),
    },
)
async def archive_item(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    item_id: ItemId,
) -> ContentItemDocument:
    """Archive an item: unpublished first (webhooks are told), kept with its versions."""
    return _item(await _write(decisions, content.archive, item_id))


@post(
    "/v1/content/items/{item_id:str}/publish",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        **_item_missing(),
        409: error_response("content_archived: change it first to bring it back"),
    },
)
async def publish_item(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    item_id: ItemId,
) -> ContentItemDocument:
    """Publish the newest version: it is served as it is now until published again."""
    return _item(await _write(decisions, content.publish, item_id))


@post(
    "/v1/content/items/{item_id:str}/unpublish",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        **_item_missing(),
        409: error_response("content_not_published"),
    },
)
async def unpublish_item(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    item_id: ItemId,
) -> ContentItemDocument:
    """Take a published item back to draft: it is served no more."""
    return _item(await _write(decisions, content.unpublish, item_id))


@post(
    "/v1/content/items/{item_id:str}/rollback",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        404: error_response("content_not_found or content_version_not_found"),
        409: error_response("content_archived"),
        422: _ITEM_INVALID,
    },
)
async def rollback_item(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    item_id: ItemId,
    data: JSONBody[Rollback],
) -> ContentItemDocument:
    """Save a new version holding an earlier version's document; a published item is
    published again with it."""
    return _item(await _write(decisions, content.rollback, item_id, data.version))


@get(
    "/v1/content/items/{item_id:str}/versions",
    opt=READ,
    responses={**admin_responses(), **_item_missing()},
)
async def item_versions(
    content: NamedDependency[ContentCatalog], item_id: ItemId
) -> ContentVersionList:
    """Every saved version of an item, newest first."""
    found = await sync_to_thread(content.item_versions, item_id)
    return ContentVersionList(id=item_id, data=msgspec.convert(found, list[ContentVersion]))


@get(
    "/v1/content/items/{item_id:str}/versions/{version:int}",
    opt=READ,
    responses={
        **admin_responses(),
        404: error_response("content_not_found or content_version_not_found"),
    },
)
async def item_version(
    content: NamedDependency[ContentCatalog], item_id: ItemId, version: Version
) -> ContentVersion:
    """One saved version of an item."""
    found = await sync_to_thread(content.item_version, item_id, version)
    return msgspec.convert(found, ContentVersion)


@get("/v1/placements", opt=READ, responses=admin_responses())
async def list_placements(
    content: NamedDependency[ContentCatalog],
    archived: Annotated[bool, QueryParameter(description="include archived placements")] = False,
) -> PlacementList:
    """Every placement by id (active ones unless ``archived=true``)."""
    found = await sync_to_thread(content.list_placements, include_archived=archived)
    return PlacementList(data=[_placement(placement) for placement in found])


@post(
    "/v1/placements",
    opt=WRITE,
    responses={
        **admin_responses(),
        400: _BODY_ERRORS,
        409: error_response("placement_exists: an active placement has that id"),
        422: _PLACEMENT_INVALID,
    },
)
async def create_placement(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    data: JSONBody[PlacementBody],
) -> PlacementDocument:
    """Save a new placement (version 1, or the next version of an archived id)."""
    return _placement(await _write(decisions, content.create_placement, _given(data)))


@get(
    "/v1/placements/{placement_id:str}",
    opt=READ,
    responses={**admin_responses(), **_placement_missing()},
)
async def show_placement(
    content: NamedDependency[ContentCatalog], placement_id: PlacementId
) -> PlacementDocument:
    """A placement's newest version (archived ones too)."""
    return _placement(await sync_to_thread(content.get_placement, placement_id))


@patch(
    "/v1/placements/{placement_id:str}",
    opt=WRITE,
    responses={
        **admin_responses(),
        **_placement_missing(),
        400: _BODY_ERRORS,
        409: error_response("placement_changed: it changed meanwhile; read it again"),
        422: _PLACEMENT_INVALID,
    },
)
async def update_placement(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    placement_id: PlacementId,
    data: JSONBody[PlacementBody],
) -> PlacementDocument:
    """Save the next version with the fields given (an archived placement comes back)."""
    changes = _given(data)
    return _placement(await _write(decisions, content.update_placement, placement_id, changes))


@delete(
    "/v1/placements/{placement_id:str}",
    opt=WRITE,
    status_code=200,
    responses={**admin_responses(), **_placement_missing()},
)
async def archive_placement(
    content: NamedDependency[ContentCatalog],
    decisions: NamedDependency[DecisionEngine],
    placement_id: PlacementId,
) -> PlacementDocument:
    """Archive a placement: decisions for it get no items."""
    return _placement(await _write(decisions, content.archive_placement, placement_id))


@get(
    "/v1/placements/{placement_id:str}/versions",
    opt=READ,
    responses={**admin_responses(), **_placement_missing()},
)
async def placement_versions(
    content: NamedDependency[ContentCatalog], placement_id: PlacementId
) -> PlacementVersionList:
    """Every saved version of a placement, newest first."""
    found = await sync_to_thread(content.placement_versions, placement_id)
    return PlacementVersionList(
        id=placement_id, data=msgspec.convert(found, list[PlacementVersion])
    )


def content_router() -> Router:
    """The catalog's routes, behind the API key guard (writes need the admin role)."""
    return Router(
        "/",
        route_handlers=[
            list_items,
            create_item,
            export_catalog,
            import_catalog,
            show_item,
            update_item,
            archive_item,
            publish_item,
            unpublish_item,
            rollback_item,
            item_versions,
            item_version,
            list_placements,
            create_placement,
            show_placement,
            update_placement,
            archive_placement,
            placement_versions,
        ],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["content"],
        # msgspec raises RecursionError (not a decode error) on a body nested thousands deep
        exception_handlers={RecursionError: _too_deep},
    )
