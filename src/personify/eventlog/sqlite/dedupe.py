"""The SQLite log's dedupe index: 64-bit key hash → offset of the newest record with it.

Exact answers within a memory budget. The index is a small LSM tree:

* the newest entries sit in a dict, frozen every ``freeze_at`` entries into a sorted pair of
  arrays (a *level*, 16 bytes an entry); levels of similar size merge, so a lookup searches
  a dict and a few arrays;
* when the levels outgrow their share of the budget they are merged, one slice of the hash
  space at a time, into a *run*: a sorted file of (hash, offset) pairs in 4 KiB blocks. In
  memory a run keeps the first hash of each block and a Bloom filter; a lookup reads a block
  (one ``pread``) only for a hash its filter may hold.

Filters cost 16 bits an entry. When they outgrow their share, the two oldest are
OR-ed into one (the filter of the union of their runs): memory stays in the budget and the
false-positive rate, that is the number of block reads, rises instead. Answers stay exact
either way: a hash is only reported when the dict, a level or a run's block holds it, and
the log confirms every hit against the stored key.

Runs are anonymous temporary files beside the log (deleted by the kernel when the process
ends): the log rebuilds the index at start from the hashes its chunks store, so nothing here
needs to survive a restart.

Expiry is by offset: offsets grow with time, so "appended within the window" is
"offset ≥ floor" for a floor the log moves forward as time passes; levels and runs wholly
below it are dropped.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import xxhash

from personify.eventlog.base import LogRecord

Hashes = npt.NDArray[np.uint64]
Offsets = npt.NDArray[np.int64]

DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024
_MAX_FREEZE_AT = 65_536
# a dict entry of two Python ints (a 64-bit hash is a three-digit int), with the table's slack
_DICT_ENTRY_BYTES = 128
_PAIR_BYTES = 16
_BLOCK_PAIRS = 256  # 4 KiB, one page: a lookup in a run reads one block
_BLOOM_BITS_PER_KEY = 16
# about 0.06% false positives at 16 bits a key (the optimum, 11 probes, saves little more)
_BLOOM_PROBES = 8
_SPILL_SLICE = 65_536  # entries merged at a time when levels go to a run

_xxh3 = xxhash.xxh3_64_intdigest


def dedupe_hash(key: str) -> int:
    """The 64-bit hash of a dedupe key (xxh3), never 0: 0 marks "no dedupe key" in a chunk."""
    return _xxh3(key.encode()) or 1


def record_hashes(records: Sequence[LogRecord]) -> bytes:
    """Each record's dedupe hash as native uint64 (0 where it has no dedupe key): the bytes a
    chunk row stores in ``hashes``."""
    xxh3 = _xxh3
    return array(
        "Q",
        [0 if (key := r.dedupe_key) is None else (xxh3(key.encode()) or 1) for r in records],
    ).tobytes()


def hash_values(hashes: bytes) -> array[int]:
    """A chunk's ``hashes`` column as ints."""
    values = array("Q")
    values.frombytes(hashes)
    return values


def hash_array(hashes: bytes) -> Hashes:
    """A chunk's ``hashes`` column as a numpy array (no copy)."""
    return np.frombuffer(hashes, dtype=np.uint64)


@dataclass(slots=True)
class _Level:
    hashes: Hashes  # sorted ascending, each hash once
    offsets: Offsets
    max_offset: int


def _newest_per_hash(hashes: Hashes, offsets: Offsets) -> _Level:
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


def _probes(hashes: Hashes, bits: int) -> tuple[npt.NDArray[np.intp], Hashes]:
    """Each hash's Bloom probes as (word index, bit mask) arrays of shape (n, probes).

    Double hashing (Kirsch and Mitzenmacher 2006): probe i is h1 + i·h2 mod bits, from the
    hash itself (h1) and its high half made odd (h2)."""
    h2 = (hashes >> np.uint64(32)) | np.uint64(1)
    steps = np.arange(_BLOOM_PROBES, dtype=np.uint64)
    positions = (hashes[:, None] + steps[None, :] * h2[:, None]) % np.uint64(bits)
    return (positions >> np.uint64(6)).astype(np.intp), np.uint64(1) << (positions & np.uint64(63))


