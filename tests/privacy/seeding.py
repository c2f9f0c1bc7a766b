"""A person seeded through every path, and the generic search of the state database for them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.profiles.state import state_json
from personify.profiles.tables import profile_predictions
from personify.store.database import Database
from tests.api import Harness

USER = "user-alice-7f3c"
ANON = "anon-alice-91cb"
OLD_ANON = "anon-alice-old-22d"
EMAIL = "Alice.Liddell@Example.org"
OTHER = "user-bob-5e0a"
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# tables a search for the person may find them in by design, and why: none. (The audit
# log, which is never rewritten, records a person's id in a path as its keyed hash.)
KEPT_BY_DESIGN: frozenset[str] = frozenset()


async def call(harness: Harness, method: str, path: str, body: Any = None, **params: Any) -> Any:
    """An admin call that must succeed; its JSON answer."""
    response = await harness.client.request(
        method, path, json=body, headers=harness.admin, params=params
    )
    assert response.status_code in (200, 201, 202, 204), response.text
    return response.json() if response.content else None


async def send(harness: Harness, events: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch through the collector; its answer."""
    response = await harness.client.post("/v1/batch", json={"batch": events}, headers=harness.auth)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def settle(harness: Harness) -> None:
    """The worker (and the lake writer, when there is one) drained."""
    await harness.services.worker.run(until_idle=True)
    sink = harness.services.lake_sink
    if sink is not None:
        while (await sink.process_once()).read:
            pass


async def seed(harness: Harness) -> None:
    """A person through every path: an anonymous visit, identify (merging the visit), an
    alias, a segment, a prediction, a decision in a running experiment with its exposure, a
    cached profile, a dead letter; and another person who must stay."""
    banner = {"type": "banner", "placements": []}
    await call(
        harness,
        "POST",
        "/v1/content",
        {**banner, "id": "generic", "fields": {"title": "Welcome"}},
        publish="true",
    )
    await call(harness, "POST", "/v1/placements", {"id": "home-hero", "defaultItem": "generic"})
    await call(
        harness,
        "POST",
        "/v1/content",
        {**banner, "id": "hero-b", "fields": {"title": "Free delivery"}},
        publish="true",
    )
    await call(
        harness,
        "POST",
        "/v1/experiments",
        {
            "key": "hero-test",
            "name": "Hero",
            "hypothesis": "delivery sells",
            "placements": ["home-hero"],
            "variants": [
                {"key": "control", "weight": 1},
                {
                    "key": "delivery",
                    "weight": 1,
                    "placements": {"home-hero": {"items": ["hero-b"]}},
                },
            ],
            "metrics": {
                "primary": [{"key": "buy", "type": "conversion", "event": "Order Completed"}]
            },
        },
    )
    await call(harness, "POST", "/v1/experiments/hero-test/start")
    await call(
        harness,
        "POST",
        "/v1/segments",
        {"key": "pros", "condition": {"trait": "plan", "op": "eq", "value": "pro"}},
    )
    # two anonymous visits, each a profile of its own until identify and alias merge them
    await send(
        harness,
        [
            {"type": "page", "anonymousId": ANON, "name": "Home"},
            {
                "type": "track",
                "anonymousId": ANON,
                "event": "Product Viewed",
                "properties": {"product_id": "p-1"},
                "context": {"traits": {"email": EMAIL}},
            },
            {"type": "page", "anonymousId": OLD_ANON, "name": "Sale"},
        ],
    )
    await settle(harness)
    answer = await send(
        harness,
        [
            {
                "type": "identify",
                "userId": USER,
                "anonymousId": ANON,
                "traits": {"email": EMAIL, "plan": "pro"},
            },
            {"type": "alias", "userId": USER, "previousId": OLD_ANON},
            # no event name: dead-lettered, with the userId in its payload
            {"type": "track", "userId": USER},
            {"type": "identify", "userId": OTHER, "traits": {"plan": "pro"}},
            {"type": "track", "userId": OTHER, "event": "Product Viewed"},
        ],
    )
    assert answer["rejected"] == 1
    await settle(harness)
    decision = await harness.client.post(
        "/v1/decide",
        json={"userId": USER, "placements": [{"id": "home-hero"}]},
        headers=harness.admin,
    )
    assert decision.status_code == 200, decision.text
    await settle(harness)
    with harness.services.db.begin() as conn:
        conn.execute(
            profile_predictions.insert(),
            [
                {
                    "profile_id": pid,
                    "target": "churn",
                    "model_id": None,
                    "value": '{"probability": 0.4}',
                    "scored_at": START,
                }
                for pid in (USER, OTHER)
            ],
        )
    # the profile in the cache, under one of its ids
    cached = await harness.client.get(f"/v1/profiles/{ANON}", headers=harness.admin)
    assert cached.status_code == 200, cached.text


def _texts(value: Any) -> list[str]:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            plain = state_json(raw)
        except (ValueError, OSError):
            plain = raw
        if isinstance(plain, bytes):
            return [plain.decode("utf-8", "replace")]
        return [plain]
    if isinstance(value, str):
        plain_text = state_json(value)
        return [plain_text if isinstance(plain_text, str) else plain_text.decode()]
    return [str(value)] if value is not None else []


def search_state(db: Database, needles: frozenset[str]) -> list[str]:
    """Every table of the state database, every column of every row, for every needle (not
    only the columns the eraser knows): ``"table: needle"`` for each hit."""
    hits: set[str] = set()
    with db.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        for name in names:
            if name in KEPT_BY_DESIGN:
                continue
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            for row in conn.execute(sa.select(table)):
                for value in row:
                    for text in _texts(value):
                        hits.update(f"{name}: {n}" for n in needles if n in text)
    return sorted(hits)


def decoded(text: str) -> Any:
    """JSON text decoded."""
    return msgspec.json.decode(text)
