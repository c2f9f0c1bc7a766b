"""Process-wide tuning made by ``personify serve`` and ``personify worker`` at start-up.

These settings belong to a process, never to a library: the app factory and the stream
worker leave the garbage collector and the allocator as they found them, so an embedder or a
test keeps its own. ``PERSONIFY_PROCESS_TUNING=false`` turns all of it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys

# a request or a worker batch allocates many short-lived tracked objects; at Python's default
# of 700 allocations the youngest generation is scanned every few requests, and a batch of
# decoded events was rescanned over and over as it grew
GC_YOUNG_THRESHOLD = 50_000
# glibc's mallopt parameters, and what the server sets them to (see keep_freed_memory)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
_TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; whether it could (glibc only).

    A group commit builds buffers of a few MB (the chunk's packed columns, and SQLite's copy
    of them) and frees them at once. By default glibc serves such sizes with a fresh mmap and
    gives the pages back on free, so every commit paid a page fault per 4 KB written. Raised
    thresholds keep them on the heap (up to 256 MB of free heap is kept before trimming).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )


def quiet_openmp() -> None:
    """Make OpenMP threads (LightGBM's, for the churn and lifetime-value models) sleep while
    they wait instead of spinning, unless the environment chose already.

    By default an OpenMP team spins between parallel regions. In a process that also serves
    requests and applies batches, a spinning thread takes the core the interpreter needs: on
    2 busy cores, 100 boosting rounds on 50,000 rows took 21 s spinning against 0.7 s passive,
    and a one-profile score's p99 fell from 40 ms to 5 ms (bench/README.md, "Predictions").
    OpenMP reads this when LightGBM's library loads, so call it before anything imports it.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def tune_process() -> None:
    """Retune the cyclic collector and the allocator for a long-running server process."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    keep_freed_memory()


def freeze_startup_objects() -> None:
    """Move everything built so far (modules, settings, the app, connections) out of the
    collector's sight: it lives as long as the process, so rescanning it is wasted work."""
    gc.collect()
    gc.freeze()
