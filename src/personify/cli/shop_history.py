"""A shop's history over months, with planted drivers of churn and spend, for the churn and
lifetime-value models (issue 15).

Each customer arrives at a time of their own (most in the first two thirds of the period),
signs up (one ``identify``), then browses and buys until they drop out, after which they send
nothing at all. What is planted, and why:

* **Purchase rates** differ across customers (Gamma), and so do **order values** (each order
  Gamma around the customer's own mean, that mean Gamma across customers, as Gamma-Gamma
  assumes). Some customers never buy (visitors); many buy once.
* **Browsing leads buying**: one engagement level scales both the customer's session rate and
  their purchase rate, and customers who view expensive products (or are on the "plus" plan)
  spend more per order.
* **Drop-out depends on what transactions do not show**: a support ticket makes leaving soon
  likely, low engagement raises the hazard, and in the weeks before a customer leaves their
  sessions and newsletter opens fade while their purchases do not.
* **Seasonality**: weekends are busier than weekdays, nights quieter than days, and one sale
  of two weeks doubles the purchase rate.

Deterministic for a seed. ``customers`` holds the hidden truth per ``userId``, so tests and
the benchmark can check what a model recovers.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

_DAY_S = 86_400.0
_HOUR_S = 3_600.0

CATEGORIES: dict[str, tuple[tuple[float, float], list[str]]] = {
    "shoes": (
        (39.0, 249.0),
        [
            "Canvas Sneaker",
            "Court Classic",
            "Road Racer",
            "Trail Runner",
            "Hiking Boot",
            "Carbon Racer",
            "Alpine Boot",
            "Expedition Boot",
        ],
    ),
    "apparel": (
        (12.0, 229.0),
        [
            "Cotton Socks",
            "Merino Tee",
            "Running Shorts",
            "Fleece Hoodie",
            "Rain Shell",
            "Softshell Jacket",
            "Down Parka",
            "Gore Hardshell",
        ],
    ),
    "gear": (
        (9.0, 399.0),
        [
            "Water Bottle",
            "Headlamp",
            "Daypack",
            "Trekking Poles",
            "Hydration Vest",
            "Sleeping Bag",
            "GPS Watch",
            "Ultralight Tent",
        ],
    ),
    "nutrition": (
        (3.0, 59.0),
        [
            "Energy Gel",
            "Electrolyte Tabs",
            "Protein Bar Box",
            "Recovery Shake",
            "Trail Mix Tin",
            "Hydration Powder",
            "Expedition Meal Kit",
            "Race Fuel Bundle",
        ],
    ),
    "electronics": (
        (29.0, 549.0),
        [
            "Bike Light",
            "Heart Rate Strap",
            "Action Camera Mount",
            "Power Bank",
            "Earbuds Sport",
            "Cycling Computer",
            "Smart Trainer Sensor",
            "Multisport Watch",
        ],
    ),
}
PLANS = ("free", "plus")
COUNTRIES = ("DE", "FR", "NL", "ES", "IT")
_COUNTRY_WEIGHTS = (0.35, 0.2, 0.15, 0.15, 0.15)
TICKET_TOPICS = ("delivery", "refund", "sizing", "payment", "damaged item")

# engagement, shared by browsing and buying: Gamma with mean 1
_ENGAGEMENT_SHAPE = 1.2
# purchase rate per unit of engagement: Gamma with mean 0.05 a day
_RATE_SHAPE, _RATE_MEAN_PER_DAY = 2.0, 0.05
_VISITOR_SHARE = 0.2
_BROWSE_SESSIONS_PER_DAY = 0.15
# Gamma-Gamma spend: each order Gamma(p, nu), nu ~ Gamma(q, gamma), population mean gamma p/(q-1)
_SPEND_P, _SPEND_Q, _SPEND_GAMMA = 6.0, 4.0, 40.0
_PLUS_SHARE, _PLUS_SPEND = 0.25, 1.6
# drop-out: a small hazard that grows as engagement falls; a ticket often ends the relationship
_BASE_HAZARD_PER_DAY = 0.004
_TICKET_PRONE_SHARE = 0.3
_TICKET_RATES_PER_DAY = (0.002, 0.02)
_LEAVE_AFTER_TICKET = 0.65
_LEAVE_AFTER_TICKET_DAYS = (3.0, 20.0)
_FADE_DAYS = (14.0, 28.0)
# seasonality: weekly and daily cycles averaging 1, and the sale's lift
_WEEKEND, _WEEKDAY = 1.5, 0.8
_DAYTIME, _NIGHT = 1.3, 0.4
_SALE_PURCHASES, _SALE_SESSIONS = 2.2, 1.3
_SALE_DAYS = 14
_NEWSLETTER_WEEKDAY, _NEWSLETTER_HOUR = 3, 9  # Thursdays, 09:00 UTC


@dataclass(frozen=True, slots=True)
class CustomerTruth:
    """What the generator decided about one customer; none of it is in the events as such.

    Rates are per day, averaged over the week and outside the sale (the sale multiplies the
    purchase rate by 2.2 and the session rate by 1.3); ``session_rate_per_day`` counts the
    visits without an order, which add to the order visits and newsletter click-throughs.
    ``mean_order_value`` is the mean of the customer's order-value distribution (what
    Gamma-Gamma estimates). ``dropout_at`` is None for a customer still active at ``end``.
    """

    born_at: datetime
    purchase_rate_per_day: float
    mean_order_value: float
    dropout_at: datetime | None
    engagement: float
    session_rate_per_day: float
    support_ticket_rate_per_day: float
    is_visitor: bool
    plan: str
    country: str
    favourite_category: str


@dataclass(frozen=True, slots=True)
class ShopHistory:
    """Raw Segment-spec events, oldest first, and the hidden truth per ``userId``."""

    events: list[dict[str, Any]]
    customers: dict[str, CustomerTruth]
    start: datetime
    sale_start: datetime
    sale_end: datetime


def history_catalog() -> list[dict[str, Any]]:
    """Every product: id, name, category, price (log-spaced from cheap to premium)."""
    products = []
    for category, ((low, high), names) in CATEGORIES.items():
        for index, name in enumerate(names):
            price = low * (high / low) ** (index / (len(names) - 1))
            products.append(
                {
                    "product_id": f"sku-{category[:3]}-{index + 1}",
                    "name": name,
                    "category": category,
                    # shop prices: whole euros less a cent, cents below ten euros
                    "price": round(round(price) - 0.01, 2) if price > 10 else round(price, 2),
                }
            )
    return products


def _iso_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Calendar:
    """The period's clock: activity multipliers by weekday, hour and the sale (epoch seconds)."""

    def __init__(self, sale_start_s: float) -> None:
        self.sale_start_s = sale_start_s
        self.sale_end_s = sale_start_s + _SALE_DAYS * _DAY_S

    def rhythm(self, t: float) -> float:
        """The weekly and daily cycle at ``t`` (1 on average)."""
        day, seconds = divmod(t, _DAY_S)
        # 1970-01-01 was a Thursday: weekday() == 3
        weekday = (int(day) + 3) % 7
        hour = seconds / _HOUR_S
        return (_WEEKEND if weekday >= 5 else _WEEKDAY) * (_DAYTIME if 7 <= hour < 23 else _NIGHT)

    def is_sale(self, t: float) -> bool:
        return self.sale_start_s <= t < self.sale_end_s


