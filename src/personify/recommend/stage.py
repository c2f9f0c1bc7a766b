"""Live recommendation counters: the worker's batch stage that keeps co-visitation, popularity
and each profile's recent items, in the transaction that stores the batch's profiles.

The arithmetic is the offline recommenders' (``personify.recommend.covisitation``,
``personify.recommend.popularity``), so that what the worker keeps equals what they compute
over the same events (``tests/recommend/test_stage.py`` checks it):

* **Interactions.** A ``track`` event whose name has a weight (``DEFAULT_WEIGHTS``) touches
  ``properties.product_id`` (else ``properties.sku``), or else each line of
  ``properties.products[]``, each product once per event.
* **Co-visitation.** Per kind (``viewed``, ``bought``), each profile's last ``max_previous``
  interactions are remembered; a new one is paired with each remembered one within the
  kind's window that is another item. A pair adds to ``pairs[a, b]`` and ``pairs[b, a]``, an
  interaction to ``items[a]``, each decayed from its (later) event time with the co-visit
  half-life.
* **Popularity.** Each interaction adds its weight, decayed with the popularity half-life, to
  its item's popularity overall (segment ``""``) and in every segment the profile is in (its
  open memberships, as the segment stage, which runs first, left them: handed over in
  ``ProfileBatch.memberships``, read from the table when no segment stage ran).
* **Recent items.** Each profile's last ``MAX_RECENT_ITEMS`` items, with when it last touched
  each, its decayed weight of each (the history co-visitation scores with) and whether it
  bought it (older bought items are kept too, up to ``MAX_RECENT_ITEMS`` bought in all): what "because you viewed
  X" anchors on, what ``exclude=seen`` leaves out, and decide's "already bought" rule.

**Decay without rewriting.** A count decayed to a moment is stored as a sum of
``2 ** ((t - DECAY_EPOCH_MS) / half_life)`` over its events, so an increment never touches
older rows, rows add (``score + excluded.score``: one upsert per table per batch, atomic on
both databases) and compare like their decayed values at any moment. ``decayed_at`` brings a
stored score to a moment. (With the 14-day popularity half-life the stored numbers stay within
float64 until 2059.)

Event times after the moment the batch is applied are counted at that moment (never
boosted), as the offline counts do. A profile whose consent withdraws personalization counts
nowhere, and its recent items are forgotten. Merged profiles' memories are joined (by event
time) into the profile they became.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.profiles.batch import ProfileBatch, StagedProfile, codes_of
from personify.profiles.counters import CounterSpec
from personify.profiles.document import personalization_allowed
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.recommend.covisitation import (
    DEFAULT_COVISIT_HALF_LIFE_DAYS,
    DEFAULT_HISTORY_HALF_LIFE_DAYS,
    DEFAULT_KINDS,
    DEFAULT_MAX_PREVIOUS,
    DEFAULT_WINDOW_HOURS,
)
from personify.recommend.interactions import (
    DEFAULT_WEIGHTS,
    MS_PER_DAY,
    UNWEIGHTED,
    FloatArray,
    IntArray,
)
from personify.recommend.popularity import DEFAULT_POPULARITY_HALF_LIFE_DAYS
from personify.recommend.tables import (
    recommend_items,
    recommend_pairs,
    recommend_popularity,
    recommend_profiles,
)
from personify.segments.tables import segment_members
from personify.store.database import copy_rows
from personify.store.statements import dialect_insert

__all__ = [
    "DECAY_EPOCH_MS",
    "EVERYONE",
    "MAX_RECENT_ITEMS",
    "RecentItems",
    "RecommendationStage",
    "decayed_at",
    "event_items",
    "read_recent",
]

# the reference of every stored decayed count: 2020-01-01T00:00:00Z
DECAY_EPOCH_MS = 1_577_836_800_000
# the popularity "segment" of every user
EVERYONE = ""
# how many items each profile's recent items keep (and how many bought ones in all)
MAX_RECENT_ITEMS = 50
# the item columns hold this many characters (longer ids are not counted)
MAX_ITEM_CHARS = 200
_MS_PER_HOUR = 3_600_000
# IN lists are cut to this many values (SQLite binds at most 32,766 parameters)
_CHUNK = 500


def epoch_scores(ts_ms: IntArray, half_life_days: float, now_ms: int) -> FloatArray:
    """``2 ** ((t - DECAY_EPOCH_MS) / half_life)``: what an event at ``t`` adds to a stored
    decayed count (an event after ``now_ms`` adds what one at ``now_ms`` does)."""
    at = np.minimum(np.asarray(ts_ms, dtype=np.float64), float(now_ms))
    scores: FloatArray = np.exp2((at - DECAY_EPOCH_MS) / MS_PER_DAY / half_life_days)
    return scores


def decayed_at(score: float, moment_ms: int, half_life_days: float) -> float:
    """A stored score as the count it is at ``moment_ms`` (each event halved per half-life
    of its age)."""
    return float(score * np.exp2(-(moment_ms - DECAY_EPOCH_MS) / MS_PER_DAY / half_life_days))


def _item_text(value: Any) -> str | None:
    """An id as the lake's ``json_extract_string`` reads it; ``None`` for none or unusable."""
    if type(value) is str:
        text = value
    elif type(value) is bool:
        text = "true" if value else "false"
    elif type(value) in (int, float):
        text = str(value)
    else:
        return None
    if not text or len(text) > MAX_ITEM_CHARS or "\x00" in text:
        return None
    return text


