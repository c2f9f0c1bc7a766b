"""What a group commit of the SQLite log does for every record, compiled where it was built.

A commit hashes each record's dedupe key, asks the dedupe index whether any was seen, packs
the records' keys, dedupe keys and payloads into the chunk row's three msgpack columns, and
answers each record's ``AppendResult``. In Python that is several steps per record; the C
module ``_chunk_native.c`` does each in one pass (and keeps the dedupe index as a table of
int64 pairs). ``chunk_tools(native=False)``, or a build without a C compiler, gives the Python
versions, which are the reference: tests hold the two to the same bytes.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import msgspec

from personify.eventlog.base import AppendResult, LogRecord
from personify.eventlog.dedupe_index import DedupeIndex, DedupeLookup, dedupe_hashes

try:
    from personify.eventlog import _chunk_native
except ImportError:  # built without a C compiler
    _chunk_native = None  # type: ignore[assignment]
else:
    _chunk_native.setup(AppendResult)

NATIVE_AVAILABLE = _chunk_native is not None

_pack = msgspec.msgpack.Encoder().encode

# tuple.__new__ builds the NamedTuple without running its Python __new__ (once per record)
_new_result: Callable[[tuple[str, bool]], AppendResult] = functools.partial(
    tuple.__new__, AppendResult
)

Columns = tuple[bytes, bytes, bytes]


def record_hashes(records: Sequence[LogRecord]) -> bytes:
    """Each record's dedupe hash as native int64 (0 where it has no dedupe key): the bytes a
    chunk row stores in ``hashes``."""
    digests = dedupe_hashes(r.dedupe_key for r in records if r.dedupe_key is not None)
    return array(
        "q", [0 if r.dedupe_key is None else digests[r.dedupe_key] for r in records]
    ).tobytes()


def pack_columns(records: Sequence[LogRecord]) -> Columns:
    """The records' keys, dedupe keys and payloads, each list packed with msgpack."""
    return (
        _pack([r.key for r in records]),
        _pack([r.dedupe_key for r in records]),
        _pack([r.payload for r in records]),
    )


def fresh_results(first_offset: int, count: int) -> list[AppendResult]:
    """The results of ``count`` records appended (none a duplicate) from ``first_offset`` on."""
    offsets = map(str, range(first_offset, first_offset + count))
    return list(map(_new_result, zip(offsets, repeat(False))))


@dataclass(frozen=True, slots=True)
class ChunkTools:
    """The per-record steps of a commit, compiled or in Python."""

    native: bool
    record_hashes: Callable[[list[LogRecord]], bytes]
    pack_columns: Callable[[list[LogRecord]], Columns]
    fresh_results: Callable[[int, int], list[AppendResult]]
    new_index: Callable[[], DedupeLookup]


def _or_python(compiled: Callable[[Any], Any], python: Callable[[Any], Any]) -> Callable[..., Any]:
    """``compiled``, handing to ``python`` what it answers None for (a record whose key is not
    a str, say)."""

    def call(records: Any) -> Any:
        out = compiled(records)
        return python(records) if out is None else out

    return call


def chunk_tools(*, native: bool = True) -> ChunkTools:
    """The compiled steps when ``native`` and built, else the Python ones."""
    if native and _chunk_native is not None:
        return ChunkTools(
            native=True,
            record_hashes=_or_python(_chunk_native.record_hashes, record_hashes),
            pack_columns=_or_python(_chunk_native.pack_columns, pack_columns),
            fresh_results=_chunk_native.fresh_results,
            new_index=_chunk_native.HashIndex,
        )
    return ChunkTools(
        native=False,
        record_hashes=record_hashes,
        pack_columns=pack_columns,
        fresh_results=fresh_results,
        new_index=DedupeIndex,
    )
