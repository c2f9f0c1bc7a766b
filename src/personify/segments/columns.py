"""Rule segments evaluated as columns: every active rule over every profile of a batch at once.

``ColumnPlan`` compiles the active rules once (per set of definitions) into a plan over
columns. ``ColumnPlan.evaluate`` then takes the profiles of a batch (or of a sweep's page) and

1. reads each distinct leaf value once per profile: a trait, a path into the profile's
   ``features`` document, a prediction, and the count of every counter at the evaluation
   time (one bisection per counter a profile holds, not per leaf);
2. tests each distinct leaf once per distinct value of its column (``plan eq pro`` is
   evaluated for ``pro`` and ``free``, not for every profile) and spreads the answers back
   as a boolean column;
3. combines the columns with ``all``/``any``/``not`` as boolean array operations, and each
   segment reference reads the column of the segment it names, rules in dependency order.

The answer for every profile is exactly what ``personify.segments.stage.
evaluate_profile_segments`` (the compiled predicate of each rule, one profile at a time)
gives: the same rules kept at their current answer when a batch changed nothing they read,
the same RFM cells and cluster placements, no segment at all without consent. Tests compare
the two on generated rules and profiles (``tests/segments/test_columns.py``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from personify.profiles.document import personalization_allowed
from personify.profiles.features import FeatureSet, evaluate_features, window_reach
from personify.profiles.state import DocumentReach, ProfileState, document_reach, evaluate_profile
from personify.segments.conditions import (
    AllOf,
    AnyOf,
    Condition,
    EventLeaf,
    Not,
    SegmentLeaf,
    ValueLeaf,
    resolve_path,
)
from personify.segments.operators import MISSING, Factorized, build_test, evaluate_column, factorize
from personify.segments.repository import CompiledSegment, CompiledSegments
from personify.segments.rfm import ORDER_EVENT, RFM_CELLS, cell_of, profile_figures, rfm_key

__all__ = ["BatchChange", "ColumnPlan", "is_affected"]

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BatchChange:
    """What a batch changed of one profile, as far as rules can tell: the names of its new
    events, and whether it may have changed anything else (traits, consent, ids)."""

    names: frozenset[str]
    everything: bool


def is_affected(segment: CompiledSegment, change: BatchChange, affected: Collection[str]) -> bool:
    """Whether a batch's ``change`` may change ``segment``'s answer, when ``affected`` holds
    the segments (read before it) whose answers it may have changed."""
    # traits and consent change only with ``everything``; predictions are scored again with
    # every change of the profile, like features
    predicate = segment.predicate
    return (
        predicate.reads_features
        or predicate.reads_predictions
        or bool(predicate.event_names & change.names)
        or ("*" in predicate.event_names and bool(change.names))
        or any(key in affected for key in predicate.segment_keys)
    )


class _Batch:
    """The columns of one evaluation: leaf values read once, tests made once (per plan)."""

    def __init__(
        self,
        plan: ColumnPlan,
        states: Sequence[ProfileState],
        documents: Sequence[Mapping[str, Any] | None],
        predictions: Sequence[Mapping[str, Any] | None],
        at_ms: int,
    ) -> None:
        self.size = len(states)
        self._plan = plan
        self._states = states
        self._documents = documents
        self._predictions = predictions
        self._at_ms = at_ms
        self._values: dict[tuple[str, tuple[str, ...]], Factorized] = {}
        self._masks: dict[Any, Bools] = {}
        self._counts: Ints | None = None
        self._traits: list[dict[str, Any]] | None = None
        # membership columns of the segments, filled as rules are answered (``ColumnPlan``)
        self.segments: dict[str, Bools] = {}
        self.reference: Callable[[str], Bools] = lambda key: np.zeros(self.size, np.bool_)

    def _trait_maps(self) -> list[dict[str, Any]]:
        if self._traits is None:
            self._traits = [
                {k: s.value for k, s in state.traits.items() if s.value is not None}
                for state in self._states
            ]
        return self._traits

    def _column(self, source: str, parts: tuple[str, ...]) -> Factorized:
        key = (source, parts)
        found = self._values.get(key)
        if found is not None:
            return found
        values: list[Any]
        if source == "trait" and len(parts) == 1:
            name = parts[0]
            # a trait set to null is no trait: as the per-profile context, which leaves it out
            values = []
            for state in self._states:
                stamped = state.traits.get(name)
                values.append(
                    MISSING if stamped is None or stamped.value is None else stamped.value
                )
        elif source == "trait":
            values = [resolve_path(traits, parts) for traits in self._trait_maps()]
        elif source == "feature":
            self._feature_columns()
            return self._values[key]
        else:
            # no predictions at all reads as a missing value, which no operator matches
            values = [
                MISSING if scores is None else resolve_path(scores, parts)
                for scores in self._predictions
            ]
        found = self._values[key] = factorize(values)
        return found

    def _feature_columns(self) -> None:
        """Every feature path of the plan read from every document, in one walk of the
        paths' tree per document (a shared prefix is looked up once)."""
        tree = self._plan.feature_tree
        columns: list[list[Any]] = [[] for _ in tree.paths]
        for document in self._documents:
            values: list[Any] = [MISSING] * len(tree.paths)
            if document is not None:
                tree.resolve(document, values)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        for parts, column in zip(tree.paths, columns, strict=True):
            self._values[("feature", parts)] = factorize(column)

    def _count_matrix(self) -> Ints:
        if self._counts is not None:
            return self._counts
        plan = self._plan
        counts = np.zeros((len(plan.counter_index), self.size), dtype=np.int64)
        at_ms = self._at_ms
        index = plan.counter_index
        within = plan.counter_within_ms
        right = bisect.bisect_right
        # one pass over the counters each profile holds (as ``count_at``), not one per leaf
        for p, state in enumerate(self._states):
            for counter_id, times in state.counters.items():
                row = index.get(counter_id)
                if row is None or not times:
                    continue
                window = within[row]
                if window is None:
                    continue
                counts[row, p] = right(times, at_ms) - right(times, at_ms - window)
            for counter_id, total in state.counter_totals.items():
                row = index.get(counter_id)
                if row is not None and within[row] is None:
                    counts[row, p] = total
        self._counts = counts
        return counts

    def value_mask(self, leaf: ValueLeaf) -> Bools:
        key = ("value", leaf)
        mask = self._masks.get(key)
        if mask is None:
            column = self._column(leaf.source, tuple(leaf.path.split(".")))
            test = build_test(leaf.comparison.op, leaf.comparison.value)
            mask = self._masks[key] = evaluate_column(column, test)
        return mask

    def count_mask(self, leaf: EventLeaf) -> Bools:
        key = ("count", leaf.counter.id, leaf.count)
        mask = self._masks.get(key)
        if mask is None:
            row = self._count_matrix()[self._plan.counter_index[leaf.counter.id]]
            distinct, codes = np.unique(row, return_inverse=True)
            test = build_test(leaf.count.op, leaf.count.value)
            table = np.fromiter((bool(test(int(v))) for v in distinct), np.bool_, len(distinct))
            mask = self._masks[key] = table[codes.reshape(-1)]
        return mask

    def evaluate(self, node: Condition) -> Bools:
        if isinstance(node, ValueLeaf):
            return self.value_mask(node)
        if isinstance(node, EventLeaf):
            return self.count_mask(node)
        if isinstance(node, SegmentLeaf):
            found = self.segments.get(node.key)
            return found if found is not None else self.reference(node.key)
        if isinstance(node, Not):
            return ~self.evaluate(node.child)
        if isinstance(node, AllOf):
            result = np.ones(self.size, np.bool_)
            for child in node.children:
                result &= self.evaluate(child)
            return result
        if isinstance(node, AnyOf):
            result = np.zeros(self.size, np.bool_)
            for child in node.children:
                result |= self.evaluate(child)
            return result
        raise TypeError(f"not a condition: {node!r}")


