"""Point-in-time feature tables: every profile replayed as of T, evaluated and flattened into
columns (see ``personify.predict.replay`` for what "as of T" means).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec
import pyarrow as pa

from personify.lake.table import Lake
from personify.predict.replay import (
    DEFAULT_SHARD_IDS,
    ProfilesAsOf,
    replay_shards,
)
from personify.profiles.events import datetime_ms
from personify.profiles.features import (
    FeatureSet,
)
from personify.profiles.state import evaluate_profile

_JSON_SECTIONS = frozenset({"affinities", "last_events"})
_NON_NEGATIVE_BUILT_INS = ("events_total", "recency_days", "sessions__")
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_encode = msgspec.json.Encoder(order="deterministic").encode


@functools.lru_cache(maxsize=65_536)
def _column_name(key: str) -> str:
    return _NOT_NAME.sub("_", key.lower()).strip("_") or "_"


def column_name(key: object) -> str:
    """A feature path segment as a column-name part (``Product Viewed`` -> ``product_viewed``).
    The same few keys recur in every profile: each is cleaned once (a bounded cache)."""
    return _column_name(str(key))


def definitions_digest(features: FeatureSet) -> str:
    """A short hash of the profile config: which definitions a dataset was computed with."""
    return hashlib.sha256(_encode(features.config)).hexdigest()[:16]


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


def concat_tables(tables: list[pa.Table]) -> pa.Table:
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
    return concat_tables(tables)


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