@dataclass(slots=True)
class _Run:
    """A sorted file of (hash, offset) pairs, with the first hash of each block in memory."""

    file: IO[bytes]
    count: int
    fences: Hashes
    max_offset: int

    def lookup(self, digest: int) -> int | None:
        """The offset stored for ``digest``, read from its block; None if absent."""
        block = int(np.searchsorted(self.fences, np.uint64(digest), side="right")) - 1
        if block < 0:
            return None
        size = _BLOCK_PAIRS * _PAIR_BYTES
        pairs = np.frombuffer(os.pread(self.file.fileno(), size, block * size), dtype=np.uint64)
        hashes = pairs[0::2]
        at = int(np.searchsorted(hashes, np.uint64(digest)))
        if at < len(hashes) and int(hashes[at]) == digest:
            return int(pairs[2 * at + 1])
        return None


@dataclass(slots=True)
class _Filter:
    """A Bloom filter over the hashes of one or more runs (oldest run first)."""

    words: Hashes
    runs: list[_Run] = field(default_factory=list)

    def add(self, hashes: Hashes) -> None:
        words, masks = _probes(hashes, len(self.words) * 64)
        np.bitwise_or.at(self.words, words.ravel(), masks.ravel())

    def may_hold(self, words: npt.NDArray[np.intp], masks: Hashes) -> npt.NDArray[np.bool_]:
        """Per probed hash, whether one of the runs may hold it."""
        held: npt.NDArray[np.bool_] = np.all(self.words[words] & masks, axis=1)
        return held


class _RunWriter:
    """Writes one run, slice by slice of ascending hashes, and fills its filter."""

    def __init__(self, folder: Path | None, bloom_words: int) -> None:
        # lives as long as the run; closed when the run expires or the index closes
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder, prefix="dedupe-")  # noqa: SIM115
        self.filter = _Filter(np.zeros(bloom_words, dtype=np.uint64))
        self.count = 0
        self.max_offset = -1
        self._fences: list[Hashes] = []

    def write(self, hashes: Hashes, offsets: Offsets) -> None:
        if not len(hashes):
            return
        pairs = np.empty((len(hashes), 2), dtype=np.uint64)
        pairs[:, 0] = hashes
        pairs[:, 1] = offsets.astype(np.uint64)
        self.file.write(pairs.tobytes())
        self._fences.append(hashes[(-self.count) % _BLOCK_PAIRS :: _BLOCK_PAIRS].copy())
        self.filter.add(hashes)
        self.count += len(hashes)
        self.max_offset = max(self.max_offset, int(offsets.max()))

    def finish(self) -> _Run:
        self.file.flush()
        fences = np.concatenate(self._fences) if self._fences else np.empty(0, np.uint64)
        run = _Run(self.file, self.count, fences, self.max_offset)
        self.filter.runs.append(run)
        return run


