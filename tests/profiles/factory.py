"""Normalised events as the log holds them, for profile and worker tests."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from personify.clock import format_timestamp

BASE = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    """The ISO time ``minutes`` after ``BASE``."""
    return format_timestamp(BASE + timedelta(minutes=minutes))


def event(
    kind: str,
    message_id: str,
    minutes: float,
    *,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    name: str | None = None,
    properties: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One event in the normalised shape (``timestamp`` and ``receivedAt`` set)."""
    data: dict[str, Any] = {
        "type": kind,
        "messageId": message_id,
        "timestamp": at(minutes),
        "receivedAt": at(minutes),
        "sourceId": "src-test",
    }
    if user_id:
        data["userId"] = user_id
    if anonymous_id:
        data["anonymousId"] = anonymous_id
    if name:
        data["event"] = name
    if properties is not None:
        data["properties"] = properties
    if traits is not None:
        data["traits"] = traits
    if context is not None:
        data["context"] = context
    data.update(extra)
    return data


def encode(data: dict[str, Any]) -> bytes:
    """The log payload of an event."""
    return msgspec.json.encode(data)


_CATEGORIES = ["shoes", "hats", "books", "garden"]
_PAGES = ["home", "blog", "help"]


def shop_events(users: int, events_per_user: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """A shop's traffic: anonymous browsing, identify, orders, second devices, aliases.

    Events of all users are interleaved in time order, as a log would hold them.
    """
    rng = random.Random(seed)
    out: list[tuple[float, dict[str, Any]]] = []
    for u in range(users):
        user_id = f"user-{u:04d}"
        devices = [f"anon-{u:04d}-{d}" for d in range(rng.randint(1, 3))]
        minute = rng.uniform(0, 60 * 24 * 3)
        identified = False
        for n in range(events_per_user):
            minute += rng.expovariate(1 / 4) if rng.random() < 0.85 else rng.uniform(40, 600)
            device = rng.choice(devices)
            mid = f"{user_id}-{n}"
            ids: dict[str, Any] = {"anonymous_id": device}
            if identified and rng.random() < 0.7:
                ids["user_id"] = user_id
            roll = rng.random()
            category = rng.choice(_CATEGORIES)
            if roll < 0.35:
                data = event(
                    "page",
                    mid,
                    minute,
                    properties={"category": rng.choice(_PAGES), "path": "/p"},
                    **ids,
                )
            elif roll < 0.7:
                data = event(
                    "track",
                    mid,
                    minute,
                    name="Product Viewed",
                    properties={"category": category, "price": rng.randint(5, 90)},
                    **ids,
                )
            elif roll < 0.8:
                data = event(
                    "identify",
                    mid,
                    minute,
                    user_id=user_id,
                    anonymous_id=device,
                    traits={"plan": rng.choice(["free", "pro"]), "visits": n},
                )
                identified = True
            elif roll < 0.9:
                data = event(
                    "track",
                    mid,
                    minute,
                    name="Order Completed",
                    properties={
                        "revenue": round(rng.uniform(5, 200), 2),
                        "products": [{"category": category}],
                    },
                    **ids,
                )
            elif roll < 0.95 and identified:
                data = event("alias", mid, minute, user_id=user_id, previousId=f"legacy-{user_id}")
            else:
                data = event(
                    "track",
                    mid,
                    minute,
                    name="Video Played",
                    properties={"tags": [category, "video"]},
                    **ids,
                )
            out.append((minute, data))
    out.sort(key=lambda item: item[0])
    return [data for _, data in out]