def event_items(data: Mapping[str, Any]) -> list[str]:
    """The products an e-commerce event touches: ``properties.product_id`` (else ``sku``),
    or else each line of ``properties.products[]`` (each product once, sorted)."""
    properties = data.get("properties")
    # decoded JSON holds dicts: the exact type test spares the ABC check almost always
    if type(properties) is not dict and not isinstance(properties, Mapping):
        return []
    found = _item_text(properties.get("product_id"))
    if found is None:
        found = _item_text(properties.get("sku"))
    if found is not None:
        return [found]
    lines = properties.get("products")
    if not isinstance(lines, list):
        return []
    items: set[str] = set()
    for line in lines:
        if type(line) is dict or isinstance(line, Mapping):
            item = _item_text(line.get("product_id"))
            if item is None:
                item = _item_text(line.get("sku"))
            if item is not None:
                items.add(item)
    return sorted(items)


@dataclass(slots=True)
class RecentItems:
    """One profile's co-visitation memory (per kind: ``[item, event ms]``, oldest first) and
    recent items (item -> ``[last ms, stored history score, bought]``)."""

    memory: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    items: dict[str, tuple[int, float, bool]] = field(default_factory=dict)

    def seen(self) -> list[str]:
        """Every recent item, the latest first."""
        return [i for i, _ in sorted(self.items.items(), key=lambda kv: (-kv[1][0], kv[0]))]

    def bought(self) -> list[str]:
        """The recent items it bought, the latest first."""
        return [
            i
            for i, (_, _, bought) in sorted(self.items.items(), key=lambda kv: (-kv[1][0], kv[0]))
            if bought
        ]

    def history(self, moment_ms: int) -> list[tuple[str, float]]:
        """Each recent item with its weight at ``moment_ms`` (decayed), the heaviest first."""
        weights = [
            (item, decayed_at(score, moment_ms, DEFAULT_HISTORY_HALF_LIFE_DAYS))
            for item, (_, score, _) in self.items.items()
        ]
        return sorted(weights, key=lambda pair: (-pair[1], pair[0]))

    def join(self, other: RecentItems) -> None:
        """Take in a merged profile's memory and items."""
        for kind, entries in other.memory.items():
            joined = self.memory.get(kind, []) + entries
            # arrival order across two profiles is unknown: event time decides
            self.memory[kind] = sorted(joined, key=lambda entry: entry[1])[-DEFAULT_MAX_PREVIOUS:]
        for item, (last, score, bought) in other.items.items():
            mine = self.items.get(item)
            if mine is None:
                self.items[item] = (last, score, bought)
            else:
                self.items[item] = (max(mine[0], last), mine[1] + score, mine[2] or bought)

    def bounded(self) -> None:
        """Keep the ``MAX_RECENT_ITEMS`` latest items, and older bought ones while fewer than
        ``MAX_RECENT_ITEMS`` bought items are kept."""
        ordered = sorted(self.items.items(), key=lambda kv: (-kv[1][0], kv[0]))
        kept: dict[str, tuple[int, float, bool]] = {}
        bought = 0
        for rank, (item, value) in enumerate(ordered):
            if rank < MAX_RECENT_ITEMS or (value[2] and bought < MAX_RECENT_ITEMS):
                kept[item] = value
            bought += value[2]
        self.items = kept

    def encode(self) -> bytes:
        """The stored JSON document."""
        return msgspec.json.encode(
            {
                "memory": {k: [[i, t] for i, t in v] for k, v in sorted(self.memory.items())},
                "items": [[i, t, s, b] for i, (t, s, b) in sorted(self.items.items())],
            }
        )

    @classmethod
    def decode(cls, text: str | bytes) -> RecentItems:
        """A stored document read back."""
        raw = msgspec.json.decode(text)
        return cls(
            memory={
                str(k): [(str(i), int(t)) for i, t in v] for k, v in raw.get("memory", {}).items()
            },
            items={str(i): (int(t), float(s), bool(b)) for i, t, s, b in raw.get("items", [])},
        )


