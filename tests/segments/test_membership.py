"""Real-time membership: the worker's segment stage, the sweep, archiving and the relay, on a
real SQLite file and a real PostgreSQL, with a clock the tests move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.clock import FrozenClock, format_timestamp
from personify.eventlog.sqlite import SQLiteEventLog
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.segments.conditions import SEGMENT_ENTERED, SEGMENT_EXITED
from personify.segments.membership import (
    MEMBERSHIP_SOURCE,
    MembershipChanges,
    event_payload,
    is_membership_payload,
)
from personify.segments.relay import MembershipRelay
from personify.segments.repository import SegmentRepository
from personify.segments.stage import SegmentStage, open_memberships
from personify.segments.sweep import SegmentSweep
from personify.segments.tables import segment_due, segment_members
from personify.store.database import Database
from tests.segments.conftest import outbox_events

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FEATURES = FeatureSet()
SHOES = {
    "event": "Product Viewed",
    "where": [{"property": "category", "op": "eq", "value": "shoes"}],
    "within": "7d",
    "count": {"op": "gte", "value": 3},
}


class World:
    """A state database with the worker's processor, the segment stage and a movable clock."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = FrozenClock(T0)
        self.segments = SegmentRepository(db, clock=self.clock)
        self.stage = SegmentStage(self.segments, FEATURES, clock=self.clock)
        self.processor = ProfileProcessor(db, FEATURES, clock=self.clock, stages=[self.stage])
        self.sweep = SegmentSweep(db, self.stage, clock=self.clock)
        self.sent = 0

    def send(self, *, minutes_ago: float = 0.0, **fields: Any) -> None:
        """Apply one event that happened ``minutes_ago`` before the clock's now."""
        self.sent += 1
        when = format_timestamp(self.clock.now() - timedelta(minutes=minutes_ago))
        data = {
            "type": "track",
            "messageId": f"m-{self.sent}",
            "timestamp": when,
            "receivedAt": when,
            "sourceId": "src",
            **fields,
        }
        self.processor.apply([view_event(data)])

    def view(self, who: str, category: str, **extra: Any) -> None:
        self.send(
            anonymousId=who, event="Product Viewed", properties={"category": category}, **extra
        )

    def members(self, key: str) -> set[str]:
        with self.db.connect() as conn:
            m = segment_members.c
            return set(
                conn.execute(
                    sa.select(m.profile_id).where(m.segment_key == key, m.exited_at.is_(None))
                ).scalars()
            )

    def history(self, profile_id: str) -> list[tuple[str, str | None, str | None]]:
        with self.db.connect() as conn:
            m = segment_members.c
            return [
                (str(k), r, x)
                for k, r, x in conn.execute(
                    sa.select(m.segment_key, m.entry_reason, m.exit_reason)
                    .where(m.profile_id == profile_id)
                    .order_by(m.id)
                )
            ]

    def outbox(self) -> list[dict[str, Any]]:
        return outbox_events(self.db)


@pytest.fixture
def sqlite_world(sqlite_db: Database) -> World:
    return World(sqlite_db)


@pytest.fixture
def world(state_db: Database) -> World:
    return World(state_db)


def test_a_profile_enters_on_its_third_view_and_leaves_when_the_window_slides_past(
    world: World,
) -> None:
    world.segments.create("shoe-fans", condition=SHOES)
    world.view("a1", "shoes", minutes_ago=60)
    world.view("a1", "hats", minutes_ago=50)
    world.view("a1", "shoes", minutes_ago=40)
    assert world.members("shoe-fans") == set()
    world.view("a1", "shoes", minutes_ago=30)
    assert world.members("shoe-fans") == {"a1"}
    entered = world.outbox()
    assert [(e["event"], e["anonymousId"], e["properties"]) for e in entered] == [
        ("Segment Entered", "a1", {"segment": "shoe-fans", "version": 1, "reason": "rule"})
    ]
    assert "userId" not in entered[0]

    # nothing is due until the oldest counted view leaves its window
    world.clock.advance(timedelta(days=7).total_seconds() - 61 * 60)
    assert world.sweep.sweep().profiles == 0
    assert world.members("shoe-fans") == {"a1"}
    # the first view (60 minutes before T0) is out: two views left, no new event needed
    world.clock.advance(120)
    result = world.sweep.sweep()
    assert (result.profiles, result.exits) == (1, 1)
    assert world.members("shoe-fans") == set()
    assert world.history("a1") == [("shoe-fans", "rule", "sweep")]
    assert world.outbox()[-1]["event"] == "Segment Exited"
    assert world.outbox()[-1]["properties"]["reason"] == "sweep"
    # the other two views leave later: the profile stays due until its counters are empty
    world.clock.advance(timedelta(hours=1).total_seconds())
    assert world.sweep.sweep().profiles == 1
    with world.db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(segment_due)).scalar() == 0


