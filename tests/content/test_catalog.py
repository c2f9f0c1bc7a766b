"""The content catalog on real state databases (a SQLite file, and PostgreSQL): versions,
publishing and its snapshot, rollback, placements, validation with pointers, import and
export, and products learned from events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock
from personify.content.catalog import ContentCatalog, catalog_revision, published_items
from personify.content.learning import ProductStage
from personify.content.tables import content_items, content_versions, content_webhook_deliveries
from personify.content.validation import schedule_bounds
from personify.content.webhooks import WebhookRepository
from personify.errors import Conflict, InvalidDefinition, NotFound, ValidationError
from personify.profiles.batch import ProfileBatch
from personify.profiles.events import view_event
from personify.segments.repository import SegmentRepository
from personify.store.database import Database
from tests.postgres import fresh_schema, postgres_database
from tests.profiles.factory import event

__all__ = ["postgres_database"]

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BANNER = {
    "id": "winter-sale",
    "type": "banner",
    "fields": {"title": "Winter sale", "image": "/img/winter.png"},
    "tags": ["sale", "winter"],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        database = Database(fresh_schema(request.getfixturevalue("postgres_database")))
    yield database
    database.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def catalog(db: Database, clock: FrozenClock) -> ContentCatalog:
    return ContentCatalog(db, clock=clock)


def errors_of(exc: pytest.ExceptionInfo[InvalidDefinition]) -> dict[str, str]:
    return {problem["pointer"]: problem["code"] for problem in exc.value.details["errors"]}


def deliveries(db: Database) -> list[tuple[str, str, int | None]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(
                content_webhook_deliveries.c.event,
                content_webhook_deliveries.c.item_id,
                content_webhook_deliveries.c.item_version,
            ).order_by(content_webhook_deliveries.c.id)
        )
        return [(row.event, row.item_id, row.item_version) for row in rows]


def test_new_item_is_a_draft_with_defaults_and_is_not_served(catalog: ContentCatalog) -> None:
    item = catalog.create_item(BANNER)
    assert (item.status, item.version, item.published_version) == ("draft", 1, None)
    shown = item.to_dict()
    assert shown["fields"] == BANNER["fields"] and shown["tags"] == ["sale", "winter"]
    assert shown["priority"] == 0 and shown["variants"] == [] and shown["targeting"] is None
    assert shown["hasUnpublishedChanges"] is False and shown["origin"] == "api"
    with catalog._db.connect() as conn:
        assert published_items(conn) == []
    with pytest.raises(Conflict) as exists:
        catalog.create_item(BANNER)
    assert exists.value.code == "content_exists"


def test_published_snapshot_is_immutable_until_published_again(
    catalog: ContentCatalog, db: Database, clock: FrozenClock
) -> None:
    catalog.create_item(BANNER)
    published = catalog.publish("winter-sale")
    assert (published.status, published.published_version) == ("published", 1)

    clock.advance(60)
    edited = catalog.update_item("winter-sale", {"fields": {"title": "Bigger winter sale"}})
    assert (edited.version, edited.published_version, edited.status) == (2, 1, "published")
    assert edited.to_dict()["hasUnpublishedChanges"] is True
    with db.connect() as conn:
        (served,) = published_items(conn)
    # the decision engine still serves version 1 as it was published
    assert served.version == 1 and served.document["fields"]["title"] == "Winter sale"

    republished = catalog.publish("winter-sale")
    assert republished.published_version == 2
    with db.connect() as conn:
        (served,) = published_items(conn)
    assert served.document["fields"] == {"title": "Bigger winter sale"}
    # the webhooks' outbox saw both publications (no webhook configured: no rows)
    assert deliveries(db) == []


def test_a_change_that_alters_nothing_writes_no_version(catalog: ContentCatalog) -> None:
    catalog.create_item(BANNER)
    same = catalog.update_item("winter-sale", {"tags": ["sale", "winter"]})
    assert same.version == 1
    assert [v["version"] for v in catalog.item_versions("winter-sale")] == [1]


def test_rollback_writes_a_new_version_and_republishes(catalog: ContentCatalog) -> None:
    catalog.create_item(BANNER, publish=True)
    catalog.update_item("winter-sale", {"priority": 5}, publish=True)
    catalog.update_item("winter-sale", {"priority": 9, "tags": ["broken"]}, publish=True)
    rolled = catalog.rollback("winter-sale", 1)
    assert rolled.version == 4 and rolled.published_version == 4
    assert rolled.document["priority"] == 0 and rolled.document["tags"] == ["sale", "winter"]
    history = catalog.item_versions("winter-sale")
    assert [(v["version"], v["change"]) for v in history] == [
        (4, "rollback"),
        (3, "updated"),
        (2, "updated"),
        (1, "created"),
    ]
    assert catalog.item_version("winter-sale", 2)["priority"] == 5
    with pytest.raises(NotFound) as missing:
        catalog.rollback("winter-sale", 9)
    assert missing.value.code == "content_version_not_found"


def test_unpublish_and_archive(catalog: ContentCatalog, db: Database) -> None:
    catalog.create_item(BANNER, publish=True)
    draft = catalog.unpublish("winter-sale")
    assert (draft.status, draft.published_version) == ("draft", None)
    with pytest.raises(Conflict) as not_published:
        catalog.unpublish("winter-sale")
    assert not_published.value.code == "content_not_published"
    archived = catalog.archive("winter-sale")
    assert archived.status == "archived"
    assert catalog.list_items().items == []
    assert [i.id for i in catalog.list_items(status="archived").items] == ["winter-sale"]
    with pytest.raises(Conflict) as archived_publish:
        catalog.publish("winter-sale")
    assert archived_publish.value.code == "content_archived"
    # a change brings an archived item back as a draft, with its history kept
    back = catalog.update_item("winter-sale", {"priority": 1})
    assert (back.status, back.version) == ("draft", 2)
    # creating the id again continues its versions
    catalog.archive("winter-sale")
    again = catalog.create_item(BANNER)
    assert again.version == 3 and again.status == "draft"


def test_webhooks_are_told_of_publishing_in_the_same_transaction(
    catalog: ContentCatalog, db: Database, clock: FrozenClock
) -> None:
    WebhookRepository(db, clock=clock).create("http://127.0.0.1:9/hook")
    catalog.create_item(BANNER)
    assert deliveries(db) == []  # a draft is nobody's business
    catalog.publish("winter-sale")
    catalog.update_item("winter-sale", {"priority": 3}, publish=True)
    catalog.unpublish("winter-sale")
    catalog.publish("winter-sale")
    catalog.archive("winter-sale")
    assert deliveries(db) == [
        ("content.published", "winter-sale", 1),
        ("content.published", "winter-sale", 2),
        ("content.unpublished", "winter-sale", 2),
        ("content.published", "winter-sale", 2),
        ("content.unpublished", "winter-sale", 2),
    ]


def test_every_problem_is_reported_with_its_pointer(
    catalog: ContentCatalog, db: Database, clock: FrozenClock
) -> None:
    SegmentRepository(db, clock=clock).create(
        "vip", condition={"trait": "plan", "op": "eq", "value": "pro"}
    )
    with pytest.raises(InvalidDefinition) as invalid:
        catalog.create_item(
            {
                "id": "bad",
                "type": "Banner!",
                "fields": [],
                "tags": ["ok", 3],
                "placements": ["nowhere"],
                "variants": [{"key": "a"}, {"key": "a", "weight": 0}],
                "targeting": {
                    "segments": ["vip", "ghost"],
                    "condition": {"all": [{"trait": "plan", "op": "like", "value": 1}]},
                },
                "priority": 1.5,
                "schedule": {
                    "start": "2026-12-24T09:00",
                    "end": "2026-12-01",
                    "timezone": "Mars/Base",
                },
                "locale": "english please",
                "frequencyCap": {"max": 0, "window": "forever"},
                "colour": "red",
            }
        )
    assert invalid.value.code == "invalid_content"
    assert errors_of(invalid) == {
        "/colour": "unknown_field",
        "/type": "invalid_type",
        "/fields": "invalid_type",
        "/priority": "out_of_range",
        "/locale": "invalid_locale",
        "/tags/1": "invalid_type",
        "/placements/0": "unknown_placement",
        "/variants/1/key": "duplicate",
        "/variants/1/weight": "out_of_range",
        "/targeting/segments/1": "unknown_segment",
        "/targeting/condition/all/0/op": "unknown_operator",
        "/schedule/timezone": "invalid_timezone",
        "/frequencyCap/max": "out_of_range",
        "/frequencyCap/window": "invalid_window",
    }
    with pytest.raises(InvalidDefinition) as backwards:
        catalog.create_item(
            {**BANNER, "schedule": {"start": "2026-12-24T09:00", "end": "2026-12-24T08:00"}}
        )
    assert errors_of(backwards) == {"/schedule/end": "out_of_range"}
    with pytest.raises(ValidationError) as bad_id:
        catalog.create_item({**BANNER, "id": "no spaces"})
    assert bad_id.value.code == "invalid_id"


def test_schedule_times_without_offset_are_local_to_the_zone() -> None:
    start, end = schedule_bounds(
        {"start": "2026-07-01T09:00", "end": "2026-12-01T09:00", "timezone": "Europe/Paris"}
    )
    assert start == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)  # summer time, UTC+2
    assert end == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # winter time, UTC+1
    assert schedule_bounds(None) == (None, None)


def test_placements_versions_defaults_and_strategies(catalog: ContentCatalog) -> None:
    catalog.create_item(BANNER, publish=True)
    placement = catalog.create_placement(
        {"id": "home-hero", "description": "Top of the home page", "defaultItem": "winter-sale"}
    )
    assert placement.document["strategy"] == {"name": "priority", "params": {}}
    assert placement.document["limit"] == 1
    changed = catalog.update_placement(
        "home-hero", {"strategy": {"name": "random", "params": {"controlPercent": 20}}}
    )
    assert changed.version == 2
    assert [v["version"] for v in catalog.placement_versions("home-hero")] == [2, 1]
    with pytest.raises(Conflict) as in_use:
        catalog.archive("winter-sale")
    assert in_use.value.code == "content_in_use" and in_use.value.details == {
        "usedBy": ["home-hero"]
    }
    with pytest.raises(InvalidDefinition) as invalid:
        catalog.create_placement(
            {
                "id": "side",
                "defaultItem": "nothing-here",
                "strategy": {"name": "prediction", "params": {"prediction": "churn", "op": "eq"}},
                "limit": 0,
            }
        )
    assert errors_of(invalid) == {
        "/defaultItem": "unknown_item",
        "/strategy/params/prediction": "invalid_path",
        "/strategy/params/op": "invalid_operator",
        "/strategy/params/value": "invalid_type",
        "/strategy/params/tag": "invalid_type",
        "/limit": "out_of_range",
    }
    with pytest.raises(ValidationError) as reserved:
        catalog.create_placement({"id": "export"})
    assert reserved.value.code == "invalid_id"
    archived = catalog.archive_placement("home-hero")
    assert archived.status == "archived"
    assert catalog.list_placements() == []
    catalog.archive("winter-sale")  # no active placement falls back to it now


def test_items_list_filters_and_pages(catalog: ContentCatalog) -> None:
    catalog.create_placement({"id": "home-hero"})
    for index in range(7):
        catalog.create_item(
            {
                "id": f"item-{index}",
                "type": "article" if index % 2 else "banner",
                "tags": ["even"] if index % 2 == 0 else [],
                "placements": ["home-hero"] if index < 3 else [],
            },
            publish=index < 4,
        )
    assert [i.id for i in catalog.list_items(type="article").items] == [
        "item-1",
        "item-3",
        "item-5",
    ]
    assert [i.id for i in catalog.list_items(tag="even").items] == [
        "item-0",
        "item-2",
        "item-4",
        "item-6",
    ]
    assert [i.id for i in catalog.list_items(placement="home-hero").items] == [
        "item-0",
        "item-1",
        "item-2",
    ]
    assert len(catalog.list_items(status="published").items) == 4
    first = catalog.list_items(limit=3)
    assert [i.id for i in first.items] == ["item-0", "item-1", "item-2"] and first.next == "item-2"
    rest = catalog.list_items(limit=3, after=first.next)
    assert [i.id for i in rest.items] == ["item-3", "item-4", "item-5"]
    last = catalog.list_items(limit=3, after=rest.next)
    assert [i.id for i in last.items] == ["item-6"] and last.next is None


def test_export_then_import_round_trips_and_bad_entries_cost_nothing_else(
    catalog: ContentCatalog, tmp_path: Path, clock: FrozenClock
) -> None:
    catalog.create_item(BANNER, publish=True)
    catalog.create_item({"id": "draft-article", "type": "article", "fields": {"body": "…"}})
    catalog.create_placement({"id": "home-hero", "defaultItem": "winter-sale", "limit": 2})
    exported = catalog.export()

    other = ContentCatalog(Database(f"sqlite:///{tmp_path / 'other.db'}"), clock=clock)
    result = other.import_catalog(exported)
    assert result.items == {"created": 2, "updated": 0, "unchanged": 0, "refused": 0, "errors": []}
    assert result.placements["created"] == 1
    assert other.export() == exported
    assert other.get_item("winter-sale").status == "published"
    assert other.get_item("draft-article").status == "draft"
    # the same import again changes nothing
    again = other.import_catalog(exported)
    assert again.items["unchanged"] == 2 and again.placements["unchanged"] == 1

    mixed = other.import_catalog(
        {
            "items": [
                {"id": "good", "type": "offer", "fields": {"discount": 10}},
                {"id": "bad", "type": "offer", "priority": "high"},
                "not an object",
                {"id": "also-good", "type": "offer", "status": "published"},
            ],
            "placements": [{"id": "side", "strategy": {"name": "nope"}}],
        },
        publish=True,
    )
    assert mixed.items["created"] == 2 and mixed.items["refused"] == 2
    assert [(e["index"], e["id"]) for e in mixed.items["errors"]] == [(1, "bad"), (2, None)]
    assert mixed.items["errors"][0]["errors"][0]["pointer"] == "/items/1/priority"
    assert mixed.placements["errors"][0]["errors"][0]["pointer"] == "/placements/0/strategy/name"
    assert other.get_item("good").status == "published"
    with pytest.raises(ValidationError):
        other.import_catalog({"items": {}, "placements": []})


def test_products_learned_from_events(
    catalog: ContentCatalog, db: Database, clock: FrozenClock
) -> None:
    before = _revision(db)
    changed = catalog.upsert_products(
        [
            {"product_id": "sku-1", "name": "Trail shoe", "category": "shoes", "price": 89.0},
            {"sku": "sku-2", "name": "Sock", "category": "socks"},
            {"product_id": "bad id!", "name": "ignored"},
        ]
    )
    assert changed == 2 and _revision(db) > before
    shoe = catalog.get_item("sku-1")
    assert (shoe.status, shoe.origin, shoe.document["type"]) == ("published", "events", "product")
    assert shoe.document["fields"] == {"name": "Trail shoe", "category": "shoes", "price": 89.0}
    assert shoe.document["tags"] == ["shoes"]
    # the same facts again write nothing; a new price writes and republishes a version
    assert catalog.upsert_products([{"product_id": "sku-1", "price": 89.0}]) == 0
    # new facts wait for the refresh interval (an hour): a price per event is no version each
    assert catalog.upsert_products([{"product_id": "sku-1", "price": 79.0}]) == 0
    clock.advance(3600)
    assert catalog.upsert_products([{"product_id": "sku-1", "price": 79.0}]) == 1
    shoe = catalog.get_item("sku-1")
    assert shoe.version == 2 and shoe.published_version == 2
    assert shoe.document["fields"]["price"] == 79.0
    # what a person wrote through the API wins over what events say
    catalog.create_item(
        {"id": "sku-3", "type": "product", "fields": {"name": "Curated name"}}, publish=True
    )
    catalog.upsert_products([{"product_id": "sku-3", "name": "Raw name", "price": 5}])
    curated = catalog.get_item("sku-3")
    assert curated.document["fields"] == {"name": "Curated name", "price": 5}


def test_products_first_learned_together_are_what_one_at_a_time_makes(
    catalog: ContentCatalog, db: Database, clock: FrozenClock
) -> None:
    WebhookRepository(db, clock=clock).create("http://127.0.0.1:9/hook")
    learned: list[dict[str, Any]] = [
        {"product_id": "sku-1", "name": "Trail shoe", "category": "shoes", "price": 89.0},
        {"sku": "sku-2", "name": "Sock", "category": "socks"},
        {"product_id": "sku-3", "price": 5},
        {"product_id": "bad id!", "name": "ignored"},
    ]
    before = _revision(db)
    assert catalog.upsert_products(learned) == 3
    items = {item_id: catalog.get_item(item_id) for item_id in ("sku-1", "sku-2", "sku-3")}
    for item in items.values():
        assert (item.status, item.version, item.published_version, item.origin) == (
            "published",
            1,
            1,
            "events",
        )
        assert item.created_at == item.updated_at == item.published_at == START
    assert items["sku-3"].document["tags"] == [] and items["sku-2"].document["tags"] == ["socks"]
    # one revision each, every one past the catalog's before
    with db.connect() as conn:
        revisions = sorted(conn.execute(sa.select(content_items.c.revision)).scalars().all())
        versions = conn.execute(
            sa.select(content_versions.c.item_id, content_versions.c.change)
        ).all()
        payloads = [
            msgspec.json.decode(text)
            for text in conn.execute(
                sa.select(content_webhook_deliveries.c.payload).order_by(
                    content_webhook_deliveries.c.id
                )
            ).scalars()
        ]
    assert len(set(revisions)) == 3 and revisions[0] > before
    assert sorted(versions) == [("sku-1", "events"), ("sku-2", "events"), ("sku-3", "events")]
    assert deliveries(db) == [
        ("content.published", "sku-1", 1),
        ("content.published", "sku-2", 1),
        ("content.published", "sku-3", 1),
    ]
    # each delivery says what publishing the item one at a time says: the item as read back
    for payload, item_id in zip(payloads, ("sku-1", "sku-2", "sku-3"), strict=True):
        assert payload["data"] == {"itemId": item_id, "itemVersion": 1, **items[item_id].to_dict()}
    assert len({payload["id"] for payload in payloads}) == 3


def test_a_product_created_elsewhere_since_the_read_is_upserted_alone(
    catalog: ContentCatalog, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog.create_item(
        {"id": "sku-2", "type": "product", "fields": {"name": "Curated name"}}, publish=True
    )
    # the batch read the catalog before another process created sku-2
    monkeypatch.setattr(catalog, "_current_items", lambda conn, item_ids: {})
    changed = catalog.upsert_products(
        [
            {"product_id": "sku-1", "name": "Trail shoe"},
            {"product_id": "sku-2", "name": "Raw name", "price": 5},
            {"product_id": "sku-3", "name": "Cap"},
        ]
    )
    assert changed == 3
    assert catalog.get_item("sku-1").status == catalog.get_item("sku-3").status == "published"
    # as one product at a time does it: what a person wrote wins, the new fact is added
    curated = catalog.get_item("sku-2")
    assert curated.origin == "api"
    assert curated.document["fields"] == {"name": "Curated name", "price": 5}


def test_the_product_stage_keeps_each_products_facts_as_of_its_latest_event(
    catalog: ContentCatalog, db: Database
) -> None:
    def viewed(message_id: str, minutes: float, **properties: Any) -> dict[str, Any]:
        return event(
            "track",
            message_id,
            minutes,
            anonymous_id="a1",
            name="Product Viewed",
            properties=properties,
        )

    def ordered(message_id: str, minutes: float, *products: dict[str, Any]) -> dict[str, Any]:
        return event(
            "track",
            message_id,
            minutes,
            anonymous_id="a1",
            name="Order Completed",
            properties={"order_id": "o1", "products": list(products)},
        )

    data = [
        viewed("m1", 10, product_id="sku-1", name="Old name", price=99.0, url="/old"),
        # later: its facts win, and the url only the first view said stays
        viewed("m2", 20, product_id="sku-1", name="Trail shoe", price=89.0),
        ordered("m4", 40, {"product_id": "sku-1", "category": "shoes"}, {"sku": 7, "price": 3}),
        # older than the order the batch read before it: ignored
        viewed("m3", 30, product_id="sku-1", name="Late name"),
        viewed("m5", 35, product_id="sku-2", name="Sock", price=True),
        viewed("m6", 50, name="no id"),
        event("page", "m7", 60, anonymous_id="a1", properties={"product_id": "sku-9"}),
    ]
    events = [view_event(e) for e in data]
    batch = ProfileBatch(events, [0] * len(events), 1)
    with db.begin() as conn:
        ProductStage(catalog).apply(conn, batch, [])
    assert catalog.get_item("sku-1").document["fields"] == {
        "name": "Trail shoe",
        "price": 89.0,
        "url": "/old",
        "category": "shoes",
    }
    # a bool is no price; a numeric sku is the product's id as text
    assert catalog.get_item("sku-2").document["fields"] == {"name": "Sock"}
    assert catalog.get_item("7").document["fields"] == {"sku": 7, "price": 3}
    with pytest.raises(NotFound):
        catalog.get_item("sku-9")


def _revision(db: Database) -> int:
    with db.connect() as conn:
        return catalog_revision(conn)


def test_revision_grows_with_every_change(catalog: ContentCatalog, db: Database) -> None:
    seen = [_revision(db)]
    catalog.create_item(BANNER)
    seen.append(_revision(db))
    catalog.publish("winter-sale")
    seen.append(_revision(db))
    catalog.create_placement({"id": "home-hero"})
    seen.append(_revision(db))
    assert seen == sorted(set(seen)), seen


def test_event_conditions_are_sent_to_segments(catalog: ContentCatalog) -> None:
    viewed = {"event": "Product Viewed", "within": "7d", "count": {"op": "gte", "value": 1}}
    with pytest.raises(InvalidDefinition) as invalid:
        catalog.create_item(
            {
                **BANNER,
                "targeting": {
                    "condition": {
                        "all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"not": viewed}]
                    }
                },
            }
        )
    assert errors_of(invalid) == {"/targeting/condition/all/1/not": "event_condition"}


def test_an_import_may_refer_to_its_own_entries(catalog: ContentCatalog) -> None:
    body = {
        "items": [{"id": "welcome", "type": "banner", "placements": ["hero"]}],
        "placements": [{"id": "hero", "defaultItem": "welcome"}],
    }
    result = catalog.import_catalog(body, publish=True)
    assert result.items["created"] == 1 and result.placements["created"] == 1
    assert result.items["errors"] == [] and result.placements["errors"] == []
    assert catalog.get_placement("hero").document["defaultItem"] == "welcome"
    assert catalog.get_item("welcome").document["placements"] == ["hero"]
    again = catalog.import_catalog(body, publish=True)
    assert again.items["unchanged"] == 1 and again.placements["unchanged"] == 1
