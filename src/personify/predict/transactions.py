"""Every customer's orders as known at T, read from the lake the way training frames are: the
events the collector had accepted by T (``personify.predict.replay.read_events``), matched to
profiles through the ids they had at T (``owner``), so the baseline
(``personify.predict.baseline``) sees the same customers and nothing later than the learned
models do."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.predict.baseline import CustomerSummary, summarise
from personify.predict.replay import BATCH_ROWS, read_events
from personify.predict.targets import ORDER_EVENT
from personify.profiles.events import datetime_ms

__all__ = ["ORDER_EVENT", "order_summaries"]

_MS_PER_DAY = 86_400_000.0


def _value(properties: object) -> float:
    """An order's value: ``revenue``, else ``total`` (as the ``revenue`` feature reads it);
    0 when neither is a finite number."""
    if not isinstance(properties, Mapping):
        return 0.0
    for name in ("revenue", "total"):
        value = properties.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number):
                return number
    return 0.0


def order_summaries(
    lake: Lake,
    owner: Mapping[str, str],
    *,
    as_of: datetime,
    version: int | None = None,
    order_event: str | None = ORDER_EVENT,
    per_day: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> tuple[list[str], CustomerSummary]:
    """The profiles (by id, sorted) with an order known at ``as_of`` and their summaries, in
    days: repeat orders, first to last order, first order to ``as_of``, mean repeat value.

    ``order_event`` None counts every event as a transaction (the churn baseline's reading of
    "any event"); ``per_day`` counts at most one transaction per UTC day (its values summed),
    as BG/NBD expects of visits, which come in bursts.

    ``owner`` maps every id to its profile at ``as_of`` (as ``FeatureJob`` builds it); an
    order whose ids no profile had is left out, as it is from the training frame."""
    cut_ms = datetime_ms(as_of)
    orders: dict[str, list[tuple[float, float]]] = {}
    where = "received_at <= $as_of"
    params: dict[str, object] = {"as_of": as_of}
    if order_event is not None:
        where += " AND type = 'track' AND event = $event"
        params["event"] = order_event
    with Warehouse(lake, version=version) as warehouse:
        for event in read_events(warehouse, where, params, batch_rows):
            if event.ts > cut_ms:
                continue
            pid = next((owner[i] for i in event.ids if i in owner), None)
            if pid is None:
                continue
            value = _value(event.data.get("properties"))
            orders.setdefault(pid, []).append((event.ts / _MS_PER_DAY, value))
    if per_day:
        for pid, known in orders.items():
            days: dict[int, float] = {}
            for moment, value in known:
                day = math.floor(moment)
                days[day] = days.get(day, 0.0) + value
            orders[pid] = list(days.items())
    ids = sorted(orders)
    return ids, summarise([orders[pid] for pid in ids], cut_ms / _MS_PER_DAY)
