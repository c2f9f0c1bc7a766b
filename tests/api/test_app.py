"""Process tuning: made by `personify serve` and `personify worker` at start-up, never by
the app factory, its lifespan or the stream worker."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from personify.api.app import create_app
from personify.cli.tuning import GC_YOUNG_THRESHOLD, keep_freed_memory
from personify.runtime import Runtime
from tests.conftest import make_settings

# packs a 3,000-record chunk (about 2 MB of columns) twenty times, as group commits under
# batch load do, and prints the minor page faults that took
_COMMITS = textwrap.dedent(
    """
    import resource, sys
    from personify.eventlog.base import LogRecord
    from personify.eventlog.sqlite.chunks import pack_columns
    if sys.argv[1] == "keep":
        from personify.cli.tuning import keep_freed_memory
        assert keep_freed_memory()
    records = [LogRecord(b"p" * 700, f"key-{i}", f"source:{i:032x}") for i in range(3000)]
    pack_columns(records)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        pack_columns(records)
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
    # by default each pack maps its buffers afresh (a fault per 4 KB page), then unmaps them
    default = _faults("default")
    kept = _faults("keep")
    assert default > 20
    assert kept < default / 10


def test_keeping_freed_memory_can_be_asked_twice() -> None:
    first = keep_freed_memory()
    assert first == sys.platform.startswith("linux")
    assert keep_freed_memory() == first


async def test_the_app_and_its_lifespan_leave_the_collector_as_they_found_it(
    tmp_path: Path,
) -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    settings = make_settings(tmp_path / "data", run_worker=False)
    runtime = Runtime.build(settings)
    app = create_app(settings, services=runtime)
    asgi = app.app
    scope_state: dict[str, Any] = {}
    answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(
        asgi(
            {"type": "lifespan", "asgi": {"version": "3.0"}, "state": scope_state},
            messages.get,
            answers.put,
        )
    )
    try:
        started = await asyncio.wait_for(answers.get(), 30)
        assert started["type"] == "lifespan.startup.complete", started
        assert gc.get_threshold() == thresholds
        assert gc.get_freeze_count() == frozen
        assert gc.isenabled()
    finally:
        await messages.put({"type": "lifespan.shutdown"})
        stopped = await asyncio.wait_for(answers.get(), 30)
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        await task


async def test_the_collector_stays_on_while_the_worker_applies_a_batch(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", run_worker=False)
    runtime = Runtime.build(settings)
    app = create_app(settings, services=runtime)
    await runtime.start()
    seen: list[bool] = []
    try:
        _, write_key = runtime.sources.create("web")
        batch = [{"type": "track", "userId": f"u{i % 50}", "event": "E"} for i in range(2000)]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
            assert response.json()["accepted"] == 2000
        done = asyncio.Event()

        async def watch() -> None:
            # what the API's requests would see while the worker works through its batch
            while not done.is_set():
                seen.append(gc.isenabled())
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        await runtime.worker.run(until_idle=True)
        done.set()
        await watcher
    finally:
        await runtime.close()
    assert runtime.worker.stats.events_applied == 2000
    assert len(seen) > 1 and all(seen)


_SERVED = textwrap.dedent(
    """
    import gc
    from personify.cli.main import served_app
    served_app()
    print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
    """
)


@pytest.mark.parametrize(("setting", "tuned"), [(None, True), ("false", False)])
def test_personify_serve_tunes_its_process_unless_told_not_to(
    tmp_path: Path, setting: str | None, tuned: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")}
    env |= {"PERSONIFY_DATA_DIR": str(tmp_path / "data"), "PERSONIFY_PII_HASH_KEY": "k"}
    if setting is not None:
        env["PERSONIFY_PROCESS_TUNING"] = setting
    done = subprocess.run(
        [sys.executable, "-c", _SERVED],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    threshold, frozen = done.stdout.split()
    assert int(threshold) == (GC_YOUNG_THRESHOLD if tuned else 700)
    assert frozen == str(tuned)
