"""A shop's browsing and buying with planted structure, for the recommenders' tests, their
benchmark and the demo: what a good recommender should find, put there on purpose.

* **Tastes**: each shopper likes one or two categories and spends most visits in them.
* **Bundles**: the items of a category come in pairs (a tent and its footprint); a shopper
  who looks at one item often looks at its partner next, and an order of one often holds
  the other.
* **Popularity**: within a category, items are Zipf-popular, and a few bestsellers get
  looked at by everyone, so popularity is a fair baseline, not a straw man.
* **Views, then carts, then purchases**: a visit views a few items, some go to the cart, and
  some carts become an order listing their products (``properties.products[]``).
* **Identity**: a shopper browses anonymously until their first order, where they sign up
  (an ``identify`` joining their ``anonymousId`` to a ``userId``); later events carry both.

Events follow the e-commerce spec (``Product Viewed``/``Product Added`` with
``properties.product_id``; ``Order Completed`` with ``products[]``), oldest first, with
unique ``messageId``s, deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from operator import itemgetter
from typing import Any

_DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Shopper:
    """What the generator decided about one shopper (the hidden truth)."""

    user_id: str
    anonymous_id: str
    tastes: tuple[str, ...]
    visits_per_day: float


@dataclass(slots=True)
class SyntheticShop:
    """Raw events, oldest first, and the structure planted in them."""

    events: list[dict[str, Any]]
    products: list[dict[str, Any]]
    partner: dict[str, str]
    shoppers: dict[str, Shopper]
    start: datetime
    end: datetime
    bestsellers: list[str] = field(default_factory=list)


class _Catalog:
    def __init__(self, rng: random.Random, items: int, categories: int) -> None:
        self.categories = [f"cat-{c:02d}" for c in range(categories)]
        self.products: list[dict[str, Any]] = []
        self.by_category: dict[str, list[str]] = {c: [] for c in self.categories}
        for number in range(items):
            category = self.categories[number % categories]
            product_id = f"p-{number:05d}"
            product: dict[str, Any] = {
                "product_id": product_id,
                "name": f"Product {number}",
                "category": category,
                "price": round(5 + rng.random() * 195, 2),
            }
            self.products.append(product)
            self.by_category[category].append(product_id)
        self.product = {p["product_id"]: p for p in self.products}
        self.partner: dict[str, str] = {}
        self.cumulative: dict[str, list[float]] = {}
        for category, ids in self.by_category.items():
            rng.shuffle(ids)  # popularity rank within the category, at random
            # Zipf-like popularity within the category
            self.cumulative[category] = list(
                accumulate(1.0 / (rank + 1) ** 0.9 for rank in range(len(ids)))
            )
            paired = ids[:]
            rng.shuffle(paired)
            for a, b in zip(paired[0::2], paired[1::2], strict=False):
                self.partner[a], self.partner[b] = b, a
        everything = [p["product_id"] for p in self.products]
        self.bestsellers = rng.sample(everything, max(1, items // 50))

    def pick(self, rng: random.Random, category: str) -> str:
        ids = self.by_category[category]
        return rng.choices(ids, cum_weights=self.cumulative[category])[0]


class _Visitor:
    def __init__(
        self, rng: random.Random, shopper: Shopper, catalog: _Catalog, out: list[Any]
    ) -> None:
        self.rng = rng
        self.shopper = shopper
        self.catalog = catalog
        self.out = out
        self.signed_up = False
        self.count = 0

    def emit(self, t: float, kind: str, **fields: Any) -> None:
        self.count += 1
        event: dict[str, Any] = {
            "type": kind,
            "anonymousId": self.shopper.anonymous_id,
            "messageId": f"rec-{self.shopper.anonymous_id}-{self.count:05d}",
        }
        if self.signed_up:
            event["userId"] = self.shopper.user_id
        event.update(fields)
        self.out.append((t, event))

    def category(self) -> str:
        if self.rng.random() < 0.85:
            return self.rng.choice(self.shopper.tastes)
        return self.rng.choice(self.catalog.categories)

    def visit(self, t: float) -> None:
        rng, catalog = self.rng, self.catalog
        category = self.category()
        viewed: list[str] = []
        item = catalog.pick(rng, category)
        for _view in range(rng.randint(1, 5)):
            if rng.random() < 0.08:
                item = rng.choice(catalog.bestsellers)
            viewed.append(item)
            t += rng.uniform(15, 180)
            self.emit(t, "track", event="Product Viewed", properties=dict(catalog.product[item]))
            partner = catalog.partner.get(item)
            # the bundle's other half is the likeliest next look
            if partner is not None and rng.random() < 0.5:
                item = partner
            else:
                item = catalog.pick(rng, category)
        cart = [i for i in dict.fromkeys(viewed) if rng.random() < 0.3]
        for product in cart:
            t += rng.uniform(10, 60)
            self.emit(
                t,
                "track",
                event="Product Added",
                properties={**catalog.product[product], "quantity": 1},
            )
        if cart and rng.random() < 0.5:
            self.order(t + rng.uniform(60, 300), cart)

    def order(self, t: float, cart: list[str]) -> None:
        rng, catalog = self.rng, self.catalog
        lines = list(cart)
        for product in cart:
            partner = catalog.partner.get(product)
            if partner is not None and partner not in lines and rng.random() < 0.5:
                lines.append(partner)
        if not self.signed_up:
            self.signed_up = True
            self.emit(t - 1.0, "identify", traits={"tastes": list(self.shopper.tastes)})
        products = [{**catalog.product[p], "quantity": 1} for p in lines]
        self.emit(
            t,
            "track",
            event="Order Completed",
            properties={
                "order_id": f"o-{self.shopper.anonymous_id}-{self.count + 1:05d}",
                "revenue": round(sum(p["price"] for p in products), 2),
                "currency": "EUR",
                "products": products,
            },
        )


def generate_shop(
    end: datetime,
    *,
    users: int = 800,
    items: int = 200,
    categories: int = 10,
    days: int = 90,
    visits_per_day: float = 0.2,
    seed: int = 5,
) -> SyntheticShop:
    """``users`` shoppers' events over the ``days`` days up to ``end`` (a naive ``end`` is
    UTC), browsing and buying ``items`` products in ``categories`` categories."""
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    rng = random.Random(seed)
    catalog = _Catalog(rng, items, categories)
    end_s = end.timestamp()
    start_s = end_s - days * _DAY_S
    width = max(4, len(str(users)))
    timed: list[tuple[float, dict[str, Any]]] = []
    shoppers: dict[str, Shopper] = {}
    for number in range(1, users + 1):
        own = random.Random(rng.getrandbits(64))
        tastes = tuple(own.sample(catalog.categories, 1 if own.random() < 0.6 else 2))
        shopper = Shopper(
            user_id=f"shopper-{number:0{width}d}",
            anonymous_id=f"device-{number:0{width}d}",
            tastes=tastes,
            visits_per_day=visits_per_day * own.gammavariate(2.0, 0.5),
        )
        shoppers[shopper.user_id] = shopper
        visitor = _Visitor(own, shopper, catalog, timed)
        # most shoppers arrive early, some later, so both sides of a split have newcomers
        t = start_s + own.uniform(0, 0.7) * (end_s - start_s)
        while True:
            t += own.expovariate(shopper.visits_per_day / _DAY_S)
            # a visit lasts minutes: leave room for it before the end
            if t >= end_s - 3_600.0:
                break
            visitor.visit(t)
    timed.sort(key=itemgetter(0))
    events = []
    for t, event in timed:
        moment = datetime.fromtimestamp(t, tz=UTC)
        event["timestamp"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events.append(event)
    return SyntheticShop(
        events=events,
        products=catalog.products,
        partner=catalog.partner,
        shoppers=shoppers,
        start=end - timedelta(days=days),
        end=end,
        bestsellers=list(catalog.bestsellers),
    )
