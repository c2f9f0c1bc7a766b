"""Poison events: retried a bounded number of times, dead-lettered with the reason, skipped."""

from __future__ import annotations

from pathlib import Path

from personify.runtime import Runtime
from personify.store.failed_events import NewFailedEvent
from personify.worker.replay import replay_failed
from tests.profiles.factory import encode, event
from tests.worker.conftest import append, append_raw, worker_settings


def good(n: int) -> list[dict[str, object]]:
    return [event("track", f"ok-{i}", i, user_id=f"u{i % 3}", name="Clicked") for i in range(n)]


async def test_unreadable_events_are_dead_lettered_and_the_rest_applied(
    services: Runtime,
) -> None:
    await append(services, good(5))
    await append_raw(
        services,
        [
            b"{not json",
            encode(event("track", "bad-time", 0, user_id="u1", name="X") | {"timestamp": "soon"}),
            encode(
                {"type": "track", "userId": "u1", "event": "X", "timestamp": "2024-01-01T00:00:00Z"}
            ),
        ],
    )
    await append(services, good(10)[5:])
    await services.worker.run(until_idle=True)

    assert services.worker.stats.events_applied == 10
    assert await services.log.lag("worker") == 0
    letters = services.failed_events.list(stage="worker")
    assert [(f.code, f.attempts) for f in letters] == [
        ("undecodable", 1),
        ("invalid_timestamp", 1),
        ("missing_message_id", 1),
    ]
    assert letters[0].payload == "{not json"
    assert letters[1].message_id == "bad-time"
    # the reason names the field, never the value (which may be PII)
    assert "timestamp" in letters[1].reason and "soon" not in letters[1].reason
    documents = [await services.profiles.get(u) for u in ("u0", "u1", "u2")]
    assert sum(d["features"]["events_total"] for d in documents) == 10


async def test_an_event_whose_application_fails_is_retried_then_dead_lettered(
    tmp_path: Path,
) -> None:
    services = Runtime.build(
        worker_settings(tmp_path / "data", profile_max_identities=2, worker_max_attempts=3)
    )
    await services.start()
    try:
        linking = event("identify", "third-id", 5, user_id="zed", anonymous_id="dev-2")
        await append(
            services,
            [
                event("identify", "first", 0, user_id="zed", anonymous_id="dev-1"),
                *good(4),
                linking,  # would give zed a third id: over the limit of 2
                *good(8)[4:],
            ],
        )
        await services.worker.run(until_idle=True)
        stats = services.worker.stats
        assert (stats.events_applied, stats.dead_lettered) == (9, 1)
        assert stats.retries == 2
        assert await services.log.lag("worker") == 0
        [letter] = services.failed_events.list(stage="worker")
        assert (letter.code, letter.attempts, letter.message_id) == (
            "identity_limit",
            3,
            "third-id",
        )
        assert letter.reason.startswith("ValidationError: linking these events")
        assert letter.payload["anonymousId"] == "dev-2"
    finally:
        await services.close()

    # the fix: raise the limit; then the dead letter goes back into the log and applies
    fixed = Runtime.build(worker_settings(tmp_path / "data", profile_max_identities=10))
    await fixed.start()
    try:
        outcome = await replay_failed(fixed.log, fixed.failed_events)
        assert outcome.replayed == [letter.id]
        again = await replay_failed(fixed.log, fixed.failed_events)
        assert again.replayed == []
        await fixed.worker.run(until_idle=True)
        document = await fixed.profiles.get("dev-2")
        assert document["profileId"] == "zed"
        assert document["ids"]["anonymousIds"] == ["dev-1", "dev-2"]
        [replayed] = fixed.failed_events.list(stage="worker")
        assert replayed.replayed_at is not None
    finally:
        await fixed.close()


async def test_replaying_an_already_applied_event_changes_nothing(services: Runtime) -> None:
    data = event("track", "once", 0, user_id="amy", name="Clicked")
    await append(services, [data])
    await services.worker.run(until_idle=True)
    # a dead letter recorded around a crash may name an event that did apply
    services.failed_events.add_many(
        [NewFailedEvent(stage="worker", code="processing_failed", reason="x", payload=data)]
    )
    await replay_failed(services.log, services.failed_events)
    await services.worker.run(until_idle=True)
    assert services.worker.stats.duplicates == 1
    assert (await services.profiles.get("amy"))["features"]["events_total"] == 1
