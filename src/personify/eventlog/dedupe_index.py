"""The embedded event log's dedupe index: 64-bit key hash → offset, held in memory.

The SQLite log used to keep this index as a table. With random ``messageId`` s every insert
landed on a different B-tree page, so each commit rewrote (and fsynced) about one 4 KiB
page per event: that write amplification, not SQLite's CPU, capped batch ingest. The index
now lives in memory and is rebuilt at start from the hashes each chunk of the log already
stores (8 bytes per event), so the file holds one copy of everything and the index costs
nothing to persist.

Layout, for memory: the newest entries sit in a dict; every ``freeze_at`` entries they are
frozen into a sorted pair of int64 arrays (16 bytes per entry), and frozen levels of similar
size are merged, so a lookup searches a dict and a logarithmic number of arrays.

Expiry is by offset: offsets grow with time, so "appended within the window" is
"offset ≥ floor" for a floor the log moves forward as time passes.

This is the Python index. Where the C module was built the log uses its ``HashIndex``
(``personify.eventlog.chunks``): the same behaviour (``DedupeLookup``) from an open-addressing
table of (hash, offset) pairs, 16 bytes a slot at most three quarters full, rebuilt without
the expired entries when it fills.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]

_FREEZE_AT = 65_536


def dedupe_hashes(keys: Iterable[str]) -> dict[str, int]:
    """``dedupe_hash`` of each key, in one comprehension (a commit hashes every record's key,
    and a function call per key costs as much as the hash)."""
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    return {
        key: from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big", signed=True) or 1
        for key in keys
    }


def hash_values(hashes: bytes) -> array[int]:
    """Hashes stored as native int64 bytes (a chunk's ``hashes`` column) as ints."""
    values = array("q")
    values.frombytes(hashes)
    return values


def dedupe_hash(key: str) -> int:
    """The 64-bit signed hash of a dedupe key, never 0 (0 marks "no dedupe key" in a chunk)."""
    return dedupe_hashes((key,))[key]


class DedupeLookup(Protocol):
    """What the log asks of a dedupe index (``DedupeIndex`` here, or the compiled one)."""

    @property
    def floor(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, digest: int, offset: int) -> None: ...

    def add_run(self, hashes: bytes, first_offset: int) -> None: ...

    def add_many(self, hashes: Int64Array, offsets: Int64Array) -> None: ...

    def find(self, digests: list[int]) -> dict[int, int]: ...

    def probe(self, hashes: bytes) -> bool: ...

    def expire(self, floor: int) -> None: ...


@dataclass(slots=True)
class _Level:
    hashes: Int64Array  # sorted ascending, each hash once
    offsets: Int64Array
    max_offset: int


def _newest_per_hash(hashes: Int64Array, offsets: Int64Array) -> _Level:
    """A level of ``hashes``/``offsets`` (later entries win over earlier ones of the same hash)."""
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    offsets = offsets[order]
    if len(hashes) > 1:
        last_of_run = np.empty(len(hashes), dtype=bool)
        last_of_run[:-1] = hashes[1:] != hashes[:-1]
        last_of_run[-1] = True
        hashes = hashes[last_of_run]
        offsets = offsets[last_of_run]
    return _Level(hashes, offsets, int(offsets.max()) if len(offsets) else -1)


class DedupeIndex:
    """Maps a dedupe hash to the offset of the newest record that had it, from ``floor`` on."""

    def __init__(self, *, freeze_at: int = _FREEZE_AT) -> None:
        self._freeze_at = freeze_at
        self._recent: dict[int, int] = {}
        self._levels: list[_Level] = []  # oldest first
        self.floor = 0

    def __len__(self) -> int:
        """Entries held (expired ones included until a freeze or merge drops them)."""
        return len(self._recent) + sum(len(level.hashes) for level in self._levels)

    @property
    def level_count(self) -> int:
        """Frozen arrays a lookup searches besides the dict."""
        return len(self._levels)

    def add(self, digest: int, offset: int) -> None:
        """Record that ``offset`` holds a record with hash ``digest`` (0 is no entry)."""
        if digest:
            self._remember(((digest, offset),))

    def add_run(self, hashes: bytes, first_offset: int) -> None:
        """Record hash ``i`` of ``hashes`` (native int64, a chunk's column) at
        ``first_offset + i``; a 0 hash is no entry."""
        values = hash_values(hashes)
        pairs = zip(values, range(first_offset, first_offset + len(values)), strict=True)
        self._remember((pair for pair in pairs if pair[0]) if 0 in values else pairs)

    def probe(self, hashes: bytes) -> bool:
        """Whether a hash of ``hashes`` (native int64; 0s skipped) is held from the floor on,
        or repeats within them: if not, every record they belong to is new."""
        keyed = [digest for digest in hash_values(hashes) if digest]
        return len(set(keyed)) < len(keyed) or bool(self.find(keyed))

    def _remember(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Take ``(hash, offset)`` pairs into the dict (one ``update``), frozen when full."""
        self._recent.update(pairs)
        if len(self._recent) >= self._freeze_at:
            self._freeze()

    def add_many(self, hashes: Int64Array, offsets: Int64Array) -> None:
        """Record many entries at once (loading at start, or another writer's chunks)."""
        keep = (hashes != 0) & (offsets >= self.floor)
        hashes, offsets = hashes[keep], offsets[keep]
        if len(hashes) < self._freeze_at // 16:
            self._remember(zip(hashes.tolist(), offsets.tolist(), strict=True))
            return
        # the dict is newer than nothing loaded here only if it is empty; freeze it first so
        # that levels stay ordered by age
        if self._recent:
            self._freeze()
        self._levels.append(_newest_per_hash(hashes, offsets))
        self._merge()

    def find(self, digests: list[int]) -> dict[int, int]:
        """The offset of each hash found at or above ``floor``; absent hashes are left out."""
        floor = self.floor
        found: dict[int, int] = {}
        rest: list[int] = []
        recent = self._recent
        for digest in digests:
            offset = recent.get(digest)
            if offset is not None and offset >= floor:
                found[digest] = offset
            else:
                rest.append(digest)
        if not rest or not self._levels:
            return found
        wanted = np.array(rest, dtype=np.int64)
        hits = np.full(len(wanted), -1, dtype=np.int64)
        for level in reversed(self._levels):  # newest first: the newest offset wins
            if level.max_offset < floor or not len(level.hashes):
                continue
            at = np.searchsorted(level.hashes, wanted)
            np.minimum(at, len(level.hashes) - 1, out=at)
            match = (level.hashes[at] == wanted) & (hits < 0)
            hits[match] = level.offsets[at[match]]
        for digest, offset in zip(rest, hits.tolist(), strict=True):
            if offset >= floor:
                found[digest] = offset
        return found

    def expire(self, floor: int) -> None:
        """Forget entries below ``floor``; whole levels go at once, the rest at the next merge."""
        if floor <= self.floor:
            return
        self.floor = floor
        self._levels = [level for level in self._levels if level.max_offset >= floor]

    def _freeze(self) -> None:
        hashes = np.fromiter(self._recent.keys(), dtype=np.int64, count=len(self._recent))
        offsets = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        self._recent = {}
        live = offsets >= self.floor
        self._levels.append(_newest_per_hash(hashes[live], offsets[live]))
        self._merge()

    def _merge(self) -> None:
        # size-tiered: merge the two newest levels while the newer is at least half the older,
        # which keeps the number of levels logarithmic in the number of entries
        levels = self._levels
        while len(levels) >= 2 and 2 * len(levels[-1].hashes) >= len(levels[-2].hashes):
            newer = levels.pop()
            older = levels.pop()
            hashes = np.concatenate((older.hashes, newer.hashes))
            offsets = np.concatenate((older.offsets, newer.offsets))
            live = offsets >= self.floor
            levels.append(_newest_per_hash(hashes[live], offsets[live]))
