"""The published catalog as the decision engine reads it: compiled once per catalog revision,
held in each process, and invalidated across processes through the ``Cache`` port.

Every process keeps one ``CatalogSnapshot``: every published item's snapshot with its
targeting compiled and its schedule read, grouped by placement, with the running
experiments of each placement. The revision (the catalog's plus the experiments'; both only
grow) is kept in the cache under
``content:revision`` with a short time to live. A change made through the API deletes that
key, so every process sharing the cache (Redis for several API nodes) reads the new
revision on its next decision and reloads; a change made elsewhere (the CLI, another
deployment's process) is seen when the key expires (``ttl_s``). When the state database is
down, the snapshot in hand keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec
import numpy as np
import sqlalchemy as sa

from personify.cache.base import Cache
from personify.content.catalog import catalog_revision, published_items
from personify.content.tables import placements as placements_table
from personify.content.validation import schedule_bounds
from personify.errors import BackendUnavailable
from personify.experiments.model import RunningExperiment
from personify.experiments.repository import experiments_revision, load_running
from personify.segments.conditions import parse_window_ms
from personify.segments.predicates import Predicate, compile_condition
from personify.store.database import Database

__all__ = [
    "REVISION_KEY",
    "Candidate",
    "CatalogCache",
    "CatalogSnapshot",
    "PlacementColumns",
    "PlacementSpec",
    "Variant",
    "load_snapshot",
    "locale_matches",
]

REVISION_KEY: Final = "content:revision"
# what a writer leaves under the key: while it lives, readers read the revision from the
# database and cache nothing (so a revision read before the change is never cached after it)
INVALIDATED: Final = b"\x00invalidated"
_INVALIDATION_TTL_S: Final = 2.0

_decode = msgspec.json.decode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


@dataclass(frozen=True, slots=True)
class Variant:
    """A variant of an item: its key, the fields that differ, and its relative weight."""

    key: str
    fields: Mapping[str, Any]
    weight: float


@dataclass(frozen=True, slots=True)
class Candidate:
    """A published item as the engine judges it."""

    id: str
    version: int
    type: str
    fields: Mapping[str, Any]
    tags: tuple[str, ...]
    placements: tuple[str, ...]
    variants: tuple[Variant, ...]
    priority: int
    start: datetime | None
    end: datetime | None
    locale: str | None
    segments: tuple[str, ...]
    condition: Predicate | None
    # (at most this many exposures, within this many milliseconds), or None
    frequency_cap: tuple[int, int] | None
    # ``fields.category`` when it is text (diversity), and the tags with it (affinity)
    category: str | None = None
    values: frozenset[str] = frozenset()
    # the priority order's sort key: highest priority first, ties by id
    order: tuple[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", (-self.priority, self.id))

    def content(self, variant: Variant | None) -> dict[str, Any]:
        """The item's fields, with the variant's where it has its own."""
        if variant is None:
            return dict(self.fields)
        return {**self.fields, **variant.fields}


@dataclass(frozen=True, slots=True)
class PlacementSpec:
    """A placement as the engine fills it."""

    id: str
    default_item: str | None
    strategy: str
    params: Mapping[str, Any]
    limit: int


# the locales a placement's columns keep the unsuited candidates of
_LOCALES_KEPT: Final = 64
_NEVER = np.iinfo(np.int64).max
_ALWAYS = np.iinfo(np.int64).min


@functools.lru_cache(maxsize=4096)
def locale_matches(wanted: str | None, item_locale: str | None) -> bool:
    """Whether an item in ``item_locale`` suits a request in ``wanted``: an item without a
    locale suits everyone; ``en`` suits ``en-GB``; ``en-GB`` suits ``en-GB`` only."""
    if item_locale is None:
        return True
    if not wanted:
        return False
    wanted_parts = wanted.replace("_", "-").lower().split("-")
    item_parts = item_locale.lower().split("-")
    return wanted_parts[: len(item_parts)] == item_parts


class PlacementColumns:
    """A placement's candidates as columns, built once per catalog revision, so that a
    decision judges them with a few vectorised passes (``personify.decide.engine``):
    schedule bounds in epoch ms, locale groups, segment targeting as one index array per
    segment, and the positions of the candidates that need a per-item look (a condition, a
    cap, a product that may have been bought)."""

    __slots__ = (
        "_unsuited",
        "by_locale",
        "by_segment",
        "candidates",
        "capped",
        "condition_group",
        "conditional",
        "conditions",
        "end_ms",
        "ids",
        "index_of",
        "products",
        "start_ms",
        "targeted",
    )

    def __init__(self, candidates: tuple[Candidate, ...]) -> None:
        self.candidates = candidates
        count = len(candidates)
        self.index_of = {c.id: i for i, c in enumerate(candidates)}
        self.start_ms = np.array(
            [_ALWAYS if c.start is None else int(c.start.timestamp() * 1000) for c in candidates],
            dtype=np.int64,
        )
        self.end_ms = np.array(
            [_NEVER if c.end is None else int(c.end.timestamp() * 1000) for c in candidates],
            dtype=np.int64,
        )
        locales: dict[str | None, list[int]] = {}
        segments: dict[str, list[int]] = {}
        for index, candidate in enumerate(candidates):
            locales.setdefault(candidate.locale, []).append(index)
            for key in candidate.segments:
                segments.setdefault(key, []).append(index)
        self.by_locale = {key: np.array(found, dtype=np.int64) for key, found in locales.items()}
        self.by_segment = {key: np.array(found, dtype=np.int64) for key, found in segments.items()}
        self.targeted = np.fromiter((bool(c.segments) for c in candidates), bool, count)
        # each distinct condition once (items with equal conditions share a Predicate), and
        # each candidate's index into them (-1: none)
        groups: dict[Predicate, int] = {}
        for candidate in candidates:
            if candidate.condition is not None:
                groups.setdefault(candidate.condition, len(groups))
        self.conditions = tuple(groups)
        self.condition_group = np.fromiter(
            (-1 if c.condition is None else groups[c.condition] for c in candidates),
            np.int64,
            count,
        )
        self.conditional = self.condition_group >= 0
        self.ids = [c.id for c in candidates]
        self.capped = [i for i, c in enumerate(candidates) if c.frequency_cap is not None]
        self.products = {c.id: i for i, c in enumerate(candidates) if c.type == "product"}
        self._unsuited: dict[str | None, np.ndarray | None] = {}

    def unsuited(self, locale: str | None) -> np.ndarray | None:
        """The positions of the candidates whose locale does not suit a request in
        ``locale`` (``None``: every candidate suits it), kept per locale asked for."""
        if locale in self._unsuited:
            return self._unsuited[locale]
        positions = [
            indexes
            for item_locale, indexes in self.by_locale.items()
            if not locale_matches(locale, item_locale)
        ]
        mask = np.concatenate(positions) if positions else None
        if len(self._unsuited) >= _LOCALES_KEPT:
            # a request's locale is any text: keep a bounded few
            self._unsuited.clear()
        self._unsuited[locale] = mask
        return mask


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """The published catalog at one revision."""

    revision: int
    items: Mapping[str, Candidate]
    placements: Mapping[str, PlacementSpec]
    by_placement: Mapping[str, tuple[Candidate, ...]]
    columns: Mapping[str, PlacementColumns] = field(default_factory=dict)
    # the items whose frequency is capped: id -> window (ms)
    caps: Mapping[str, int] = field(default_factory=dict)
    # the running experiments of each placement they vary
    experiments: Mapping[str, tuple[RunningExperiment, ...]] = field(default_factory=dict)


def _candidate(
    item_id: str,
    version: int,
    document: Mapping[str, Any],
    compiled: dict[bytes, Predicate] | None = None,
) -> Candidate:
    """An item as the engine judges it. Items whose conditions are equal share one
    ``Predicate`` through ``compiled`` (by the condition's canonical JSON), so a decision
    evaluates each distinct condition once (``PlacementColumns.condition_group``)."""
    targeting = document.get("targeting") or {}
    condition = targeting.get("condition")
    predicate: Predicate | None = None
    if condition is not None:
        # checked when saved; compiled without the segment list (a segment archived since
        # then is a membership nobody holds)
        canonical = _encode_sorted(condition)
        predicate = compiled.get(canonical) if compiled is not None else None
        if predicate is None:
            predicate = compile_condition(condition)
            if compiled is not None:
                compiled[canonical] = predicate
    start, end = schedule_bounds(document.get("schedule"))
    cap = document.get("frequencyCap")
    window_ms = parse_window_ms(cap.get("window", "1d")) if cap else None
    tags = tuple(document.get("tags") or ())
    found = (document.get("fields") or {}).get("category")
    category = found if isinstance(found, str) else None
    return Candidate(
        id=item_id,
        version=version,
        type=document["type"],
        fields=document.get("fields") or {},
        tags=tags,
        placements=tuple(document.get("placements") or ()),
        variants=tuple(
            Variant(v["key"], v.get("fields") or {}, float(v.get("weight", 1)))
            for v in document.get("variants") or ()
        ),
        priority=int(document.get("priority") or 0),
        start=start,
        end=end,
        locale=document.get("locale"),
        segments=tuple(targeting.get("segments") or ()),
        condition=predicate,
        frequency_cap=(int(cap["max"]), window_ms) if cap and window_ms else None,
        category=category,
        values=frozenset((*tags, category) if category is not None else tags),
    )


def load_snapshot(db: Database) -> CatalogSnapshot:
    """The published catalog now, compiled (one read transaction)."""
    with db.connect() as conn:
        revision = _revision(conn)
        published = published_items(conn)
        running = load_running(conn)
        rows = conn.execute(
            sa.select(placements_table.c.id, placements_table.c.document).where(
                placements_table.c.status == "active"
            )
        ).all()
    compiled: dict[bytes, Predicate] = {}
    items = {
        item.id: _candidate(item.id, item.version, item.document, compiled) for item in published
    }
    specs: dict[str, PlacementSpec] = {}
    for placement_id, text in rows:
        document = _decode(text)
        strategy = document.get("strategy") or {}
        specs[str(placement_id)] = PlacementSpec(
            id=str(placement_id),
            default_item=document.get("defaultItem"),
            strategy=strategy.get("name", "priority"),
            params=strategy.get("params") or {},
            limit=int(document.get("limit") or 1),
        )
    by_placement: dict[str, list[Candidate]] = {placement: [] for placement in specs}
    for candidate in items.values():
        for placement in candidate.placements:
            if placement in by_placement:
                by_placement[placement].append(candidate)
    grouped = {key: tuple(found) for key, found in by_placement.items()}
    return CatalogSnapshot(
        revision=revision,
        items=items,
        placements=specs,
        by_placement=grouped,
        columns={key: PlacementColumns(found) for key, found in grouped.items()},
        caps={c.id: c.frequency_cap[1] for c in items.values() if c.frequency_cap is not None},
        experiments=_by_placement(running),
    )


def _revision(conn: sa.Connection) -> int:
    # both numbers only grow, so their sum changes whenever either does
    return catalog_revision(conn) + experiments_revision(conn)


def _by_placement(running: list[RunningExperiment]) -> dict[str, tuple[RunningExperiment, ...]]:
    found: dict[str, list[RunningExperiment]] = {}
    for experiment in sorted(running, key=lambda e: e.key):
        for placement in experiment.placements:
            found.setdefault(placement, []).append(experiment)
    return {placement: tuple(listed) for placement, listed in found.items()}


class CatalogCache:
    """The snapshot of this process, reloaded when the catalog's revision moves."""

    def __init__(self, db: Database, cache: Cache, *, ttl_s: float = 5.0) -> None:
        self._db = db
        self._cache = cache
        self._ttl_s = ttl_s
        self._snapshot: CatalogSnapshot | None = None
        self._lock = asyncio.Lock()
        self.reloads = 0

    async def current(self) -> CatalogSnapshot:
        """The snapshot at the newest revision. Raises ``BackendUnavailable`` only when no
        snapshot was ever loaded and the state database cannot be read."""
        try:
            revision = await self._revision()
        except BackendUnavailable:
            if self._snapshot is not None:
                return self._snapshot
            raise
        snapshot = self._snapshot
        if snapshot is not None and snapshot.revision == revision:
            return snapshot
        async with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.revision == revision:
                return snapshot
            try:
                loaded = await asyncio.to_thread(load_snapshot, self._db)
            except BackendUnavailable:
                if snapshot is not None:
                    return snapshot
                raise
            self._snapshot = loaded
            self.reloads += 1
            return loaded

    async def invalidate(self) -> None:
        """Tell every process sharing the cache that the catalog changed (after the change
        committed). A cache that is down is ignored: the revision's time to live bounds how
        long other processes serve the old catalog."""
        with contextlib.suppress(BackendUnavailable):
            await self._cache.set(REVISION_KEY, INVALIDATED, ttl_s=_INVALIDATION_TTL_S)
        # this process reloads at once, whatever the cache says
        self._snapshot = None if self._snapshot is None else _stale(self._snapshot)

    async def _revision(self) -> int:
        try:
            cached = await self._cache.get(REVISION_KEY)
        except BackendUnavailable:
            # the cache is an accelerator: without it, every decision reads the revision
            return await asyncio.to_thread(self._read_revision)
        if cached is not None and cached != INVALIDATED:
            return int(cached)
        revision = await asyncio.to_thread(self._read_revision)
        if cached is None:
            with contextlib.suppress(BackendUnavailable):
                await self._cache.add(REVISION_KEY, str(revision).encode(), ttl_s=self._ttl_s)
        return revision

    def _read_revision(self) -> int:
        with self._db.connect() as conn:
            return _revision(conn)


def _stale(snapshot: CatalogSnapshot) -> CatalogSnapshot:
    """The same snapshot under a revision no catalog has: the next read reloads, and until
    then (the database down) it still serves."""
    return CatalogSnapshot(
        -1,
        snapshot.items,
        snapshot.placements,
        snapshot.by_placement,
        snapshot.columns,
        snapshot.caps,
        snapshot.experiments,
    )
