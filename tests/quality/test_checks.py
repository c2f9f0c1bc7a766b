"""Every stage's checks fail on crafted bad data, pass on good data, and say why."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from personify.quality.checks import (
    QualityContext,
    features_checks,
    ingest_checks,
    lake_batch_checks,
    lake_checks,
)
from personify.quality.runner import (
    QualityCheckFailed,
    QualityRun,
    StageChecks,
    enforce,
    merge_runs,
    run_checks,
)

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
TS = "datetime64[us, UTC]"


def _events(rows: int = 6, **overrides: list[Any]) -> pd.DataFrame:
    base: dict[str, list[Any]] = {
        "message_id": [f"m{i}" for i in range(rows)],
        "type": ["track"] * rows,
        "event": ["Product Viewed"] * rows,
        "user_id": [f"u{i}" for i in range(rows)],
        "anonymous_id": [None] * rows,
        "source_id": ["s"] * rows,
        "timestamp": [NOW - timedelta(hours=i) for i in range(rows)],
        "received_at": [NOW - timedelta(minutes=i) for i in range(rows)],
        "appended_at": [NOW - timedelta(minutes=i) for i in range(rows)],
    }
    base.update(overrides)
    frame = pd.DataFrame(base)
    for column in ("message_id", "type", "event", "user_id", "anonymous_id", "source_id"):
        frame[column] = frame[column].astype("str").where(frame[column].notna(), None)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype(TS)
    frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True).astype(TS)
    frame["appended_at"] = pd.to_datetime(frame["appended_at"], utc=True).astype(TS)
    frame["event_date"] = frame["timestamp"].dt.date
    return frame


def _run(checks: StageChecks, frame: pd.DataFrame) -> QualityRun:
    return run_checks(checks, frame, dataset="test", now=NOW)


def _failed(run: QualityRun) -> set[tuple[str, str | None, str]]:
    return {(r.severity, r.column, r.check) for r in run.failed}


CONTEXT = QualityContext(now=NOW)


# -- ingest ----------------------------------------------------------------------------------


def test_ingest_passes_good_events() -> None:
    run = _run(ingest_checks(CONTEXT), _events())
    assert run.status == "passed", run.report()
    assert len(run.results) > 10


def test_ingest_fails_events_that_break_the_contract() -> None:
    frame = _events(
        message_id=["m0", None, "m2", "m3", "m4", "m5"],
        type=["track", "track", "purchase", "track", "track", "page"],
        event=["A", "B", "C", None, "E", None],
        user_id=["u0", "u1", "u2", "u3", None, "u5"],
    )
    run = _run(ingest_checks(CONTEXT), frame)
    assert run.status == "failed"
    assert {
        ("critical", "message_id", "not_nullable"),
        ("critical", "type", "isin(['alias', 'group', 'identify', 'page', 'screen', 'track'])"),
        ("critical", None, "track_has_event_name"),
        ("critical", None, "user_id_or_anonymous_id"),
    } <= _failed(run)
    with pytest.raises(QualityCheckFailed) as failure:
        enforce(run)
    assert "quality FAILED: stage ingest" in failure.value.message
    assert "track_has_event_name" in failure.value.message


def test_ingest_warns_about_duplicates_implausible_times_and_rejections() -> None:
    frame = _events(
        message_id=["m0", "m0", "m2", "m3", "m4", "m5"],
        timestamp=[NOW, NOW, datetime(1999, 1, 1, tzinfo=UTC), NOW, NOW + timedelta(days=3), NOW],
    )
    context = QualityContext(now=NOW, rejected_rows=2)
    run = _run(ingest_checks(context), frame)
    assert run.status == "warned"
    failed = _failed(run)
    assert ("warning", "message_id", "field_uniqueness") in failed
    assert any(c == "timestamp" and s == "warning" for s, c, _ in failed)
    assert ("warning", None, "rejection_rate") in failed
    rejection = next(r for r in run.results if r.check == "rejection_rate")
    assert rejection.observed == "25.0% of rows rejected (limit 5.0%)"
    enforce(run)  # warnings never raise


def test_a_missing_column_is_reported_once() -> None:
    run = _run(ingest_checks(CONTEXT), _events().drop(columns=["received_at"]))
    received = [r for r in run.failed if r.column == "received_at"]
    assert [(r.check, r.severity) for r in received] == [("column_in_dataframe", "critical")]


# -- lake batch ------------------------------------------------------------------------------


def test_lake_batch_passes_good_rows() -> None:
    assert _run(lake_batch_checks(CONTEXT), _events()).status == "passed"


def test_lake_batch_fails_duplicates_and_wrong_partitions() -> None:
    frame = _events(message_id=["m0", "m0", "m2", "m3", "m4", "m5"])
    frame.loc[2, "event_date"] = date(2020, 1, 1)
    run = _run(lake_batch_checks(CONTEXT), frame)
    assert {
        ("critical", None, "multiple_fields_uniqueness"),
        ("critical", None, "event_date_is_utc_date"),
    } <= _failed(run)


def test_lake_batch_takes_one_message_id_from_two_sources() -> None:
    frame = _events(message_id=["m0", "m0", "m2", "m3", "m4", "m5"])
    frame.loc[1, "source_id"] = "other"
    run = _run(lake_batch_checks(CONTEXT), frame)
    assert run.status == "passed", run.report()


def test_lake_batch_warns_when_the_sink_lags() -> None:
    stale = _events(appended_at=[NOW - timedelta(days=3)] * 6)
    run = _run(lake_batch_checks(CONTEXT), stale)
    assert _failed(run) == {("warning", "appended_at", "freshness")}
    freshness = next(r for r in run.results if r.check == "freshness")
    assert freshness.observed is not None and "72.0 h old" in freshness.observed


# -- lake ------------------------------------------------------------------------------------


def _daily(counts: list[int], *, newest: datetime = NOW, duplicates: int = 0) -> pd.DataFrame:
    days = [NOW.date() - timedelta(days=len(counts) - 1 - i) for i in range(len(counts))]
    frame = pd.DataFrame(
        {
            "day": days,
            "events": counts,
            "anonymous_events": [c // 2 for c in counts],
            "duplicate_message_ids": [0] * (len(counts) - 1) + [duplicates],
            "newest_appended_at": [newest] * len(counts),
        }
    )
    frame["newest_appended_at"] = frame["newest_appended_at"].astype(TS)
    return frame


def test_lake_passes_steady_volume() -> None:
    run = _run(lake_checks(CONTEXT), _daily([1000, 1040, 980, 1010, 995, 1020, 300]))
    assert run.status == "passed", run.report()


def test_lake_warns_on_a_volume_spike_staleness_and_duplicates() -> None:
    frame = _daily(
        [1000, 1040, 980, 1010, 995, 9000, 300], newest=NOW - timedelta(days=2), duplicates=4
    )
    run = _run(lake_checks(CONTEXT), frame)
    assert run.status == "warned"
    assert _failed(run) == {
        ("warning", None, "daily_volume"),
        ("warning", "newest_appended_at", "freshness"),
        ("warning", "duplicate_message_ids", "equal_to(0)"),
    }
    volume = next(r for r in run.results if r.check == "daily_volume")
    assert volume.observed is not None and volume.observed.startswith("9000 vs mean 1005.0 of 5")


def test_lake_with_no_events_fails() -> None:
    run = _run(lake_checks(CONTEXT), _daily([0, 0, 0]))
    assert ("critical", None, "has_events") in _failed(run)


# -- features --------------------------------------------------------------------------------


def _features(**overrides: list[Any]) -> pd.DataFrame:
    base: dict[str, list[Any]] = {
        "user_id": ["a", "b", "c", "d"],
        "orders_all": [1, 0, 3, 2],
        "revenue_30d": [10.0, 0.0, 5.5, None],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def _feature_checks(history: list[int] | None = None) -> StageChecks:
    context = QualityContext(now=NOW, volume_history=history or [], max_null_rate=0.3)
    return features_checks(
        context,
        numeric_columns=["orders_all", "revenue_30d"],
        non_negative_columns=["orders_all", "revenue_30d"],
    )


def test_features_pass_a_sound_table() -> None:
    assert _run(_feature_checks([4, 4, 5]), _features()).status == "passed"


def test_features_fail_duplicate_users_negative_counts_and_infinities() -> None:
    frame = _features(
        user_id=["a", "a", None, "d"],
        orders_all=[1, -1, 3, 2],
        revenue_30d=[np.inf, 0.0, 5.5, 1.0],
    )
    run = _run(_feature_checks(), frame)
    failed = _failed(run)
    assert {
        ("critical", "user_id", "field_uniqueness"),
        ("critical", "user_id", "not_nullable"),
        ("critical", "orders_all", "greater_than_or_equal_to(0)"),
        ("critical", "revenue_30d", "finite"),
    } <= failed


def test_features_warn_on_null_rates_and_row_count_anomalies() -> None:
    frame = _features(revenue_30d=[None, None, 1.0, None])
    run = _run(_feature_checks([400, 410, 395, 405]), frame)
    assert _failed(run) == {
        ("warning", "revenue_30d", "null_rate"),
        ("warning", None, "row_count"),
    }


# -- runs ------------------------------------------------------------------------------------


def test_runs_over_chunks_merge_into_one() -> None:
    checks = ingest_checks(CONTEXT)
    good = _run(checks, _events())
    bad = _run(ingest_checks(CONTEXT), _events(event=["A", None, "C", "D", "E", "F"]))
    merged = merge_runs([good, bad])
    assert merged is not None
    assert merged.row_count == 12
    assert merged.status == "failed"
    [named] = [r for r in merged.results if r.check == "track_has_event_name"]
    assert named.failures == 1
    assert merge_runs([]) is None
