"""Recommendation routes (Bearer API key, ``read`` role): a user's recommendations and the
items like an item, served by ``personify.recommend.service.RecommendationService`` from
the learned index and the worker's live counters (docs/recommend.md).

``GET /v1/recommendations/{userId}`` takes any of the user's ids and resolves it to its
profile, as ``GET /v1/profiles/{id}`` does. A user Personify does not know, or whose consent
withdraws personalization, gets the popular items, never a 404. Each item carries its score,
its source (``learned``, ``covisitation``, ``segment_popular``, ``popular``), its anchor (the
item that led to it: "because you viewed X"), and its published catalog content when the
catalog has the item (``personify.content.catalog``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from litestar import Router, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from personify.api.admin import MAX_NAME_CHARS, NO_NUL
from personify.api.documents import admin_responses
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.content.catalog import PublishedItem, catalog_revision, published_items
from personify.profiles.document import personalization_allowed
from personify.profiles.service import ProfileService
from personify.recommend.service import Recommendation, RecommendationService
from personify.runtime import Runtime
from personify.segments.repository import SegmentRepository
from personify.store.database import Database, reachable

__all__ = ["Recommendations", "RecommendedItem", "SimilarItems", "recommend_router"]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
DECIDE = needs("decide")
DECIDE_PER_USER = needs("decide", per_user=True)

# ids as the collector takes them
MAX_ID_CHARS = 512
MAX_LIMIT = 100

UserId = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=NO_NUL,
        description="a userId, an anonymousId or a profile id (unknown: popular items)",
    ),
]
ItemId = Annotated[
    str,
    PathParameter(
        min_length=1, max_length=MAX_NAME_CHARS, pattern=NO_NUL, description="an item's id"
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="how many items at most")]


class RecommendedItem(msgspec.Struct):
    """One recommended item, why it was chosen, and what the catalog publishes for it."""

    id: Annotated[str, msgspec.Meta(description="the item's id (its product_id or sku)")]
    score: Annotated[
        float, msgspec.Meta(description="the source's score: higher is better; scales differ")
    ]
    source: Annotated[
        str,
        msgspec.Meta(
            description="learned (the index), covisitation (with what the user touched), "
            "segment_popular (among the user's segments) or popular (overall)"
        ),
    ]
    anchor: Annotated[
        str | None,
        msgspec.Meta(description="the item that led to it: 'because you viewed anchor'"),
    ]
    type: Annotated[
        str | None, msgspec.Meta(description="the published item's type (null: not in the catalog)")
    ]
    content: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(description="the published item's fields (null: not in the catalog)"),
    ]


class Recommendations(msgspec.Struct):
    """A user's recommendations, best first."""

    userId: Annotated[str, msgspec.Meta(description="the id asked for")]
    profileId: Annotated[
        str | None,
        msgspec.Meta(description="its profile (null: unknown, or no personalization consent)"),
    ]
    items: list[RecommendedItem]


class SimilarItems(msgspec.Struct):
    """The items most like an item, best first."""

    itemId: Annotated[str, msgspec.Meta(description="the item asked about")]
    items: list[RecommendedItem]


class _Published:
    """The published catalog by id, read again when its revision moves (one small query per
    request otherwise)."""

    def __init__(self) -> None:
        self._revision: int | None = None
        self._items: dict[str, PublishedItem] = {}
        self._lock = threading.Lock()

    def lookup(self, db: Database, ids: Sequence[str]) -> dict[str, PublishedItem]:
        with reachable(), db.connect() as conn:
            revision = catalog_revision(conn)
            with self._lock:
                if revision != self._revision:
                    self._items = {item.id: item for item in published_items(conn)}
                    self._revision = revision
                items = self._items
        return {i: items[i] for i in ids if i in items}


# one published catalog per state database (an app, or a test's)
_CATALOGS: weakref.WeakKeyDictionary[Database, _Published] = weakref.WeakKeyDictionary()


def _catalog(db: Database) -> _Published:
    found = _CATALOGS.get(db)
    if found is None:
        found = _CATALOGS[db] = _Published()
    return found


def _items(
    found: Sequence[Recommendation], published: Mapping[str, PublishedItem]
) -> list[RecommendedItem]:
    items = []
    for r in found:
        item = published.get(r.item_id)
        document = item.document if item is not None else None
        items.append(
            RecommendedItem(
                id=r.item_id,
                score=r.score,
                source=r.source,
                anchor=r.anchor,
                type=document.get("type") if document is not None else None,
                content=dict(document.get("fields") or {}) if document is not None else None,
            )
        )
    return items


async def _with_content(db: Database, found: Sequence[Recommendation]) -> list[RecommendedItem]:
    published = await sync_to_thread(_catalog(db).lookup, db, [r.item_id for r in found])
    return _items(found, published)


@get("/v1/recommendations/{user_id:str}", opt=DECIDE_PER_USER, responses=admin_responses())
async def recommendations_for(
    runtime: NamedDependency[Runtime],
    profiles: NamedDependency[ProfileService],
    segments: NamedDependency[SegmentRepository],
    recommendations: NamedDependency[RecommendationService],
    user_id: UserId,
    limit: Limit = 10,
    exclude: Annotated[
        Literal["seen", "none"],
        QueryParameter(description="seen: leave out the items the user interacted with lately"),
    ] = "none",
) -> Recommendations:
    """A user's recommendations: the learned index's, then items viewed or bought together
    with what they touched lately (with the anchor), then their segments' popular items, then
    the popular items. An unknown user gets the popular items."""
    loaded = await profiles.load(user_id)
    profile_id: str | None = None
    member_of: list[str] = []
    if loaded is not None and personalization_allowed(loaded.state, profiles.features):
        profile_id = loaded.profile_id
        held = await sync_to_thread(segments.profile_segments, profile_id)
        member_of = [str(s["key"]) for s in held]
    found = await sync_to_thread(
        functools.partial(
            recommendations.recommend,
            profile_id,
            limit=limit,
            exclude_seen=exclude == "seen",
            segments=member_of,
        )
    )
    return Recommendations(
        userId=user_id, profileId=profile_id, items=await _with_content(runtime.db, found)
    )


@get("/v1/items/{item_id:str}/similar", opt=DECIDE, responses=admin_responses())
async def similar_items(
    runtime: NamedDependency[Runtime],
    recommendations: NamedDependency[RecommendationService],
    item_id: ItemId,
    limit: Limit = 10,
) -> SimilarItems:
    """The items most like an item: the learned index's, then the items most viewed or bought
    together with it (anchored on it), then popular items; never the item itself."""
    found = await sync_to_thread(functools.partial(recommendations.similar, item_id, limit=limit))
    return SimilarItems(itemId=item_id, items=await _with_content(runtime.db, found))


def recommend_router() -> Router:
    """The recommendation routes, behind the API key guard (the read role)."""
    return Router(
        "/",
        route_handlers=[recommendations_for, similar_items],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["recommendations"],
    )