# built once: decisions and recommendations read one profile's at a time
_RECENT: Final = sa.select(recommend_profiles.c.profile_id, recommend_profiles.c.document).where(
    recommend_profiles.c.profile_id.in_(sa.bindparam("ids", expanding=True))
)


def read_recent(conn: sa.Connection, profile_ids: Sequence[str]) -> dict[str, RecentItems]:
    """The stored recent items of ``profile_ids`` (those that have any)."""
    found: dict[str, RecentItems] = {}
    for start in range(0, len(profile_ids), _CHUNK):
        chunk = list(profile_ids[start : start + _CHUNK])
        for profile_id, document in conn.execute(_RECENT, {"ids": chunk}):
            found[str(profile_id)] = RecentItems.decode(document)
    return found


class _Additions:
    """Rows to add to a scores table, as columns: each key column's words and each row's
    code among them, and the scores. Rows are built from numpy arrays, never one Python
    object per pair before the driver needs one."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self.words: list[list[str]] = [[] for _ in keys]
        self._codes: list[list[IntArray]] = [[] for _ in keys]
        self._scores: list[FloatArray] = []

    def add(self, scores: FloatArray, *columns: tuple[Sequence[str], IntArray]) -> None:
        """Rows whose keys are the words ``codes`` name in each column (no key twice in a
        table's additions)."""
        if not scores.size:
            return
        for words, codes, (chunk_words, chunk_codes) in zip(
            self.words, self._codes, columns, strict=True
        ):
            codes.append(chunk_codes + len(words))
            words.extend(chunk_words)
        self._scores.append(scores)

    def __bool__(self) -> bool:
        return bool(self._scores)

    def codes(self) -> list[IntArray]:
        """Each key column's codes, every row."""
        return [np.concatenate(chunks) for chunks in self._codes]

    def scores(self) -> FloatArray:
        """Every row's score."""
        return np.concatenate(self._scores)


def _same(word: str, rows: int) -> tuple[list[str], IntArray]:
    """A key column holding ``word`` on each of ``rows`` rows."""
    return [word], np.zeros(rows, dtype=np.int64)


def add_scores(conn: sa.Connection, table: sa.Table, additions: _Additions) -> None:
    """Add each row's score to the stored one of its key (a new key starts at it): one
    statement for the batch.

    A batch adds hundreds of thousands of pairs. On SQLite, rows go through the driver's
    ``executemany`` as tuples (SQLAlchemy's per-row parameter handling would cost more than
    the database). On PostgreSQL, the codes and scores are copied (``COPY``, through
    psycopg's ``write_row``) into a temporary table and added with one ``INSERT … SELECT``
    that looks the words up, at a fraction of an ``executemany``'s CPU. They go in key
    order, so concurrent workers lock the rows they share in one order and never deadlock
    on them."""
    if not additions:
        return
    keys = additions.keys
    columns = ", ".join([*keys, "score"])
    conflict = (
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET score = {table.name}.score + excluded.score"
    )
    if conn.dialect.name == "postgresql":
        _add_copied(conn, table, additions, columns, conflict)
        return
    texts = [
        _texts(words, codes)
        for words, codes in zip(additions.words, additions.codes(), strict=True)
    ]
    rows = list(zip(*texts, additions.scores().tolist(), strict=True))
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    values = ", ".join([marker] * (len(keys) + 1))
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({columns}) VALUES ({values}) {conflict}", rows)


def _add_copied(
    conn: sa.Connection, table: sa.Table, additions: _Additions, columns: str, conflict: str
) -> None:
    """``add_scores`` on PostgreSQL: each row's codes and score copied into a temporary
    table, then one upsert of the words they name."""
    keys = additions.keys
    deltas = f"{table.name}_delta"
    code_columns = [f"code{n}" for n in range(len(keys))]
    # dropped at the latest when the transaction ends; dropped below so that a second
    # addition in the same transaction starts empty
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {deltas} "
        f"({', '.join(f'{c} integer' for c in code_columns)}, score double precision) "
        f"ON COMMIT DROP"
    )
    # arrays count from 1
    copied = [(column + 1).tolist() for column in additions.codes()]
    copy_rows(
        conn,
        sa.Table(deltas, sa.MetaData()),
        [*code_columns, "score"],
        zip(*copied, additions.scores().tolist(), strict=True),
    )
    texts = [f"words.w{n}[d.code{n}]" for n in range(len(keys))]
    arrays = ", ".join(f"%s::text[] AS w{n}" for n in range(len(keys)))
    # code point order (what Python's sort gives): one order for every worker
    order = ", ".join(f'{text} COLLATE "C"' for text in texts)
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({columns}) "
        f"SELECT {', '.join(texts)}, d.score FROM {deltas} AS d, (SELECT {arrays}) AS words "
        f"ORDER BY {order} {conflict}",
        tuple(additions.words),
    )
    conn.exec_driver_sql(f"DROP TABLE {deltas}")


