"""The content catalog: items and placements with every version kept, publishing, rollback,
and bulk import and export (docs/content.md).

An item's **versions** are immutable: every change that alters its document writes the next
version, and a change that alters nothing writes none. **Publishing** points the item at one
version (``publishedVersion``): that snapshot is what the decision engine serves, untouched
by later edits until the item is published again. **Rollback** writes a new version with an
earlier version's document and, when the item is published, publishes it. Publishing and
unpublishing (archiving a published item included) tell the configured webhooks, in the
same transaction (``personify.content.webhooks``).

Every write bumps ``revision``, one number over items and placements, so a reader of the
published catalog (the decision engine, a cache) notices any change with one query
(``catalog_revision``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.content.tables import content_items, content_versions, placement_versions, placements
from personify.content.validation import (
    ITEM_FIELDS,
    RESERVED_PLACEMENT_IDS,
    Problems,
    check_id,
    check_item,
    check_placement,
)
from personify.content.webhooks import enqueue_event, enqueue_events
from personify.errors import (
    Conflict,
    InvalidDefinition,
    NotFound,
    PersonifyError,
    ValidationError,
)
from personify.segments.tables import segment_definitions
from personify.store.database import Database, aware

__all__ = [
    "ARCHIVED",
    "DRAFT",
    "PUBLISHED",
    "STATUSES",
    "ContentCatalog",
    "ContentItem",
    "ImportResult",
    "ItemPage",
    "Placement",
    "PublishedItem",
    "catalog_revision",
    "published_items",
]

DRAFT: Final = "draft"
PUBLISHED: Final = "published"
ARCHIVED: Final = "archived"
STATUSES: Final = (DRAFT, PUBLISHED, ARCHIVED)
# placements are active or archived
_ACTIVE: Final = "active"

_encode = msgspec.json.encode
_decode = msgspec.json.decode
# entries of one bulk import
MAX_IMPORT_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class ContentItem:
    """An item as its newest version has it, with where its publishing stands."""

    id: str
    status: str
    version: int
    published_version: int | None
    origin: str
    document: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The item as the API shows it (camelCase)."""
        return {
            "id": self.id,
            "status": self.status,
            "version": self.version,
            "publishedVersion": self.published_version,
            "hasUnpublishedChanges": self.status == PUBLISHED
            and self.published_version != self.version,
            "origin": self.origin,
            **{name: self.document.get(name) for name in ITEM_FIELDS},
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "publishedAt": self.published_at.isoformat() if self.published_at else None,
        }


@dataclass(frozen=True, slots=True)
class Placement:
    """A placement (a slot on a page or in an app) as its newest version has it."""

    id: str
    status: str
    version: int
    document: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The placement as the API shows it (camelCase)."""
        return {
            "id": self.id,
            "status": self.status,
            "version": self.version,
            "description": self.document["description"],
            "defaultItem": self.document["defaultItem"],
            "strategy": self.document["strategy"],
            "limit": self.document["limit"],
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class PublishedItem:
    """One published snapshot: what the decision engine serves."""

    id: str
    version: int
    document: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ItemPage:
    """A page of items by id, and the cursor of the next page (``None`` on the last)."""

    items: list[ContentItem]
    next: str | None


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What a bulk import did with each kind of entry: counts, and every refused entry with
    its index, id and problems (the others were kept)."""

    items: dict[str, Any]
    placements: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The result as the API shows it."""
        return {"items": self.items, "placements": self.placements}


_REVISION = sa.select(
    sa.func.coalesce(sa.func.max(content_items.c.revision), 0),
    sa.select(sa.func.coalesce(sa.func.max(placements.c.revision), 0)).scalar_subquery(),
)


def catalog_revision(conn: sa.Connection) -> int:
    """A number that grows with every change of any item or placement."""
    items, places = conn.execute(_REVISION).one()
    return max(int(items), int(places))


def published_items(conn: sa.Connection) -> list[PublishedItem]:
    """Every published item's published snapshot, by id."""
    rows = conn.execute(
        sa.select(content_items.c.id, content_versions.c.version, content_versions.c.document)
        .join(
            content_versions,
            sa.and_(
                content_versions.c.item_id == content_items.c.id,
                content_versions.c.version == content_items.c.published_version,
            ),
        )
        .where(content_items.c.status == PUBLISHED)
        .order_by(content_items.c.id)
    )
    return [PublishedItem(str(row.id), int(row.version), _decode(row.document)) for row in rows]


