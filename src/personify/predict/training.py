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

Memory: a profile state takes tens of KB as Python objects, so profiles are replayed in
shards of whole identity components (``max_ids_per_shard`` ids, about), one shard at a time.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
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

DEFAULT_HORIZON_DAYS: dict[str, float] = {"churn": 30.0, "ltv": 90.0}
_BATCH_ROWS = 20_000
# ids replayed at once: bounds memory (a profile state takes tens of KB in Python)
DEFAULT_SHARD_IDS = 50_000
_JSON_SECTIONS = frozenset({"affinities", "last_events"})
_NON_NEGATIVE_BUILT_INS = ("events_total", "recency_days", "sessions__")
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_encode = msgspec.json.Encoder(order="deterministic").encode
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_TIME = "strftime({0}, '%Y-%m-%dT%H:%M:%S.%gZ') AS {0}"
# The events as the log carried them: text timestamps, so view_event parses what the worker
# did. A plain scan, so DuckDB streams it.
_EVENTS = f"""
SELECT message_id, type, event, name, user_id, anonymous_id, previous_id, group_id, source_id,
    {_TIME.format("timestamp")}, {_TIME.format("original_timestamp")},
    {_TIME.format("sent_at")}, {_TIME.format("received_at")},
    properties, traits, context, extra, log_partition, log_offset
FROM events_raw
WHERE {{where}}
"""
# Each (source, messageId) counts once and its first arrival wins, like the worker's
# applied_events: the later copies (rare) are listed first, over narrow columns, and skipped.
_LATER_COPIES = """
SELECT log_partition, log_offset FROM (
    SELECT log_partition, log_offset,
        count(*) OVER copies AS copies,
        row_number() OVER (
            copies ORDER BY received_at, log_partition, TRY_CAST(log_offset AS BIGINT), log_offset
        ) AS arrival
    FROM events_raw
    WHERE {where}
    WINDOW copies AS (PARTITION BY source_id, message_id)
)
WHERE copies > 1 AND arrival > 1
"""


def column_name(key: str) -> str:
    """A feature path segment as a column-name part (``Product Viewed`` -> ``product_viewed``)."""
    return _NOT_NAME.sub("_", str(key).lower()).strip("_") or "_"


def definitions_digest(features: FeatureSet) -> str:
    """A short hash of the profile config: which definitions a dataset was computed with."""
    return hashlib.sha256(_encode(features.config)).hexdigest()[:16]


def _later_copies(
    warehouse: Warehouse, where: str, params: Mapping[str, Any]
) -> set[tuple[int, str]]:
    rows = warehouse.connection.sql(_LATER_COPIES.format(where=where), params=dict(params))
    return {(int(partition), str(offset)) for partition, offset in rows.fetchall()}


def _events(
    warehouse: Warehouse,
    where: str,
    params: Mapping[str, Any],
    batch_rows: int,
    *,
    later: set[tuple[int, str]] | None = None,
    only_ids: pa.Array | None = None,
) -> Iterator[ProfileEvent]:
    """The events in scope, read as the worker reads them; ``only_ids`` keeps the events whose
    first id (``userId``, else ``anonymousId``) is in it."""
    if later is None:
        later = _later_copies(warehouse, where, params)
    reader = warehouse.connection.sql(_EVENTS.format(where=where), params=dict(params))
    stream = reader.to_arrow_reader(batch_rows)
    try:
        for batch in stream:
            if only_ids is not None:
                # filtered here, not in SQL: a join would make DuckDB hold the shard's rows
                key = pc.coalesce(batch.column("user_id"), batch.column("anonymous_id"))
                batch = batch.filter(pc.is_in(key, value_set=only_ids))
            for row in batch.to_pylist():
                if later and (row["log_partition"], row["log_offset"]) in later:
                    continue
                try:
                    yield view_event(row_to_event(row))
                except ValidationError:
                    continue  # the worker dead-letters these; they are in no profile
    finally:
        stream.close()


@dataclass(slots=True)
class ProfilesAsOf:
    """Profiles as they were at ``as_of`` (all of them, or one shard): canonical id -> state."""

    as_of: datetime
    version: int | None
    states: dict[str, ProfileState]
    events: int = 0


def _replay(
    events: Iterable[ProfileEvent], features: FeatureSet
) -> tuple[dict[str, ProfileState], int]:
    links: UnionFind[str] = UnionFind()
    states: dict[str, ProfileState] = {}
    applied = 0
    for event in events:
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
    by_profile = {
        canonical_id(s.user_ids, s.anonymous_ids | s.previous_ids): s for s in states.values()
    }
    return by_profile, applied


_IDS = """
SELECT DISTINCT user_id, anonymous_id, previous_id FROM events_raw WHERE received_at <= $as_of
"""


def _shards(warehouse: Warehouse, as_of: datetime, max_ids: int) -> list[pa.Array] | None:
    """The ids split into shards of whole identity components (None: one shard will do).

    Links are taken from every event in scope, valid or not, so a component here can only be
    a union of the worker's profiles, never a part of one: each profile is in one shard.
    """
    links: UnionFind[str] = UnionFind()
    for row in warehouse.connection.sql(_IDS, params={"as_of": as_of}).fetchall():
        ids = [i for i in row if i]
        for i in ids:
            links.find(i)
        for other in ids[1:]:
            links.union(ids[0], other)
    groups = links.groups()
    identities = sum(len(members) for members in groups.values())
    count = max(1, math.ceil(identities / max_ids))
    if count == 1:
        return None
    shards: list[list[str]] = [[] for _ in range(count)]
    for root, members in groups.items():
        shards[zlib.crc32(root.encode()) % count].extend(members)
    return [pa.array(members, pa.string()) for members in shards]


