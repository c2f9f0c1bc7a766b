"""Training frames: point-in-time features at T with labels from the window (T, T + horizon],
and the job that writes them (and feature tables) with their quality checks and lineage.
"""

from __future__ import annotations

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
    replay_cutoffs,
)
from personify.predict.targets import Target, target


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a profile did in a label window: qualifying events, orders, order revenue."""

    events: int
    orders: int
    revenue: float


NO_OUTCOME = Outcome(0, 0, 0.0)


def _label_features(target: Target) -> FeatureSet:
    order_event = target.order_event
    return FeatureSet(
        ProfileConfig(
            include_default_features=False,
            features=[
                FeatureDefinition(
                    name="label_events", event=target.qualifying_event or "*", aggregation="count"
                ),
                FeatureDefinition(name="label_orders", event=order_event, aggregation="count"),
                FeatureDefinition(
                    name="label_revenue",
                    event=order_event,
                    aggregation="sum",
                    property=["properties.revenue", "properties.total"],
                ),
            ],
            affinity_rules=[],
        )
    )


def outcomes(
    lake: Lake,
    owner: Mapping[str, str],
    target: Target,
    *,
    as_of: datetime,
    version: int | None,
    batch_rows: int = BATCH_ROWS,
) -> dict[str, Outcome]:
    """What each profile did in (as_of, as_of + horizon] by event time (profiles with
    nothing in it are left out: ``NO_OUTCOME``)."""
    horizon = timedelta(days=target.horizon_days)
    start_ms = datetime_ms(as_of)
    end_ms = datetime_ms(as_of + horizon)
    features = _label_features(target)
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
                update_features(accumulators, features, event, keep_from_ms=event.ts)
    result: dict[str, Outcome] = {}
    for pid, accumulators in state.items():
        values = evaluate_features(accumulators, features, end_ms)
        result[pid] = Outcome(
            int(values["label_events"]["all"] or 0),
            int(values["label_orders"]["all"] or 0),
            float(values["label_revenue"]["all"] or 0.0),
        )
    return result


def arrivals(lake: Lake, version: int | None) -> tuple[datetime | None, datetime | None]:
    """The first and the last time the lake (at ``version``) received an event; ``None``
    for an empty lake."""
    if version is None:
        return None, None
    with Warehouse(lake, version=version) as warehouse:
        found = warehouse.query(
            "SELECT min(received_at) AS first, max(received_at) AS last FROM events_raw"
        )
    first, last = found.column("first")[0].as_py(), found.column("last")[0].as_py()
    return (
        first if isinstance(first, datetime) else None,
        last if isinstance(last, datetime) else None,
    )


def append_labels(table: pa.Table, goal: Target, done: Mapping[str, Outcome]) -> pa.Table:
    """``table`` with its target's label columns: ``label_churn`` (int8), or ``label_clv``
    (revenue) and ``label_orders``."""
    ids = table.column("user_id").to_pylist()
    rows = [done.get(i, NO_OUTCOME) for i in ids]
    if goal.name == "churn":
        return table.append_column(
            "label_churn", pa.array([int(o.events == 0) for o in rows], pa.int8())
        )
    table = table.append_column("label_clv", pa.array([o.revenue for o in rows], pa.float64()))
    return table.append_column("label_orders", pa.array([o.orders for o in rows], pa.int64()))


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

    def build(
        self, as_of: datetime, version: int | None = None
    ) -> tuple[pa.Table, dict[str, str], int | None]:
        """The feature table at ``as_of``, each id's profile at ``as_of`` (the owner map), and
        the lake version read (the newest when ``version`` is None)."""
        if version is None:
            version = self.lake.version()
        table, owner = self.build_many([as_of], version)[as_of]
        return table, owner, version

    def build_many(
        self, cutoffs: Sequence[datetime], version: int | None = None
    ) -> dict[datetime, tuple[pa.Table, dict[str, str]]]:
        """``build`` at every cut-off, from one pass over the lake (``replay_cutoffs``): the
        feature table and owner map of each."""
        parts: dict[datetime, list[pa.Table]] = {c: [] for c in cutoffs}
        owners: dict[datetime, dict[str, str]] = {c: {} for c in cutoffs}
        for shard in replay_cutoffs(
            self.lake,
            self.features,
            cutoffs,
            version=version,
            batch_rows=self._batch_rows,
            max_ids_per_shard=self._max_ids_per_shard,
        ):
            parts[shard.as_of].append(profiles_table(shard, self.features))
            owners[shard.as_of].update(
                (i, pid) for pid, s in shard.states.items() for i in s.all_ids()
            )
        return {c: (concat_tables(parts[c]), owners[c]) for c in cutoffs}

    def features_as_of(self, as_of: datetime, *, output: Path | None = None) -> FeatureResult:
        """Every user's features at ``as_of``; checked (stage ``features``) and recorded.

        Raises ``QualityCheckFailed`` (nothing written) when a critical check fails.
        """
        table, _, version = self.build(as_of)
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
        event: str | None = None,
        output: Path | None = None,
    ) -> FeatureResult:
        """Features at ``as_of`` plus the label from (as_of, as_of + horizon]: ``label_churn``
        (1: no qualifying event) or ``label_clv`` (revenue), beside ``label_orders`` for clv.

        Raises ``ValidationError`` when the lake has not yet received events up to the end of
        the horizon (the label would be wrong, not just late).
        """
        goal = target(label, horizon_days, event)
        version = self.lake.version()
        self.require_observed(as_of + timedelta(days=goal.horizon_days), version)
        table, owner, version = self.build(as_of, version)
        done = outcomes(
            self.lake, owner, goal, as_of=as_of, version=version, batch_rows=self._batch_rows
        )
        table = append_labels(table, goal, done)
        return self.publish(
            "training_frame",
            table,
            version=version,
            as_of=as_of,
            time_end=as_of + timedelta(days=goal.horizon_days),
            parameters={"label": label, "horizon_days": goal.horizon_days, "event": goal.event},
            output=output,
        )

    def require_observed(self, until: datetime, version: int | None) -> None:
        """Raise ``ValidationError`` (``label_window_not_observed``) unless the lake holds
        events received up to ``until``."""
        if version is None:
            raise ValidationError(
                f"the lake at {self.lake.uri} has no events yet", code="label_window_not_observed"
            )
        _, reached = arrivals(self.lake, version)
        if reached is None or reached < until:
            raise ValidationError(
                f"the lake has events received up to {reached}, but the label window ends at "
                f"{until.isoformat()}: pick an earlier --as-of or a shorter horizon",
                code="label_window_not_observed",
            )
