"""Clusterings as a product: runs over real profiles in a real state database, their segments
and memberships, stable keys across reruns, rollback, names that survive, the worker placing
profiles between runs, schedules, and the lake-backed feature source."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock, format_timestamp
from personify.errors import Conflict, ValidationError
from personify.predict.vectors import lake_feature_source
from personify.profiles.events import datetime_ms, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.state import decode_state, state_text
from personify.profiles.tables import profiles
from personify.segments.clusterings import (
    ClusteringRepository,
    ClusteringRunner,
    FeatureShard,
    feature_vectors,
)
from personify.segments.repository import SegmentRepository
from personify.segments.stage import SegmentStage
from personify.segments.tables import clustering_assignments, segment_members
from personify.store.database import Database
from tests.lake.conftest import normalized, write_lake
from tests.segments.conftest import outbox_events

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FEATURES = FeatureSet()
PATHS = ["orders.all", "revenue.all", "events_total"]


class World:
    """Profiles applied by the worker's processor (with the segment stage), a clustering
    repository and runner reading features from the stored profile states."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = FrozenClock(T0)
        self.segments = SegmentRepository(db, clock=self.clock)
        self.stage = SegmentStage(self.segments, FEATURES, clock=self.clock)
        self.processor = ProfileProcessor(db, FEATURES, clock=self.clock, stages=[self.stage])
        self.clusterings = ClusteringRepository(db, self.segments, FEATURES, clock=self.clock)
        self.runner = ClusteringRunner(
            db, self.clusterings, self.segments, self.source, clock=self.clock
        )
        self.sent = 0
        self.events: list[dict[str, Any]] = []

    def source(
        self, paths: Sequence[str], as_of: datetime
    ) -> tuple[Iterable[FeatureShard], dict[str, Any]]:
        """The stored profile states, in shards of 40 (a port of our own, not a lake)."""
        with self.db.connect() as conn:
            states = {
                str(pid): decode_state(state_text(blob))
                for pid, blob in conn.execute(sa.select(profiles.c.profile_id, profiles.c.state))
            }
        ids = sorted(states)
        shards = []
        for start in range(0, len(ids), 40):
            part = {pid: states[pid] for pid in ids[start : start + 40]}
            shards.append(FeatureShard(*feature_vectors(part, FEATURES, paths, datetime_ms(as_of))))
        return shards, {"source": "state"}

    def send(self, who: str, event: str, **properties: Any) -> None:
        self.sent += 1
        when = format_timestamp(self.clock.now() - timedelta(minutes=1))
        data = {
            "type": "track",
            "messageId": f"m-{self.sent}",
            "userId": who,
            "event": event,
            "properties": properties,
            "timestamp": when,
            "receivedAt": when,
            "sourceId": "src",
        }
        self.events.append(data)
        self.processor.apply([view_event(data)])

    def spender(self, who: str, rng: random.Random) -> None:
        for _ in range(rng.randint(8, 12)):
            self.send(who, "Order Completed", revenue=rng.uniform(150, 250))

    def browser(self, who: str, rng: random.Random) -> None:
        for _ in range(rng.randint(15, 25)):
            self.send(who, "Product Viewed", category="shoes")

    def shopper(self, who: str, rng: random.Random) -> None:
        for _ in range(rng.randint(2, 3)):
            self.send(who, "Order Completed", revenue=rng.uniform(20, 40))
        for _ in range(rng.randint(3, 5)):
            self.send(who, "Product Viewed", category="hats")

    def populate(self, per_kind: int, *, seed: int = 0, prefix: str = "") -> dict[str, str]:
        rng = random.Random(seed)
        kinds = {}
        for i in range(per_kind):
            for kind, make in (
                ("spender", self.spender),
                ("browser", self.browser),
                ("shopper", self.shopper),
            ):
                who = f"{prefix}{kind}-{i:03d}"
                make(who, rng)
                kinds[who] = kind
        return kinds

    def members(self, clustering: str) -> dict[str, str]:
        m = segment_members.c
        with self.db.connect() as conn:
            rows = conn.execute(
                sa.select(m.profile_id, m.segment_key).where(
                    m.segment_key.like(f"{clustering}/%"), m.exited_at.is_(None)
                )
            ).all()
        found: dict[str, str] = {}
        for pid, key in rows:
            assert pid not in found, f"{pid} is in two clusters of {clustering}"
            found[str(pid)] = str(key)
        return found

    def assignments(self, clustering: str, number: int) -> dict[str, str]:
        run = self.clusterings.run(clustering, number)
        a = clustering_assignments.c
        keys = (run.model or {}).get("keys", [])
        with self.db.connect() as conn:
            return {
                str(pid): f"{clustering}/{keys[cluster]}"
                for pid, cluster in conn.execute(
                    sa.select(a.profile_id, a.cluster).where(a.run_id == run.id)
                )
                if cluster is not None
            }

    def outbox(self) -> list[dict[str, Any]]:
        return outbox_events(self.db)


