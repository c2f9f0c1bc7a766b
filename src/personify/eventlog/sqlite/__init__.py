"""The embedded event log on one SQLite file, one module per job:

* ``log`` — the adapter: lifecycle, the group-commit queue, durability;
* ``writer`` — what one commit writes, deduplicated within the window;
* ``dedupe`` — the dedupe index (memory-bounded, exact, spilling to files);
* ``chunks`` — the file format (a row per transaction) and tools that read a file;
* ``migrations`` — earlier pre-release layouts brought up to date;
* ``groups`` — the read side: consumer groups, lag, truncation, tail;
* ``checkpoints``, ``syncer`` — WAL checkpoints and the fsync helper process.
"""

from __future__ import annotations

from personify.eventlog.sqlite.chunks import count_records, iter_records
from personify.eventlog.sqlite.dedupe import dedupe_hash
from personify.eventlog.sqlite.log import SQLiteEventLog

__all__ = ["SQLiteEventLog", "count_records", "dedupe_hash", "iter_records"]
