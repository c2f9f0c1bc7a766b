"""A small, realistic shop for the demo: visitors browse, some sign up, some buy.

Deterministic for a seed, so the demo's numbers are the same on every machine.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

CATEGORIES = {
    "shoes": ["Trail Runner", "Road Racer", "Court Classic", "Hiking Boot"],
    "apparel": ["Merino Tee", "Rain Shell", "Running Shorts", "Fleece Hoodie"],
    "gear": ["Hydration Vest", "Headlamp", "GPS Watch", "Trekking Poles"],
}
ARTICLES = ["how-to-choose-trail-shoes", "marathon-training-plan", "layering-101", "gear-checklist"]
CAMPAIGNS = [None, None, "autumn-sale", "newsletter", "retargeting"]
DEVICES = [
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Mobile/15E148 Safari/604.1", "DE"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0 Safari/537.36", "FR"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Version/18.0 Safari/605.1.15", "NL"),
    ("Mozilla/5.0 (Linux; Android 15; Pixel 9) Chrome/130.0 Mobile Safari/537.36", "ES"),
]


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Visit:
    """One session's context; ``emit`` appends an event of it."""

    def __init__(
        self,
        events: list[dict[str, Any]],
        anonymous_id: str,
        user_id: str | None,
        context: dict[str, Any],
    ) -> None:
        self.events = events
        self.anonymous_id = anonymous_id
        self.user_id = user_id
        self.context = context

    def emit(self, kind: str, moment: datetime, **fields: Any) -> None:
        event: dict[str, Any] = {
            "type": kind,
            "anonymousId": self.anonymous_id,
            "timestamp": _iso(moment),
            "context": dict(self.context),
            "messageId": f"shop-{len(self.events):06d}",
        }
        if self.user_id:
            event["userId"] = self.user_id
        event.update(fields)
        self.events.append(event)


def catalog() -> list[dict[str, Any]]:
    """Every product: id, name, category, price."""
    products = []
    for category, names in CATEGORIES.items():
        for index, name in enumerate(names):
            sku = f"sku-{category[:2]}-{index + 1}"
            price = round(29.0 + 17.5 * index + (40.0 if category == "shoes" else 0.0), 2)
            products.append({"product_id": sku, "name": name, "category": category, "price": price})
    return products


def generate_shop(now: datetime, *, visitors: int = 150, seed: int = 7) -> list[dict[str, Any]]:
    """Segment-spec events of ``visitors`` visitors over the last 30 days, oldest first."""
    rng = random.Random(seed)
    products = catalog()
    events: list[dict[str, Any]] = []
    for number in range(visitors):
        anonymous_id = f"anon-{number:04d}"
        user_id = f"user-{number:04d}" if rng.random() < 0.45 else None
        user_agent, country = rng.choice(DEVICES)
        favourite = rng.choice(list(CATEGORIES))
        campaign = rng.choice(CAMPAIGNS)
        identified = False
        start = now - timedelta(days=rng.uniform(1, 30))
        for _session in range(rng.randint(1, 4)):
            moment = start
            context: dict[str, Any] = {
                "userAgent": user_agent,
                "location": {"country": country},
            }
            if campaign:
                context["campaign"] = {"name": campaign, "source": "email", "medium": "email"}

            visit = _Visit(events, anonymous_id, user_id if identified else None, context)
            emit = visit.emit

            emit("page", moment, name="Home", properties={"path": "/", "category": "home"})
            for _view in range(rng.randint(1, 6)):
                moment += timedelta(seconds=rng.randint(20, 240))
                pool = [p for p in products if p["category"] == favourite]
                product = rng.choice(pool if rng.random() < 0.7 else products)
                emit("track", moment, event="Product Viewed", properties=dict(product))
                if rng.random() < 0.25:
                    moment += timedelta(seconds=rng.randint(10, 60))
                    emit(
                        "track",
                        moment,
                        event="Product Added",
                        properties={**product, "quantity": 1},
                    )
            if rng.random() < 0.3:
                moment += timedelta(seconds=rng.randint(30, 300))
                article = rng.choice(ARTICLES)
                emit(
                    "page",
                    moment,
                    name="Article",
                    properties={
                        "path": f"/blog/{article}",
                        "category": "blog",
                        "tags": [favourite],
                    },
                )
            if user_id and not identified and rng.random() < 0.6:
                identified = True
                visit.user_id = user_id
                moment += timedelta(seconds=30)
                emit(
                    "identify",
                    moment,
                    traits={
                        "email": f"{user_id}@example.com",
                        "plan": rng.choice(["free", "plus"]),
                        "country": country,
                    },
                )
            if identified and rng.random() < 0.35:
                bought = rng.sample([p for p in products if p["category"] == favourite], k=2)
                revenue = round(sum(p["price"] for p in bought), 2)
                moment += timedelta(seconds=rng.randint(60, 400))
                emit(
                    "track",
                    moment,
                    event="Order Completed",
                    properties={
                        "order_id": f"o-{len(events):06d}",
                        "revenue": revenue,
                        "currency": "EUR",
                        "products": [dict(p, quantity=1) for p in bought],
                    },
                )
            start = moment + timedelta(hours=rng.uniform(6, 96))
            if start > now:
                break
    events = [e for e in events if e["timestamp"] <= _iso(now)]
    events.sort(key=lambda e: e["timestamp"])
    return events