@pytest.fixture
def sqlite_world(sqlite_db: Database) -> World:
    return World(sqlite_db)


@pytest.fixture
def world(state_db: Database) -> World:
    return World(state_db)


def purity(kinds: dict[str, str], members: dict[str, str]) -> float:
    """The share of profiles whose cluster holds mostly their own kind."""
    by_cluster: dict[str, dict[str, int]] = {}
    for pid, key in members.items():
        counts = by_cluster.setdefault(key, {})
        counts[kinds[pid]] = counts.get(kinds[pid], 0) + 1
    right = sum(max(c.values()) for c in by_cluster.values())
    return right / len(members)


def test_a_run_makes_every_cluster_a_segment_with_its_members(world: World) -> None:
    kinds = world.populate(30)
    world.clusterings.create("shoppers", {"features": PATHS, "k": "auto"}, schedule="manual")
    outcome = world.runner.run_now("shoppers")
    run = outcome.run
    assert run.status == "succeeded", run.error
    assert run.number == 1 and run.report is not None
    assert run.report["k"] == 3
    assert set(run.report["candidates"]) == {str(k) for k in range(2, 11)}
    assert run.report["silhouette"] > 0.5
    members = world.members("shoppers")
    assert set(members) == set(kinds)
    assert purity(kinds, members) == 1.0
    assert members == world.assignments("shoppers", 1)
    assert outcome.entered == len(kinds) and outcome.exited == 0
    # each cluster is a segment, named after what sets it apart
    clusters = {c["key"]: c for c in run.report["clusters"]}
    for key in set(members.values()):
        segment = world.segments.get(key)
        assert segment.kind == "cluster" and segment.status == "active"
        assert segment.name == clusters[key.split("/", 1)[1]]["name"]
    spenders = {members[p] for p, kind in kinds.items() if kind == "spender"}
    (spender_key,) = spenders
    assert "high revenue.all" in world.segments.get(spender_key).name
    assert spender_key.startswith("shoppers/high-")
    entered = [e for e in world.outbox() if e["event"] == "Segment Entered"]
    assert len(entered) == len(kinds)
    assert {e["properties"]["reason"] for e in entered} == {"recluster"}
    assert run.lineage is not None and run.lineage["profiles"] == len(kinds)


def test_keys_stay_across_reruns_and_with_ten_percent_new_users(sqlite_world: World) -> None:
    world = sqlite_world
    kinds = world.populate(30, seed=1)
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    world.runner.run_now("shoppers")
    first = world.members("shoppers")
    again = world.runner.run_now("shoppers")
    assert again.run.report is not None
    assert again.run.report["changes"]["appeared"] == []
    assert again.run.report["changes"]["disappeared"] == []
    same = sum(first[p] == key for p, key in world.members("shoppers").items()) / len(first)
    assert same >= 0.99
    assert again.entered == again.exited == 0
    # 10% new users of the same kinds
    world.populate(3, seed=2, prefix="new-")
    third = world.runner.run_now("shoppers")
    assert third.run.status == "succeeded"
    now = world.members("shoppers")
    kept = sum(first[p] == now[p] for p in kinds) / len(kinds)
    assert kept >= 0.95
    assert len(now) == len(kinds) + 9