class _PathTree:
    """Paths (split at the dots) as a tree, resolved together as ``resolve_path`` resolves
    each: at a level where none of the longer keys a path could take (``a.b`` for ``a``,
    ``b``) is present, every path goes on by its next part, so a shared prefix is looked up
    once; where one is present, the paths below resolve one by one."""

    def __init__(
        self,
        paths: Sequence[tuple[str, ...]],
        depth: int = 0,
        indexes: Sequence[int] | None = None,
    ) -> None:
        self.paths = tuple(paths)
        self.depth = depth
        # each path's index among the root's paths, where its value goes
        self.indexes = list(indexes) if indexes is not None else list(range(len(paths)))
        at = self.indexes
        # the paths that end here (their value is the node itself)
        self.ends = [at[i] for i, parts in enumerate(paths) if len(parts) == depth]
        dotted: set[str] = set()
        below: dict[str, list[int]] = {}
        for i, parts in enumerate(paths):
            rest = parts[depth:]
            dotted.update(".".join(rest[:n]) for n in range(2, len(rest) + 1))
            if rest:
                below.setdefault(rest[0], []).append(i)
        self.dotted = frozenset(dotted)
        self.has_children = bool(below)
        children = [
            (part, _PathTree([paths[i] for i in members], depth + 1, [at[i] for i in members]))
            for part, members in below.items()
        ]
        # a child where paths only end is read in place, not resolved by a call of its own
        self.leaves = [(part, child.ends) for part, child in children if not child.has_children]
        self.inner = [(part, child) for part, child in children if child.has_children]

    def resolve(self, node: Any, values: list[Any]) -> None:
        """Put each path's value at ``node`` (the level of ``depth``) into ``values`` (at the
        path's index among the root's paths; ``MISSING`` already there)."""
        for i in self.ends:
            values[i] = node
        if not self.has_children:
            return
        if type(node) is not dict and not isinstance(node, Mapping):
            return
        if not self.dotted.isdisjoint(node):
            # a key holding dots is here: each path takes its own longest key
            depth = self.depth
            for i, parts in zip(self.indexes, self.paths, strict=True):
                if len(parts) > depth:
                    values[i] = resolve_path(node, parts[depth:])
            return
        for part, ends in self.leaves:
            if part in node:
                value = node[part]
                for i in ends:
                    values[i] = value
        for part, child in self.inner:
            if part in node:
                child.resolve(node[part], values)


