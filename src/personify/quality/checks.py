"""The declared checks of every stage, as pandera schemas.

| stage        | data                                   | critical (stops the job)                     | warning (recorded)                          |
|--------------|----------------------------------------|----------------------------------------------|---------------------------------------------|
| ``ingest``   | a chunk of normalised events of an     | schema, ids present, known types, track      | messageId unique in the file, timestamps    |
|              | import, before it is appended          | events named                                 | plausible, rejection rate                   |
| ``lake_batch``| a micro-batch the lake sink writes    | schema, (source, message_id) unique, ids     | lag of the batch in the log, timestamps     |
|              |                                        | present, event_date = date(timestamp)        | plausible                                   |
| ``lake``     | the lake's events per day of arrival   | the window has events                        | freshness, daily volume against history,    |
|              |                                        |                                              | share of events without a userId            |
| ``features`` | a point-in-time feature table          | user_id unique and present, counts >= 0,     | null rate per feature, row count against    |
|              |                                        | numbers finite                               | previous feature tables                     |

Thresholds come from ``QualityContext`` (settings), so they are data, not code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pandera.pandas as pa

from personify.events.normalize import EVENT_TYPES
from personify.quality.runner import Observations, StageChecks

TIMESTAMP = pd.DatetimeTZDtype("us", "UTC")
_EARLIEST = pd.Timestamp("2000-01-01", tz="UTC")


@dataclass(frozen=True, slots=True)
class QualityContext:
    """The thresholds and the history the checks compare against."""

    now: datetime
    freshness_hours: float = 24.0
    future_tolerance_hours: float = 24.0
    max_zscore: float = 4.0
    min_history: int = 3
    volume_history: Sequence[int] = field(default_factory=tuple)
    max_rejection_rate: float = 0.05
    rejected_rows: int = 0
    max_null_rate: float = 0.99
    max_anonymous_share: float = 0.999


# -- building blocks -------------------------------------------------------------------------


def _volume_check(context: QualityContext, observations: Observations, name: str) -> pa.Check:
    """Row count within ``max_zscore`` deviations of the recent history (warning-level)."""
    history = [float(v) for v in context.volume_history]

    def within(frame: pd.DataFrame) -> bool:
        count = float(len(frame))
        return _volume_ok(count, history, context, observations, (None, name))

    return pa.Check(within, name=name)


def _volume_ok(
    count: float,
    history: Sequence[float],
    context: QualityContext,
    observations: Observations,
    key: tuple[str | None, str],
) -> bool:
    if len(history) < context.min_history:
        observations[key] = f"{count:.0f} (history too short: {len(history)} points)"
        return True
    mean = sum(history) / len(history)
    variance = sum((v - mean) ** 2 for v in history) / (len(history) - 1)
    # a flat history would make any change infinitely surprising; floor it like a Poisson count
    spread = max(math.sqrt(variance), math.sqrt(max(mean, 1.0)))
    zscore = (count - mean) / spread
    observations[key] = f"{count:.0f} vs mean {mean:.1f} of {len(history)} (z={zscore:+.1f})"
    return abs(zscore) <= context.max_zscore


def _fresh_check(
    context: QualityContext, observations: Observations, column: str, name: str = "freshness"
) -> pa.Check:
    limit = timedelta(hours=context.freshness_hours)
    now = pd.Timestamp(context.now)

    def fresh(series: pd.Series) -> bool:
        newest = series.max()
        if pd.isna(newest):
            observations[(column, name)] = "no timestamps"
            return False
        age = now - newest
        hours = age.total_seconds() / 3600
        observations[(column, name)] = (
            f"newest {newest.isoformat()}, {hours:.1f} h old (limit {context.freshness_hours:g} h)"
        )
        return bool(age <= limit)

    return pa.Check(fresh, name=name)


def _null_rate_check(
    limit: float, observations: Observations, column: str, name: str = "null_rate"
) -> pa.Check:
    def rate_ok(series: pd.Series) -> bool:
        rate = float(series.isna().mean()) if len(series) else 0.0
        observations[(column, name)] = f"{rate:.1%} null (limit {limit:.1%})"
        return rate <= limit

    return pa.Check(rate_ok, name=name, ignore_na=False)


def _identity_present(frame: pd.DataFrame) -> pd.Series:
    return frame["user_id"].notna() | frame["anonymous_id"].notna()


def _track_named(frame: pd.DataFrame) -> pd.Series:
    return (frame["type"] != "track") | frame["event"].notna()


def _timestamp_range(context: QualityContext) -> pa.Check:
    latest = pd.Timestamp(context.now) + pd.Timedelta(hours=context.future_tolerance_hours)
    return pa.Check.in_range(_EARLIEST, latest)


_EVENT_COLUMNS: dict[str, pa.Column] = {
    "message_id": pa.Column(str, nullable=False),
    "type": pa.Column(str, pa.Check.isin(sorted(EVENT_TYPES)), nullable=False),
    "event": pa.Column(str, nullable=True),
    "user_id": pa.Column(str, nullable=True),
    "anonymous_id": pa.Column(str, nullable=True),
    "timestamp": pa.Column(TIMESTAMP, nullable=False),
    "received_at": pa.Column(TIMESTAMP, nullable=False),
}


def _row_checks() -> list[pa.Check]:
    return [
        pa.Check(_identity_present, name="user_id_or_anonymous_id"),
        pa.Check(_track_named, name="track_has_event_name"),
    ]


# -- the stages ------------------------------------------------------------------------------


def ingest_checks(context: QualityContext) -> StageChecks:
    """Checks on a chunk of normalised events of an import, before it is appended."""
    observations: Observations = {}
    rejected = context.rejected_rows

    def rejection_ok(frame: pd.DataFrame) -> bool:
        total = len(frame) + rejected
        rate = rejected / total if total else 0.0
        observations[(None, "rejection_rate")] = (
            f"{rate:.1%} of rows rejected (limit {context.max_rejection_rate:.1%})"
        )
        return rate <= context.max_rejection_rate

    critical = pa.DataFrameSchema(dict(_EVENT_COLUMNS), checks=_row_checks())
    warning = pa.DataFrameSchema(
        {
            "message_id": pa.Column(str, unique=True, nullable=True),
            "timestamp": pa.Column(
                TIMESTAMP, _timestamp_range(context), nullable=True, coerce=False
            ),
        },
        checks=[pa.Check(rejection_ok, name="rejection_rate")],
    )
    return StageChecks("ingest", critical, warning, observations)


def _event_date_matches(frame: pd.DataFrame) -> pd.Series:
    return frame["event_date"] == frame["timestamp"].dt.date


def lake_batch_checks(context: QualityContext) -> StageChecks:
    """Checks on a micro-batch the lake sink is about to write."""
    observations: Observations = {}
    columns = dict(_EVENT_COLUMNS)
    # a messageId is unique per source only: two sources may both send "1"
    columns["message_id"] = pa.Column(str, nullable=False)
    columns["source_id"] = pa.Column(str, nullable=False)
    columns["event_date"] = pa.Column(nullable=False)
    critical = pa.DataFrameSchema(
        columns,
        checks=[*_row_checks(), pa.Check(_event_date_matches, name="event_date_is_utc_date")],
        unique=["source_id", "message_id"],
    )
    warning = pa.DataFrameSchema(
        {
            "timestamp": pa.Column(TIMESTAMP, _timestamp_range(context), nullable=True),
            # how long the batch's newest event waited in the log: the sink's lag
            "appended_at": pa.Column(
                TIMESTAMP, _fresh_check(context, observations, "appended_at"), nullable=True
            ),
        }
    )
    return StageChecks("lake_batch", critical, warning, observations)


def lake_checks(context: QualityContext) -> StageChecks:
    """Checks on the lake as a whole, over a frame of events per day of arrival in the log."""
    observations: Observations = {}
    today = context.now.date()

    def has_rows(frame: pd.DataFrame) -> bool:
        total = int(frame["events"].sum()) if len(frame) else 0
        observations[(None, "has_events")] = f"{total} events"
        return total > 0

    def latest_day_volume(frame: pd.DataFrame) -> bool:
        # the newest complete day (before today) against the days before it
        complete = frame[frame["day"] < today].sort_values("day")
        if len(complete) < 2:
            observations[(None, "daily_volume")] = "fewer than two complete days of events"
            return True
        latest = float(complete["events"].iloc[-1])
        past = [float(v) for v in complete["events"].iloc[:-1]]
        return _volume_ok(latest, past, context, observations, (None, "daily_volume"))

    def anonymous_share(frame: pd.DataFrame) -> bool:
        total = float(frame["events"].sum())
        share = float(frame["anonymous_events"].sum()) / total if total else 0.0
        observations[(None, "anonymous_share")] = (
            f"{share:.1%} of events carry no userId (limit {context.max_anonymous_share:.1%})"
        )
        return share <= context.max_anonymous_share

    critical = pa.DataFrameSchema(
        {
            "day": pa.Column(nullable=False, unique=True),
            "events": pa.Column(int, pa.Check.ge(0), nullable=False, coerce=True),
        },
        checks=[pa.Check(has_rows, name="has_events")],
    )
    warning = pa.DataFrameSchema(
        {
            "newest_appended_at": pa.Column(
                TIMESTAMP,
                _fresh_check(context, observations, "newest_appended_at"),
                nullable=True,
            ),
            "duplicate_message_ids": pa.Column(int, pa.Check.eq(0), coerce=True),
        },
        checks=[
            pa.Check(latest_day_volume, name="daily_volume"),
            pa.Check(anonymous_share, name="anonymous_share"),
        ],
    )
    return StageChecks("lake", critical, warning, observations)


def features_checks(
    context: QualityContext,
    *,
    numeric_columns: Sequence[str],
    non_negative_columns: Sequence[str],
) -> StageChecks:
    """Checks on a point-in-time feature table (one row per user)."""
    observations: Observations = {}

    def finite(series: pd.Series) -> pd.Series:
        values = pd.to_numeric(series, errors="coerce")
        return pd.Series(np.isfinite(values.to_numpy(dtype="float64", na_value=0.0)))

    critical_columns: dict[str, pa.Column] = {
        "user_id": pa.Column(str, nullable=False, unique=True),
    }
    for name in numeric_columns:
        checks: list[pa.Check] = [pa.Check(finite, name="finite")]
        if name in non_negative_columns:
            checks.append(pa.Check.ge(0))
        critical_columns[name] = pa.Column(checks=checks, nullable=True)
    warning_columns = {
        name: pa.Column(
            checks=[_null_rate_check(context.max_null_rate, observations, name)], nullable=True
        )
        for name in numeric_columns
    }
    critical = pa.DataFrameSchema(critical_columns)
    warning = pa.DataFrameSchema(
        warning_columns, checks=[_volume_check(context, observations, "row_count")]
    )
    return StageChecks("features", critical, warning, observations)
