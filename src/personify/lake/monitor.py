"""Lake-wide quality checks: freshness, daily volume against history, duplicates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.quality.checks import QualityContext, lake_checks
from personify.quality.runner import QualityRun, enforce, run_checks

if TYPE_CHECKING:
    from personify.settings import Settings

# per day of arrival in the log: pipeline health (a backfill keeps its old receivedAt)
_DAILY = """
SELECT
    CAST(coalesce(appended_at, received_at) AS DATE) AS day,
    count(*) AS events,
    count(*) FILTER (WHERE user_id IS NULL) AS anonymous_events,
    count(*) - count(DISTINCT (source_id, message_id)) AS duplicate_message_ids,
    max(coalesce(appended_at, received_at)) AS newest_appended_at
FROM events_raw
WHERE coalesce(appended_at, received_at) >= $start
GROUP BY 1
ORDER BY 1
"""


def daily_volume(warehouse: Warehouse, *, start: datetime, end: datetime) -> pd.DataFrame:
    """Events per day of arrival from ``start`` to ``end`` (days without events count zero)."""
    frame = warehouse.connection.sql(_DAILY, params={"start": start}).to_arrow_table().to_pandas()
    days = pd.DataFrame(
        {"day": [d.date() for d in pd.date_range(start.date(), end.date(), freq="D")]}
    )
    merged = days.merge(frame, on="day", how="left")
    for column in ("events", "anonymous_events", "duplicate_message_ids"):
        merged[column] = merged[column].fillna(0).astype("int64")
    merged["newest_appended_at"] = pd.to_datetime(merged["newest_appended_at"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    return merged


def check_lake(
    lake: Lake,
    settings: Settings,
    *,
    now: datetime,
    record: Callable[[QualityRun], None] | None = None,
    raise_on_failure: bool = True,
) -> QualityRun:
    """Run the ``lake`` stage over the last ``quality_volume_history_days`` days and today."""
    start = (now - timedelta(days=settings.quality_volume_history_days + 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    context = QualityContext(
        now=now,
        freshness_hours=settings.quality_freshness_hours,
        max_zscore=settings.quality_volume_max_zscore,
    )
    with Warehouse(lake) as warehouse:
        frame = daily_volume(warehouse, start=start, end=now)
        version = warehouse.version
    dataset = f"{lake.uri}@{version}" if version is not None else lake.uri
    run = run_checks(lake_checks(context), frame, dataset=dataset, now=now)
    if raise_on_failure:
        return enforce(run, record)
    if record is not None:
        record(run)
    return run