def test_rollback_restores_a_runs_model_and_assignments_exactly(world: World) -> None:
    world.populate(20, seed=3)
    world.clusterings.create("shoppers", {"features": PATHS, "k": 3}, schedule="manual")
    world.runner.run_now("shoppers")
    first = world.members("shoppers")
    # the browsers start buying a lot: the second run moves them
    rng = random.Random(4)
    for i in range(20):
        world.spender(f"browser-{i:03d}", rng)
    second = world.runner.run_now("shoppers")
    assert second.exited > 0
    moved = world.members("shoppers")
    assert moved != first
    before = len(world.outbox())
    back = world.runner.run_now("shoppers", restore=1)
    assert back.run.number == 3 and back.run.restored_from == 1
    assert back.run.trigger == "rollback"
    assert world.members("shoppers") == first == world.assignments("shoppers", 3)
    restored = world.clusterings.run("shoppers", 3)
    original = world.clusterings.run("shoppers", 1)
    assert restored.model == original.model and restored.report == original.report
    events = world.outbox()[before:]
    movers = {p for p in first if first[p] != moved.get(p)}
    assert {e["userId"] for e in events} == movers
    assert {e["properties"]["reason"] for e in events} == {"rollback"}
    assert world.clusterings.get("shoppers").current_run == 3


def test_the_worker_places_new_and_changed_profiles_between_runs(sqlite_world: World) -> None:
    world = sqlite_world
    kinds = world.populate(20, seed=5)
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    world.runner.run_now("shoppers")
    members = world.members("shoppers")
    spenders = {members[p] for p, k in kinds.items() if k == "spender"}.pop()
    browsers = {members[p] for p, k in kinds.items() if k == "browser"}.pop()
    # a new user who browses a lot lands with the browsers, at once
    world.browser("newcomer", random.Random(6))
    assert world.members("shoppers")["newcomer"] == browsers
    # a browser who starts spending moves to the spenders, with an exit and an entry
    world.spender("browser-000", random.Random(7))
    assert world.members("shoppers")["browser-000"] == spenders
    events = [e for e in world.outbox() if e.get("userId") == "browser-000"]
    assert [e["event"] for e in events[-2:]] == ["Segment Exited", "Segment Entered"]
    assert events[-1]["properties"]["reason"] == "rule"


def test_a_name_given_by_a_person_survives_reruns(sqlite_world: World) -> None:
    world = sqlite_world
    kinds = world.populate(20, seed=8)
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    world.runner.run_now("shoppers")
    key = world.members("shoppers")[next(p for p, k in kinds.items() if k == "spender")]
    cluster = key.split("/", 1)[1]
    world.clusterings.rename_cluster("shoppers", cluster, "Whales")
    assert world.segments.get(key).name == "Whales"
    world.runner.run_now("shoppers")
    assert world.segments.get(key).name == "Whales"
    assert world.clusterings.get("shoppers").names == {cluster: "Whales"}
    world.clusterings.rename_cluster("shoppers", cluster, None)
    assert world.segments.get(key).name != "Whales"


