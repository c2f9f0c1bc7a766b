"""Point-in-time features and training frames, computed from the lake.

One definition, two engines: the stream worker applies each event to a profile with
``personify.profiles.state.apply_event`` and merges profiles with ``merge_states``; this
module replays the lake through exactly those functions (and ``view_event``, which reads an
event for both), then evaluates every profile with ``evaluate_profile`` at T. The feature
definitions are the same ``FeatureSet`` (``PERSONIFY_FEATURES_FILE``).

*As of T* means as known at T: every event the collector had accepted by T
(``received_at <= T``), whatever its event time, deduplicated by source and messageId like
the worker does, and without the membership events Personify writes itself (``Segment
Entered``/``Exited``), which the worker does not apply either. An event that arrived after T never counts, even when it happened before
T, so a training row holds only what a real-time system could have known at T.

Labels come from the window (T, T + horizon] by event time, matched to the profile through
the ids it had at T: ``churn`` is 1 when no qualifying event falls in the window, ``clv`` is
the revenue in it (the same ``revenue``/``total`` reading as the ``revenue`` feature).

Memory: a profile state takes tens of KB as Python objects, so profiles are replayed in
shards of whole identity components (``max_ids_per_shard`` ids, about), one shard at a time.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from personify.errors import ValidationError
from personify.lake.schema import row_to_event
from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.profiles.events import ProfileEvent, view_event
from personify.profiles.features import (
    FeatureSet,
)
from personify.profiles.identity import UnionFind, canonical_id
from personify.profiles.state import ProfileState, apply_event, merge_states
from personify.segments.membership import MEMBERSHIP_SOURCE

BATCH_ROWS = 20_000
# ids replayed at once: bounds memory (a profile state takes tens of KB in Python)
DEFAULT_SHARD_IDS = 50_000

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


def _later_copies(
    warehouse: Warehouse, where: str, params: Mapping[str, Any]
) -> set[tuple[int, str]]:
    rows = warehouse.connection.sql(_LATER_COPIES.format(where=where), params=dict(params))
    return {(int(partition), str(offset)) for partition, offset in rows.fetchall()}


def read_events(
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
                if row["source_id"] == MEMBERSHIP_SOURCE:
                    continue  # Personify's own membership events: the worker skips them too
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


class _Replay:
    """Profiles built up by applying events as the worker does (identity links, merges),
    kept between calls so that a later window's events continue from an earlier one's."""

    def __init__(self, features: FeatureSet) -> None:
        self.features = features
        self.links: UnionFind[str] = UnionFind()
        self.states: dict[str, ProfileState] = {}
        self.applied = 0

    def apply(self, events: Iterable[ProfileEvent]) -> None:
        links, states, features = self.links, self.states, self.features
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
            self.applied += 1

    def profiles(self) -> dict[str, ProfileState]:
        """The states by canonical profile id (the live states: read them before applying
        more events)."""
        return {
            canonical_id(s.user_ids, s.anonymous_ids | s.previous_ids): s
            for s in self.states.values()
        }


def _replay(
    events: Iterable[ProfileEvent], features: FeatureSet
) -> tuple[dict[str, ProfileState], int]:
    replay = _Replay(features)
    replay.apply(events)
    return replay.profiles(), replay.applied


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
    batch_rows: int = BATCH_ROWS,
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
            events = read_events(
                warehouse, where, params, batch_rows, later=later, only_ids=only_ids
            )
            states, applied = _replay(events, features)
            yield ProfilesAsOf(as_of, warehouse.version, states, applied)


def replay_cutoffs(
    lake: Lake,
    features: FeatureSet,
    cutoffs: Iterable[datetime],
    *,
    version: int | None = None,
    batch_rows: int = BATCH_ROWS,
    max_ids_per_shard: int | None = None,
) -> Iterator[ProfilesAsOf]:
    """The profiles at each of ``cutoffs`` (earliest first), shard by shard, from one pass
    over the lake: the events accepted by the first cut-off are applied, the profiles are
    yielded as of it, then the events accepted after it and by the next are applied to the
    same profiles, and so on. Profiles do not depend on the order their events apply in, so
    each equals ``replay_shards`` at that cut-off, for a fraction of the reading.

    The yielded states are live: read (evaluate) them before asking for the next.
    """
    moments = sorted(set(cutoffs))
    if not moments:
        return
    last = moments[-1]
    where = "received_at <= $as_of"
    params = {"as_of": last}
    with Warehouse(lake, version=version) as warehouse:
        # whole identity components as of the last cut-off: an earlier profile lies in one
        shards = None if max_ids_per_shard is None else _shards(warehouse, last, max_ids_per_shard)
        # a copy's first arrival is the one applied, at whichever cut-off it falls before
        later = _later_copies(warehouse, where, params)
        for only_ids in shards or [None]:
            replay = _Replay(features)
            start: datetime | None = None
            for moment in moments:
                window = (
                    "received_at <= $end"
                    if start is None
                    else ("received_at > $start AND received_at <= $end")
                )
                bounds = {"end": moment} if start is None else {"start": start, "end": moment}
                replay.apply(
                    read_events(
                        warehouse, window, bounds, batch_rows, later=later, only_ids=only_ids
                    )
                )
                yield ProfilesAsOf(moment, warehouse.version, replay.profiles(), replay.applied)
                start = moment


def replay_profiles(
    lake: Lake,
    features: FeatureSet,
    as_of: datetime,
    *,
    version: int | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ProfilesAsOf:
    """Rebuild every profile from the events accepted by ``as_of`` (the worker's functions)."""
    [profiles] = replay_shards(lake, features, as_of, version=version, batch_rows=batch_rows)
    return profiles