class DedupeIndex:
    """Maps a dedupe hash to the offset of the newest record that had it, from ``floor`` on,
    holding at most about ``memory_bytes`` in memory (see the module's docstring)."""

    def __init__(
        self,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        spill_folder: Path | None = None,
        freeze_at: int | None = None,
    ) -> None:
        # an eighth of the budget for the dict, half for the levels, the rest for filters
        self._freeze_at = freeze_at or max(
            16, min(_MAX_FREEZE_AT, memory_bytes // 8 // _DICT_ENTRY_BYTES)
        )
        self._level_budget = max(1, memory_bytes // 2 // _PAIR_BYTES)  # entries
        # a merge allocates a few times its result: capped, a merge stays well inside the budget
        self._level_cap = max(self._freeze_at, self._level_budget // 4)
        self._filter_budget_bytes = max(
            0, memory_bytes - self._level_budget * _PAIR_BYTES - memory_bytes // 8
        )
        bloom_bits = max(64, self._level_budget * _BLOOM_BITS_PER_KEY)
        self._bloom_words = -(-bloom_bits // 64)
        self._spill_folder = spill_folder
        self._recent: dict[int, int] = {}
        self._levels: list[_Level] = []  # oldest first
        self._filters: list[_Filter] = []  # oldest first; their runs are older than any level
        self.floor = 0

    def __len__(self) -> int:
        """Entries held (expired ones included until a merge or expiry drops them)."""
        return (
            len(self._recent)
            + sum(len(level.hashes) for level in self._levels)
            + sum(run.count for f in self._filters for run in f.runs)
        )

    @property
    def level_count(self) -> int:
        """Frozen arrays a lookup searches besides the dict."""
        return len(self._levels)

    @property
    def run_count(self) -> int:
        """Runs on disk."""
        return sum(len(f.runs) for f in self._filters)

    @property
    def memory_bytes(self) -> int:
        """What the index holds in memory, estimated (the dict) and counted (the arrays)."""
        return (
            len(self._recent) * _DICT_ENTRY_BYTES
            + sum(level.hashes.nbytes + level.offsets.nbytes for level in self._levels)
            + sum(f.words.nbytes + sum(r.fences.nbytes for r in f.runs) for f in self._filters)
        )

    def add(self, digest: int, offset: int) -> None:
        """Record that ``offset`` holds a record with hash ``digest`` (0 is no entry)."""
        if digest:
            self._remember(((digest, offset),))

    def add_run(self, hashes: bytes, first_offset: int) -> None:
        """Record hash ``i`` of ``hashes`` (a chunk's column) at ``first_offset + i``; a 0
        hash is no entry."""
        values = hash_values(hashes)
        pairs = zip(values, range(first_offset, first_offset + len(values)), strict=True)
        self._remember((pair for pair in pairs if pair[0]) if 0 in values else pairs)

    def probe(self, hashes: bytes) -> bool:
        """Whether a hash of ``hashes`` (a chunk's column; 0s skipped) is held from the floor
        on, or repeats within them: if not, every record they belong to is new."""
        wanted = hash_array(hashes)
        wanted = np.sort(wanted[wanted != 0])
        if len(wanted) > 1 and bool((wanted[1:] == wanted[:-1]).any()):
            return True
        # the usual chunk has no key in the dict at all, which one C call tells
        if not self._recent.keys().isdisjoint(hash_values(hashes)):
            return bool(self.find(wanted.tolist()))
        if not (self._levels or self._filters):
            return False
        return bool((self._search(wanted) >= 0).any())

    def _remember(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Take ``(hash, offset)`` pairs into the dict (one ``update``), frozen when full."""
        self._recent.update(pairs)
        if len(self._recent) >= self._freeze_at:
            self._freeze()

    def add_many(self, hashes: Hashes, offsets: Offsets) -> None:
        """Record many entries at once (loading at start, or another writer's chunks)."""
        keep = (hashes != 0) & (offsets >= self.floor)
        hashes, offsets = hashes[keep], offsets[keep]
        if len(hashes) < self._freeze_at // 16:
            self._remember(zip(hashes.tolist(), offsets.tolist(), strict=True))
            return
        # levels stay ordered by age: what the dict holds is older than what comes now
        if self._recent:
            self._freeze()
        for start in range(0, len(hashes), self._level_cap):
            end = start + self._level_cap
            self._levels.append(_newest_per_hash(hashes[start:end], offsets[start:end]))
            self._settle()

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
        if not rest or not (self._levels or self._filters):
            return found
        wanted = np.sort(np.array(rest, dtype=np.uint64))
        hits = self._search(wanted)
        for digest, offset in zip(wanted.tolist(), hits.tolist(), strict=True):
            if offset >= 0:
                found[digest] = offset
        return found

    def _search(self, wanted: Hashes) -> Offsets:
        """The offset of each of ``wanted`` (sorted: numpy's binary searches then reuse each
        other's path through the arrays) in the levels and runs at or above the floor, or -1."""
        floor = self.floor
        hits = np.full(len(wanted), -1, dtype=np.int64)
        for level in reversed(self._levels):  # newest first: the newest offset wins
            if level.max_offset < floor or not len(level.hashes):
                continue
            at = np.searchsorted(level.hashes, wanted)
            np.minimum(at, len(level.hashes) - 1, out=at)
            match = (level.hashes[at] == wanted) & (hits < 0)
            hits[match] = level.offsets[at[match]]
        if self._filters:
            self._find_in_runs(wanted, hits)
        hits[hits < floor] = -1
        return hits

    def _find_in_runs(self, wanted: Hashes, hits: Offsets) -> None:
        """Fill ``hits`` (-1: not found yet) from the runs, newest first."""
        todo = np.flatnonzero(hits < 0)
        if not len(todo):
            return
        words, masks = _probes(wanted[todo], self._bloom_words * 64)
        for bloom in reversed(self._filters):
            for j in np.flatnonzero(bloom.may_hold(words, masks)).tolist():
                slot = int(todo[j])
                if hits[slot] >= 0:
                    continue
                digest = int(wanted[slot])
                for run in reversed(bloom.runs):
                    if run.max_offset < self.floor:
                        continue
                    offset = run.lookup(digest)
                    if offset is not None:
                        hits[slot] = offset
                        break

    def expire(self, floor: int) -> None:
        """Forget entries below ``floor``; whole levels and runs go at once, the rest at the
        next merge."""
        if floor <= self.floor:
            return
        self.floor = floor
        self._levels = [level for level in self._levels if level.max_offset >= floor]
        kept: list[_Filter] = []
        for bloom in self._filters:
            for run in bloom.runs:
                if run.max_offset < floor:
                    run.file.close()
            bloom.runs = [run for run in bloom.runs if run.max_offset >= floor]
            if bloom.runs:
                kept.append(bloom)
        self._filters = kept

    def close(self) -> None:
        """Delete the runs' files."""
        for bloom in self._filters:
            for run in bloom.runs:
                run.file.close()
        self._filters = []

    def _freeze(self) -> None:
        hashes = np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))
        offsets = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        self._recent = {}
        live = offsets >= self.floor
        self._levels.append(_newest_per_hash(hashes[live], offsets[live]))
        self._settle()

    def _settle(self) -> None:
        """Merge the newest levels (size-tiered, which keeps their number logarithmic in the
        entries), and move every level to a run when they outgrow the budget."""
        levels = self._levels
        while (
            len(levels) >= 2
            and 2 * len(levels[-1].hashes) >= len(levels[-2].hashes)
            and len(levels[-1].hashes) + len(levels[-2].hashes) <= self._level_cap
        ):
            newer = levels.pop()
            older = levels.pop()
            hashes = np.concatenate((older.hashes, newer.hashes))
            offsets = np.concatenate((older.offsets, newer.offsets))
            live = offsets >= self.floor
            levels.append(_newest_per_hash(hashes[live], offsets[live]))
        if sum(len(level.hashes) for level in levels) > self._level_budget:
            self._spill()

    def _spill(self) -> None:
        """Merge every level into one run on disk, a slice of the hash space at a time (so the
        merge never holds more than a slice's copy), newest entry winning."""
        levels, self._levels = self._levels, []
        writer = _RunWriter(self._spill_folder, self._bloom_words)
        total = sum(len(level.hashes) for level in levels)
        slices = max(1, -(-total // _SPILL_SLICE))
        starts = [0] * len(levels)
        for number in range(1, slices + 1):
            bound = np.uint64((number << 64) // slices) if number < slices else None
            hashes: list[Hashes] = []
            offsets: list[Offsets] = []
            for i, level in enumerate(levels):  # oldest first: the newest comes last and wins
                end = (
                    len(level.hashes)
                    if bound is None
                    else int(np.searchsorted(level.hashes, bound, side="left"))
                )
                hashes.append(level.hashes[starts[i] : end])
                offsets.append(level.offsets[starts[i] : end])
                starts[i] = end
            merged = _newest_per_hash(np.concatenate(hashes), np.concatenate(offsets))
            live = merged.offsets >= self.floor
            writer.write(merged.hashes[live], merged.offsets[live])
        if not writer.count:  # every entry had expired
            writer.file.close()
            return
        writer.finish()
        self._filters.append(writer.filter)
        # filters over budget: the two oldest become one, over the union of their runs
        while (
            len(self._filters) >= 2
            and len(self._filters) * self._bloom_words * 8 > self._filter_budget_bytes
        ):
            older, newer = self._filters[0], self._filters[1]
            newer.words |= older.words
            newer.runs[:0] = older.runs
            del self._filters[0]
