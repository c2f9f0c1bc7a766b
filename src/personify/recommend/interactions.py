"""User-item interactions read from the lake: who touched which product, how, when, how much.

An interaction is one (user, item, event name, event time, arrival time, weight). It comes
from a track event of the e-commerce spec whose name has a weight (``DEFAULT_WEIGHTS``, or
the caller's): the item is ``properties.product_id`` (else ``properties.sku``); an event
without one contributes each entry of ``properties.products[]`` instead (an order's lines),
each product once per event.

Events are read as the worker applies them: each (source, messageId) once, its first arrival
winning; Personify's own membership events left out. Users are profile ids, resolved the way
the profiles resolve them (``personify.profiles.identity``): every id that appeared on one
event with another (``userId``, ``anonymousId``, an alias's ``previousId``) in the events
read belongs to one profile, named by its smallest ``userId`` (else its smallest other id).

Splits are by *arrival* (``received_at``): "known at T" means received by T, whatever the
event time says, like the training frames of ``personify.predict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from personify.errors import ValidationError
from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.profiles.events import datetime_ms
from personify.profiles.identity import UnionFind, canonical_id
from personify.segments.membership import MEMBERSHIP_SOURCE

# view < add to cart < purchase: a purchase says most about a taste, a view least
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "Product Viewed": 1.0,
    "Product Added": 3.0,
    "Order Completed": 5.0,
}
# an event name asked for (``--event``) without a weight of its own counts like a view
UNWEIGHTED = 1.0
MS_PER_DAY = 86_400_000

_ITEM = "coalesce(json_extract_string({0}, '$.product_id'), json_extract_string({0}, '$.sku'))"
_INTERACTIONS = f"""
WITH scoped AS (
    SELECT source_id, message_id, event, user_id, anonymous_id, timestamp, received_at,
        properties, {_ITEM.format("properties")} AS item_id
    FROM events_raw
    WHERE type = 'track' AND list_contains($events, event) AND {{where}}
        AND source_id IS DISTINCT FROM $membership
    QUALIFY row_number() OVER (
        PARTITION BY source_id, message_id
        ORDER BY received_at, log_partition, TRY_CAST(log_offset AS BIGINT), log_offset
    ) = 1
),
listed AS (
    SELECT source_id, message_id, event, user_id, anonymous_id, timestamp, received_at,
        {_ITEM.format("line")} AS item_id
    FROM (
        SELECT *, unnest(json_extract(properties, '$.products[*]')) AS line
        FROM scoped
        WHERE item_id IS NULL AND json_type(properties, '$.products') = 'ARRAY'
    )
)
SELECT DISTINCT source_id, message_id, coalesce(user_id, anonymous_id) AS actor, event,
    epoch_ms(timestamp) AS at_ms, epoch_ms(received_at) AS received_ms, item_id
FROM (
    SELECT source_id, message_id, event, user_id, anonymous_id, timestamp, received_at, item_id
    FROM scoped WHERE item_id IS NOT NULL
    UNION ALL
    SELECT * FROM listed WHERE item_id IS NOT NULL
)
WHERE coalesce(user_id, anonymous_id) IS NOT NULL
ORDER BY actor, at_ms, received_ms, event, item_id
"""
_IDS = """
SELECT DISTINCT user_id, anonymous_id, previous_id FROM events_raw WHERE {where}
"""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Interactions:
    """Interactions as columns: ``users[n]`` touched ``items[n]`` by ``events[n]`` at
    ``at_ms[n]`` (event time), known from ``received_ms[n]``, with ``weights[n]``.

    ``users``, ``items`` and ``events`` are codes into ``user_ids``, ``item_ids`` and
    ``event_names``; every user and item coded is present in at least one row (``select``
    recodes), so a model's vocabulary is what it was fitted on.
    """

    users: IntArray
    items: IntArray
    events: IntArray
    at_ms: IntArray
    received_ms: IntArray
    weights: FloatArray
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    event_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def user_count(self) -> int:
        """How many distinct users."""
        return len(self.user_ids)

    @property
    def item_count(self) -> int:
        """How many distinct items."""
        return len(self.item_ids)

    def select(self, mask: npt.NDArray[np.bool_]) -> Interactions:
        """The rows where ``mask`` holds, with users, items and events recoded to those left."""
        users, user_codes = np.unique(self.users[mask], return_inverse=True)
        items, item_codes = np.unique(self.items[mask], return_inverse=True)
        events, event_codes = np.unique(self.events[mask], return_inverse=True)
        return Interactions(
            users=user_codes.astype(np.int64),
            items=item_codes.astype(np.int64),
            events=event_codes.astype(np.int64),
            at_ms=self.at_ms[mask],
            received_ms=self.received_ms[mask],
            weights=self.weights[mask],
            user_ids=tuple(self.user_ids[i] for i in users),
            item_ids=tuple(self.item_ids[i] for i in items),
            event_names=tuple(self.event_names[i] for i in events),
        )

    def received_by(self, moment_ms: int) -> Interactions:
        """What was known at ``moment_ms``: the interactions received at or before it."""
        return self.select(self.received_ms <= moment_ms)

    def received_after(self, moment_ms: int) -> Interactions:
        """The interactions received after ``moment_ms``."""
        return self.select(self.received_ms > moment_ms)

    def with_events(self, names: Sequence[str]) -> Interactions:
        """Only the interactions of the events named."""
        named = set(names)
        wanted = [code for code, name in enumerate(self.event_names) if name in named]
        return self.select(np.isin(self.events, wanted))

    def latest_ms(self) -> int:
        """The last arrival: the moment these interactions are known as of (0 when empty)."""
        return int(self.received_ms.max()) if len(self) else 0

    def decayed_weights(self, as_of_ms: int, half_life_days: float | None) -> FloatArray:
        """Each row's weight, halved for every ``half_life_days`` its event is older than
        ``as_of_ms`` (``None``: no decay; events dated after ``as_of_ms`` are not boosted)."""
        if half_life_days is None:
            return self.weights.copy()
        return self.weights * decay(as_of_ms - self.at_ms, half_life_days)

    def matrix(self, values: FloatArray | None = None) -> sp.csr_matrix:
        """The users x items matrix of ``values`` (the weights by default), summed per cell."""
        data = self.weights if values is None else values
        shape = (self.user_count, self.item_count)
        matrix = sp.csr_matrix((data, (self.users, self.items)), shape=shape, dtype=np.float64)
        matrix.sum_duplicates()
        return matrix

    def user_items(self) -> dict[str, set[str]]:
        """Every user's distinct items."""
        seen: dict[str, set[str]] = {}
        for user, item in set(zip(self.users.tolist(), self.items.tolist(), strict=True)):
            seen.setdefault(self.user_ids[user], set()).add(self.item_ids[item])
        return seen


