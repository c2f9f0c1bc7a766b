"""The dedupe index of the SQLite log: lookups across levels and runs, merges, expiry, and
its memory budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.eventlog.sqlite.dedupe import DedupeIndex, dedupe_hash


def test_a_hash_is_xxh3_stable_and_never_zero() -> None:
    # chunks store the hash and the index is rebuilt from them: a hash that changed between
    # processes or releases (as Python's own str hash does) would let duplicates through
    assert dedupe_hash("src:m1") == 5142279555866697382
    assert dedupe_hash("src:m1") == xxhash.xxh3_64_intdigest(b"src:m1")
    assert dedupe_hash("src:m1") != dedupe_hash("src:m2")
    assert all(0 < dedupe_hash(f"k{i}") < 2**64 for i in range(1000))


def test_entries_are_found_after_freezing_and_merging() -> None:
    index = DedupeIndex(freeze_at=8)
    for offset in range(1, 101):
        index.add(offset * 7919, offset)
    assert index.level_count >= 1, "100 entries with freeze_at=8 must have frozen levels"
    # size-tiered merging keeps the levels logarithmic
    assert index.level_count <= 7
    assert len(index) == 100
    found = index.find([offset * 7919 for offset in range(1, 101)] + [13])
    assert found == {offset * 7919: offset for offset in range(1, 101)}


def test_the_newest_offset_of_a_hash_wins() -> None:
    index = DedupeIndex(freeze_at=4)
    index.add(42, 1)
    for offset in range(2, 10):
        index.add(1000 + offset, offset)
    index.add(42, 10)  # re-appended after its first entry was frozen
    assert index.find([42]) == {42: 10}
    for offset in range(11, 30):
        index.add(2000 + offset, offset)
    assert index.find([42]) == {42: 10}


def test_entries_below_the_floor_are_not_found_and_levels_go() -> None:
    index = DedupeIndex(freeze_at=4)
    for offset in range(1, 21):
        index.add(offset, offset)
    index.expire(11)
    assert index.find(list(range(1, 21))) == {offset: offset for offset in range(11, 21)}
    index.expire(21)
    assert index.find(list(range(1, 21))) == {}
    assert len(index) == 0, "a level wholly below the floor is dropped"
    index.expire(5)  # the floor never moves back
    assert index.floor == 21


def test_bulk_loading_skips_records_without_a_key() -> None:
    index = DedupeIndex(freeze_at=16)
    hashes = np.array([5, 0, 7, 5, *range(100, 200)], dtype=np.uint64)
    offsets = np.arange(1, len(hashes) + 1, dtype=np.int64)
    index.add_many(hashes, offsets)
    assert index.find([5, 7, 0, 150]) == {5: 4, 7: 3, 150: 55}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.booleans()), max_size=200), st.integers(0, 120))
def test_lookups_match_a_plain_dict(entries: list[tuple[int, bool]], floor: int) -> None:
    index = DedupeIndex(freeze_at=4)
    model: dict[int, int] = {}
    for offset, (digest, bulk) in enumerate(entries, start=1):
        if bulk:
            index.add_many(np.array([digest], dtype=np.uint64), np.array([offset], dtype=np.int64))
        else:
            index.add(digest, offset)
        model[digest] = offset
    index.expire(floor)
    expected = {h: o for h, o in model.items() if o >= floor}
    assert index.find(list(range(1, 41))) == expected


def test_beyond_its_budget_the_index_spills_to_runs_and_stays_within_it(tmp_path: Path) -> None:
    budget = 256 * 1024
    index = DedupeIndex(memory_bytes=budget, spill_folder=tmp_path)
    rng = np.random.default_rng(7)
    digests = rng.integers(1, 2**64 - 1, size=200_000, dtype=np.uint64, endpoint=True)
    for start in range(0, len(digests), 1000):
        for offset in range(start, start + 1000):
            index.add(int(digests[offset]), offset + 1)
        assert index.memory_bytes <= budget
    assert index.run_count >= 4
    # exact: every hash held is found with its offset, none that is not
    sample = rng.choice(len(digests), size=2000, replace=False)
    wanted = [int(digests[i]) for i in sample]
    assert index.find(wanted) == {int(digests[i]): int(i) + 1 for i in sample}
    absent = rng.integers(1, 2**63, size=2000, dtype=np.uint64).tolist()
    held = set(digests.tolist())
    assert index.find([d for d in absent if d not in held]) == {}
    # runs wholly below the floor go, and take their files with them
    runs_before = index.run_count
    index.expire(150_001)
    assert index.run_count < runs_before
    assert index.find([int(digests[0]), int(digests[199_999])]) == {int(digests[199_999]): 200_000}
    index.close()


def test_filters_over_their_share_are_folded_and_answers_stay_exact(tmp_path: Path) -> None:
    # a budget this small leaves room for about one filter: older ones are OR-ed together
    index = DedupeIndex(memory_bytes=32 * 1024, spill_folder=tmp_path)
    for offset in range(1, 40_001):
        index.add(offset * 2_654_435_761, offset)
    assert index.run_count > len(index._filters) >= 1
    wanted = [offset * 2_654_435_761 for offset in range(1, 40_001, 97)]
    assert index.find(wanted) == {d: d // 2_654_435_761 for d in wanted}
    assert index.find([3, 5, 7]) == {}
    index.close()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 300), st.booleans()), max_size=1500),
    st.integers(0, 1600),
)
def test_spilling_lookups_match_a_plain_dict(entries: list[tuple[int, bool]], floor: int) -> None:
    # a tiny budget: levels spill to runs after a few dozen entries
    index = DedupeIndex(memory_bytes=2048, freeze_at=16)
    model: dict[int, int] = {}
    for offset, (digest, bulk) in enumerate(entries, start=1):
        if bulk:
            index.add_many(np.array([digest], dtype=np.uint64), np.array([offset], dtype=np.int64))
        else:
            index.add(digest, offset)
        model[digest] = offset
    index.expire(floor)
    expected = {h: o for h, o in model.items() if o >= floor}
    assert index.find(list(range(1, 301))) == expected
    index.close()