def test_a_rule_reads_a_cluster_segment_and_archiving_is_refused_while_it_does(
    sqlite_world: World,
) -> None:
    world = sqlite_world
    kinds = world.populate(20, seed=9)
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    world.runner.run_now("shoppers")
    key = world.members("shoppers")[next(p for p, k in kinds.items() if k == "browser")]
    world.segments.create(
        "browsing-shoe-fans",
        condition={
            "all": [
                {"segment": key},
                {"event": "Product Viewed", "within": "7d", "count": {"op": "gte", "value": 1}},
            ]
        },
    )
    world.browser("browser-001", random.Random(10))
    m = segment_members.c
    with world.db.connect() as conn:
        inside = conn.execute(
            sa.select(m.profile_id).where(
                m.segment_key == "browsing-shoe-fans", m.exited_at.is_(None)
            )
        ).scalars()
        assert "browser-001" in set(inside)
    with pytest.raises(Conflict) as caught:
        world.clusterings.archive("shoppers")
    assert caught.value.code == "segment_in_use"
    world.segments.archive("browsing-shoe-fans")
    archived = world.clusterings.archive("shoppers")
    assert archived.status == "archived"
    assert world.members("shoppers") == {}
    assert world.segments.get(key) is not None


def test_schedules_queue_runs_when_due(sqlite_world: World) -> None:
    world = sqlite_world
    world.populate(10, seed=11)
    created = world.clusterings.create("shoppers", {"features": PATHS})
    assert created.schedule == "weekly" and created.next_run_at == T0
    outcomes = world.runner.run_pending()
    assert [o.run.trigger for o in outcomes] == ["scheduled"]
    assert world.runner.run_pending() == []
    assert world.clusterings.get("shoppers").next_run_at == T0 + timedelta(days=7)
    world.clock.advance(7 * 86_400)
    assert [o.run.number for o in world.runner.run_pending()] == [2]
    # a run asked for by hand restarts the schedule's clock
    world.clock.advance(6 * 86_400)
    world.runner.run_now("shoppers")
    world.clock.advance(86_400)
    assert world.runner.run_pending() == []
    assert world.clusterings.get("shoppers").next_run_at == T0 + timedelta(days=20)
    world.clusterings.update("shoppers", {"schedule": "manual"})
    world.clock.advance(30 * 86_400)
    assert world.runner.run_pending() == []


def test_bad_definitions_are_refused_with_where(sqlite_world: World) -> None:
    repo = sqlite_world.clusterings
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"features": ["orders"]}, "invalid_features", "/features/0"),
        ({"features": ["orders.all", "nope"]}, "invalid_features", "/features/1"),
        ({"features": []}, "invalid_features", "/features"),
        ({"features": PATHS, "algorithm": "dbscan"}, "invalid_algorithm", ""),
        ({"features": PATHS, "k": 1}, "invalid_k", ""),
        ({"features": PATHS, "pca": 9}, "invalid_pca", ""),
    ]
    for spec, code, pointer in cases:
        with pytest.raises(ValidationError) as caught:
            repo.create("c", spec)
        assert caught.value.code == code, spec
        if pointer:
            assert caught.value.details["pointer"] == pointer
    with pytest.raises(ValidationError) as caught:
        repo.create("c", {"features": PATHS}, schedule="sometimes")
    assert caught.value.code == "invalid_schedule"
    with pytest.raises(ValidationError):
        repo.create("a/b", {"features": PATHS})
    # a grouped feature needs its group and a window
    for path in ("event_counts.Product Viewed", "event_counts.Product Viewed.9d"):
        with pytest.raises(ValidationError) as caught:
            repo.create("c", {"features": ["orders.all", path]})
        assert caught.value.details["pointer"] == "/features/1"
    repo.create("c", {"features": ["event_counts.Product Viewed.all", "orders.all"]})


def test_a_run_without_enough_profiles_fails_and_says_why(sqlite_world: World) -> None:
    world = sqlite_world
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    outcome = world.runner.run_now("shoppers")
    assert outcome.run.status == "failed"
    assert outcome.run.error is not None and "at least 3" in outcome.run.error
    assert world.clusterings.get("shoppers").current_run is None


