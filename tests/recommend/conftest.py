"""Helpers for the recommender tests: a generated shop with planted tastes and bundles, in a
real lake, and hand-made events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from personify.clock import format_timestamp
from personify.lake.table import Lake
from personify.recommend.synthetic import SyntheticShop, generate_shop
from tests.lake.conftest import normalized, write_lake

END = datetime(2025, 6, 30, tzinfo=UTC)
# the last two weeks are the test
AS_OF = END - timedelta(days=14)


def arrived(event: dict[str, Any]) -> datetime:
    """When the collector received ``event``: a second after it happened."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")) + timedelta(seconds=1)


def shop_lake(folder: Path, **sizes: Any) -> tuple[SyntheticShop, Lake]:
    """A generated shop (``generate_shop`` up to ``END``) written to a lake at ``folder``."""
    shop = generate_shop(END, **sizes)
    lake = write_lake(folder, [normalized(e, received_at=arrived(e)) for e in shop.events])
    return shop, lake


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticShop, Lake]:
    """800 shoppers, 200 products in 10 categories, 90 days."""
    return shop_lake(tmp_path_factory.mktemp("recommend") / "lake", users=800, items=200)


def event(
    number: int,
    name: str,
    at: datetime,
    *,
    received: datetime | None = None,
    source_id: str = "src-1",
    kind: str = "track",
    **fields: Any,
) -> dict[str, Any]:
    """A normalised event numbered ``number`` (messageId ``m<number>``) named ``name``."""
    raw: dict[str, Any] = {
        "type": kind,
        "messageId": f"m{number}",
        "timestamp": format_timestamp(at),
    }
    if kind == "track":
        raw["event"] = name
    raw.update(fields)
    return normalized(raw, received_at=received or at + timedelta(seconds=1), source_id=source_id)
