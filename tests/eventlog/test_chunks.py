"""The compiled commit steps (``_chunk_native.c``) give what the Python ones give, byte for byte.

The chunk row's hashes and columns are stored and read back by every later release, and the
dedupe index is rebuilt from the stored hashes: a compiled step that differed from the Python
one in a single byte would corrupt a file or let a duplicate through.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.eventlog.base import AppendResult, LogRecord
from personify.eventlog.chunks import (
    NATIVE_AVAILABLE,
    chunk_tools,
    fresh_results,
    pack_columns,
    record_hashes,
)
from personify.eventlog.dedupe_index import DedupeIndex, DedupeLookup, dedupe_hash, hash_values
from personify.eventlog.sqlite import SQLiteEventLog
from tests.conftest import service_missing

if not NATIVE_AVAILABLE:
    service_missing("the C log steps were not built (no C compiler when installing?)", module=True)

from personify.eventlog import _chunk_native  # after the skip: it may be missing

COMPILED = chunk_tools(native=True)


def compiled_hash(key: str) -> int:
    """The compiled dedupe hash of one key (through ``record_hashes``)."""
    hashes = _chunk_native.record_hashes([LogRecord(b"", "k", key)])
    assert hashes is not None
    return hash_values(hashes)[0]


# strings around every msgpack length boundary (fixstr 31/32, str8 255/256), any code point
_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=120, max_size=300),
    st.sampled_from(["", "a" * 31, "a" * 32, "é" * 128, "a" * 255, "a" * 256, "x" * 70_000]),
)
_payload = st.one_of(
    st.binary(max_size=300), st.sampled_from([b"", b"p" * 255, b"p" * 256, b"p" * 70_000])
)
_records = st.lists(st.builds(LogRecord, _payload, _text, st.one_of(st.none(), _text)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_the_compiled_hash_is_hashlibs_blake2b(key: str) -> None:
    assert compiled_hash(key) == dedupe_hash(key)


@pytest.mark.parametrize("length", [0, 1, 63, 64, 127, 128, 129, 255, 256, 257, 1000])
def test_the_compiled_hash_across_block_boundaries(length: int) -> None:
    rng = random.Random(length)
    key = "".join(rng.choice("ab:é€😀-0") for _ in range(length))
    assert compiled_hash(key) == dedupe_hash(key)


def test_the_compiled_hash_keeps_the_pinned_value() -> None:
    assert compiled_hash("src:m1") == -4568040027926427808  # pinned in the index tests


@settings(max_examples=200, deadline=None)
@given(_records)
def test_hashes_and_columns_match_the_python_steps(records: list[LogRecord]) -> None:
    assert COMPILED.record_hashes(records) == record_hashes(records)
    assert COMPILED.pack_columns(records) == pack_columns(records)
    keys, dedupe_keys, payloads = COMPILED.pack_columns(records)
    # what the chunk row stores is what msgspec reads back
    assert msgspec.msgpack.decode(keys) == [r.key for r in records]
    assert msgspec.msgpack.decode(dedupe_keys) == [r.dedupe_key for r in records]
    assert msgspec.msgpack.decode(payloads) == [r.payload for r in records]


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 65_535, 65_536])
def test_array_headers_at_every_size(count: int) -> None:
    records = [LogRecord(b"", "k", None)] * count
    assert COMPILED.pack_columns(records) == pack_columns(records)


def test_values_the_compiled_steps_do_not_handle_take_the_python_path() -> None:
    odd = [LogRecord(bytearray(b"x"), "k", "d"), LogRecord(b"y", "k", "d2")]  # type: ignore[arg-type]
    assert _chunk_native.pack_columns(odd) is None
    assert COMPILED.pack_columns(odd) == pack_columns(odd)
    assert _chunk_native.record_hashes([("p", "k", 5)]) is None  # a dedupe key that is no str
    assert _chunk_native.record_hashes((LogRecord(b"", "k", "d"),)) is None  # not a list
    # a lone surrogate cannot be encoded: the Python path raises, as str.encode does
    lone = [LogRecord(b"", "k", "\ud800")]
    assert _chunk_native.record_hashes(lone) is None
    with pytest.raises(UnicodeEncodeError):
        COMPILED.record_hashes(lone)


@pytest.mark.parametrize(("first", "count"), [(1, 0), (1, 3), (999, 5), (2**40, 2)])
def test_fresh_results_match(first: int, count: int) -> None:
    compiled = COMPILED.fresh_results(first, count)
    assert compiled == fresh_results(first, count)
    assert all(type(result) is AppendResult for result in compiled)


def _both() -> list[DedupeLookup]:
    return [DedupeIndex(freeze_at=4), _chunk_native.HashIndex()]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-5, 40)),
        st.tuples(st.just("run"), st.lists(st.integers(-5, 40), max_size=6)),
        st.tuples(st.just("many"), st.lists(st.integers(-5, 40), max_size=6)),
        st.tuples(st.just("expire"), st.integers(0, 5)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_the_compiled_index_answers_as_the_python_one(ops: list[tuple[str, object]]) -> None:
    indexes = _both()
    offset = 1
    for op, arg in ops:
        for index in indexes:
            if op == "add":
                index.add(int(arg), offset)  # type: ignore[call-overload]
            elif op == "run":
                hashes = np.array(arg, dtype=np.int64).tobytes()
                index.add_run(hashes, offset)
            elif op == "many":
                values = np.array(arg, dtype=np.int64)
                index.add_many(values, np.arange(offset, offset + len(values), dtype=np.int64))
            else:
                index.expire(index.floor + int(arg))  # type: ignore[call-overload]
        offset += len(arg) if isinstance(arg, list) else 1
        wanted = list(range(-5, 41))
        python, compiled = indexes
        assert compiled.find(wanted) == python.find(wanted)
        assert compiled.floor == python.floor
        for probe in ([3, 3], [7], [0, 0], [1, 2, 3], []):
            hashes = np.array(probe, dtype=np.int64).tobytes()
            assert compiled.probe(hashes) == python.probe(hashes)


def test_the_compiled_index_grows_and_leaves_expired_entries_behind() -> None:
    index = _chunk_native.HashIndex()
    rng = np.random.default_rng(7)
    hashes = rng.integers(1, 2**62, size=200_000, dtype=np.int64)
    for start in range(0, len(hashes), 1000):
        index.add_run(hashes[start : start + 1000].tobytes(), start + 1)
        index.expire(max(0, start - 20_000))  # a window of about 20,000 offsets
    assert index.find(hashes[-100:].tolist()) == {
        int(h): len(hashes) - 100 + i + 1 for i, h in enumerate(hashes[-100:])
    }
    assert index.find(hashes[:100].tolist()) == {}
    # rebuilt without the expired entries whenever it filled: sized by the window, not the total
    assert index.capacity <= 131_072
    index.expire(10**9)
    assert len(index) == 0 and index.capacity == 1024


async def test_both_ways_write_the_same_file(tmp_path: Path) -> None:
    rows = []
    for native in (True, False):
        log = SQLiteEventLog(tmp_path / f"{native}.db", durability="off", native=native)
        await log.start()
        try:
            answers = [
                await log.append(
                    [LogRecord(f"p{i}".encode(), f"k{i % 3}", f"s:{i}") for i in range(50)]
                ),
                await log.append([LogRecord(b"again", "k", "s:3"), LogRecord(b"free", "k", None)]),
                await log.append(
                    [LogRecord(b"twice", "k", "s:x"), LogRecord(b"twice", "k", "s:x")]
                ),
            ]
        finally:
            await log.close()
        with sqlite3.connect(tmp_path / f"{native}.db") as conn:
            stored = conn.execute(
                "SELECT first_offset, count, hashes, keys, dedupe_keys, payloads FROM chunk"
            ).fetchall()
        rows.append((answers, stored))
    assert rows[0] == rows[1]
    answers, stored = rows[0]
    assert [r.duplicate for r in answers[1]] == [True, False]
    assert answers[1][0].offset == "4"
    assert [r.duplicate for r in answers[2]] == [False, True]
    assert [count for _, count, *_ in stored] == [50, 1, 1]