def replay_shards(
    lake: Lake,
    features: FeatureSet,
    as_of: datetime,
    *,
    version: int | None = None,
    batch_rows: int = _BATCH_ROWS,
    max_ids_per_shard: int | None = None,
) -> Iterator[ProfilesAsOf]:
    """The profiles at ``as_of``, shard by shard, so memory holds one shard's states at a time.

    Each shard is a set of whole identity components with at most ``max_ids_per_shard`` ids
    (about; components are not split); ``None`` replays everything as one shard.
    """
    where = "received_at <= $as_of"
    params = {"as_of": as_of}
    with Warehouse(lake, version=version) as warehouse:
        shards = None if max_ids_per_shard is None else _shards(warehouse, as_of, max_ids_per_shard)
        later = _later_copies(warehouse, where, params)
        for only_ids in shards or [None]:
            events = _events(warehouse, where, params, batch_rows, later=later, only_ids=only_ids)
            states, applied = _replay(events, features)
            yield ProfilesAsOf(as_of, warehouse.version, states, applied)


def replay_profiles(
    lake: Lake,
    features: FeatureSet,
    as_of: datetime,
    *,
    version: int | None = None,
    batch_rows: int = _BATCH_ROWS,
) -> ProfilesAsOf:
    """Rebuild every profile from the events accepted by ``as_of`` (the worker's functions)."""
    [profiles] = replay_shards(lake, features, as_of, version=version, batch_rows=batch_rows)
    return profiles


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


def _double(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except OverflowError:
        # an integer trait or value beyond a double (JSON integers have no bound): NULL here
        return None


def _column(values: list[Any]) -> pa.Array:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int} and all(v is None or _INT64_MIN <= v <= _INT64_MAX for v in values):
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array([_double(v) for v in values], pa.float64())
    if kinds <= {bool}:
        return pa.array(values, pa.bool_())
    if kinds <= {str}:
        return pa.array(values, pa.string())
    return pa.array(
        [None if v is None else v if isinstance(v, str) else _encode(v).decode() for v in values],
        pa.string(),
    )


def _table(rows: Iterable[tuple[str, dict[str, Any]]], as_of: datetime) -> pa.Table:
    ids: list[str] = []
    values: dict[str, list[Any]] = {}
    for index, (pid, row) in enumerate(rows):
        ids.append(pid)
        for name, value in row.items():
            column = values.get(name)
            if column is None:
                column = values[name] = [None] * index
            column.append(value)
        for column in values.values():
            if len(column) == index:
                column.append(None)
    columns: dict[str, pa.Array] = {
        "user_id": pa.array(ids, pa.string()),
        "as_of": pa.array([as_of] * len(ids), pa.timestamp("us", tz="UTC")),
    }
    for name in sorted(values):
        columns[name] = _column(values[name])
    return pa.table(columns)


def feature_table(documents: Mapping[str, Mapping[str, Any]], as_of: datetime) -> pa.Table:
    """The feature table of evaluated documents: one row per profile, ``user_id`` first."""
    return _table(((pid, flatten_document(documents[pid])) for pid in sorted(documents)), as_of)


def profiles_table(profiles: ProfilesAsOf, features: FeatureSet) -> pa.Table:
    """The feature table of replayed profiles, evaluated one at a time (no documents kept)."""
    as_of_ms = datetime_ms(profiles.as_of)
    rows = (
        (pid, flatten_document(evaluate_profile(profiles.states[pid], features, as_of_ms)))
        for pid in sorted(profiles.states)
    )
    return _table(rows, profiles.as_of)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Shards' tables as one, sorted by ``user_id``; a column typed apart in two shards
    becomes double (numbers) or text (anything else)."""
    if len(tables) == 1:
        return tables[0]
    kinds: dict[str, set[pa.DataType]] = {}
    for table in tables:
        for f in table.schema:
            kinds.setdefault(f.name, set()).add(f.type)
    targets: dict[str, pa.DataType] = {}
    for name, types in kinds.items():
        if len(types) == 1:
            targets[name] = next(iter(types))
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
            targets[name] = pa.float64()
        else:
            targets[name] = pa.string()
    names = ["user_id", "as_of", *sorted(n for n in kinds if n not in ("user_id", "as_of"))]
    aligned = []
    for table in tables:
        columns = [
            table.column(n).cast(targets[n])
            if n in table.column_names
            else pa.nulls(table.num_rows, targets[n])
            for n in names
        ]
        aligned.append(pa.table(dict(zip(names, columns, strict=True))))
    return pa.concat_tables(aligned).sort_by("user_id")


def features_as_of(
    lake: Lake,
    features: FeatureSet,
    as_of: datetime,
    *,
    version: int | None = None,
    max_ids_per_shard: int | None = DEFAULT_SHARD_IDS,
) -> pa.Table:
    """Every user's feature vector as it was at ``as_of`` (see the module docstring)."""
    tables: list[pa.Table] = []
    for shard in replay_shards(
        lake, features, as_of, version=version, max_ids_per_shard=max_ids_per_shard
    ):
        tables.append(profiles_table(shard, features))
        # let the states go before the next shard is replayed
        shard.states.clear()
    return _concat(tables)


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
        for event in _events(warehouse, window, params, batch_rows):
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
        batch_rows: int = _BATCH_ROWS,
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
        return _concat(tables), owner, version

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