def _item(row: Any, document: Mapping[str, Any]) -> ContentItem:
    return ContentItem(
        id=row.id,
        status=row.status,
        version=int(row.version),
        published_version=int(row.published_version) if row.published_version else None,
        origin=row.origin,
        document=document,
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        updated_at=aware(row.updated_at),  # type: ignore[arg-type]
        published_at=aware(row.published_at),
    )


def _placement(row: Any) -> Placement:
    return Placement(
        id=row.id,
        status=row.status,
        version=int(row.version),
        document=_decode(row.document),
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        updated_at=aware(row.updated_at),  # type: ignore[arg-type]
    )


def _bad_id(what: str) -> ValidationError:
    return ValidationError(
        f"a {what} id is 1-200 letters, digits, '.', '_', ':' or '-', starting with a letter "
        "or digit",
        code="invalid_id",
        details={"field": "id"},
    )


class ContentCatalog:
    """Saves and reads content items and placements in the state database."""

    def __init__(
        self, db: Database, *, clock: Clock | None = None, product_refresh_s: float = 3600.0
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        # a product learned from events takes new facts at most this often: prices that
        # move with every event must not write a version per batch
        self._product_refresh = timedelta(seconds=product_refresh_s)

    # -- items -------------------------------------------------------------------------------

    def create_item(
        self, body: Mapping[str, Any], *, publish: bool = False, origin: str = "api"
    ) -> ContentItem:
        """Save a new item (version 1, or the next version of an archived id, as a draft),
        published at once when ``publish``.

        Raises ``ValidationError`` for a bad id, ``InvalidDefinition`` (``invalid_content``)
        for a bad document and ``Conflict`` (``content_exists``) when an item that is not
        archived has the id.
        """
        item_id = body.get("id") if isinstance(body, Mapping) else None
        if check_id(item_id) is None:
            raise _bad_id("content item")
        assert isinstance(item_id, str)
        with self._db.begin() as conn:
            existing = self._item_row(conn, item_id)
            if existing is not None and existing.status != ARCHIVED:
                raise Conflict(f"content item {item_id!r} exists already", code="content_exists")
            document = self._check_item(conn, body)
            item = self._write_item(conn, item_id, document, existing, "created", origin)
            if publish:
                item = self._publish(conn, item_id)
            return item

    def update_item(
        self, item_id: str, changes: Mapping[str, Any], *, publish: bool = False
    ) -> ContentItem:
        """Save the next version of an item with ``changes`` (top-level fields given replace
        the old ones); an archived item comes back as a draft. A change that alters nothing
        writes no version. Published at once when ``publish``."""
        if "id" in changes and changes["id"] != item_id:
            raise InvalidDefinition(
                "an item's id cannot change (create a new item instead)",
                code="invalid_content",
                details={
                    "errors": [{"pointer": "/id", "code": "immutable", "message": "cannot change"}]
                },
            )
        with self._db.begin() as conn:
            existing = self._existing_item(conn, item_id)
            current = self._version_document(conn, item_id, int(existing.version))
            merged = {**current, **{k: v for k, v in changes.items() if k != "id"}}
            document = self._check_item(conn, merged)
            if document == current and existing.status != ARCHIVED:
                item = _item(existing, current)
            else:
                item = self._write_item(
                    conn, item_id, document, existing, "updated", existing.origin
                )
            if publish:
                item = self._publish(conn, item_id)
            return item

    def get_item(self, item_id: str) -> ContentItem:
        """An item's newest version (archived ones too); ``NotFound`` when there is none."""
        with self._db.connect() as conn:
            row = self._existing_item(conn, item_id)
            return _item(row, self._version_document(conn, item_id, int(row.version)))

    def item_version(self, item_id: str, version: int) -> dict[str, Any]:
        """One saved version of an item: its document, what made it, and when."""
        with self._db.connect() as conn:
            self._existing_item(conn, item_id)
            row = conn.execute(
                sa.select(content_versions).where(
                    content_versions.c.item_id == item_id, content_versions.c.version == version
                )
            ).one_or_none()
            if row is None:
                raise NotFound(
                    f"content item {item_id!r} has no version {version}",
                    code="content_version_not_found",
                )
            return self._version_dict(row)

    def item_versions(self, item_id: str) -> list[dict[str, Any]]:
        """Every saved version of an item, newest first."""
        with self._db.connect() as conn:
            self._existing_item(conn, item_id)
            rows = conn.execute(
                sa.select(content_versions)
                .where(content_versions.c.item_id == item_id)
                .order_by(content_versions.c.version.desc())
            )
            return [self._version_dict(row) for row in rows]

    def list_items(
        self,
        *,
        type: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        placement: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> ItemPage:
        """A page of items by id, filtered by type, status, tag and placement (archived items
        only when ``status`` asks for them)."""
        query = _with_newest_document()
        if type is not None:
            query = query.where(content_items.c.type == type)
        if status is not None:
            query = query.where(content_items.c.status == status)
        else:
            query = query.where(content_items.c.status != ARCHIVED)
        if after is not None:
            query = query.where(content_items.c.id > after)
        found: list[ContentItem] = []
        # tags and placements live in the JSON document: filtered here, a page at a time
        batch = max(limit, 200)
        with self._db.connect() as conn:
            while len(found) <= limit:
                rows = conn.execute(query.order_by(content_items.c.id).limit(batch)).all()
                for row in rows:
                    document = _decode(row.document)
                    if tag is not None and tag not in document["tags"]:
                        continue
                    if placement is not None and placement not in document["placements"]:
                        continue
                    found.append(_item(row, document))
                if len(rows) < batch:
                    break
                query = query.where(content_items.c.id > rows[-1].id)
        page = found[:limit]
        return ItemPage(page, page[-1].id if len(found) > limit else None)

    def publish(self, item_id: str) -> ContentItem:
        """Publish an item's newest version (a draft, or a published item with changes)."""
        with self._db.begin() as conn:
            return self._publish(conn, item_id)

    def unpublish(self, item_id: str) -> ContentItem:
        """Take a published item back to draft: it is served no more."""
        with self._db.begin() as conn:
            existing = self._existing_item(conn, item_id)
            if existing.status != PUBLISHED:
                raise Conflict(
                    f"content item {item_id!r} is not published", code="content_not_published"
                )
            return self._set_status(conn, existing, DRAFT)

    def archive(self, item_id: str) -> ContentItem:
        """Archive an item (unpublished first); refused while a placement falls back to it."""
        with self._db.begin() as conn:
            existing = self._existing_item(conn, item_id)
            if existing.status == ARCHIVED:
                return _item(existing, self._version_document(conn, item_id, int(existing.version)))
            users = [
                placement.id
                for placement in self._placements(conn, include_archived=False)
                if placement.document["defaultItem"] == item_id
            ]
            if users:
                raise Conflict(
                    f"content item {item_id!r} is the default of {', '.join(users)}; change "
                    "those placements first",
                    code="content_in_use",
                    details={"usedBy": users},
                )
            return self._set_status(conn, existing, ARCHIVED)

    def rollback(self, item_id: str, version: int) -> ContentItem:
        """Write a new version holding ``version``'s document; a published item publishes it."""
        with self._db.begin() as conn:
            existing = self._existing_item(conn, item_id)
            if existing.status == ARCHIVED:
                raise Conflict(
                    f"content item {item_id!r} is archived; change it to bring it back",
                    code="content_archived",
                )
            row = conn.execute(
                sa.select(content_versions.c.document).where(
                    content_versions.c.item_id == item_id, content_versions.c.version == version
                )
            ).one_or_none()
            if row is None:
                raise NotFound(
                    f"content item {item_id!r} has no version {version}",
                    code="content_version_not_found",
                )
            # the old document is checked again: a placement or segment it named may be gone
            document = self._check_item(conn, _decode(row.document))
            item = self._write_item(conn, item_id, document, existing, "rollback", existing.origin)
            if existing.status == PUBLISHED:
                item = self._publish(conn, item_id)
            return item

    # -- placements --------------------------------------------------------------------------

    def create_placement(self, body: Mapping[str, Any]) -> Placement:
        """Save a new placement (version 1, or the next version of an archived id)."""
        placement_id = body.get("id") if isinstance(body, Mapping) else None
        if check_id(placement_id) is None:
            raise _bad_id("placement")
        assert isinstance(placement_id, str)
        if placement_id in RESERVED_PLACEMENT_IDS:
            raise ValidationError(
                f"{placement_id!r} names a route under /v1/content; choose another id",
                code="invalid_id",
                details={"field": "id"},
            )
        with self._db.begin() as conn:
            existing = self._placement_row(conn, placement_id)
            if existing is not None and existing.status != ARCHIVED:
                raise Conflict(
                    f"placement {placement_id!r} exists already", code="placement_exists"
                )
            document = check_placement(body, items=self._item_exists(conn))
            return self._write_placement(conn, placement_id, document, _ACTIVE, existing)

    def update_placement(self, placement_id: str, changes: Mapping[str, Any]) -> Placement:
        """Save the next version of a placement with ``changes`` (top-level fields replace
        the old ones); an archived placement becomes active again."""
        with self._db.begin() as conn:
            existing = self._existing_placement(conn, placement_id)
            current = _decode(existing.document)
            merged = {**current, **{k: v for k, v in changes.items() if k != "id"}}
            document = check_placement(merged, items=self._item_exists(conn))
            if document == current and existing.status == _ACTIVE:
                return _placement(existing)
            return self._write_placement(conn, placement_id, document, _ACTIVE, existing)

    def archive_placement(self, placement_id: str) -> Placement:
        """Archive a placement: the decision engine answers for it no more."""
        with self._db.begin() as conn:
            existing = self._existing_placement(conn, placement_id)
            if existing.status == ARCHIVED:
                return _placement(existing)
            return self._write_placement(
                conn, placement_id, _decode(existing.document), ARCHIVED, existing
            )

    def get_placement(self, placement_id: str) -> Placement:
        """A placement's newest version (archived ones too)."""
        with self._db.connect() as conn:
            return _placement(self._existing_placement(conn, placement_id))

    def list_placements(self, *, include_archived: bool = False) -> list[Placement]:
        """Every placement by id (active ones unless ``include_archived``)."""
        with self._db.connect() as conn:
            return self._placements(conn, include_archived=include_archived)

    def placement_versions(self, placement_id: str) -> list[dict[str, Any]]:
        """Every saved version of a placement, newest first."""
        with self._db.connect() as conn:
            self._existing_placement(conn, placement_id)
            rows = conn.execute(
                sa.select(placement_versions)
                .where(placement_versions.c.placement_id == placement_id)
                .order_by(placement_versions.c.version.desc())
            )
            return [
                {
                    "version": int(row.version),
                    "status": row.status,
                    **_decode(row.document),
                    "savedAt": aware(row.saved_at).isoformat(),  # type: ignore[union-attr]
                }
                for row in rows
            ]

    # -- the whole catalog -------------------------------------------------------------------

    def export(self, *, include_archived: bool = False) -> dict[str, Any]:
        """Every item (its newest version, with its status) and active placement, in the
        shape ``import_catalog`` reads back."""
        items: list[dict[str, Any]] = []
        for status in (None, ARCHIVED) if include_archived else (None,):
            after: str | None = None
            while True:
                page = self.list_items(limit=1000, after=after, status=status)
                items.extend(_portable_item(item) for item in page.items)
                if page.next is None:
                    break
                after = page.next
        return {
            "items": sorted(items, key=lambda item: item["id"]),
            "placements": [
                {"id": placement.id, **placement.document} for placement in self.list_placements()
            ],
        }

    def import_catalog(self, body: Any, *, publish: bool = False) -> ImportResult:
        """Create or update every item and placement of an export-shaped body. Each entry is
        applied on its own: one that breaks the rules is reported with its problems
        (pointers from the body's root, ``/items/3/targeting``) and the rest are kept.

        An item's ``status`` (``draft``, ``published``, ``archived``) is honoured; without
        one it is published when ``publish``, else left as a draft (a new item) or as it is.
        Placements come first, so items may name placements of the same import; a placement
        whose default item comes in the same import gets it once the items are in.
        """
        if not isinstance(body, Mapping):
            raise ValidationError(
                'an import is {"items": [...], "placements": [...]}', code="invalid_import"
            )
        entries = {kind: body.get(kind, []) for kind in ("items", "placements")}
        for kind, listed in entries.items():
            if not isinstance(listed, list):
                raise ValidationError(f"{kind} must be a list", code="invalid_import")
        if len(entries["items"]) + len(entries["placements"]) > MAX_IMPORT_ENTRIES:
            raise ValidationError(
                f"an import holds at most {MAX_IMPORT_ENTRIES} entries; split it",
                code="invalid_import",
            )
        unknown = sorted(set(body) - set(entries))
        if unknown:
            raise ValidationError(
                f"unknown fields {', '.join(map(str, unknown))} (an import has items and placements)",
                code="invalid_import",
            )
        # placements first, so items may name placements of the same import; a placement
        # whose default item comes in this import gets it once the items are in
        incoming = {entry.get("id") for entry in entries["items"] if isinstance(entry, Mapping)}
        deferred: dict[int, str] = {}

        def placement_first(index: int, entry: Any) -> str:
            default = entry.get("defaultItem") if isinstance(entry, Mapping) else None
            if isinstance(default, str) and default in incoming and not self._item_known(default):
                deferred[index] = default
                return self._import_placement({**entry, "defaultItem": None})
            return self._import_placement(entry)

        places = self._import_each("placements", entries["placements"], placement_first)
        items = self._import_each(
            "items", entries["items"], lambda _, entry: self._import_item(entry, publish)
        )
        refused = {error["index"] for error in places["errors"]}
        for index, default in deferred.items():
            if index in refused:
                continue
            placement_id = entries["placements"][index]["id"]
            try:
                self.update_placement(placement_id, {"defaultItem": default})
            except (ValidationError, Conflict, NotFound) as exc:
                places["errors"].append(_entry_error("placements", index, placement_id, exc))
                places["refused"] += 1
        return ImportResult(items=items, placements=places)

    def upsert_products(self, products: Iterable[Mapping[str, Any]]) -> int:
        """Create or update ``product`` items learned from e-commerce events (each a
        mapping of ``product_id`` or ``sku``, ``name``, ``category``, ``price``, ``url``,
        ``image_url``): new ones are published, fields an API or import set are kept, and
        an unchanged product writes nothing. Returns how many items changed."""
        with self._db.begin() as conn:
            return self.upsert_products_in(conn, products)

    def upsert_products_in(self, conn: sa.Connection, products: Iterable[Mapping[str, Any]]) -> int:
        """``upsert_products`` in the caller's transaction (the worker's). The products'
        items are read in bulk first, so unchanged ones cost no write. New products are
        written together, one statement per table; each other change is written under a
        savepoint, so a product another process created first is skipped, not the caller's
        whole transaction."""
        wanted: dict[str, dict[str, Any]] = {}
        for product in products:
            product_id = check_id(product.get("product_id") or product.get("sku"))
            if product_id is not None:
                wanted[product_id] = _learned(product)
        current = self._current_items(conn, list(wanted))
        now = self._clock.now()
        changed = 0
        new: dict[str, dict[str, Any]] = {}
        for product_id, learned in wanted.items():
            row = current.get(product_id)
            if row is None:
                new[product_id] = learned
                continue
            if row.status == ARCHIVED or row.type != "product":
                continue
            updated = aware(row.updated_at)
            fresh = updated is not None and now - updated < self._product_refresh
            if row.origin == "events" and fresh:
                continue
            # decoded only here: most products a batch names are fresh
            fields = _decode(row.document)["fields"]
            if _product_fields(row.origin, fields, learned) == fields:
                continue
            changed += self._upsert_product_alone(conn, product_id, learned)
        return changed + self._create_products(conn, new, now)

    def _upsert_product_alone(
        self, conn: sa.Connection, product_id: str, learned: dict[str, Any]
    ) -> int:
        try:
            with conn.begin_nested():
                return self._upsert_product(conn, product_id, learned)
        except sa.exc.IntegrityError:
            # another worker created it between our read and our insert: theirs stands
            return 0

    def _create_products(
        self, conn: sa.Connection, new: dict[str, dict[str, Any]], now: datetime
    ) -> int:
        """Create and publish the products of ``new`` (none of them in the catalog when it
        was read) with one insert per table: what ``_upsert_product`` does for each, item by
        item, and the same rows. Where another process created one of them since the read,
        each is upserted alone instead."""
        documents: list[tuple[str, dict[str, Any]]] = []
        for product_id, learned in new.items():
            try:
                documents.append((product_id, _new_product(learned)))
            except InvalidDefinition:
                continue
        if not documents:
            return 0
        try:
            with conn.begin_nested():
                self._insert_published(conn, documents, now)
        except sa.exc.IntegrityError:
            return sum(
                self._upsert_product_alone(conn, product_id, new[product_id])
                for product_id, _ in documents
            )
        return len(documents)

    def _insert_published(
        self, conn: sa.Connection, documents: Sequence[tuple[str, dict[str, Any]]], now: datetime
    ) -> None:
        first = self._next_revision(conn, now)
        conn.execute(
            content_items.insert(),
            [
                {
                    "id": item_id,
                    "type": document["type"],
                    "status": PUBLISHED,
                    "version": 1,
                    "published_version": 1,
                    "origin": "events",
                    # one revision each, as when they are written one at a time
                    "revision": first + offset,
                    "created_at": now,
                    "updated_at": now,
                    "published_at": now,
                }
                for offset, (item_id, document) in enumerate(documents)
            ],
        )
        conn.execute(
            content_versions.insert(),
            [
                {
                    "item_id": item_id,
                    "version": 1,
                    "document": _encode(document).decode(),
                    "change": "events",
                    "saved_at": now,
                }
                for item_id, document in documents
            ],
        )
        # as the rows read back: every stored time is UTC
        stamp = now.astimezone(UTC)
        enqueue_events(
            conn,
            "content.published",
            [
                (
                    item_id,
                    1,
                    ContentItem(
                        item_id, PUBLISHED, 1, 1, "events", document, stamp, stamp, stamp
                    ).to_dict(),
                )
                for item_id, document in documents
            ],
            now=now,
        )

    def _current_items(self, conn: sa.Connection, item_ids: Sequence[str]) -> dict[str, Any]:
        """The rows of the items of ``item_ids`` that exist, each with its newest version's
        ``document`` (JSON text), by id."""
        found: dict[str, Any] = {}
        for start in range(0, len(item_ids), 500):
            rows = conn.execute(
                _with_newest_document().where(content_items.c.id.in_(item_ids[start : start + 500]))
            )
            for row in rows:
                found[str(row.id)] = row
        return found

    def _upsert_product(self, conn: sa.Connection, product_id: str, learned: dict[str, Any]) -> int:
        existing = self._item_row(conn, product_id)
        if existing is None:
            try:
                document = _new_product(learned)
            except InvalidDefinition:
                return 0
            self._write_item(conn, product_id, document, None, "events", "events")
            self._publish(conn, product_id)
            return 1
        if existing.status == ARCHIVED or existing.type != "product":
            return 0
        current = self._version_document(conn, product_id, int(existing.version))
        fields = _product_fields(existing.origin, current["fields"], learned)
        if fields == current["fields"]:
            return 0
        try:
            document = check_item({**current, "fields": fields})
        except InvalidDefinition:
            return 0
        self._write_item(conn, product_id, document, existing, "events", existing.origin)
        if existing.status == PUBLISHED and existing.origin == "events":
            self._publish(conn, product_id)
        return 1

    # -- internals ---------------------------------------------------------------------------

    def _import_each(
        self, kind: str, entries: Sequence[Any], apply: Callable[[int, Any], str]
    ) -> dict[str, Any]:
        counts = {"created": 0, "updated": 0, "unchanged": 0}
        errors: list[dict[str, Any]] = []
        for index, entry in enumerate(entries):
            try:
                counts[apply(index, entry)] += 1
            except (ValidationError, Conflict, NotFound) as exc:
                entry_id = entry.get("id") if isinstance(entry, Mapping) else None
                errors.append(_entry_error(kind, index, entry_id, exc))
        return {**counts, "refused": len(errors), "errors": errors}

    def _item_known(self, item_id: str) -> bool:
        with self._db.connect() as conn:
            return self._item_exists(conn)(item_id)

    def _import_item(self, entry: Any, publish: bool) -> str:
        if not isinstance(entry, Mapping):
            raise ValidationError("an item is a JSON object", code="invalid_type")
        status = entry.get("status")
        if status is not None and status not in STATUSES:
            raise ValidationError(
                f"status is one of {', '.join(STATUSES)}",
                code="invalid_status",
                details={"field": "status"},
            )
        body = {k: v for k, v in entry.items() if k != "status"}
        item_id = body.get("id")
        if check_id(item_id) is None:
            raise _bad_id("content item")
        assert isinstance(item_id, str)
        wanted = status or (PUBLISHED if publish else None)
        with self._db.begin() as conn:
            existing = self._item_row(conn, item_id)
            document = self._check_item(conn, body)
            if existing is None:
                outcome = "created"
                item = self._write_item(conn, item_id, document, None, "import", "import")
            else:
                current = self._version_document(conn, item_id, int(existing.version))
                if document == current:
                    outcome = "unchanged"
                    item = _item(existing, current)
                else:
                    outcome = "updated"
                    item = self._write_item(
                        conn, item_id, document, existing, "import", existing.origin
                    )
            if wanted == PUBLISHED and (
                item.status != PUBLISHED or item.published_version != item.version
            ):
                self._publish(conn, item_id)
                outcome = "updated" if outcome == "unchanged" else outcome
            elif wanted in (DRAFT, ARCHIVED) and item.status != wanted:
                self._set_status(conn, self._existing_item(conn, item_id), wanted)
                outcome = "updated" if outcome == "unchanged" else outcome
            return outcome

    def _import_placement(self, entry: Any) -> str:
        if not isinstance(entry, Mapping):
            raise ValidationError("a placement is a JSON object", code="invalid_type")
        placement_id = entry.get("id")
        if not isinstance(placement_id, str):
            raise _bad_id("placement")
        with self._db.connect() as conn:
            existing = self._placement_row(conn, placement_id)
        if existing is None or existing.status == ARCHIVED:
            self.create_placement(entry)
            return "created"
        before = int(existing.version)
        return (
            "updated"
            if self.update_placement(placement_id, entry).version != before
            else "unchanged"
        )

    def _check_item(self, conn: sa.Connection, body: Mapping[str, Any]) -> dict[str, Any]:
        known = {
            str(key): _decode(condition) if condition is not None else None
            for key, condition in conn.execute(
                sa.select(segment_definitions.c.key, segment_definitions.c.condition).where(
                    segment_definitions.c.status == "active"
                )
            )
        }
        active_placements = {
            str(pid)
            for (pid,) in conn.execute(
                sa.select(placements.c.id).where(placements.c.status == _ACTIVE)
            )
        }
        return check_item(body, placements=active_placements.__contains__, segments=known)

    def _item_exists(self, conn: sa.Connection) -> Callable[[str], bool]:
        def exists(item_id: str) -> bool:
            row = self._item_row(conn, item_id)
            return row is not None and row.status != ARCHIVED

        return exists

    def _next_revision(self, conn: sa.Connection, now: datetime) -> int:
        # microseconds, and always past the last: concurrent saves on PostgreSQL still differ
        return max(catalog_revision(conn) + 1, int(now.timestamp() * 1_000_000))

    def _write_item(
        self,
        conn: sa.Connection,
        item_id: str,
        document: Mapping[str, Any],
        existing: Any,
        change: str,
        origin: str,
    ) -> ContentItem:
        now = self._clock.now()
        version = int(existing.version) + 1 if existing is not None else 1
        status = DRAFT if existing is None or existing.status == ARCHIVED else existing.status
        values = {
            "type": document["type"],
            "status": status,
            "version": version,
            "origin": origin,
            "revision": self._next_revision(conn, now),
            "updated_at": now,
        }
        if existing is None:
            conn.execute(
                content_items.insert().values(
                    id=item_id, created_at=now, published_version=None, published_at=None, **values
                )
            )
        else:
            if existing.status == ARCHIVED:
                values["published_version"] = None
            _update_unless_changed(
                conn, content_items, item_id, int(existing.version), values, "content item"
            )
        conn.execute(
            content_versions.insert().values(
                item_id=item_id,
                version=version,
                document=_encode(document).decode(),
                change=change,
                saved_at=now,
            )
        )
        return _item(self._existing_item(conn, item_id), document)

    def _publish(self, conn: sa.Connection, item_id: str) -> ContentItem:
        existing = self._existing_item(conn, item_id)
        if existing.status == ARCHIVED:
            raise Conflict(
                f"content item {item_id!r} is archived; change it to bring it back first",
                code="content_archived",
            )
        document = self._version_document(conn, item_id, int(existing.version))
        if existing.status == PUBLISHED and existing.published_version == existing.version:
            return _item(existing, document)
        now = self._clock.now()
        conn.execute(
            content_items.update()
            .where(content_items.c.id == item_id)
            .values(
                status=PUBLISHED,
                published_version=existing.version,
                published_at=now,
                revision=self._next_revision(conn, now),
                updated_at=now,
            )
        )
        item = _item(self._existing_item(conn, item_id), document)
        enqueue_event(conn, "content.published", item_id, item.version, item.to_dict(), now=now)
        return item

    def _set_status(self, conn: sa.Connection, existing: Any, status: str) -> ContentItem:
        now = self._clock.now()
        item_id = str(existing.id)
        conn.execute(
            content_items.update()
            .where(content_items.c.id == item_id)
            .values(
                status=status,
                published_version=None,
                revision=self._next_revision(conn, now),
                updated_at=now,
            )
        )
        item = _item(
            self._existing_item(conn, item_id),
            self._version_document(conn, item_id, int(existing.version)),
        )
        if existing.status == PUBLISHED:
            enqueue_event(
                conn,
                "content.unpublished",
                item_id,
                int(existing.published_version) if existing.published_version else None,
                item.to_dict(),
                now=now,
            )
        return item

    def _write_placement(
        self,
        conn: sa.Connection,
        placement_id: str,
        document: Mapping[str, Any],
        status: str,
        existing: Any,
    ) -> Placement:
        now = self._clock.now()
        version = int(existing.version) + 1 if existing is not None else 1
        text = _encode(document).decode()
        values = {
            "status": status,
            "version": version,
            "document": text,
            "revision": self._next_revision(conn, now),
            "updated_at": now,
        }
        if existing is None:
            conn.execute(placements.insert().values(id=placement_id, created_at=now, **values))
        else:
            _update_unless_changed(
                conn, placements, placement_id, int(existing.version), values, "placement"
            )
        conn.execute(
            placement_versions.insert().values(
                placement_id=placement_id,
                version=version,
                status=status,
                document=text,
                saved_at=now,
            )
        )
        return _placement(self._existing_placement(conn, placement_id))

    def _placements(self, conn: sa.Connection, *, include_archived: bool) -> list[Placement]:
        query = sa.select(placements).order_by(placements.c.id)
        if not include_archived:
            query = query.where(placements.c.status == _ACTIVE)
        return [_placement(row) for row in conn.execute(query)]

    def _item_row(self, conn: sa.Connection, item_id: str) -> Any:
        return conn.execute(
            sa.select(content_items).where(content_items.c.id == item_id)
        ).one_or_none()

    def _existing_item(self, conn: sa.Connection, item_id: str) -> Any:
        row = self._item_row(conn, item_id)
        if row is None:
            raise NotFound(f"no content item {item_id!r}", code="content_not_found")
        return row

    def _version_document(self, conn: sa.Connection, item_id: str, version: int) -> dict[str, Any]:
        text = conn.execute(
            sa.select(content_versions.c.document).where(
                content_versions.c.item_id == item_id, content_versions.c.version == version
            )
        ).scalar_one()
        document: dict[str, Any] = _decode(text)
        return document

    def _placement_row(self, conn: sa.Connection, placement_id: str) -> Any:
        return conn.execute(
            sa.select(placements).where(placements.c.id == placement_id)
        ).one_or_none()

    def _existing_placement(self, conn: sa.Connection, placement_id: str) -> Any:
        row = self._placement_row(conn, placement_id)
        if row is None:
            raise NotFound(f"no placement {placement_id!r}", code="placement_not_found")
        return row

    @staticmethod
    def _version_dict(row: Any) -> dict[str, Any]:
        return {
            "version": int(row.version),
            "change": row.change,
            "savedAt": aware(row.saved_at).isoformat(),  # type: ignore[union-attr]
            **_decode(row.document),
        }


_PRODUCT_FACTS: Final = ("sku", "name", "category", "price", "url", "image_url")


def _learned(product: Mapping[str, Any]) -> dict[str, Any]:
    return {name: product[name] for name in _PRODUCT_FACTS if product.get(name) is not None}


def _new_product(learned: dict[str, Any]) -> dict[str, Any]:
    """The checked document of a product first learned from events (``InvalidDefinition``
    when its facts make no valid item)."""
    category = learned.get("category")
    return check_item(
        {
            "type": "product",
            "fields": learned,
            "tags": [category] if isinstance(category, str) and category else [],
        }
    )


def _product_fields(
    origin: str, current: Mapping[str, Any], learned: Mapping[str, Any]
) -> dict[str, Any]:
    """A product's fields once events said ``learned``: events update what events wrote;
    what a person wrote through the API or an import wins."""
    if origin == "events":
        return {**current, **learned}
    return {**learned, **current}


def _update_unless_changed(
    conn: sa.Connection,
    table: sa.Table,
    row_id: str,
    version: int,
    values: Mapping[str, Any],
    what: str,
) -> None:
    """Update a row at the version it was read at; ``Conflict`` (``content_changed`` or
    ``placement_changed``) when another writer moved it first."""
    changed = conn.execute(
        table.update().where(table.c.id == row_id, table.c.version == version).values(**values)
    ).rowcount
    if changed != 1:
        code = "placement_changed" if table is placements else "content_changed"
        raise Conflict(f"{what} {row_id!r} changed meanwhile; read it again", code=code)


def _with_newest_document() -> sa.Select[Any]:
    """Items joined with their newest version's document."""
    return sa.select(content_items, content_versions.c.document).join(
        content_versions,
        sa.and_(
            content_versions.c.item_id == content_items.c.id,
            content_versions.c.version == content_items.c.version,
        ),
    )


def _entry_error(kind: str, index: int, entry_id: Any, exc: PersonifyError) -> dict[str, Any]:
    """An import entry's refusal: its index, id, and every problem with a pointer from the
    import's root."""
    problems = Problems()
    found = exc.details.get("errors") if isinstance(exc.details, dict) else None
    if found:
        problems.extend((kind, index), found)
    else:
        field = exc.details.get("field") if isinstance(exc.details, dict) else None
        problems.add((kind, index, field) if field else (kind, index), exc.code, exc.message)
    return {"index": index, "id": entry_id, "errors": problems.found}


def _portable_item(item: ContentItem) -> dict[str, Any]:
    return {"id": item.id, "status": item.status, **dict(item.document)}
