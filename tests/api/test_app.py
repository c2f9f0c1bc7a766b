"""Process-level settings the app factory makes for the server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from personify.api.app import keep_freed_memory
from personify.eventlog.chunks import NATIVE_AVAILABLE
from tests.conftest import service_missing

# packs a 3,000-record chunk (about 2 MB of columns) twenty times, as group commits under
# batch load do, and prints the minor page faults that took
_COMMITS = textwrap.dedent(
    """
    import resource, sys
    from personify.eventlog.base import LogRecord
    from personify.eventlog.chunks import chunk_tools
    if sys.argv[1] == "keep":
        from personify.api.app import keep_freed_memory
        assert keep_freed_memory()
    pack = chunk_tools(native=True).pack_columns
    records = [LogRecord(b"p" * 700, f"key-{i}", f"source:{i:032x}") for i in range(3000)]
    pack(records)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        pack(records)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _COMMITS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_a_commits_buffers_reuse_freed_memory_instead_of_mapping_it_again() -> None:
    if not NATIVE_AVAILABLE:
        service_missing("the compiled commit steps (_chunk_native) are not built")
    # by default each pack maps its 2 MB afresh (a fault per 4 KB page), then unmaps it
    default = _faults("default")
    kept = _faults("keep")
    assert default > 20 * 256
    assert kept < default / 10


def test_keeping_freed_memory_can_be_asked_twice() -> None:
    first = keep_freed_memory()
    assert first == sys.platform.startswith("linux")
    assert keep_freed_memory() == first
