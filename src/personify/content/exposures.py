"""Exposures: what the decision engine showed each user, for frequency caps.

The decision engine never writes state (ARCHITECTURE rule 2): each decision appends one
``Content Exposed`` event to the event log, with source ``personify-decide``. The stream
worker does not apply those to profiles (showing a banner is not the user's activity: it
would move recency and every rule); it records each shown item here instead
(``record_exposures``), once per (decision, item) however often the log delivers it. The
engine then counts a user's exposures of its capped candidates in one query
(``exposure_counts``). Rows older than the retention are pruned (``prune_exposures``); a
cap's window is at most that long (``MAX_CAP_WINDOW_DAYS``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from personify.content.tables import content_exposures
from personify.store.database import Database
from personify.store.statements import Statements, insert_skipping_taken

__all__ = [
    "EXPOSURE_EVENT",
    "EXPOSURE_SOURCE",
    "MAX_CAP_WINDOW_DAYS",
    "exposure_counts",
    "exposure_rows",
    "prune_exposures",
    "record_exposures",
]

EXPOSURE_SOURCE: Final = "personify-decide"
EXPOSURE_EVENT: Final = "Content Exposed"
# the longest frequency-cap window, and so how long exposures are kept
MAX_CAP_WINDOW_DAYS: Final = 90
_STATEMENTS = Statements()


def exposure_rows(event: Mapping[str, Any], at: datetime) -> list[dict[str, Any]]:
    """The rows one exposure event holds (none when it is not one, or not well formed)."""
    properties = event.get("properties")
    if not isinstance(properties, Mapping):
        return []
    decision = properties.get("decisionId")
    profile = properties.get("profileId")
    placements = properties.get("placements")
    if not isinstance(decision, str) or not isinstance(profile, str):
        return []
    if not isinstance(placements, list):
        return []
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for placement in placements:
        if not isinstance(placement, Mapping) or not isinstance(placement.get("items"), list):
            continue
        for item in placement["items"]:
            item_id = item.get("id") if isinstance(item, Mapping) else None
            if isinstance(item_id, str) and item_id not in seen and len(item_id) <= 200:
                seen.add(item_id)
                rows.append(
                    {
                        "decision_id": decision[:64],
                        "item_id": item_id,
                        "profile_id": profile[:512],
                        "placement_id": str(placement.get("id", ""))[:200],
                        "exposed_at": at,
                    }
                )
    return rows


def record_exposures(db: Database, rows: Sequence[Mapping[str, Any]]) -> int:
    """Keep exposure rows, skipping those kept already (a redelivered event); how many
    were new. One insert for all of them, which leaves out the (decision, item) pairs the
    table holds: the stream worker keeps every decision's items, so no read goes first."""
    if not rows:
        return 0
    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        fresh.setdefault((row["decision_id"], row["item_id"]), dict(row))
    with db.begin() as conn:
        dialect = conn.dialect.name
        return _STATEMENTS.run(
            conn,
            "record_exposures",
            lambda: insert_skipping_taken(dialect, content_exposures),
            list(fresh.values()),
        )


_c = content_exposures.c
# built once: a decision counts its user's exposures of the capped items on every call, and
# building the statement cost more than running it
_COUNTED: Final = sa.select(_c.item_id, _c.exposed_at).where(
    _c.profile_id == sa.bindparam("profile"),
    _c.item_id.in_(sa.bindparam("items", expanding=True)),
    _c.exposed_at >= sa.bindparam("oldest"),
)


def exposure_counts(
    db: Database, profile_id: str, windows_ms: Mapping[str, int], now: datetime
) -> dict[str, int]:
    """How often each item of ``windows_ms`` (item id -> window) was shown to the profile
    within its window before ``now`` (one query; items never shown are left out)."""
    if not windows_ms:
        return {}
    oldest = now - timedelta(milliseconds=max(windows_ms.values()))
    with db.connect() as conn:
        rows = conn.execute(
            _COUNTED, {"profile": profile_id, "items": list(windows_ms), "oldest": oldest}
        ).all()
    counts: dict[str, int] = {}
    for item_id, exposed_at in rows:
        moment = (
            exposed_at if exposed_at.tzinfo is not None else exposed_at.replace(tzinfo=now.tzinfo)
        )
        # a window of 1d holds what was shown less than a day ago
        if moment > now - timedelta(milliseconds=windows_ms[item_id]):
            counts[item_id] = counts.get(item_id, 0) + 1
    return counts


def prune_exposures(db: Database, now: datetime, *, keep_days: float = MAX_CAP_WINDOW_DAYS) -> int:
    """Delete exposures older than ``keep_days``; how many went."""
    with db.begin() as conn:
        return int(
            conn.execute(
                content_exposures.delete().where(
                    content_exposures.c.exposed_at < now - timedelta(days=keep_days)
                )
            ).rowcount
        )