class _Catalog:
    """Products by category, sorted by price, to pick the one nearest a wanted price."""

    def __init__(self, products: list[dict[str, Any]]) -> None:
        self.by_category: dict[str, list[dict[str, Any]]] = {}
        for product in products:
            self.by_category.setdefault(product["category"], []).append(product)
        for items in self.by_category.values():
            items.sort(key=itemgetter("price"))
        self.prices = {c: [p["price"] for p in items] for c, items in self.by_category.items()}
        self.categories = list(self.by_category)

    def nearest(self, category: str, price: float) -> dict[str, Any]:
        prices = self.prices[category]
        index = bisect_left(prices, price)
        if index == len(prices) or (
            index > 0 and price - prices[index - 1] < prices[index] - price
        ):
            index -= 1
        return self.by_category[category][index]


class _Customer:
    """One customer's simulation: draws their events into ``out`` as (epoch ms, event)."""

    def __init__(
        self,
        rng: random.Random,
        user_id: str,
        anonymous_id: str,
        truth: CustomerTruth,
        stop_s: float,
        fade_s: float,
        calendar: _Calendar,
        catalog: _Catalog,
        out: list[tuple[int, dict[str, Any]]],
    ) -> None:
        self.rng = rng
        self.user_id = user_id
        self.anonymous_id = anonymous_id
        self.truth = truth
        self.stop_s = stop_s
        self.fade_s = fade_s
        self.calendar = calendar
        self.catalog = catalog
        self.out = out
        self.count = 0

    def emit(self, kind: str, t: float, **fields: Any) -> None:
        """Append an event at ``t``; nothing after the customer stopped or the period's end."""
        if t > self.stop_s:
            return
        self.count += 1
        event: dict[str, Any] = {
            "type": kind,
            "userId": self.user_id,
            "anonymousId": self.anonymous_id,
            "messageId": f"hist-{self.user_id}-{self.count:05d}",
        }
        event.update(fields)
        self.out.append((int(t * 1000), event))

    def fade(self, t: float) -> float:
        """1 until the fade before drop-out begins, then falling linearly to 0 at drop-out."""
        left = self.stop_s - t
        return 1.0 if left >= self.fade_s else max(left, 0.0) / self.fade_s

    def arrivals(
        self, rate_per_day: float, start_s: float, lift: float, fades: bool
    ) -> list[float]:
        """Times of a Poisson process modulated by the calendar, drawn by thinning."""
        ceiling = _WEEKEND * _DAYTIME * lift
        times: list[float] = []
        if rate_per_day <= 0:
            return times
        rng, calendar = self.rng, self.calendar
        rate_s = rate_per_day * ceiling / _DAY_S
        t = start_s
        while True:
            t += rng.expovariate(rate_s)
            if t >= self.stop_s:
                return times
            level = calendar.rhythm(t) * (lift if calendar.is_sale(t) else 1.0)
            if fades:
                level *= self.fade(t)
            if rng.random() * ceiling < level:
                times.append(t)

    def wanted_price(self) -> float:
        """A price this customer browses at: premium shoppers look at premium products."""
        return self.truth.mean_order_value / 1.8 * self.rng.lognormvariate(0.0, 0.5)

    def pick_category(self) -> str:
        if self.rng.random() < 0.6:
            return self.truth.favourite_category
        return self.rng.choice(self.catalog.categories)

    def session(self, t: float, order_value: float | None) -> None:
        """A visit: home, some product views, maybe carts, and an order when ``order_value``."""
        rng, emit = self.rng, self.emit
        emit("page", t, name="Home", properties={"path": "/", "category": "home"})
        if self.calendar.is_sale(t) and rng.random() < 0.5:
            t += rng.uniform(10, 60)
            emit("page", t, name="Sale", properties={"path": "/sale", "category": "sale"})
        category = self.pick_category()
        if rng.random() < 0.4:
            t += rng.uniform(10, 90)
            emit(
                "page",
                t,
                name="Category",
                properties={"path": f"/c/{category}", "category": category},
            )
        for _view in range(rng.randint(1, 4)):
            t += rng.uniform(20, 240)
            product = self.catalog.nearest(category, self.wanted_price())
            emit("track", t, event="Product Viewed", properties=dict(product))
            if order_value is None and rng.random() < 0.12:
                t += rng.uniform(10, 60)
                emit("track", t, event="Product Added", properties={**product, "quantity": 1})
            if rng.random() < 0.3:
                category = self.pick_category()
        if order_value is not None:
            self.order(t, order_value)

    def order(self, t: float, value: float) -> None:
        """Cart and checkout of products adding up to about ``value``."""
        rng = self.rng
        items = 1 if value < 60 else rng.randint(1, 3)
        lines: list[dict[str, Any]] = []
        for _item in range(items):
            product = self.catalog.nearest(self.pick_category(), value / items)
            quantity = max(1, min(5, round(value / items / product["price"])))
            t += rng.uniform(20, 120)
            self.emit(
                "track", t, event="Product Added", properties={**product, "quantity": quantity}
            )
            lines.append({**product, "quantity": quantity})
        revenue = round(sum(line["price"] * line["quantity"] for line in lines), 2)
        t += rng.uniform(60, 400)
        self.emit(
            "track",
            t,
            event="Order Completed",
            properties={
                "order_id": f"o-{self.user_id}-{self.count + 1:05d}",
                "revenue": revenue,
                "currency": "EUR",
                "products": lines,
            },
        )

    def order_value(self) -> float:
        """One order's value: Gamma(p, nu) with the customer's mean p / nu."""
        return self.rng.gammavariate(_SPEND_P, self.truth.mean_order_value / _SPEND_P)

    def simulate(self, tickets: list[float]) -> None:
        """Every event of the customer, from sign-up to drop-out (or the period's end)."""
        rng, truth = self.rng, self.truth
        born_s = truth.born_at.timestamp()
        self.emit(
            "identify",
            born_s,
            traits={
                "email": f"{self.user_id}@example.com",
                "plan": truth.plan,
                "country": truth.country,
                "created_at": _iso_ms(int(born_s * 1000)),
            },
        )
        self.session(born_s + 1.0, None)
        for t in self.arrivals(truth.session_rate_per_day, born_s, _SALE_SESSIONS, fades=True):
            self.session(t, None)
        for t in self.arrivals(truth.purchase_rate_per_day, born_s, _SALE_PURCHASES, fades=False):
            self.session(t, self.order_value())
        for number, t in enumerate(tickets, start=1):
            self.emit(
                "track",
                t,
                event="Support Ticket Opened",
                properties={
                    "ticket_id": f"t-{self.user_id}-{number}",
                    "topic": rng.choice(TICKET_TOPICS),
                },
            )
        self.newsletters(born_s)

    def newsletters(self, born_s: float) -> None:
        """The weekly newsletter: engaged customers open it, some click through to a visit."""
        rng, calendar = self.rng, self.calendar
        day = math.floor(born_s / _DAY_S) + 1
        day += (_NEWSLETTER_WEEKDAY - (day + 3) % 7) % 7
        opens = min(0.85, 0.3 * self.truth.engagement)
        sent = day * _DAY_S + _NEWSLETTER_HOUR * _HOUR_S
        while sent < self.stop_s:
            issue = datetime.fromtimestamp(sent, tz=UTC).strftime("nl-%G-w%V")
            if rng.random() < opens * self.fade(sent):
                t = sent + rng.expovariate(1 / (4 * _HOUR_S))
                self.emit(
                    "track", t, event="Newsletter Opened", properties={"newsletter_id": issue}
                )
                if rng.random() < 0.35:
                    t += rng.uniform(20, 300)
                    link = "/sale" if calendar.is_sale(t) else "/new-arrivals"
                    self.emit(
                        "track",
                        t,
                        event="Email Clicked",
                        properties={"newsletter_id": issue, "link": link},
                    )
                    self.session(t + 5.0, None)
            sent += 7 * _DAY_S


