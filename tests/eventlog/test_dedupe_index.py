"""The in-memory dedupe index of the SQLite log: lookups across levels, merges, expiry."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.eventlog.dedupe_index import DedupeIndex, dedupe_hash


def test_a_hash_is_stable_and_fits_a_signed_64_bit_column() -> None:
    # chunks store the hash and the index is rebuilt from them: a hash that changed between
    # processes or releases (as Python's own str hash does) would let duplicates through
    assert dedupe_hash("src:m1") == -4568040027926427808
    assert dedupe_hash("src:m1") != dedupe_hash("src:m2")
    assert all(-(2**63) <= dedupe_hash(f"k{i}") < 2**63 for i in range(1000))


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
    hashes = np.array([5, 0, 7, 5, *range(100, 200)], dtype=np.int64)
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
            index.add_many(np.array([digest], dtype=np.int64), np.array([offset], dtype=np.int64))
        else:
            index.add(digest, offset)
        model[digest] = offset
    index.expire(floor)
    expected = {h: o for h, o in model.items() if o >= floor}
    assert index.find(list(range(1, 41))) == expected