def test_a_late_event_outside_its_window_changes_nothing(sqlite_world: World) -> None:
    world = sqlite_world
    world.segments.create("shoe-fans", condition=SHOES)
    world.view("a1", "shoes")
    world.view("a1", "shoes")
    # eight days old when it arrives: it never counts, whatever the order
    world.view("a1", "shoes", minutes_ago=8 * 24 * 60)
    assert world.members("shoe-fans") == set()
    world.view("a1", "shoes", minutes_ago=5)
    assert world.members("shoe-fans") == {"a1"}


def test_traits_segments_of_segments_and_consent(sqlite_world: World) -> None:
    world = sqlite_world
    world.segments.create("pro", condition={"trait": "plan", "op": "eq", "value": "pro"})
    world.segments.create("shoe-fans", condition=SHOES)
    world.segments.create(
        "pro-shoe-fans", condition={"all": [{"segment": "pro"}, {"segment": "shoe-fans"}]}
    )
    world.send(type="identify", userId="u1", anonymousId="a1", context={"traits": {"plan": "pro"}})
    assert world.members("pro") == {"u1"} and world.members("pro-shoe-fans") == set()
    for _ in range(3):
        world.view("a1", "shoes")
    assert world.members("pro-shoe-fans") == {"u1"}
    entered = [e for e in world.outbox() if e["event"] == "Segment Entered"]
    # a profile named by a userId is told about as one
    assert {e["userId"] for e in entered} == {"u1"}

    world.send(
        type="identify",
        userId="u1",
        context={"consent": {"categoryPreferences": {"personalization": False}}},
    )
    assert world.members("pro") == set() and world.members("pro-shoe-fans") == set()
    reasons = {x for _, _, x in world.history("u1")}
    assert reasons == {"consent"}


def test_a_merge_keeps_one_stay_and_tells_no_one(sqlite_world: World) -> None:
    world = sqlite_world
    world.segments.create("shoe-fans", condition=SHOES)
    for _ in range(3):
        world.view("a1", "shoes")
    for _ in range(3):
        world.view("a2", "shoes")
    assert world.members("shoe-fans") == {"a1", "a2"}
    before = len(world.outbox())
    world.send(type="identify", userId="u1", anonymousId="a1")
    world.send(type="identify", userId="u1", anonymousId="a2")
    assert world.members("shoe-fans") == {"u1"}
    assert len(world.outbox()) == before
    assert world.history("u1") == [("shoe-fans", "rule", None), ("shoe-fans", "rule", "merged")]


def test_archiving_a_segment_ends_every_stay_with_an_event(sqlite_world: World) -> None:
    world = sqlite_world
    world.segments.create("shoe-fans", condition=SHOES)
    for who in ("a1", "a2"):
        for _ in range(3):
            world.view(who, "shoes")
    world.segments.archive("shoe-fans")
    assert world.members("shoe-fans") == set()
    exits = [e for e in world.outbox() if e["event"] == "Segment Exited"]
    assert sorted(e["anonymousId"] for e in exits) == ["a1", "a2"]
    assert {e["properties"]["reason"] for e in exits} == {"archived"}
    # with no rule left, the worker stops counting: the counters leave the states
    world.view("a1", "shoes")
    with world.db.connect() as conn:
        state = conn.execute(sa.text("SELECT state FROM profiles WHERE profile_id='a1'")).scalar()
    assert '"counters"' not in str(state)


async def test_the_relay_appends_each_event_once(sqlite_world: World, tmp_path: Path) -> None:
    world = sqlite_world
    log = SQLiteEventLog(tmp_path / "log")
    await log.start()
    try:
        relay = MembershipRelay(world.db, log, page_size=2)
        world.segments.create("shoe-fans", condition=SHOES)
        for who in ("a1", "a2", "a3"):
            for _ in range(3):
                world.view(who, "shoes")
        assert relay.pending() == 3
        assert await relay.flush() == 3
        assert relay.pending() == 0
        entries = await log.read("g", "c", max_count=10, timeout_ms=100)
        names = sorted(msgspec.json.decode(e.payload)["anonymousId"] for e in entries)
        assert names == ["a1", "a2", "a3"]
        # the worker reads them like any event: a profile's timeline shows its entries
        view = view_event(msgspec.json.decode(entries[0].payload))
        assert view.name == "Segment Entered"
    finally:
        await log.close()


def test_a_rule_saved_later_counts_the_events_before_it(sqlite_world: World) -> None:
    world = sqlite_world
    world.view("a1", "shoes", minutes_ago=90)
    world.view("a1", "shoes", minutes_ago=80)
    # far outside the window: never counted
    world.view("a1", "shoes", minutes_ago=9 * 24 * 60)
    world.segments.create("shoe-fans", condition=SHOES)
    world.view("a1", "hats")
    assert world.members("shoe-fans") == set()
    world.view("a1", "shoes")
    assert world.members("shoe-fans") == {"a1"}
    # and the rule's window ends with the views it counted from the timeline
    world.clock.advance(timedelta(days=7).total_seconds() - 85 * 60)
    world.sweep.sweep()
    assert world.members("shoe-fans") == set()


