"""Serving recommendations from precomputed state: the learned index, the live co-visitation
and popularity counters, and each profile's recent items (``personify.recommend.stage``).

``RecommendationService.recommend`` fills ``limit`` places, in this order, each source
adding items the earlier ones did not give:

1. ``learned``: the user's row of the learned index (``personify.recommend.index``), if the
   last training knew them;
2. ``covisitation``: items viewed or bought together with the user's recent items, scored as
   the offline ``CoVisitation`` scores (history weight times cosine-normalised co-visits,
   the kinds weighted), each with its ``anchor``: the recent item that contributed most
   ("because you viewed X");
3. ``segment_popular``: the items most popular among the members of the user's segments;
4. ``popular``: the items most popular overall.

So an unknown user gets popular items, a user the index has not met yet gets co-visitation
from what they just viewed, and every answer is full once anything was ever popular.
``exclude_seen`` leaves out the user's recent items. Every call is a few indexed reads
(two for a user the index fills), in one connection and no scans: it is on the decision path.
Each anchor's most alike items are kept in the process for ``neighbours_ttl_s`` (30 s): they
move slowly, and reading and normalising them is most of a call's cost.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.profiles.events import datetime_ms
from personify.recommend.covisitation import DEFAULT_KIND_WEIGHTS
from personify.recommend.popularity import DEFAULT_POPULARITY_HALF_LIFE_DAYS
from personify.recommend.stage import EVERYONE, RecentItems, decayed_at, read_recent
from personify.recommend.tables import (
    recommend_item_index,
    recommend_items,
    recommend_pairs,
    recommend_popularity,
    recommend_user_index,
)
from personify.store.database import Database, reachable

__all__ = ["SOURCES", "Recommendation", "RecommendationService"]

SOURCES = ("learned", "covisitation", "segment_popular", "popular")
# the user's heaviest recent items co-visitation starts from
DEFAULT_ANCHORS = 10
# each anchor's most alike items that are scored
DEFAULT_NEIGHBOURS = 50
# how long this process reuses an item's most alike items before reading them again
DEFAULT_NEIGHBOURS_TTL_S = 30.0
# IN lists are cut to this many values (SQLite binds at most 32,766 parameters)
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended item: its score (scales differ by source), which source gave it, and
    the item that led to it (co-visitation: "because you viewed ``anchor``")."""

    item_id: str
    score: float
    source: str
    anchor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The recommendation as JSON."""
        return {
            "itemId": self.item_id,
            "score": self.score,
            "source": self.source,
            "anchor": self.anchor,
        }


class _Filler:
    """The answer as it fills: items in order, none twice, none excluded."""

    def __init__(self, limit: int, excluded: Collection[str]) -> None:
        self.limit = limit
        self.excluded = set(excluded)
        self.chosen: list[Recommendation] = []

    @property
    def missing(self) -> int:
        return self.limit - len(self.chosen)

    def add(self, found: list[Recommendation]) -> None:
        for recommendation in found:
            if self.missing <= 0:
                return
            if recommendation.item_id not in self.excluded:
                self.excluded.add(recommendation.item_id)
                self.chosen.append(recommendation)


def _indexed(text: str) -> list[tuple[str, float]]:
    return [(str(item), float(score)) for item, score in msgspec.json.decode(text)]


class RecommendationService:
    """Recommendations for a profile, and items like an item (module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        kind_weights: Mapping[str, float] = DEFAULT_KIND_WEIGHTS,
        popularity_half_life_days: float = DEFAULT_POPULARITY_HALF_LIFE_DAYS,
        anchors: int = DEFAULT_ANCHORS,
        neighbours: int = DEFAULT_NEIGHBOURS,
        neighbours_ttl_s: float = DEFAULT_NEIGHBOURS_TTL_S,
        max_cached_items: int = 20_000,
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self.kind_weights = dict(kind_weights)
        self.popularity_half_life_days = popularity_half_life_days
        self.anchors = anchors
        self.neighbours = neighbours
        self.neighbours_ttl_s = neighbours_ttl_s
        self.max_cached_items = max_cached_items
        # item -> (monotonic time loaded, its most alike items): the co-visits of an item
        # move slowly, and reading them is most of a recommendation's cost
        self._neighbours: OrderedDict[str, tuple[float, list[tuple[str, float]]]] = OrderedDict()
        self._lock = threading.Lock()

    # -- the profile's items -----------------------------------------------------------------

    def recent(self, profile_id: str) -> RecentItems | None:
        """The profile's recent items, as the worker keeps them (``None``: it has none)."""
        with reachable(), self._db.connect() as conn:
            return read_recent(conn, [profile_id]).get(profile_id)

    def seen_items(self, profile_id: str) -> list[str]:
        """The items the profile interacted with lately, the latest first."""
        recent = self.recent(profile_id)
        return recent.seen() if recent is not None else []

    def bought_items(self, profile_id: str) -> list[str]:
        """The items the profile bought lately, the latest first."""
        recent = self.recent(profile_id)
        return recent.bought() if recent is not None else []

    # -- recommendations ---------------------------------------------------------------------

    def recommend(
        self,
        profile_id: str | None,
        *,
        limit: int,
        exclude_seen: bool,
        segments: Collection[str] = (),
    ) -> list[Recommendation]:
        """Up to ``limit`` items for the profile (``None``: an unknown user), best first, in
        the order of sources of the module docstring. Raises ``BackendUnavailable`` when the
        state database cannot be read."""
        if limit < 1:
            return []
        now_ms = datetime_ms(self._clock.now())
        with reachable(), self._db.connect() as conn:
            recent: RecentItems | None = None
            learned: list[tuple[str, float]] = []
            if profile_id is not None:
                recent = read_recent(conn, [profile_id]).get(profile_id)
                row = conn.execute(
                    sa.select(recommend_user_index.c["items"]).where(
                        recommend_user_index.c.profile_id == profile_id
                    )
                ).scalar()
                if row is not None:
                    learned = _indexed(row)
            seen = set(recent.items) if recent is not None and exclude_seen else set()
            filler = _Filler(limit, seen)
            filler.add([Recommendation(item, score, "learned") for item, score in learned])
            if filler.missing > 0 and recent is not None:
                history = recent.history(now_ms)[: self.anchors]
                filler.add(self._covisited(conn, history, filler.excluded, filler.missing))
            if filler.missing > 0 and segments:
                filler.add(self._popular(conn, sorted(segments), filler, now_ms))
            if filler.missing > 0:
                filler.add(self._popular(conn, [EVERYONE], filler, now_ms))
        return filler.chosen

    def similar(self, item_id: str, *, limit: int) -> list[Recommendation]:
        """Up to ``limit`` items like ``item_id``: the learned index's, then the items most
        co-visited with it, then popular ones (never the item itself). Raises
        ``BackendUnavailable`` when the state database cannot be read."""
        if limit < 1:
            return []
        now_ms = datetime_ms(self._clock.now())
        with reachable(), self._db.connect() as conn:
            filler = _Filler(limit, {item_id})
            row = conn.execute(
                sa.select(recommend_item_index.c["items"]).where(
                    recommend_item_index.c.item_id == item_id
                )
            ).scalar()
            if row is not None:
                filler.add([Recommendation(i, s, "learned", item_id) for i, s in _indexed(row)])
            if filler.missing > 0:
                filler.add(self._covisited(conn, [(item_id, 1.0)], filler.excluded, filler.missing))
            if filler.missing > 0:
                filler.add(self._popular(conn, [EVERYONE], filler, now_ms))
        return filler.chosen

    # -- the sources -------------------------------------------------------------------------

    def _covisited(
        self,
        conn: sa.Connection,
        history: list[tuple[str, float]],
        excluded: Collection[str],
        wanted: int,
    ) -> list[Recommendation]:
        """Items co-visited with ``history`` (item, weight), scored and anchored."""
        weight = {item: w for item, w in history if w > 0}
        if not weight:
            return []
        likeness = self._likeness(conn, list(weight))
        scores: dict[str, float] = {}
        # the anchor is the recent item that contributed most, "because you viewed X"; ties
        # go to the smaller id
        best: dict[str, tuple[float, str]] = {}
        for anchor, alike in likeness.items():
            for other, like in alike:
                if other in excluded:
                    continue
                share = weight[anchor] * like
                scores[other] = scores.get(other, 0.0) + share
                held = best.get(other)
                if held is None or share > held[0] or (share == held[0] and anchor < held[1]):
                    best[other] = (share, anchor)
        top = heapq.nsmallest(wanted, scores.items(), key=lambda pair: (-pair[1], pair[0]))
        return [
            Recommendation(item, float(score), "covisitation", best[item][1]) for item, score in top
        ]

    def _likeness(
        self, conn: sa.Connection, anchors: list[str]
    ) -> dict[str, list[tuple[str, float]]]:
        """Each anchor's ``neighbours`` most alike items: cosine-normalised co-visits, the
        kinds weighted and added, from this process's cache while it is fresh."""
        now = time.monotonic() if self.neighbours_ttl_s > 0 else 0.0
        found: dict[str, list[tuple[str, float]]] = {}
        missing: list[str] = []
        with self._lock:
            for anchor in anchors:
                cached = self._neighbours.get(anchor)
                if cached is not None and now - cached[0] < self.neighbours_ttl_s:
                    found[anchor] = cached[1]
                else:
                    missing.append(anchor)
        if not missing:
            return found
        p = recommend_pairs.c
        pairs = conn.execute(
            sa.select(p.item_id, p.kind, p.other_id, p.score).where(
                p.item_id.in_(missing), p.kind.in_(list(self.kind_weights))
            )
        ).all()
        involved = sorted({*missing, *(row.other_id for row in pairs)})
        c = recommend_items.c
        counts: dict[tuple[str, str], float] = {}
        for start in range(0, len(involved), _CHUNK):
            counts.update(
                ((str(kind), str(item)), float(score))
                for kind, item, score in conn.execute(
                    sa.select(c.kind, c.item_id, c.score).where(
                        c.item_id.in_(involved[start : start + _CHUNK])
                    )
                )
            )
        # the stored scores share one scale, which the normalisation cancels
        alike: dict[str, dict[str, float]] = {anchor: {} for anchor in missing}
        for anchor, kind, other, together in pairs:
            norm = math.sqrt(counts.get((kind, anchor), 0.0) * counts.get((kind, other), 0.0))
            if norm > 0:
                mine = alike[anchor]
                mine[other] = mine.get(other, 0.0) + self.kind_weights[kind] * together / norm
        loaded = {
            anchor: sorted(values.items(), key=lambda pair: (-pair[1], pair[0]))[: self.neighbours]
            for anchor, values in alike.items()
        }
        found.update(loaded)
        if self.neighbours_ttl_s > 0:
            with self._lock:
                for anchor, values in loaded.items():
                    self._neighbours[anchor] = (now, values)
                    self._neighbours.move_to_end(anchor)
                while len(self._neighbours) > self.max_cached_items:
                    self._neighbours.popitem(last=False)
        return found

    def _popular(
        self, conn: sa.Connection, segments: list[str], filler: _Filler, now_ms: int
    ) -> list[Recommendation]:
        """The most popular items among the members of ``segments`` (``[EVERYONE]``: of all)."""
        c = recommend_popularity.c
        wanted = filler.missing + len(filler.excluded)
        if segments == [EVERYONE]:
            query = (
                sa.select(c.item_id, c.score)
                .where(c.segment_key == EVERYONE)
                .order_by(c.score.desc(), c.item_id)
                .limit(wanted)
            )
            source = "popular"
        else:
            total = sa.func.sum(c.score).label("total")
            query = (
                sa.select(c.item_id, total)
                .where(c.segment_key.in_(segments))
                .group_by(c.item_id)
                .order_by(total.desc(), c.item_id)
                .limit(wanted)
            )
            source = "segment_popular"
        half_life = self.popularity_half_life_days
        return [
            Recommendation(str(item), decayed_at(float(score), now_ms, half_life), source)
            for item, score in conn.execute(query)
        ]