@dataclass(frozen=True, slots=True)
class _Reach:
    """What the rules read of a profile's document: its sections (``document_reach``) and,
    of each feature, the windows (``window_reach``: ``orders.30d`` computes no ``7d``)."""

    sections: DocumentReach
    features: Mapping[str, frozenset[str] | None]
    windows: Mapping[tuple[str, str], frozenset[str]]

    @classmethod
    def of(cls, paths: Collection[tuple[str, ...]], features: FeatureSet) -> _Reach:
        reach = document_reach(paths, features)
        # the features are computed here, window by window, not by ``evaluate_profile``
        names = {f.name for f in features.features}
        sections = DocumentReach(
            reach.keys, {k: v for k, v in reach.only.items() if k not in names}
        )
        return cls(sections, reach.only, window_reach(paths, features))

    def document(self, state: ProfileState, features: FeatureSet, at_ms: int) -> dict[str, Any]:
        """The document at ``at_ms`` as ``evaluate_profile(reach=document_reach(...))``
        gives it, less the windows no path reads."""
        document = evaluate_profile(state, features, at_ms, reach=self.sections)
        document.update(
            evaluate_features(
                state.features, features, at_ms, only=self.features, windows=self.windows
            )
        )
        return document


class ColumnPlan:
    """The active rules of ``compiled``, evaluated over many profiles at once (module
    docstring)."""

    def __init__(self, compiled: CompiledSegments) -> None:
        self.compiled = compiled
        self.segments = compiled.segments
        self.keys = tuple(s.key for s in self.segments)
        self.rule_index = {key: i for i, key in enumerate(self.keys)}
        counters = {c.id: c for s in self.segments for c in s.predicate.counters}
        self.counter_index = {counter_id: i for i, counter_id in enumerate(counters)}
        self.counter_within_ms = [c.within_ms for c in counters.values()]
        self.reads_features = any(s.predicate.reads_features for s in self.segments)
        # the paths of the document the rules read, and those an RFM cell reads: the rest of
        # the document is not computed
        paths: set[tuple[str, ...]] = set()
        if compiled.rfm is not None:
            paths |= {("orders", "all"), ("revenue", "all")}
        for segment in self.segments:
            for leaf in _leaves(segment.predicate.condition):
                if isinstance(leaf, ValueLeaf) and leaf.source == "feature":
                    paths.add(tuple(leaf.path.split(".")))
        self.document_paths = frozenset(paths)
        self.feature_tree = _PathTree(
            sorted(
                {
                    tuple(leaf.path.split("."))
                    for segment in self.segments
                    for leaf in _leaves(segment.predicate.condition)
                    if isinstance(leaf, ValueLeaf) and leaf.source == "feature"
                }
            )
        )
        self._reaches: tuple[FeatureSet, _Reach] | None = None

    def _reach(self, features: FeatureSet) -> _Reach:
        """What the rules read of the document, for ``features`` (kept for the last set)."""
        if self._reaches is None or self._reaches[0] is not features:
            self._reaches = (features, _Reach.of(self.document_paths, features))
        return self._reaches[1]

    def evaluate(
        self,
        states: Sequence[ProfileState],
        features: FeatureSet,
        at_ms: int,
        *,
        changes: Sequence[BatchChange | None] | None = None,
        current: Sequence[Collection[str]] | None = None,
        documents: Sequence[dict[str, Any] | None] | None = None,
        placed: Sequence[Collection[str] | None] | None = None,
        predictions: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[set[str]]:
        """The keys of the segments each of ``states`` belongs to at ``at_ms``: for profile
        ``i``, what ``evaluate_profile_segments`` gives with ``change=changes[i]``,
        ``current=current[i]``, ``document=documents[i]``, ``placed=placed[i]`` and
        ``predictions=predictions[i]`` (each sequence, when given, as long as ``states``)."""
        size = len(states)
        compiled = self.compiled
        if not size:
            return []
        if not compiled.active:
            return [set() for _ in states]
        allowed = [personalization_allowed(state, features) for state in states]
        held: Sequence[Collection[str]] = current if current is not None else [()] * size
        where: list[Collection[str] | None] = list(placed) if placed is not None else [None] * size
        # a change that may have changed anything is no narrowing at all
        narrowed: list[BatchChange | None] = [
            c if c is not None and not c.everything else None
            for c in (changes if changes is not None else [None] * size)
        ]
        whole = np.fromiter((c is None for c in narrowed), np.bool_, size)
        rfm = compiled.rfm
        rfm_affected = np.fromiter(
            (rfm is not None and (c is None or ORDER_EVENT in c.names) for c in narrowed),
            np.bool_,
            size,
        )
        was_placed = np.fromiter((p is not None for p in where), np.bool_, size)
        affected = self._affected(narrowed, whole, rfm_affected, was_placed)
        # documents are needed where a rule reading features is evaluated (every profile a
        # batch touched: features change with every event) or an RFM cell may change
        needs_document = rfm_affected.copy()
        if self.reads_features:
            needs_document |= np.logical_or.reduce(
                [affected[i] for i, s in enumerate(self.segments) if s.predicate.reads_features]
            )
        docs: list[dict[str, Any] | None] = (
            list(documents) if documents is not None else [None] * size
        )
        reach = self._reach(features)
        for p in np.flatnonzero(needs_document).tolist():
            if docs[p] is None and allowed[p]:
                docs[p] = reach.document(states[p], features, at_ms)
        cells: list[str | None] = [None] * size
        if rfm is not None:
            for p in np.flatnonzero(rfm_affected).tolist():
                document = docs[p]
                if not allowed[p] or document is None:
                    continue
                figures = profile_figures(states[p], document, at_ms)
                if figures is not None:
                    r, f, _ = rfm.scores(*figures[:3])
                    cells[p] = rfm_key(cell_of(r, f))
        rfm_keys = frozenset(rfm_key(cell) for cell in RFM_CELLS) if rfm is not None else None
        cluster_keys = compiled.cluster_keys

        def kept(key: str, p: int) -> bool:
            # a current stay in a segment no rule answers (an RFM cell, a cluster, a key no
            # longer active): kept unless what gives it was just evaluated again
            if rfm_keys is not None and key in rfm_keys and rfm_affected[p]:
                return False
            return not (where[p] is not None and key in cluster_keys)

        def given(key: str, p: int) -> bool:
            given_by = where[p]
            return cells[p] == key or (given_by is not None and key in given_by)

        def others(key: str) -> Bools:
            # a reference to a segment that is no rule of this plan
            return np.fromiter(
                ((key in held[p] and kept(key, p)) or given(key, p) for p in range(size)),
                np.bool_,
                size,
            )

        batch = _Batch(
            self,
            states,
            docs,
            predictions if predictions is not None else [None] * size,
            at_ms,
        )
        batch.reference = others
        index = self.rule_index
        # the current stays in each rule's segment (rule keys never collide with RFM cells,
        # ``rfm-…``, or clusters, ``KEY/NAME``: the repository refuses such keys)
        held_rows = np.zeros((len(self.keys), size), np.bool_)
        for p in range(size):
            for key in held[p]:
                row = index.get(key)
                if row is not None:
                    held_rows[row, p] = True
        answered = np.zeros((len(self.keys), size), np.bool_)
        for row, segment in enumerate(self.segments):
            todo = affected[row]
            # kept where nothing it reads changed, answered again where something did; the
            # rules after it read this column, as the per-profile evaluation reads its set
            column = (held_rows[row] & ~todo) | (todo & batch.evaluate(segment.predicate.condition))
            answered[row] = column
            batch.segments[segment.key] = column
        answered &= np.asarray(allowed, np.bool_)
        results: list[set[str]] = []
        keys = self.keys
        # each profile's rows, as slices of one list (not an array each)
        profile_of, row_of = np.nonzero(answered.T)
        bounds = np.searchsorted(profile_of, np.arange(size + 1)).tolist()
        rows_of = row_of.tolist()
        for p in range(size):
            if not allowed[p]:
                results.append(set())
                continue
            members = {keys[row] for row in rows_of[bounds[p] : bounds[p + 1]]}
            for key in held[p]:
                if key not in index and kept(key, p):
                    members.add(key)
            cell = cells[p]
            if cell is not None:
                members.add(cell)
            given_by = where[p]
            if given_by is not None:
                members.update(given_by)
            results.append(members)
        return results

    def _affected(
        self,
        changes: Sequence[BatchChange | None],
        whole: Bools,
        rfm_affected: Bools,
        was_placed: Bools,
    ) -> Bools:
        """Which rules each profile evaluates again (``is_affected``, rules in order)."""
        size = len(changes)
        names: dict[str, Bools] = {}
        any_name = np.zeros(size, np.bool_)
        for p, change in enumerate(changes):
            if change is None:
                continue
            if change.names:
                any_name[p] = True
            for name in change.names:
                column = names.get(name)
                if column is None:
                    column = names[name] = np.zeros(size, np.bool_)
                column[p] = True
        by_key: dict[str, Bools] = {}
        if self.compiled.rfm is not None:
            for cell in RFM_CELLS:
                by_key[rfm_key(cell)] = rfm_affected
        for key in self.compiled.cluster_keys:
            by_key[key] = was_placed
        rows = np.zeros((len(self.segments), size), np.bool_)
        everywhere = np.ones(size, np.bool_)
        for row, segment in enumerate(self.segments):
            predicate = segment.predicate
            if predicate.reads_features or predicate.reads_predictions:
                column = everywhere.copy()
            else:
                column = whole.copy()
                for name in predicate.event_names:
                    if name == "*":
                        column |= any_name
                    elif name in names:
                        column |= names[name]
                for key in predicate.segment_keys:
                    if key in by_key:
                        column |= by_key[key]
            by_key[segment.key] = column
            rows[row] = column
        return rows


def _leaves(node: Condition) -> list[Condition]:
    if isinstance(node, Not):
        return _leaves(node.child)
    if isinstance(node, AllOf | AnyOf):
        return [leaf for child in node.children for leaf in _leaves(child)]
    return [node]