def _birth_s(rng: random.Random, start_s: float, end_s: float) -> float:
    """Most customers arrive in the first two thirds of the period, the rest after."""
    span = end_s - start_s
    share = rng.uniform(0, 2 / 3) if rng.random() < 0.8 else rng.uniform(2 / 3, 1)
    return start_s + share * span


def _poisson_times(
    rng: random.Random, rate_per_day: float, start_s: float, end_s: float
) -> list[float]:
    """Times of a homogeneous Poisson process in (start_s, end_s)."""
    times: list[float] = []
    t = start_s
    while True:
        t += rng.expovariate(rate_per_day / _DAY_S)
        if t >= end_s:
            return times
        times.append(t)


def generate_history(
    end: datetime,
    *,
    customers: int = 1000,
    days: int = 150,
    seed: int = 11,
    sale_at: float = 0.6,
) -> ShopHistory:
    """``customers`` customers' events over the ``days`` days up to ``end``, oldest first;
    the sale starts ``sale_at`` of the way through the period.

    A naive ``end`` is taken as UTC. Every event has a ``userId`` and a timestamp at or before
    ``end``; ``messageId``s are unique and the same for the same arguments.
    """
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    end_s = end.timestamp()
    start_s = end_s - days * _DAY_S
    sale_start_s = start_s + math.floor(days * sale_at) * _DAY_S
    calendar = _Calendar(sale_start_s)
    catalog = _Catalog(history_catalog())
    rng = random.Random(seed)
    width = max(4, len(str(customers)))
    timed: list[tuple[int, dict[str, Any]]] = []
    truths: dict[str, CustomerTruth] = {}
    for number in range(1, customers + 1):
        user_id = f"cust-{number:0{width}d}"
        own = random.Random(rng.getrandbits(64))
        born_s = _birth_s(own, start_s, end_s)
        engagement = own.gammavariate(_ENGAGEMENT_SHAPE, 1 / _ENGAGEMENT_SHAPE)
        is_visitor = own.random() < _VISITOR_SHARE
        rate = 0.0
        if not is_visitor:
            rate = engagement * own.gammavariate(_RATE_SHAPE, _RATE_MEAN_PER_DAY / _RATE_SHAPE)
        plan = PLANS[own.random() < _PLUS_SHARE]
        nu = own.gammavariate(_SPEND_Q, 1 / _SPEND_GAMMA)
        mean_value = _SPEND_P / nu * (_PLUS_SPEND if plan == "plus" else 1.0)
        ticket_rate = _TICKET_RATES_PER_DAY[own.random() < _TICKET_PRONE_SHARE]
        hazard = _BASE_HAZARD_PER_DAY / math.sqrt(max(engagement, 0.05))
        hazard *= (0.6 if plan == "plus" else 1.0) * (2.0 if is_visitor else 1.0)
        stop_s = born_s + own.expovariate(hazard / _DAY_S)
        tickets = []
        for t in _poisson_times(own, ticket_rate, born_s, min(stop_s, end_s)):
            if t >= stop_s:
                break
            tickets.append(t)
            if own.random() < _LEAVE_AFTER_TICKET:
                stop_s = min(stop_s, t + own.uniform(*_LEAVE_AFTER_TICKET_DAYS) * _DAY_S)
        dropout_at = datetime.fromtimestamp(stop_s, tz=UTC) if stop_s <= end_s else None
        truth = CustomerTruth(
            born_at=datetime.fromtimestamp(born_s, tz=UTC),
            purchase_rate_per_day=rate,
            mean_order_value=mean_value,
            dropout_at=dropout_at,
            engagement=engagement,
            session_rate_per_day=_BROWSE_SESSIONS_PER_DAY * engagement,
            support_ticket_rate_per_day=ticket_rate,
            is_visitor=is_visitor,
            plan=plan,
            country=own.choices(COUNTRIES, _COUNTRY_WEIGHTS)[0],
            favourite_category=own.choice(catalog.categories),
        )
        truths[user_id] = truth
        customer = _Customer(
            own,
            user_id,
            f"anon-{number:0{width}d}",
            truth,
            min(stop_s, end_s),
            own.uniform(*_FADE_DAYS) * _DAY_S,
            calendar,
            catalog,
            timed,
        )
        customer.simulate(tickets)
    timed.sort(key=itemgetter(0))
    events = []
    for ms, event in timed:
        event["timestamp"] = _iso_ms(ms)
        events.append(event)
    return ShopHistory(
        events=events,
        customers=truths,
        start=datetime.fromtimestamp(start_s, tz=UTC),
        sale_start=datetime.fromtimestamp(sale_start_s, tz=UTC),
        sale_end=datetime.fromtimestamp(calendar.sale_end_s, tz=UTC),
    )
