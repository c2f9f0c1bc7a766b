"""The identity graph: anonymous then identified, several devices, alias chains, conflicts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personify.errors import ValidationError
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.profiles.state import ProfileState
from personify.profiles.tables import identities, profile_versions, profiles
from personify.store.database import Database, aware
from tests.profiles.factory import event

FEATURES = FeatureSet()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'state.db'}")
    yield database
    database.dispose()


@pytest.fixture
def processor(db: Database) -> ProfileProcessor:
    return ProfileProcessor(db, FEATURES)


@pytest.fixture
def repository(db: Database) -> ProfileRepository:
    return ProfileRepository(db, FEATURES)


def apply(processor: ProfileProcessor, *events: dict[str, Any]) -> None:
    for data in events:
        processor.apply([view_event(data)])


def state_of(repository: ProfileRepository, identity: str) -> tuple[str, ProfileState]:
    stored = repository.find(identity)
    assert stored is not None, identity
    return stored.profile_id, stored.state()


def profile_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(profiles)).scalar() or 0)


def test_anonymous_browsing_then_identify_merges_into_the_user(
    db: Database, processor: ProfileProcessor, repository: ProfileRepository
) -> None:
    apply(
        processor,
        event("page", "m1", 0, anonymous_id="anon-1", properties={"category": "home"}),
        event(
            "track",
            "m2",
            2,
            anonymous_id="anon-1",
            name="Product Viewed",
            properties={"category": "shoes"},
        ),
    )
    assert state_of(repository, "anon-1")[0] == "anon-1"
    apply(
        processor,
        event("identify", "m3", 5, anonymous_id="anon-1", user_id="ada", traits={"name": "Ada"}),
    )
    for identity in ("anon-1", "ada"):
        profile_id, state = state_of(repository, identity)
        assert profile_id == "ada"
        assert state.events == 3
        assert state.traits["name"].value == "Ada"
        assert state.anonymous_ids == {"anon-1"}
    assert profile_count(db) == 1
    merges = repository.merges("ada")
    assert [(m.from_profile_id, m.ids, m.message_ids) for m in merges] == [
        ("anon-1", ["anon-1"], ["m3"])
    ]
    # the anonymous history moved to the user's timeline
    assert [e.payload["messageId"] for e in repository.timeline("ada")] == ["m3", "m2", "m1"]


def test_two_devices_then_the_same_user_id_become_one_profile(
    db: Database, processor: ProfileProcessor, repository: ProfileRepository
) -> None:
    apply(
        processor,
        event("track", "p1", 0, anonymous_id="phone", name="Product Viewed"),
        event("track", "l1", 1, anonymous_id="laptop", name="Product Viewed"),
        event("track", "p2", 2, anonymous_id="phone", user_id="bo", name="Signed In"),
    )
    assert profile_count(db) == 2
    apply(processor, event("track", "l2", 3, anonymous_id="laptop", user_id="bo", name="Signed In"))
    assert profile_count(db) == 1
    profile_id, state = state_of(repository, "laptop")
    assert profile_id == "bo"
    assert state.anonymous_ids == {"phone", "laptop"}
    assert state.events == 4
    with db.engine.connect() as conn:
        graph = dict(conn.execute(sa.select(identities.c.identity, identities.c.profile_id)).all())
    assert graph == {"phone": "bo", "laptop": "bo", "bo": "bo"}


@pytest.mark.parametrize("arrival", list(itertools.permutations(range(3))))
def test_alias_chains_resolve_whatever_the_arrival_order(
    db: Database,
    processor: ProfileProcessor,
    repository: ProfileRepository,
    arrival: tuple[int, ...],
) -> None:
    chain = [
        event("track", "e1", 0, user_id="u-old", name="Signed Up"),
        event("alias", "e2", 10, user_id="u-mid", previousId="u-old"),
        event("alias", "e3", 20, user_id="u-new", previousId="u-mid"),
    ]
    apply(processor, *(chain[i] for i in arrival))
    assert profile_count(db) == 1
    # every id resolves to one profile, named by the smallest userId whatever the order
    assert {state_of(repository, i)[0] for i in ("u-old", "u-mid", "u-new")} == {"u-mid"}
    _, state = state_of(repository, "u-new")
    assert state.previous_ids == {"u-old", "u-mid"}
    assert state.events == 3


def test_traits_conflicts_are_resolved_by_event_time_not_arrival(
    processor: ProfileProcessor, repository: ProfileRepository
) -> None:
    newer = event("identify", "new", 60, user_id="cy", traits={"plan": "pro", "seats": 5})
    older = event("identify", "old", 10, user_id="cy", traits={"plan": "free", "company": "Acme"})
    apply(processor, newer, older)
    _, state = state_of(repository, "cy")
    assert {k: s.value for k, s in state.traits.items()} == {
        "plan": "pro",
        "seats": 5,
        "company": "Acme",
    }


def test_traits_of_merged_profiles_follow_event_time_too(
    processor: ProfileProcessor, repository: ProfileRepository
) -> None:
    apply(
        processor,
        event("identify", "a", 50, anonymous_id="dev", traits={"plan": "team"}),
        event("identify", "b", 20, user_id="di", traits={"plan": "free", "name": "Di"}),
        event("identify", "c", 30, anonymous_id="dev", user_id="di"),
    )
    _, state = state_of(repository, "dev")
    assert state.traits["plan"].value == "team"
    assert state.traits["name"].value == "Di"


def test_merging_never_loses_features(
    processor: ProfileProcessor, repository: ProfileRepository
) -> None:
    apply(
        processor,
        *(event("track", f"a{i}", i, anonymous_id="x", name="Video Played") for i in range(3)),
        *(event("track", f"b{i}", 100 + i, user_id="eve", name="Video Played") for i in range(2)),
        event("track", "link", 200, anonymous_id="x", user_id="eve", name="Video Played"),
    )
    _, state = state_of(repository, "x")
    assert state.features["event_counts"]["Video Played"].n == 6


def test_a_link_beyond_the_identity_limit_is_refused(db: Database) -> None:
    processor = ProfileProcessor(db, FEATURES, max_identities=2)
    processor.apply([view_event(event("identify", "1", 0, anonymous_id="a", user_id="u"))])
    with pytest.raises(ValidationError) as raised:
        processor.apply(
            [view_event(event("track", "2", 1, anonymous_id="b", user_id="u", name="X"))]
        )
    assert raised.value.code == "identity_limit"
    # the failed batch left nothing behind
    assert profile_count(db) == 1


def test_duplicates_in_one_batch_and_across_batches_apply_once(
    processor: ProfileProcessor, repository: ProfileRepository
) -> None:
    first = view_event(event("track", "dup", 0, user_id="fay", name="Clicked"))
    result = processor.apply([first, first])
    assert (result.applied, result.duplicates) == (1, 1)
    result = processor.apply([first])
    assert (result.applied, result.duplicates) == (0, 1)
    assert state_of(repository, "fay")[1].events == 1


def test_an_id_that_comes_back_as_a_profile_goes_on_with_its_history(
    db: Database, processor: ProfileProcessor, repository: ProfileRepository
) -> None:
    # "c" is an anonymousId first, merged into userId "u1", then arrives as a userId: the
    # smallest userId names the profile, so "c" is a profile id again, with earlier versions
    apply(processor, event("track", "m1", 0, anonymous_id="c", name="Viewed"))
    apply(processor, event("identify", "m2", 1, user_id="u1", anonymous_id="c"))
    with db.engine.connect() as conn:
        merged_at = conn.execute(sa.select(sa.func.max(profile_versions.c.changed_at))).scalar()
    apply(processor, event("identify", "m3", 2, user_id="c"))

    profile_id, state = state_of(repository, "u1")
    assert profile_id == "c"
    assert state.user_ids == {"u1", "c"} and state.events == 3
    assert profile_count(db) == 1
    versions = repository.versions("c")
    assert [v.version for v in versions] == [2, 1]
    assert versions[0].kind == "merge"
    # replays start at the version that brought the id back, not at the earlier one
    now = datetime.now(UTC)
    as_of = repository.state_as_of("c", now)
    assert as_of is not None and as_of.events == 3 and as_of.user_ids == {"u1", "c"}
    # between the merge into "u1" and the comeback, "c" was part of "u1" only: never twice
    between = aware(merged_at)
    assert between is not None
    assert repository.state_as_of("c", between) is not None
    assert repository.state_as_of("c", between).events == 2  # type: ignore[union-attr]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["track", "identify", "alias"]),
                st.sampled_from([None, "a", "c", "u1", "u2"]),
                st.sampled_from([None, "a", "b", "c", "d"]),
                st.sampled_from(["a", "c", "u1", "u3"]),
            ),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=12,
    )
)
def test_ids_shared_by_user_and_anonymous_ids_never_conflict(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[tuple[str, str | None, str | None, str]]],
) -> None:
    database = Database(f"sqlite:///{tmp_path_factory.mktemp('ids') / 'state.db'}")
    try:
        processor = ProfileProcessor(database, FEATURES)
        counter = itertools.count()
        for batch in batches:
            events = []
            for kind, user_id, anonymous_id, previous_id in batch:
                n = next(counter)
                extra: dict[str, Any] = {}
                if kind == "alias":
                    user_id = user_id or "u2"
                    extra["previousId"] = previous_id
                if user_id is None and anonymous_id is None:
                    anonymous_id = "b"
                name = "Viewed" if kind == "track" else None
                events.append(
                    view_event(
                        event(
                            kind,
                            f"m{n}",
                            n,
                            user_id=user_id,
                            anonymous_id=anonymous_id,
                            name=name,
                            **extra,
                        )
                    )
                )
            processor.apply(events)
        with database.engine.connect() as conn:
            owners = {
                str(i): str(p)
                for i, p in conn.execute(sa.select(identities.c.identity, identities.c.profile_id))
            }
            rows = set(conn.execute(sa.select(profiles.c.profile_id)).scalars())
        # every id resolves to a stored profile named by its own smallest id
        assert set(owners.values()) == rows
        for profile_id in rows:
            assert owners[profile_id] == profile_id
    finally:
        database.dispose()
