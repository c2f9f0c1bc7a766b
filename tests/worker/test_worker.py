"""The stream worker over a real SQLite log and state database."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from personify.profiles.events import view_event
from personify.runtime import Runtime
from personify.segments.membership import MembershipChanges, is_membership_payload
from personify.worker.heartbeats import Heartbeat
from tests.profiles.factory import event, shop_events
from tests.worker.conftest import (
    append,
    append_raw,
    identity_graph,
    stored_profiles,
    worker_settings,
)


async def test_the_worker_applies_the_log_and_leaves_no_lag(services: Runtime) -> None:
    events = shop_events(20, 25)
    await append(services, events)
    assert await services.log.lag("worker") == len(events)
    await services.worker.run(until_idle=True)
    stats = services.worker.stats
    assert (stats.events_applied, stats.duplicates, stats.dead_lettered) == (len(events), 0, 0)
    assert stats.lag == 0
    assert await services.log.lag("worker") == 0
    document = await services.profiles.get("user-0003")
    assert document["profileId"] == "user-0003"
    assert document["features"]["events_total"] == 25


async def test_redelivered_events_change_nothing(services: Runtime) -> None:
    events = shop_events(10, 20)
    await append(services, events)
    await services.worker.run(until_idle=True)
    before = stored_profiles(services)
    # the same events again (a producer retry past the ingest dedupe window, or a replay)
    await append(services, events)
    await services.worker.run(until_idle=True)
    assert stored_profiles(services) == before
    assert services.worker.stats.duplicates == len(events)


async def test_a_crash_between_applying_and_committing_is_harmless(tmp_path: Path) -> None:
    events = shop_events(10, 20)
    clean = Runtime.build(worker_settings(tmp_path / "clean"))
    crashed = Runtime.build(worker_settings(tmp_path / "crashed"))
    for target in (clean, crashed):
        await target.start()
        await append(target, events)
    await clean.worker.run(until_idle=True)
    # the state transaction of the first 150 events committed, then the process died before
    # the log commit: the log still holds all of them for this group
    half = [view_event(msgspec.json.decode(msgspec.json.encode(e))) for e in events[:150]]
    crashed.worker._processor.apply(half)
    await crashed.worker.run(until_idle=True)
    assert crashed.worker.stats.duplicates == 150
    assert stored_profiles(crashed) == stored_profiles(clean)
    assert identity_graph(crashed) == identity_graph(clean)
    for target in (clean, crashed):
        await target.close()


async def test_profiles_read_after_an_update_are_never_stale(services: Runtime) -> None:
    await append(services, [event("track", "m1", 0, user_id="kim", name="Clicked")])
    await services.worker.run(until_idle=True)
    await asyncio.sleep(0.1)  # the invalidation marker (50 ms here) has expired
    first = await services.profiles.get("kim")
    second = await services.profiles.get("kim")
    assert first["features"] == second["features"]
    assert first["features"]["events_total"] == 1
    assert (services.profiles.stats.fills, services.profiles.stats.hits) == (1, 1)

    await append(
        services,
        [event("identify", "m2", 1, user_id="kim", anonymous_id="dev-k", traits={"a": 1})],
    )
    await services.worker.run(until_idle=True)
    for identity in ("kim", "dev-k"):
        document = await services.profiles.get(identity)
        assert document["features"]["events_total"] == 2
        assert document["traits"] == {"a": 1}


async def test_the_in_process_worker_follows_the_collector(tmp_path: Path) -> None:
    services = Runtime.build(worker_settings(tmp_path / "data", run_worker=True))
    await services.start()
    try:
        source, _ = services.sources.create("web")
        outcome = await services.collector.collect(
            source, [{"type": "track", "userId": "lee", "event": "Signed Up"}]
        )
        assert outcome.accepted == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if services.worker.stats.events_applied:
                break
            await asyncio.sleep(0.01)
        document = await services.profiles.get("lee")
        assert document["features"]["event_counts"]["Signed Up"]["all"] == 1
        status = services.worker.status()
        assert status["running"] and status["eventsApplied"] == 1
    finally:
        await services.close()
    assert not services.worker.running


async def test_heartbeats_report_the_worker_and_forget_dead_ones(services: Runtime) -> None:
    long_ago = services.clock.now() - timedelta(days=2)
    services.heartbeats.beat(
        Heartbeat("worker-gone-123", "worker", long_ago, long_ago, 5, 0, 0, 0.0, 0)
    )
    await append(services, shop_events(3, 5))
    await services.worker.run(until_idle=True)
    beats = services.heartbeats.recent(since=long_ago - timedelta(days=1))
    assert [b.consumer for b in beats] == [services.worker.consumer]
    assert beats[0].events_applied == 15
    assert beats[0].lag == 0


async def test_membership_events_are_read_and_never_applied(services: Runtime) -> None:
    # the relay's own Segment Entered/Exited (known by their bytes), and one of that source
    # written otherwise (its sourceId first, read in full): neither is the user's activity
    changes = MembershipChanges(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    changes.enter("kim", True, "buyers", 1, "rule")
    changes.exit(7, "kim", True, "buyers", 1, "sweep")
    written = [payload.encode() for _, _, payload in changes.events]
    assert all(is_membership_payload(p) for p in written)
    reordered = msgspec.json.decode(written[0])
    reordered = {"sourceId": reordered.pop("sourceId"), **reordered}
    reordered["messageId"] = "seg-reordered"
    await append_raw(services, [*written, msgspec.json.encode(reordered)])
    await append(services, [event("track", "m1", 0, user_id="kim", name="Clicked")])
    await services.worker.run(until_idle=True)
    stats = services.worker.stats
    assert (stats.entries_read, stats.events_applied, stats.dead_lettered) == (4, 1, 0)
    document = await services.profiles.get("kim")
    assert document["features"]["events_total"] == 1
