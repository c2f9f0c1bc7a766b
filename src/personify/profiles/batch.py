"""A batch of events as columns, and the extension point for the worker's batch stages.

The stream worker decodes a batch once (``view_event`` per entry), resolves each event to
its profile, and hands the batch to every step as a ``ProfileBatch``: numpy columns of event
time, hour, day, profile index, event-name code and messageId rank, next to the decoded
events themselves for the few steps that must read an event's JSON. Profile maths
(``personify.profiles.state.apply_batch``) and the later stages (segment evaluation, model
scoring, recommendation counters) are passes over these columns, not per-event callbacks.

A ``BatchStage`` runs inside the transaction that stores the batch's profiles, after they
are computed: it sees every touched profile's new state and the columns, and writes with
the same connection, so its writes commit (or roll back) with the profiles. A stage that
raises fails the batch like any other error: the worker splits the batch to isolate the
event, retries and dead-letters it (docs/profiles.md, "Batch stages").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from personify.profiles.events import MS_PER_DAY, MS_PER_HOUR, ProfileEvent

if TYPE_CHECKING:
    import sqlalchemy as sa

    from personify.profiles.counters import CounterSpec
    from personify.profiles.state import ProfileState

Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_PAGE_TYPES = frozenset({"page", "screen"})


def codes_of(values: Sequence[str]) -> tuple[list[str], Int64s]:
    """Distinct values in sorted (code point) order, and each value's index among them.

    Sorted codes compare like the strings, so a group-by over codes orders like one over
    the text (messageIds break ties between equal event times this way).
    """
    distinct = sorted(set(values))
    index = {value: code for code, value in enumerate(distinct)}
    return distinct, np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))


@dataclass(frozen=True, slots=True)
class Groups:
    """Rows sorted by a composite key: ``order`` sorts them, ``starts`` opens each group."""

    order: Int64s
    starts: Int64s

    @property
    def firsts(self) -> Int64s:
        """The (sorted-order) row index of each group's first row, as original row numbers."""
        return self.order[self.starts]

    def sizes(self, total: int) -> Int64s:
        """How many rows each group holds."""
        return np.diff(np.append(self.starts, total))


def group_rows(*keys: Int64s) -> Groups:
    """Group rows by the tuple of ``keys`` (the first key is the most significant)."""
    count = len(keys[0])
    if count == 0:
        return Groups(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    order = np.lexsort(keys[::-1]).astype(np.int64)
    change = np.zeros(count, dtype=np.bool_)
    change[0] = True
    for key in keys:
        ordered = key[order]
        change[1:] |= ordered[1:] != ordered[:-1]
    return Groups(order, np.flatnonzero(change).astype(np.int64))


class ProfileBatch:
    """The events of one batch as columns, each event resolved to a profile of the batch.

    ``profile[i]`` is an index into the batch's list of touched profiles; ``latest_ms[p]`` is
    profile ``p``'s latest event time once the batch is applied (windows are kept relative
    to it). Columns are read-only by convention: every step reads them, none writes;
    ``memberships`` is the one thing a stage leaves for the later ones.
    """

    def __init__(self, events: Sequence[ProfileEvent], profile: Sequence[int], profiles: int):
        count = len(events)
        self.events = events
        self.size = count
        self.profiles = profiles
        self.profile: Int64s = np.asarray(profile, dtype=np.int64)
        self.ts: Int64s = np.fromiter((e.ts for e in events), dtype=np.int64, count=count)
        self.hour: Int64s = self.ts // MS_PER_HOUR
        self.day: Int64s = self.ts // MS_PER_DAY
        self.names, self.name_code = codes_of([e.name for e in events])
        self.message_ids, self.mid_rank = codes_of([e.message_id for e in events])
        self.is_page: Bools = np.fromiter(
            (e.type in _PAGE_TYPES for e in events), dtype=np.bool_, count=count
        )
        # every profile's latest event time after this batch (stored states raise it later)
        latest = np.full(profiles, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(latest, self.profile, self.ts)
        self.latest_ms = latest
        # the one field a stage writes, for the stages after it in the same transaction:
        # each profile's open segment memberships (by profile index) once the segment stage
        # has written them; None: not known here, read them from the state database
        self.memberships: Sequence[Collection[str]] | None = None

    def raise_latest(self, index: int, latest_ms: int | None) -> None:
        """Fold a stored state's latest event time into profile ``index``'s."""
        if latest_ms is not None and latest_ms > self.latest_ms[index]:
            self.latest_ms[index] = latest_ms

    def name_codes(self, names: frozenset[str] | None) -> Int64s | None:
        """Codes of ``names`` present in this batch (``None``: every name)."""
        if names is None:
            return None
        return np.asarray(
            [code for code, name in enumerate(self.names) if name in names], dtype=np.int64
        )

    def rows_named(self, names: frozenset[str] | None) -> Int64s:
        """Row numbers of the events whose name is in ``names`` (every row for ``None``)."""
        codes = self.name_codes(names)
        if codes is None:
            return np.arange(self.size, dtype=np.int64)
        return np.flatnonzero(np.isin(self.name_code, codes)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class StagedProfile:
    """One profile as a batch left it: its id, new version, state, and its batch index."""

    index: int
    profile_id: str
    version: int
    state: ProfileState
    merged_from: tuple[str, ...]


class BatchStage(Protocol):
    """A step over an applied batch, run in the transaction that stores its profiles.

    ``name`` appears in errors and metrics. ``counters`` names the event counters the stage
    reads from profile states (``personify.profiles.counters``): the batch keeps them as it
    applies, before ``apply`` runs. ``apply`` gets the connection of the batch's
    transaction, the batch's columns and every touched profile (``profiles[p]`` is the
    profile at index ``p`` of ``batch.profile``). Neither may commit.
    """

    name: str

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        """The event counters this stage reads (none: an empty sequence)."""
        ...

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        """Apply the batch's effect of this stage (vectorised over the columns)."""
        ...
