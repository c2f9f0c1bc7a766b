"""Any arrival order, any batching, any duplicates: the same profiles, byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personify.profiles.document import present_profile
from personify.profiles.events import ProfileEvent, datetime_ms, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.state import (
    ProfileState,
    apply_event,
    compact_state,
    encode_state,
    merge_states,
)
from personify.profiles.tables import applied_events, identities, profiles
from personify.store.database import Database
from tests.profiles.factory import BASE, event

FEATURES = FeatureSet()
USER = "u-1"
ID_CHOICES: list[dict[str, str]] = [
    {"anonymous_id": "a-1"},
    {"anonymous_id": "a-2"},
    {"user_id": USER},
    {"user_id": USER, "anonymous_id": "a-1"},
    {"user_id": "old-1"},
]
CONTEXTS: list[dict[str, Any] | None] = [
    None,
    {"campaign": {"source": "news", "name": "spring"}},
    {"campaign": {"source": "ads", "medium": "cpc", "name": "summer"}},
    {"consent": {"categoryPreferences": {"Personalization": False, "Analytics": True}}},
    {"consent": {"categoryPreferences": {"Personalization": True}}},
    {"userAgent": "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0 Safari/537.36"},
    {"traits": {"plan": "team"}, "location": {"country": "FR"}},
    {"page": {"url": "https://shop.test/?utm_source=mail&utm_campaign=welcome"}},
]
# most events cluster into a few hours (sessions), some spread over 45 days (windows, pruning)
minutes = st.one_of(st.integers(0, 300), st.integers(0, 60 * 24 * 45))


@st.composite
def one_event(draw: st.DrawFn, index: int) -> dict[str, Any]:
    mid = f"m-{index}"
    at_minute = draw(minutes)
    ids = draw(st.sampled_from(ID_CHOICES))
    context = draw(st.sampled_from(CONTEXTS))
    kind = draw(st.sampled_from(["page", "view", "order", "identify", "group", "video"]))
    category = draw(st.sampled_from(["shoes", "hats", "books"]))
    if kind == "page":
        return event(
            "page", mid, at_minute, properties={"category": category}, context=context, **ids
        )
    if kind == "view":
        return event(
            "track",
            mid,
            at_minute,
            name="Product Viewed",
            properties={"category": category, "price": draw(st.integers(1, 99))},
            context=context,
            **ids,
        )
    if kind == "order":
        revenue = draw(st.sampled_from([10, 12.5, "7.25", 0.1, 0.2, 1e-7, None]))
        return event(
            "track",
            mid,
            at_minute,
            name="Order Completed",
            properties={"revenue": revenue, "products": [{"category": category}]},
            context=context,
            **ids,
        )
    if kind == "identify":
        traits = {
            "plan": draw(st.sampled_from(["free", "pro", "team"])),
            "seats": draw(st.integers(1, 5)),
        }
        return event("identify", mid, at_minute, traits=traits, context=context, **ids)
    if kind == "group":
        return event(
            "group",
            mid,
            at_minute,
            groupId=draw(st.sampled_from(["g-1", "g-2"])),
            traits={"size": draw(st.integers(1, 500))},
            **ids,
        )
    return event(
        "track",
        mid,
        at_minute,
        name="Video Played",
        properties={"tags": [category, "video"], "seconds": draw(st.integers(1, 600))},
        context=context,
        **ids,
    )


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One person's events over several ids, always linked in the end, plus a bystander."""
    count = draw(st.integers(0, 14))
    events = [draw(one_event(i)) for i in range(count)]
    link_minutes = draw(st.lists(minutes, min_size=3, max_size=3))
    events += [
        event("identify", "link-1", link_minutes[0], user_id=USER, anonymous_id="a-1"),
        event("identify", "link-2", link_minutes[1], user_id=USER, anonymous_id="a-2"),
        event("alias", "link-3", link_minutes[2], user_id=USER, previousId="old-1"),
        event("track", "other-1", draw(minutes), user_id="u-2", name="Product Viewed"),
        event("page", "other-2", draw(minutes), anonymous_id="a-9", user_id="u-2"),
    ]
    return events


@contextmanager
def database() -> Iterator[Database]:
    db = Database("sqlite://")
    try:
        yield db
    finally:
        db.dispose()


def snapshot(db: Database) -> dict[str, Any]:
    """Everything order-independence promises: states, identity graph, timeline ownership."""
    with db.engine.connect() as conn:
        states = dict(conn.execute(sa.select(profiles.c.profile_id, profiles.c.state)).all())
        graph = dict(conn.execute(sa.select(identities.c.identity, identities.c.profile_id)).all())
        owners = dict(
            conn.execute(sa.select(applied_events.c.event_key, applied_events.c.profile_id)).all()
        )
    return {"states": states, "identities": graph, "events": owners}


def run(events: list[dict[str, Any]], batches: list[int]) -> dict[str, Any]:
    with database() as db:
        processor = ProfileProcessor(db, FEATURES)
        views = [view_event(e) for e in events]
        start = 0
        sizes = iter(batches)
        while start < len(views):
            size = next(sizes, len(views))
            processor.apply(views[start : start + size])
            start += size
        return snapshot(db)


def documents(states: dict[str, str]) -> dict[str, Any]:
    from personify.profiles.state import decode_state

    as_of = datetime_ms(BASE) + 50 * 86_400_000
    return {
        pid: present_profile(
            pid,
            decode_state(blob),
            FEATURES,
            as_of_ms=as_of,
            version=None,
            created_at=None,
            updated_at=None,
        )
        for pid, blob in states.items()
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_any_order_any_batching_any_duplicates_gives_identical_profiles(
    data: st.DataObject,
) -> None:
    events = data.draw(histories())
    reference = run(events, [len(events)])

    delivered = list(data.draw(st.permutations(events)))
    for index in data.draw(st.lists(st.integers(0, len(events) - 1), max_size=6)):
        position = data.draw(st.integers(0, len(delivered)))
        delivered.insert(position, events[index])
    batches = data.draw(st.lists(st.integers(1, 6), max_size=len(delivered)))
    replayed = run(delivered, batches)

    assert replayed == reference
    assert documents(replayed["states"]) == documents(reference["states"])
    # the person is one profile under its smallest userId; the bystander stays apart
    person = "old-1" if any(e.get("userId") == "old-1" for e in events) else USER
    assert set(reference["states"]) == {person, "u-2"}
    assert reference["identities"]["a-2"] == person
    assert reference["identities"]["old-1"] == person
    assert reference["identities"]["a-9"] == "u-2"


def _state_of(events: list[ProfileEvent]) -> ProfileState:
    state = ProfileState()
    for item in events:
        apply_event(state, item, FEATURES)
    return state


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_merging_two_profiles_equals_applying_all_their_events(data: st.DataObject) -> None:
    events = [view_event(e) for e in data.draw(histories())]
    split = data.draw(st.integers(0, len(events)))
    chosen = data.draw(st.permutations(events))
    left, right = _state_of(chosen[:split]), _state_of(chosen[split:])
    merge_states(left, right, FEATURES)
    whole = _state_of(events)
    compact_state(whole, FEATURES)
    compact_state(left, FEATURES)
    assert encode_state(left) == encode_state(whole)
