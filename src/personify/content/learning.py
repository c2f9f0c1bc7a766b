"""Products learned from e-commerce events: the worker's ``ProductStage``.

The e-commerce spec's product events carry the product's facts in their properties
(``product_id`` or ``sku``, ``name``, ``category``, ``price``, ``url``, ``image_url``; an
order in ``products[]``). In the transaction that stores a batch's profiles, this stage
picks those events out by name (a vectorised mask over the batch's name codes), keeps each
product's latest facts, and writes the products whose facts changed as ``product`` items of
the catalog (``ContentCatalog.upsert_products_in``): a new product is published at once, so
recommendations can show it. The products' items are read
once per batch in bulk, so a product viewed a thousand times costs one read, and a write
only when its facts changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import sqlalchemy as sa

from personify.content.catalog import ContentCatalog
from personify.profiles.batch import ProfileBatch, StagedProfile
from personify.profiles.counters import CounterSpec

__all__ = ["PRODUCT_EVENTS", "ProductStage", "products_of"]

# the e-commerce spec's events that name one product in their properties
PRODUCT_EVENTS: Final = frozenset(
    {
        "Product Viewed",
        "Product Clicked",
        "Product Added",
        "Product Removed",
        "Product Added to Wishlist",
        "Product Shared",
    }
)
# and those that list several in ``properties.products``
ORDER_EVENTS: Final = frozenset({"Order Completed", "Checkout Started", "Cart Viewed"})
_FACTS: Final = ("product_id", "sku", "name", "category", "price", "url", "image_url")
_SCALARS: Final = (str, int, float)


def _facts(value: Any) -> dict[str, Any] | None:
    # decoded JSON: a dict is known without asking the Mapping ABC
    if type(value) is not dict and not isinstance(value, Mapping):
        return None
    found: dict[str, Any] = {}
    for name in _FACTS:
        fact = value.get(name)
        # True and False are the only bools
        if isinstance(fact, _SCALARS) and fact is not True and fact is not False:
            found[name] = fact
    product_id = found.get("product_id", found.get("sku"))
    if product_id is None:
        return None
    found["product_id"] = str(product_id)
    return found


def products_of(name: str, properties: Any) -> list[dict[str, Any]]:
    """The products one event names, with their facts."""
    if type(properties) is not dict and not isinstance(properties, Mapping):
        return []
    if name in PRODUCT_EVENTS:
        one = _facts(properties)
        return [one] if one is not None else []
    listed = properties.get("products")
    if not isinstance(listed, list):
        return []
    return [facts for facts in map(_facts, listed[:500]) if facts is not None]


class ProductStage:
    """A batch stage that keeps the catalog's products up to date with what events say."""

    name = "products"

    def __init__(self, catalog: ContentCatalog) -> None:
        self._catalog = catalog

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        """No event counters."""
        return ()

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        """Write the products whose facts changed since this process last wrote them."""
        wanted = [
            code
            for code, name in enumerate(batch.names)
            if name in PRODUCT_EVENTS or name in ORDER_EVENTS
        ]
        if not wanted:
            return
        # each product's facts as of its latest event, and that event's time
        latest: dict[str, dict[str, Any]] = {}
        latest_ts: dict[str, int] = {}
        events = batch.events
        for index in np.flatnonzero(np.isin(batch.name_code, wanted)).tolist():
            event = events[index]
            ts = event.ts
            for facts in products_of(event.name, event.data.get("properties")):
                product_id = facts["product_id"]
                seen = latest.get(product_id)
                if seen is None:
                    latest[product_id] = facts
                    latest_ts[product_id] = ts
                elif ts >= latest_ts[product_id]:
                    # facts accumulate: a view with a price and an order without one (each
                    # facts dict is products_of's own, so it is merged into in place)
                    seen.update(facts)
                    latest_ts[product_id] = ts
        if latest:
            self._catalog.upsert_products_in(conn, list(latest.values()))
