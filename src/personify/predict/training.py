"""Training frames: point-in-time features at T with labels from the window (T, T + horizon],
and the job that writes them (and feature tables) with their quality checks and lineage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import ValidationError
from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.profiles.events import datetime_ms
from personify.profiles.features import (
    FeatureDefinition,
    FeatureSet,
    ProfileConfig,
    evaluate_features,
    load_profile_config,
    update_features,
)
from personify.quality.checks import QualityContext, features_checks
from personify.quality.lineage import LineageRepository
from personify.quality.results import QualityRepository
from personify.quality.runner import QualityRun, enforce, run_checks

if TYPE_CHECKING:
    from personify.settings import Settings
    from personify.store.database import Database
from personify.predict.features import (
    concat_tables,
    definitions_digest,
    non_negative_columns,
    numeric_columns,
    profiles_table,
)
from personify.predict.replay import (
    BATCH_ROWS,
    DEFAULT_SHARD_IDS,
    read_events,
    replay_shards,
)

DEFAULT_HORIZON_DAYS: dict[str, float] = {"churn": 30.0, "ltv": 90.0}


_LABEL_FEATURES = FeatureSet(
    ProfileConfig(
        include_default_features=False,
        features=[
            FeatureDefinition(name="label_events", event="*", aggregation="count"),
            FeatureDefinition(
                name="label_revenue",
                event="Order Completed",
                aggregation="sum",
                property=["properties.revenue", "properties.total"],
            ),
        ],
        affinity_rules=[],
    )
)


def _labels(
    lake: Lake,
    owner: Mapping[str, str],
    *,
    as_of: datetime,
    version: int | None,
    horizon: timedelta,
    batch_rows: int,
) -> dict[str, dict[str, Any]]:
    """Label values per profile from the events of (as_of, as_of + horizon] by event time."""
    start_ms = datetime_ms(as_of)
    end_ms = datetime_ms(as_of + horizon)
    state: dict[str, dict[str, Any]] = {}
    # view_event places a future-dated event at its arrival: read by either time
    window = (
        "(timestamp > $start - INTERVAL 2 DAY AND timestamp <= $end + INTERVAL 2 DAY) "
        "OR (received_at > $start AND received_at <= $end)"
    )
    params = {"start": as_of, "end": as_of + horizon}
    with Warehouse(lake, version=version) as warehouse:
        for event in read_events(warehouse, window, params, batch_rows):
            if not start_ms < event.ts <= end_ms:
                continue
            pid = next((owner[i] for i in event.ids if i in owner), None)
            if pid is not None:
                accumulators = state.setdefault(pid, {})
                update_features(accumulators, _LABEL_FEATURES, event, keep_from_ms=event.ts)
    labels: dict[str, dict[str, Any]] = {}
    for pid, accumulators in state.items():
        values = evaluate_features(accumulators, _LABEL_FEATURES, end_ms)
        labels[pid] = {
            "events": values["label_events"]["all"],
            "revenue": values["label_revenue"]["all"],
        }
    return labels


# -- the job ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureResult:
    """A computed feature table or training frame, and where its lineage is."""

    table: pa.Table
    lake_version: int | None
    lineage_id: str | None = None
    quality: QualityRun | None = None

    @property
    def row_count(self) -> int:
        """How many rows (users)."""
        return int(self.table.num_rows)


class FeatureJob:
    """Builds feature tables and training frames, checks them, records their lineage."""

    def __init__(
        self,
        lake: Lake,
        features: FeatureSet,
        *,
        db: Database | None = None,
        quality: QualityContext | None = None,
        clock: Clock | None = None,
        batch_rows: int = BATCH_ROWS,
        max_ids_per_shard: int | None = DEFAULT_SHARD_IDS,
    ) -> None:
        self.lake = lake
        self.features = features
        self._db = db
        self._quality = quality
        self._clock = clock or SystemClock()
        self._batch_rows = batch_rows
        self._max_ids_per_shard = max_ids_per_shard

    @classmethod
    def from_settings(cls, settings: Settings, *, db: Database | None = None) -> FeatureJob:
        """A job on the settings' lake, definitions and state database."""
        from personify.store.database import open_database

        return cls(
            Lake.from_settings(settings),
            FeatureSet(load_profile_config(settings.features_file)),
            db=db or open_database(settings),
            quality=QualityContext(
                now=SystemClock().now(),
                max_zscore=settings.quality_volume_max_zscore,
            ),
        )

    def _check(self, table: pa.Table, dataset: str) -> QualityRun | None:
        if self._quality is None:
            return None
        history: Sequence[int] = ()
        if self._db is not None:
            history = QualityRepository(self._db).row_counts("features")
        context = QualityContext(
            now=self._clock.now(),
            max_zscore=self._quality.max_zscore,
            volume_history=history,
            max_null_rate=self._quality.max_null_rate,
        )
        checks = features_checks(
            context,
            numeric_columns=numeric_columns(table),
            non_negative_columns=non_negative_columns(table, self.features),
        )
        frame = table.drop_columns(["as_of"]).to_pandas()
        return run_checks(checks, frame, dataset=dataset, now=context.now)

    def publish(
        self,
        kind: str,
        table: pa.Table,
        *,
        version: int | None,
        as_of: datetime,
        time_end: datetime,
        parameters: dict[str, Any],
        output: Path | None,
    ) -> FeatureResult:
        """Check a derived table (stage ``features``), write it, and record its lineage.

        Raises ``QualityCheckFailed`` when a critical check fails: then nothing is written,
        no lineage is recorded, and the failed run is stored for ``personify quality report``.
        """
        run = self._check(table, f"{kind}@{format_timestamp(as_of)}")
        record: Callable[[QualityRun], None] | None = None
        if self._db is not None:
            record = QualityRepository(self._db).record
        if run is not None and run.status == "failed":
            enforce(run, record)
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, output)
        lineage_id = None
        if self._db is not None:
            entry = LineageRepository(self._db, clock=self._clock).record(
                kind,
                lake_uri=self.lake.uri,
                lake_versions={"events": version} if version is not None else {},
                time_start=None,
                time_end=time_end,
                parameters={
                    "as_of": format_timestamp(as_of),
                    "definitions": definitions_digest(self.features),
                    "feature_names": [f.name for f in self.features.features],
                    "availability": "received_at <= as_of",
                    **parameters,
                },
                output=str(output) if output is not None else None,
                row_count=table.num_rows,
            )
            lineage_id = entry.id
            if run is not None:
                run.lineage_id = lineage_id
        if run is not None and record is not None:
            record(run)
        return FeatureResult(table, version, lineage_id, run)

    def _build(
        self, as_of: datetime, version: int | None = None
    ) -> tuple[pa.Table, dict[str, str], int | None]:
        """The feature table at ``as_of``, each id's profile, and the lake version read."""
        tables: list[pa.Table] = []
        owner: dict[str, str] = {}
        for shard in replay_shards(
            self.lake,
            self.features,
            as_of,
            version=version,
            batch_rows=self._batch_rows,
            max_ids_per_shard=self._max_ids_per_shard,
        ):
            version = shard.version
            tables.append(profiles_table(shard, self.features))
            owner.update((i, pid) for pid, s in shard.states.items() for i in s.all_ids())
            shard.states.clear()
        return concat_tables(tables), owner, version

    def features_as_of(self, as_of: datetime, *, output: Path | None = None) -> FeatureResult:
        """Every user's features at ``as_of``; checked (stage ``features``) and recorded.

        Raises ``QualityCheckFailed`` (nothing written) when a critical check fails.
        """
        table, _, version = self._build(as_of)
        return self.publish(
            "feature_table",
            table,
            version=version,
            as_of=as_of,
            time_end=as_of,
            parameters={},
            output=output,
        )

    def training_frame(
        self,
        as_of: datetime,
        *,
        label: str,
        horizon_days: float | None = None,
        output: Path | None = None,
    ) -> FeatureResult:
        """Features at ``as_of`` plus the label from (as_of, as_of + horizon].

        Raises ``ValidationError`` when the lake has not yet received events up to the end of
        the horizon (the label would be wrong, not just late).
        """
        if label not in DEFAULT_HORIZON_DAYS:
            raise ValidationError(
                f"label must be one of {sorted(DEFAULT_HORIZON_DAYS)}", code="invalid_label"
            )
        days = DEFAULT_HORIZON_DAYS[label] if horizon_days is None else horizon_days
        if not math.isfinite(days) or days <= 0:
            raise ValidationError("the horizon must be a positive number of days")
        horizon = timedelta(days=days)
        version = self.lake.version()
        self._require_observed(as_of + horizon, version)
        table, owner, version = self._build(as_of, version)
        labels = _labels(
            self.lake,
            owner,
            as_of=as_of,
            version=version,
            horizon=horizon,
            batch_rows=self._batch_rows,
        )
        none: dict[str, Any] = {"events": 0, "revenue": 0.0}
        ids = table.column("user_id").to_pylist()
        if label == "churn":
            values = pa.array([int(labels.get(i, none)["events"] == 0) for i in ids], pa.int8())
        else:
            values = pa.array([float(labels.get(i, none)["revenue"]) for i in ids], pa.float64())
        table = table.append_column(f"label_{label}", values)
        return self.publish(
            "training_frame",
            table,
            version=version,
            as_of=as_of,
            time_end=as_of + horizon,
            parameters={"label": label, "horizon_days": days},
            output=output,
        )

    def _require_observed(self, until: datetime, version: int | None) -> None:
        if version is None:
            raise ValidationError(
                f"the lake at {self.lake.uri} has no events yet", code="label_window_not_observed"
            )
        with Warehouse(self.lake, version=version) as warehouse:
            newest = warehouse.query("SELECT max(received_at) AS newest FROM events_raw")
        reached = newest.column("newest")[0].as_py()
        if reached is None or reached < until:
            raise ValidationError(
                f"the lake has events received up to {reached}, but the label window ends at "
                f"{until.isoformat()}: pick an earlier --as-of or a shorter horizon",
                code="label_window_not_observed",
            )