@settings(max_examples=200, deadline=None)
@given(
    profile_id=st.text(min_size=1, max_size=20),
    key=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    version=st.integers(1, 10**6),
    is_user=st.booleans(),
    entered=st.booleans(),
)
def test_an_event_is_written_as_its_payload_encodes(
    profile_id: str, key: str, version: int, is_user: bool, entered: bool
) -> None:
    # the outbox's JSON is made from pieces encoded once per segment: byte for byte the
    # encoding of the whole event
    changes = MembershipChanges(T0)
    if entered:
        changes.enter(profile_id, is_user, key, version, "rule")
    else:
        changes.exit(7, profile_id, is_user, key, version, "sweep")
    name = SEGMENT_ENTERED if entered else SEGMENT_EXITED
    reason = "rule" if entered else "sweep"
    expected = event_payload(name, profile_id, is_user, key, version, reason, format_timestamp(T0))
    ((partition_key, message_id, payload),) = changes.events
    assert payload == msgspec.json.encode(expected).decode()
    assert (partition_key, message_id) == (profile_id, expected["messageId"])


# -- knowing the relay's events without reading them ------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["sourceId", "a", "b"]), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    profile_id=st.text(min_size=1, max_size=20),
    key=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    is_user=st.booleans(),
    entered=st.booleans(),
)
def test_every_membership_event_is_known_by_its_bytes(
    profile_id: str, key: str, is_user: bool, entered: bool
) -> None:
    changes = MembershipChanges(T0)
    if entered:
        changes.enter(profile_id, is_user, key, 3, "rule")
    else:
        changes.exit(7, profile_id, is_user, key, 3, "consent")
    ((_, _, payload),) = changes.events
    assert is_membership_payload(payload.encode())


@settings(max_examples=500, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["type", "a", "sourceId"]), _JSON, max_size=3),
    source=_JSON | st.sampled_from([MEMBERSHIP_SOURCE, "personify-segments-2", "src"]),
    nested=st.booleans(),
)
def test_a_payload_is_a_membership_event_only_when_its_source_says_so(
    before: dict[str, Any], source: Any, nested: bool
) -> None:
    # sourceId last, as the relay writes it, or inside another object: only a top-level
    # sourceId of MEMBERSHIP_SOURCE counts, as the decoded event's ``sourceId`` would say
    event: dict[str, Any] = {**before}
    event.pop("sourceId", None)
    if nested:
        event["properties"] = {"sourceId": source}
    else:
        event["sourceId"] = source
    payload = msgspec.json.encode(event)
    expected = msgspec.json.decode(payload).get("sourceId") == MEMBERSHIP_SOURCE
    assert is_membership_payload(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        # not JSON, or not an object, though they end as the relay's events end
        b'{"a":1,,"sourceId":"personify-segments"}',
        b'["x","sourceId":"personify-segments"}',
        b'{"a":{"b":1,"sourceId":"personify-segments"}',
        # the source inside a string
        b'{"a":"x\\",\\"sourceId\\":\\"personify-segments"}',
        b'{"a":"\\u0022,\\"sourceId\\":\\"personify-segments\\"}"}',
        # a later sourceId wins, as in the decoded event
        b'{"sourceId":"personify-segments","sourceId":"src"}',
        b"",
    ],
)
def test_what_only_looks_like_a_membership_event_is_not_one(payload: bytes) -> None:
    assert not is_membership_payload(payload)


def test_a_later_source_of_the_relay_makes_one() -> None:
    # duplicate keys: the last one is the event's, as ``msgspec.json.decode`` reads it
    assert is_membership_payload(b'{"sourceId":"src","a":1,"sourceId":"personify-segments"}')


def test_open_memberships_lists_each_profiles_stays_oldest_first(sqlite_world: World) -> None:
    world = sqlite_world
    world.segments.create("shoe-fans", condition=SHOES)
    world.segments.create("pro", condition={"trait": "plan", "op": "eq", "value": "pro"})
    for who in ("a1", "a2"):
        for _ in range(3):
            world.view(who, "shoes")
    world.send(type="identify", anonymousId="a1", traits={"plan": "pro"})
    with world.db.begin() as conn:
        # two stays of one profile in one segment (as two merged profiles had), and a
        # closed one: the open rows come back, oldest first
        m = segment_members.c
        ids = {
            str(p): int(i)
            for i, p in conn.execute(
                sa.select(m.id, m.profile_id).where(m.segment_key == "shoe-fans")
            )
        }
        conn.execute(segment_members.update().where(m.id == ids["a2"]).values(profile_id="a1"))
        found = open_memberships(conn, ["a1", "a2", "nobody"])
        assert found == {"a1": {"shoe-fans": sorted(ids.values()), "pro": found["a1"]["pro"]}}
        conn.execute(segment_members.update().where(m.id == ids["a1"]).values(exited_at=T0))
        assert open_memberships(conn, ["a1"])["a1"]["shoe-fans"] == [ids["a2"]]
        # more profiles than one IN list holds
        many = [f"p{i}" for i in range(1_200)] + ["a1"]
        assert open_memberships(conn, many).keys() == {"a1"}