def _texts(words: Sequence[str], codes: IntArray) -> list[str]:
    """The word of each code."""
    return list(map(words.__getitem__, codes.tolist()))


def _group_sum(keys: IntArray, values: FloatArray) -> tuple[IntArray, FloatArray]:
    """The distinct keys and each one's sum of values."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct.astype(np.int64), np.bincount(inverse, weights=values).astype(np.float64)


@dataclass(slots=True)
class _Touches:
    """The batch's interactions as columns: profile index, item code, event-name code, event
    time (at most the batch's moment), row order."""

    profile: IntArray
    item: IntArray
    name: IntArray
    ts: IntArray
    items: list[str]
    names: list[str]
    now_ms: int


class RecommendationStage:
    """Keeps the live co-visitation, popularity and recent items (module docstring)."""

    name = "recommendations"

    def __init__(
        self,
        features: FeatureSet,
        *,
        clock: Clock | None = None,
        weights: Mapping[str, float] = DEFAULT_WEIGHTS,
        kinds: Mapping[str, Sequence[str]] = DEFAULT_KINDS,
        window_hours: Mapping[str, float] = DEFAULT_WINDOW_HOURS,
        covisit_half_life_days: float = DEFAULT_COVISIT_HALF_LIFE_DAYS,
        popularity_half_life_days: float = DEFAULT_POPULARITY_HALF_LIFE_DAYS,
        history_half_life_days: float = DEFAULT_HISTORY_HALF_LIFE_DAYS,
        max_previous: int = DEFAULT_MAX_PREVIOUS,
    ) -> None:
        self._features = features
        self._clock = clock or SystemClock()
        self.weights = dict(weights)
        self.kinds = {kind: frozenset(names) for kind, names in kinds.items()}
        self.window_hours = dict(window_hours)
        self.covisit_half_life_days = covisit_half_life_days
        self.popularity_half_life_days = popularity_half_life_days
        self.history_half_life_days = history_half_life_days
        self.max_previous = max_previous
        self._names = frozenset(self.weights).union(*self.kinds.values())
        self._bought_names = self.kinds.get("bought", frozenset())

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        """None: the counters here are the stage's own tables."""
        return ()

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        """Count the batch's interactions of consenting profiles (module docstring)."""
        now_ms = datetime_ms(self._clock.now())
        allowed = np.zeros(batch.profiles, dtype=np.bool_)
        withdrawn: list[str] = []
        for p in profiles:
            if personalization_allowed(p.state, self._features):
                allowed[p.index] = True
            else:
                withdrawn.append(p.profile_id)
        merged = [gone for p in profiles for gone in p.merged_from]
        forget = [*merged, *withdrawn]
        touches = self._touches(batch, allowed, now_ms)
        if touches is None and not merged:
            if forget:
                self._forget(conn, forget)
            return
        ids = {p.index: p.profile_id for p in profiles}
        counted = (
            {ids[int(i)] for i in np.unique(touches.profile)} if touches is not None else set()
        )
        wanted = counted | {p.profile_id for p in profiles if p.merged_from}
        stored = read_recent(conn, [*sorted(wanted), *merged])
        recent: dict[str, RecentItems] = {}
        for p in profiles:
            if p.profile_id not in wanted or not allowed[p.index]:
                continue
            mine = stored.get(p.profile_id, RecentItems())
            for gone in p.merged_from:
                if gone in stored:
                    mine.join(stored[gone])
            recent[p.profile_id] = mine
        if touches is not None:
            self._popularity(conn, touches, ids, batch.memberships)
            self._covisits(conn, touches, ids, recent, now_ms)
            self._remember(touches, ids, recent)
        self._forget(conn, forget)
        self._store(conn, recent)

    # -- the batch's interactions ------------------------------------------------------------

    def _touches(self, batch: ProfileBatch, allowed: Any, now_ms: int) -> _Touches | None:
        """The product interactions of the batch's consenting profiles, or ``None``."""
        rows = batch.rows_named(self._names)
        if rows.size == 0:
            return None
        rows = rows[allowed[batch.profile[rows]]]
        # the few steps that must read an event's JSON: the products it names
        lines: list[int] = []
        items: list[str] = []
        for row in rows.tolist():
            event = batch.events[row]
            if event.type != "track":
                continue
            for item in event_items(event.data):
                lines.append(row)
                items.append(item)
        if not lines:
            return None
        at = np.asarray(lines, dtype=np.int64)
        distinct, codes = codes_of(items)
        return _Touches(
            profile=batch.profile[at],
            item=codes,
            name=batch.name_code[at],
            ts=batch.ts[at],
            items=distinct,
            names=batch.names,
            now_ms=now_ms,
        )

    def _name_mask(self, names: Iterable[str], touches: _Touches) -> Any:
        wanted = set(names)
        codes = [code for code, name in enumerate(touches.names) if name in wanted]
        return np.isin(touches.name, codes)

    # -- popularity --------------------------------------------------------------------------

    def _popularity(
        self,
        conn: sa.Connection,
        touches: _Touches,
        ids: Mapping[int, str],
        memberships: Sequence[Collection[str]] | None,
    ) -> None:
        batch_names = touches.names
        weights = np.array([self.weights.get(n, 0.0) for n in batch_names], dtype=np.float64)
        value = weights[touches.name] * epoch_scores(
            touches.ts, self.popularity_half_life_days, touches.now_ms
        )
        weighted = value > 0
        profile, item, value = touches.profile[weighted], touches.item[weighted], value[weighted]
        if not value.size:
            return
        size = len(touches.items)
        keys, sums = _group_sum(item, value)
        words = touches.items
        additions = _Additions(("segment_key", "item_id"))
        additions.add(sums, _same(EVERYONE, keys.size), (words, keys))
        # every segment each counted profile is in: the interactions repeated per membership
        profiles = sorted({int(p) for p in np.unique(profile)})
        held: list[tuple[int, str]] = []
        if memberships is not None:
            # the segment stage just wrote them, in this transaction (the sums below do not
            # depend on the order of a profile's segments)
            held = [(p, key) for p in profiles for key in memberships[p]]
        else:
            index_of = {ids[p]: p for p in profiles}
            m = segment_members.c
            names = list(index_of)
            for start in range(0, len(names), _CHUNK):
                for pid, key in conn.execute(
                    sa.select(m.profile_id, m.segment_key).where(
                        m.profile_id.in_(names[start : start + _CHUNK]), m.exited_at.is_(None)
                    )
                ):
                    held.append((index_of[str(pid)], str(key)))
        if held:
            segments, segment_code = codes_of([key for _, key in held])
            member_profile = np.asarray([p for p, _ in held], dtype=np.int64)
            order = np.argsort(member_profile, kind="stable")
            member_profile, segment_code = member_profile[order], segment_code[order]
            per_profile = np.bincount(member_profile, minlength=int(profile.max()) + 1)
            first = np.concatenate(([0], np.cumsum(per_profile)[:-1]))
            repeats = per_profile[profile]
            row = np.repeat(np.arange(profile.size), repeats)
            # each repeated row's offset among its profile's memberships
            offset = np.arange(row.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
            segment = segment_code[first[profile[row]] + offset]
            keys, sums = _group_sum(segment * size + item[row], value[row])
            additions.add(sums, (segments, keys // size), (words, keys % size))
        add_scores(conn, recommend_popularity, additions)

    # -- co-visitation -----------------------------------------------------------------------

    def _covisits(
        self,
        conn: sa.Connection,
        touches: _Touches,
        ids: Mapping[int, str],
        recent: dict[str, RecentItems],
        now_ms: int,
    ) -> None:
        item_additions = _Additions(("kind", "item_id"))
        pair_additions = _Additions(("item_id", "kind", "other_id"))
        half_life = self.covisit_half_life_days
        for kind, names in sorted(self.kinds.items()):
            new = np.flatnonzero(self._name_mask(names, touches))
            if not new.size:
                continue
            keys, sums = _group_sum(
                touches.item[new], epoch_scores(touches.ts[new], half_life, now_ms)
            )
            item_additions.add(sums, _same(kind, keys.size), (touches.items, keys))
            # each profile's remembered interactions, then the new ones in arrival order
            vocabulary = {item: n for n, item in enumerate(touches.items)}
            extra: list[str] = []
            old_profile: list[int] = []
            old_item: list[int] = []
            old_ts: list[int] = []
            for p in np.unique(touches.profile[new]).tolist():
                for remembered, at_ms in recent[ids[p]].memory.get(kind, ()):
                    code = vocabulary.get(remembered)
                    if code is None:
                        code = vocabulary[remembered] = len(touches.items) + len(extra)
                        extra.append(remembered)
                    old_profile.append(p)
                    old_item.append(code)
                    old_ts.append(at_ms)
            words = [*touches.items, *extra]
            profile = np.concatenate([np.asarray(old_profile, np.int64), touches.profile[new]])
            item = np.concatenate([np.asarray(old_item, np.int64), touches.item[new]])
            ts = np.concatenate([np.asarray(old_ts, np.int64), touches.ts[new]])
            fresh = np.concatenate(
                [np.zeros(len(old_profile), np.bool_), np.ones(new.size, np.bool_)]
            )
            position = np.concatenate([np.arange(len(old_profile)) - len(old_profile), new])
            order = np.lexsort((position, profile))
            profile, item, ts, fresh = profile[order], item[order], ts[order], fresh[order]
            window_ms = self.window_hours.get(kind, 24.0) * _MS_PER_HOUR
            firsts: list[IntArray] = []
            seconds: list[IntArray] = []
            values: list[FloatArray] = []
            for lag in range(1, self.max_previous + 1):
                if lag >= profile.size:
                    break
                same = profile[lag:] == profile[:-lag]
                if not same.any():
                    break
                later, earlier = ts[lag:], ts[:-lag]
                paired = (
                    same
                    & fresh[lag:]
                    & (np.abs(later - earlier) <= window_ms)
                    & (item[lag:] != item[:-lag])
                )
                weight = epoch_scores(np.maximum(later, earlier)[paired], half_life, now_ms)
                a, b = item[lag:][paired], item[:-lag][paired]
                firsts += [a, b]
                seconds += [b, a]
                values += [weight, weight]
            if firsts:
                size = len(words)
                keys, sums = _group_sum(
                    np.concatenate(firsts) * size + np.concatenate(seconds),
                    np.concatenate(values),
                )
                pair_additions.add(
                    sums, (words, keys // size), _same(kind, keys.size), (words, keys % size)
                )
            # the memory: each profile's last max_previous interactions of the kind
            ends = np.flatnonzero(np.append(profile[1:] != profile[:-1], True))
            starts = np.concatenate(([0], ends[:-1] + 1))
            for begin, end in zip(starts.tolist(), ends.tolist(), strict=True):
                keep = range(max(begin, end + 1 - self.max_previous), end + 1)
                recent[ids[int(profile[begin])]].memory[kind] = [
                    (words[int(item[n])], int(ts[n])) for n in keep
                ]
        add_scores(conn, recommend_items, item_additions)
        add_scores(conn, recommend_pairs, pair_additions)

    # -- recent items ------------------------------------------------------------------------

    def _remember(
        self, touches: _Touches, ids: Mapping[int, str], recent: dict[str, RecentItems]
    ) -> None:
        batch_names = touches.names
        weights = np.array([self.weights.get(n, UNWEIGHTED) for n in batch_names], np.float64)
        bought_names = np.array([n in self._bought_names for n in batch_names], dtype=np.bool_)
        size = len(touches.items)
        key = touches.profile * size + touches.item
        distinct, inverse = np.unique(key, return_inverse=True)
        last = np.full(distinct.size, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inverse, touches.ts)
        score = np.bincount(
            inverse,
            weights=weights[touches.name]
            * epoch_scores(touches.ts, self.history_half_life_days, touches.now_ms),
        )
        bought = np.bincount(inverse, weights=bought_names[touches.name]) > 0
        for k, t, s, b in zip(
            distinct.tolist(), last.tolist(), score.tolist(), bought.tolist(), strict=True
        ):
            held = recent[ids[k // size]].items
            item = touches.items[k % size]
            mine = held.get(item)
            held[item] = (t, s, b) if mine is None else (max(mine[0], t), mine[1] + s, mine[2] or b)

    def _store(self, conn: sa.Connection, recent: Mapping[str, RecentItems]) -> None:
        if not recent:
            return
        now = self._clock.now()
        rows = []
        for profile_id, items in sorted(recent.items()):
            items.bounded()
            rows.append(
                {"profile_id": profile_id, "document": items.encode().decode(), "updated_at": now}
            )
        statement = dialect_insert(conn.dialect.name, recommend_profiles)
        statement = statement.on_conflict_do_update(
            index_elements=["profile_id"],
            set_={
                "document": statement.excluded.document,
                "updated_at": statement.excluded.updated_at,
            },
        )
        conn.execute(statement, rows)

    def _forget(self, conn: sa.Connection, profile_ids: Sequence[str]) -> None:
        c = recommend_profiles.c
        for start in range(0, len(profile_ids), _CHUNK):
            conn.execute(
                recommend_profiles.delete().where(
                    c.profile_id.in_(list(profile_ids[start : start + _CHUNK]))
                )
            )


def prune_counters(
    conn: sa.Connection,
    now_ms: int,
    *,
    min_count: float = 1e-3,
    covisit_half_life_days: float = DEFAULT_COVISIT_HALF_LIFE_DAYS,
    popularity_half_life_days: float = DEFAULT_POPULARITY_HALF_LIFE_DAYS,
) -> dict[str, int]:
    """Delete the counts that have decayed below ``min_count`` by ``now_ms`` (a single view
    gets there after ten half-lives): what nobody touched for months no longer takes room.
    Returns how many rows each table lost."""
    removed: dict[str, int] = {}
    for table, half_life in (
        (recommend_pairs, covisit_half_life_days),
        (recommend_items, covisit_half_life_days),
        (recommend_popularity, popularity_half_life_days),
    ):
        floor = min_count / decayed_at(1.0, now_ms, half_life)
        removed[table.name] = conn.execute(table.delete().where(table.c.score < floor)).rowcount
    return removed
