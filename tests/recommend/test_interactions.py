"""Interactions read from a real lake: items from ``product_id``, ``sku`` or an order's lines,
weights per event, each message once, users as profiles, splits by arrival."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from personify.errors import ValidationError
from personify.lake.table import Lake
from personify.recommend.interactions import DEFAULT_WEIGHTS, moment_ms, read_interactions
from personify.segments.membership import MEMBERSHIP_SOURCE
from tests.lake.conftest import write_lake
from tests.recommend.conftest import END, event

T = END - timedelta(days=10)


def rows(lake: Lake, **options: object) -> list[tuple[str, str, str, float]]:
    """(user, item, event, weight), sorted."""
    found, _ = read_interactions(lake, **options)  # type: ignore[arg-type]
    return sorted(
        (found.user_ids[u], found.item_ids[i], found.event_names[e], w)
        for u, i, e, w in zip(
            found.users.tolist(),
            found.items.tolist(),
            found.events.tolist(),
            found.weights.tolist(),
            strict=True,
        )
    )


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    day = timedelta(days=1)
    events = [
        # anonymous browsing, then a sign-up: the device's views are the user's
        event(1, "Product Viewed", T - 5 * day, anonymousId="d1", properties={"product_id": "a"}),
        event(2, "", T - 4 * day, kind="identify", anonymousId="d1", userId="u1"),
        event(3, "Product Added", T - 4 * day, userId="u1", properties={"sku": "SKU-B"}),
        # an order: each line once (b is listed twice), the top-level product_id absent
        event(
            4,
            "Order Completed",
            T - 3 * day,
            userId="u1",
            properties={
                "order_id": "o1",
                "products": [{"product_id": "a"}, {"sku": "SKU-B"}, {"sku": "SKU-B"}, {}],
            },
        ),
        # the same message twice (a retry): counted once
        event(5, "Product Viewed", T - 2 * day, userId="u2", properties={"product_id": "c"}),
        event(5, "Product Viewed", T - 2 * day, userId="u2", properties={"product_id": "c"}),
        # not interactions: no item, an unweighted event, a page, Personify's own events
        event(6, "Product Viewed", T - 2 * day, userId="u2", properties={"name": "no id"}),
        event(7, "Newsletter Opened", T - 2 * day, userId="u2", properties={"product_id": "x"}),
        event(8, "", T - 2 * day, kind="page", userId="u2", properties={"product_id": "y"}),
        event(
            9,
            "Product Viewed",
            T - 2 * day,
            userId="u2",
            source_id=MEMBERSHIP_SOURCE,
            properties={"product_id": "z"},
        ),
        # happened before T, received after it
        event(
            10,
            "Product Viewed",
            T - day,
            received=T + day,
            userId="u2",
            properties={"product_id": "d"},
        ),
        event(11, "Product Viewed", T + 2 * day, userId="u3", properties={"product_id": 42}),
    ]
    return write_lake(tmp_path / "lake", events)


def test_items_weights_identities_and_duplicates(lake: Lake) -> None:
    assert rows(lake) == [
        ("u1", "SKU-B", "Order Completed", 5.0),
        ("u1", "SKU-B", "Product Added", 3.0),
        ("u1", "a", "Order Completed", 5.0),
        ("u1", "a", "Product Viewed", 1.0),
        ("u2", "c", "Product Viewed", 1.0),
        ("u2", "d", "Product Viewed", 1.0),
        ("u3", "42", "Product Viewed", 1.0),
    ]


def test_events_and_weights_chosen_by_the_caller(lake: Lake) -> None:
    assert rows(lake, events=["Order Completed", "Newsletter Opened"]) == [
        ("u1", "SKU-B", "Order Completed", 5.0),
        ("u1", "a", "Order Completed", 5.0),
        # an event asked for without a weight of its own counts like a view
        ("u2", "x", "Newsletter Opened", 1.0),
    ]
    weights = {**DEFAULT_WEIGHTS, "Product Viewed": 0.5}
    assert rows(lake, weights=weights, events=["Product Viewed"])[0] == (
        "u1",
        "a",
        "Product Viewed",
        0.5,
    )
    with pytest.raises(ValidationError):
        read_interactions(lake, weights={"Product Viewed": -1.0})


def test_split_by_arrival(lake: Lake) -> None:
    everything, version = read_interactions(lake)
    assert version == 0
    known = everything.received_by(moment_ms(T))
    # d happened before T but arrived after it: not known at T
    assert sorted(known.item_ids) == ["SKU-B", "a", "c"]
    assert np.all(known.received_ms <= moment_ms(T))
    later = everything.received_after(moment_ms(T))
    assert sorted(later.item_ids) == ["42", "d"]
    assert len(known) + len(later) == len(everything)
    orders = everything.with_events(["Order Completed"])
    assert orders.event_names == ("Order Completed",)
    assert orders.user_items() == {"u1": {"a", "SKU-B"}}
    # read up to T: the same as the known part
    until_t, _ = read_interactions(lake, until=T)
    assert until_t.user_items() == known.user_items()


def test_an_empty_lake_has_no_interactions(tmp_path: Path) -> None:
    found, version = read_interactions(Lake(str(tmp_path / "none")))
    assert len(found) == 0 and version is None
