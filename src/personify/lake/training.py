"""Point-in-time features and training frames, computed from the lake.

One definition, two engines: the stream worker applies each event to a profile with
``personify.profiles.state.apply_event`` and merges profiles with ``merge_states``; this
module replays the lake through exactly those functions (and ``view_event``, which reads an
event for both), then evaluates every profile with ``evaluate_profile`` at T. The feature
definitions are the same ``FeatureSet`` (``PERSONIFY_FEATURES_FILE``).

*As of T* means as known at T: every event the collector had accepted by T
(``received_at <= T``), whatever its event time, deduplicated by source and messageId like
the worker does. An event that arrived after T never counts, even when it happened before
T, so a training row holds only what a real-time system could have known at T.

Labels come from the window (T, T + horizon] by event time, matched to the profile through
the ids it had at T: ``churn`` is 1 when no event falls in the window, ``ltv`` is the revenue
in it (the same ``revenue``/``total`` reading as the ``revenue`` feature).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import ValidationError
from personify.lake.schema import row_to_event
from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.profiles.events import ProfileEvent, datetime_ms, view_event
from personify.profiles.features import (
    FeatureDefinition,
    FeatureSet,
    ProfileConfig,
    evaluate_features,
    load_profile_config,
    update_features,
)
from personify.profiles.identity import UnionFind, canonical_id
from personify.profiles.state import ProfileState, apply_event, evaluate_profile, merge_states
from personify.quality.checks import QualityContext, features_checks
from personify.quality.lineage import LineageRepository
from personify.quality.results import QualityRepository
from personify.quality.runner import QualityRun, enforce, run_checks

if TYPE_CHECKING:
    from personify.settings import Settings
    from personify.store.database import Database

Label = Literal["churn", "ltv"]
DEFAULT_HORIZON_DAYS: dict[str, float] = {"churn": 30.0, "ltv": 90.0}
_BATCH_ROWS = 20_000
_JSON_SECTIONS = frozenset({"affinities", "last_events"})
_NON_NEGATIVE_BUILT_INS = ("events_total", "recency_days", "sessions__")
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_encode = msgspec.json.Encoder(order="deterministic").encode

_TIME = "strftime({0}, '%Y-%m-%dT%H:%M:%S.%gZ') AS {0}"
# the events as the log carried them: text timestamps so view_event parses what the worker did
_EVENTS = f"""
SELECT message_id, type, event, name, user_id, anonymous_id, previous_id, group_id, source_id,
    {_TIME.format("timestamp")}, {_TIME.format("original_timestamp")},
    {_TIME.format("sent_at")}, {_TIME.format("received_at")},
    properties, traits, context, extra