def decay(age_ms: IntArray | FloatArray, half_life_days: float) -> FloatArray:
    """``2 ** (-age / half_life)``: 1 for an event at (or after) the reference time, 1/2 one
    half-life before it."""
    if half_life_days <= 0:
        raise ValidationError("a half-life must be positive", code="invalid_half_life")
    age_days = np.maximum(np.asarray(age_ms, dtype=np.float64), 0.0) / MS_PER_DAY
    result: FloatArray = np.exp2(-age_days / half_life_days)
    return result


def empty_interactions() -> Interactions:
    """No interactions at all."""
    none = np.zeros(0, dtype=np.int64)
    return Interactions(none, none, none, none, none, np.zeros(0), (), (), ())


def _owners(rows: list[tuple[Any, ...]]) -> dict[str, str]:
    """Every id -> its profile id: ids on one event are linked, the profile named by
    ``canonical_id`` of its linked ids."""
    links: UnionFind[str] = UnionFind()
    user_ids: set[str] = set()
    for user_id, anonymous_id, previous_id in rows:
        ids = [i for i in (user_id, anonymous_id, previous_id) if i]
        for i in ids:
            links.find(i)
        for other in ids[1:]:
            links.union(ids[0], other)
        if user_id:
            user_ids.add(user_id)
    owner: dict[str, str] = {}
    for members in links.groups().values():
        profile = canonical_id(
            (m for m in members if m in user_ids), (m for m in members if m not in user_ids)
        )
        owner.update((m, profile) for m in members)
    return owner


def read_interactions(
    lake: Lake,
    *,
    until: datetime | None = None,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    events: Sequence[str] | None = None,
    version: int | None = None,
) -> tuple[Interactions, int | None]:
    """The interactions received by ``until`` (all when None) of the ``events`` named (the
    weighted ones when None), and the lake version read.

    Identities are resolved over every event received by ``until``. Raises
    ``ValidationError`` for a negative or non-finite weight.
    """
    names = sorted(set(events) if events else set(weights))
    for name, weight in weights.items():
        if not np.isfinite(weight) or weight < 0:
            raise ValidationError(
                f"the weight of {name!r} must be a finite number >= 0, not {weight}",
                code="invalid_weight",
            )
    where, params = "true", {}
    if until is not None:
        where, params = "received_at <= $until", {"until": until}
    with Warehouse(lake, version=version) as warehouse:
        conn = warehouse.connection
        found = conn.sql(
            _INTERACTIONS.format(where=where),
            params={**params, "events": names, "membership": MEMBERSHIP_SOURCE},
        ).to_arrow_table()
        owner = _owners(conn.sql(_IDS.format(where=where), params=params).fetchall())
        read_version = warehouse.version
    if found.num_rows == 0:
        return empty_interactions(), read_version
    actors = found.column("actor").combine_chunks().dictionary_encode()
    profiles = [owner.get(a, a) for a in actors.dictionary.to_pylist()]
    profile_ids, profile_of_actor = np.unique(np.array(profiles, dtype=object), return_inverse=True)
    users = profile_of_actor[_codes(actors)]
    item_ids, items = _factorize(found.column("item_id"))
    event_names, event_codes = _factorize(found.column("event"))
    event_weights = np.array([weights.get(n, UNWEIGHTED) for n in event_names], dtype=np.float64)
    return (
        Interactions(
            users=users.astype(np.int64),
            items=items,
            events=event_codes,
            at_ms=found.column("at_ms").to_numpy().astype(np.int64),
            received_ms=found.column("received_ms").to_numpy().astype(np.int64),
            weights=event_weights[event_codes],
            user_ids=tuple(str(p) for p in profile_ids),
            item_ids=item_ids,
            event_names=event_names,
        ),
        read_version,
    )


def _codes(encoded: pa.DictionaryArray) -> IntArray:
    codes: IntArray = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes


def _factorize(column: pa.ChunkedArray) -> tuple[tuple[str, ...], IntArray]:
    """Sorted distinct values and each row's code into them."""
    values, codes = np.unique(
        np.array(column.to_pylist(), dtype=object).astype(str), return_inverse=True
    )
    return tuple(str(v) for v in values), codes.astype(np.int64)


def moment_ms(moment: datetime) -> int:
    """``moment`` in epoch milliseconds (as the lake's ``epoch_ms`` reads it)."""
    return datetime_ms(moment)