def test_the_lake_source_reads_what_the_worker_computed(
    sqlite_world: World, tmp_path: Path
) -> None:
    world = sqlite_world
    world.populate(5, seed=12)
    # a clustering run leaves membership events in the log, and so in the lake: they are
    # Personify's, not the users' activity, and no feature counts them
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    world.runner.run_now("shoppers")
    written = [*world.events, *world.outbox()]
    assert any(e["event"] == "Segment Entered" for e in written)
    lake = write_lake(
        tmp_path / "lake",
        [
            normalized(e, received_at=T0 - timedelta(seconds=30), source_id=e["sourceId"])
            for e in written
        ],
    )
    source = lake_feature_source(lake, FEATURES, max_ids_per_shard=4)
    shards, lineage = source(PATHS, T0)
    from_lake = {
        pid: list(row)
        for shard in shards
        for pid, row in zip(shard.ids, shard.matrix.tolist(), strict=True)
    }
    assert lineage["lakeVersion"] is not None and lineage["source"] == "lake"
    own, _ = world.source(PATHS, T0)
    from_state = {
        pid: list(row)
        for shard in own
        for pid, row in zip(shard.ids, shard.matrix.tolist(), strict=True)
    }
    assert from_lake == from_state


def test_a_run_left_running_by_a_dead_process_stops_blocking_the_schedule(
    sqlite_world: World,
) -> None:
    world = sqlite_world
    world.populate(10, seed=13)
    world.clusterings.create("shoppers", {"features": PATHS})
    stuck = world.clusterings.request_run("shoppers")
    with world.db.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE clustering_runs SET status = 'running', started_at = :at WHERE id = :id"
            ),
            {"at": T0, "id": stuck.id},
        )
    # within six hours it may still be working: nothing new is queued
    world.clock.advance(3600)
    assert world.clusterings.request_due() == []
    assert world.clusterings.run("shoppers", 1).status == "running"
    world.clock.advance(6 * 3600)
    assert world.clusterings.request_due() == []
    failed = world.clusterings.run("shoppers", 1)
    assert failed.status == "failed" and failed.error is not None and "abandoned" in failed.error
    # the next scheduled time queues a run again
    world.clock.advance(7 * 86_400)
    [queued] = world.clusterings.request_due()
    assert queued.number == 2


def test_only_the_newest_runs_keep_their_assignments_for_rollback(
    sqlite_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import personify.segments.clusterings as module

    monkeypatch.setattr(module, "KEPT_ASSIGNMENTS", 2)
    world = sqlite_world
    world.populate(8, seed=14)
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    for _ in range(3):
        world.runner.run_now("shoppers")
    assert world.assignments("shoppers", 1) == {}
    assert world.assignments("shoppers", 2) == world.members("shoppers")
    with pytest.raises(Conflict) as caught:
        world.clusterings.request_run("shoppers", restore=1)
    assert caught.value.code == "run_not_restorable"
    # the model and report of an old run stay
    assert world.clusterings.run("shoppers", 1).report is not None
    assert world.runner.run_now("shoppers", restore=2).run.status == "succeeded"


def test_a_profile_that_withdrew_personalization_is_in_no_cluster(sqlite_world: World) -> None:
    world = sqlite_world
    kinds = world.populate(10, seed=15)
    when = format_timestamp(world.clock.now())
    world.processor.apply(
        [
            view_event(
                {
                    "type": "track",
                    "messageId": "consent-1",
                    "userId": "spender-000",
                    "event": "Consent Changed",
                    "context": {"consent": {"categoryPreferences": {"personalization": False}}},
                    "timestamp": when,
                    "receivedAt": when,
                    "sourceId": "src",
                }
            )
        ]
    )
    world.clusterings.create("shoppers", {"features": PATHS}, schedule="manual")
    world.runner.run_now("shoppers")
    members = world.members("shoppers")
    assert "spender-000" not in members
    assert set(members) == set(kinds) - {"spender-000"}