FROM events_raw
WHERE {{where}}
QUALIFY row_number() OVER (
    PARTITION BY source_id, message_id
    ORDER BY received_at, log_partition, TRY_CAST(log_offset AS BIGINT), log_offset
) = 1
"""


def column_name(key: str) -> str:
    """A feature path segment as a column-name part (``Product Viewed`` -> ``product_viewed``)."""
    return _NOT_NAME.sub("_", str(key).lower()).strip("_") or "_"


def definitions_digest(features: FeatureSet) -> str:
    """A short hash of the profile config: which definitions a dataset was computed with."""
    return hashlib.sha256(_encode(features.config)).hexdigest()[:16]


def _events(
    warehouse: Warehouse, where: str, params: Mapping[str, Any], batch_rows: int
) -> Iterator[ProfileEvent]:
    reader = warehouse.connection.sql(_EVENTS.format(where=where), params=dict(params))
    for batch in reader.to_arrow_reader(batch_rows):
        for row in batch.to_pylist():
            try:
                yield view_event(row_to_event(row))
            except ValidationError:
                continue  # the worker dead-letters these; they are in no profile


@dataclass(slots=True)
class ProfilesAsOf:
    """Every profile as it was at ``as_of``: canonical id -> state."""

    as_of: datetime
    version: int | None
    states: dict[str, ProfileState]
    events: int = 0


def replay_profiles(
    lake: Lake,
    features: FeatureSet,
    as_of: datetime,
    *,
    version: int | None = None,
    batch_rows: int = _BATCH_ROWS,
) -> ProfilesAsOf:
    """Rebuild every profile from the events accepted by ``as_of`` (the worker's functions)."""
    links: UnionFind[str] = UnionFind()
    states: dict[str, ProfileState] = {}
    applied = 0
    with Warehouse(lake, version=version) as warehouse:
        for event in _events(warehouse, "received_at <= $as_of", {"as_of": as_of}, batch_rows):
            ids = event.ids
            roots = {links.find(i) for i in ids}
            for other in ids[1:]:
                links.union(ids[0], other)
            root = links.find(ids[0])
            state: ProfileState | None = None
            for old in roots:
                # this event links profiles: merge them as the worker does
                found = states.pop(old, None)
                if found is None:
                    continue
                if state is None:
                    state = found
                else:
                    merge_states(state, found, features)
            if state is None:
                state = ProfileState()
            apply_event(state, event, features)
            states[root] = state
            applied += 1
        lake_version = warehouse.version
    by_profile = {
        canonical_id(s.user_ids, s.anonymous_ids | s.previous_ids): s for s in states.values()
    }
    return ProfilesAsOf(as_of, lake_version, by_profile, applied)


def profile_documents(profiles: ProfilesAsOf, features: FeatureSet) -> dict[str, dict[str, Any]]:
    """Each profile's ``features`` section evaluated at the cut-off (the API's document)."""
    as_of_ms = datetime_ms(profiles.as_of)
    return {pid: evaluate_profile(s, features, as_of_ms) for pid, s in profiles.states.items()}


def flatten_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the feature table: nested values joined by ``__``; some sections as JSON."""
    row: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}__{column_name(key)}", inner)
        elif isinstance(value, list):
            row[prefix] = _encode(value).decode()
        else:
            row[prefix] = value

    for key, value in document.items():
        name = column_name(key)
        if key in _JSON_SECTIONS:
            row[name] = _encode(value).decode()
        else:
            walk(name, value)
    return row


def _column(values: list[Any]) -> pa.Array:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds <= {bool}:
        return pa.array(values, pa.bool_())
    if kinds <= {str}:
        return pa.array(values, pa.string())
    return pa.array(
        [None if v is None else v if isinstance(v, str) else _encode(v).decode() for v in values],
        pa.string(),
    )


def feature_table(documents: Mapping[str, Mapping[str, Any]], as_of: datetime) -> pa.Table:
    """The feature table: one row per profile, ``user_id`` first, columns sorted."""
    ids = sorted(documents)
    rows = [flatten_document(documents[pid]) for pid in ids]
    names = sorted({name for row in rows for name in row})
    columns: dict[str, pa.Array] = {
        "user_id": pa.array(ids, pa.string()),
        "as_of": pa.array([as_of] * len(ids), pa.timestamp("us", tz="UTC")),
    }
    for name in names:
        columns[name] = _column([row.get(name) for row in rows])
    return pa.table(columns)


def features_as_of(
    lake: Lake, features: FeatureSet, as_of: datetime, *, version: int | None = None
) -> pa.Table:
    """Every user's feature vector as it was at ``as_of`` (see the module docstring)."""
    profiles = replay_profiles(lake, features, as_of, version=version)
    return feature_table(profile_documents(profiles, features), as_of)


def numeric_columns(table: pa.Table) -> list[str]:
    """The feature table's numeric columns."""
    return [
        f.name
        for f in table.schema
        if f.name not in ("user_id", "as_of")
        and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]


def non_negative_columns(table: pa.Table, features: FeatureSet) -> list[str]:
    """Numeric columns that can never be negative: counts, recency, sessions."""
    prefixes = [*_NON_NEGATIVE_BUILT_INS] + [
        f"{f.name}__"
        for f in features.features
        if f.definition.aggregation in ("count", "days_since")
    ]
    return [name for name in numeric_columns(table) if name.startswith(tuple(prefixes))]


# -- labels ----------------------------------------------------------------------------------

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
    profiles: ProfilesAsOf,
    *,
    horizon: timedelta,
    batch_rows: int,
) -> dict[str, dict[str, Any]]:
    owner = {i: pid for pid, s in profiles.states.items() for i in s.all_ids()}
    start_ms = datetime_ms(profiles.as_of)
    end_ms = datetime_ms(profiles.as_of + horizon)
    state: dict[str, dict[str, Any]] = {pid: {} for pid in profiles.states}
    # a future-dated event is placed at its arrival by view_event, so read a day around it
    window = "timestamp > $start - INTERVAL 2 DAY AND timestamp <= $end + INTERVAL 2 DAY"
    params = {"start": profiles.as_of, "end": profiles.as_of + horizon}
    with Warehouse(lake, version=profiles.version) as warehouse:
        for event in _events(warehouse, window, params, batch_rows):
            if not start_ms < event.ts <= end_ms:
                continue
            pid = next((owner[i] for i in event.ids if i in owner), None)
            if pid is not None:
                update_features(state[pid], _LABEL_FEATURES, event, keep_from_ms=event.ts)
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
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        batch_rows: int = _BATCH_ROWS,
    ) -> None:
        self.lake = lake
        self.features = features
        self._db = db
        self._quality = quality
        self._clock = clock or SystemClock()
        self._batch_rows = batch_rows

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
        documents: dict[str, dict[str, Any]] | None = None,
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
        return FeatureResult(table, version, lineage_id, run, documents or {})

    def features_as_of(self, as_of: datetime, *, output: Path | None = None) -> FeatureResult:
        """Every user's features at ``as_of``; checked (stage ``features``) and recorded.

        Raises ``QualityCheckFailed`` (nothing written) when a critical check fails.
        """
        profiles = replay_profiles(self.lake, self.features, as_of, batch_rows=self._batch_rows)
        documents = profile_documents(profiles, self.features)
        table = feature_table(documents, as_of)
        return self.publish(
            "feature_table",
            table,
            version=profiles.version,
            as_of=as_of,
            time_end=as_of,
            parameters={},
            output=output,
            documents=documents,
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
        profiles = replay_profiles(self.lake, self.features, as_of, batch_rows=self._batch_rows)
        self._require_observed(as_of + horizon, profiles.version)
        documents = profile_documents(profiles, self.features)
        table = feature_table(documents, as_of)
        labels = _labels(self.lake, profiles, horizon=horizon, batch_rows=self._batch_rows)
        ids = table.column("user_id").to_pylist()
        if label == "churn":
            values = pa.array([int(labels[i]["events"] == 0) for i in ids], pa.int8())
        else:
            values = pa.array([float(labels[i]["revenue"]) for i in ids], pa.float64())
        table = table.append_column(f"label_{label}", values)
        return self.publish(
            "training_frame",
            table,
            version=profiles.version,
            as_of=as_of,
            time_end=as_of + horizon,
            parameters={"label": label, "horizon_days": days},
            output=output,
            documents=documents,
        )

    def _require_observed(self, until: datetime, version: int | None) -> None:
        with Warehouse(self.lake, version=version) as warehouse:
            newest = warehouse.query("SELECT max(received_at) AS newest FROM events_raw")
        reached = newest.column("newest")[0].as_py()
        if reached is None or reached < until:
            raise ValidationError(
                f"the lake has events received up to {reached}, but the label window ends at "
                f"{until.isoformat()}: pick an earlier --as-of or a shorter horizon",
                code="label_window_not_observed",
            )
