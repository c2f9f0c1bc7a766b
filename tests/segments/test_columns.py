"""The columnar evaluator equals the per-profile one: for generated rules (traits, features,
predictions, windowed counts, segment references, combinators) and generated profiles, what
``ColumnPlan.evaluate`` gives for every profile at once is what
``evaluate_profile_segments`` (each rule's compiled predicate, one profile at a time) gives,
with and without a batch's narrowing, current stays, cluster placements and consent; and
the property column that counts events agrees with ``EventCounter.matches`` event by event."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from personify.profiles.counters import PropertyColumn
from personify.profiles.events import event_name, parse_ms, view_event
from personify.profiles.features import FeatureSet
from personify.profiles.features.accumulators import Stamped
from personify.profiles.state import ProfileState, apply_event, document_reach, evaluate_profile
from personify.segments.columns import BatchChange, ColumnPlan, _PathTree
from personify.segments.conditions import EventCounter, resolve_path
from personify.segments.operators import MISSING, build_test, evaluate_column, factorize
from personify.segments.predicates import Predicate
from personify.segments.repository import CompiledSegment, CompiledSegments
from personify.segments.stage import evaluate_profile_segments
from personify.segments.validation import event_counters, parse_condition
from tests.segments.test_conditions import (
    CONDITIONS,
    NAMES,
    PROFILES,
    PROPERTY_VALUES,
    T,
    event_leaves,
    raw_events,
)

FEATURES = FeatureSet()
CLUSTERS = frozenset({"c/a", "c/b"})
# segments a rule may read that no rule of the plan answers: clusters, an archived key
OTHER_KEYS = ["c/a", "c/b", "vip", "churn-risk"]
DENIED = {"personalization": False}


def with_references(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules where each may also read the ones before it (``s0``, ``s1`` …)."""
    out: list[dict[str, Any]] = []
    for n, rule in enumerate(rules):
        if n and n % 2 == 0:
            rule = {"any": [rule, {"not": {"segment": f"s{n - 1}"}}]}
        elif n:
            rule = {"all": [rule, {"segment": f"s{n - 1}"}]}
        out.append(rule)
    return out


def compiled_of(rules: list[dict[str, Any]]) -> CompiledSegments:
    segments = tuple(
        CompiledSegment(f"s{n}", 1, Predicate(parse_condition(rule)))
        for n, rule in enumerate(rules)
    )
    counters: dict[str, EventCounter] = {}
    for segment in segments:
        for counter in segment.predicate.counters:
            counters.setdefault(counter.id, counter)
    return CompiledSegments(
        segments=segments,
        counters=tuple(counters.values()),
        cluster_keys=CLUSTERS,
        versions={s.key: 1 for s in segments},
    )


def state_of(
    profile: dict[str, Any], events: list[dict[str, Any]], compiled: CompiledSegments, denied: bool
) -> ProfileState:
    """A state with the profile's traits and, for every counter, the times of its events (as
    the worker's counters keep them)."""
    state = ProfileState(
        traits={k: Stamped(0, "m", v) for k, v in profile["traits"].items()},
        consent=Stamped(0, "m", DENIED) if denied else None,
        last_seen=T,
    )
    for counter in compiled.counters:
        times = sorted(
            parse_ms("timestamp", ev["timestamp"])
            for ev in events
            if counter.matches(event_name(ev["type"], ev), ev.get("properties"))
        )
        if counter.within_ms is None:
            if times:
                state.counter_totals[counter.id] = len(times)
        elif times:
            state.counters[counter.id] = times
    return state


CHANGES = st.one_of(
    st.none(),
    st.builds(
        BatchChange,
        st.frozensets(st.sampled_from([*NAMES, "$page", "Other"]), max_size=3),
        st.booleans(),
    ),
)
PROFILE_CASES = st.lists(
    st.fixed_dictionaries(
        {
            "profile": PROFILES,
            "events": st.lists(raw_events(), max_size=6),
            "change": CHANGES,
            "current": st.sets(st.sampled_from(["s0", "s1", "s2", "s3", *OTHER_KEYS])),
            "placed": st.one_of(st.none(), st.sets(st.sampled_from(sorted(CLUSTERS)), max_size=1)),
            "denied": st.booleans(),
        }
    ),
    min_size=1,
    max_size=6,
)
RULES = st.lists(
    st.one_of(CONDITIONS, st.builds(lambda k: {"segment": k}, st.sampled_from(OTHER_KEYS))),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(rules=RULES, cases=PROFILE_CASES, late_ms=st.integers(0, 3 * 86_400_000))
def test_columns_equal_the_per_profile_evaluation(
    rules: list[dict[str, Any]], cases: list[dict[str, Any]], late_ms: int
) -> None:
    compiled = compiled_of(with_references(rules))
    plan = ColumnPlan(compiled)
    states = [state_of(c["profile"], c["events"], compiled, c["denied"]) for c in cases]
    for at_ms in (T, T + late_ms):
        got = plan.evaluate(
            states,
            FEATURES,
            at_ms,
            changes=[c["change"] for c in cases],
            current=[c["current"] for c in cases],
            documents=[c["profile"]["features"] for c in cases],
            placed=[c["placed"] for c in cases],
            predictions=[c["profile"]["predictions"] for c in cases],
        )
        expected = [
            evaluate_profile_segments(
                state,
                compiled,
                FEATURES,
                at_ms,
                change=c["change"],
                current=c["current"],
                document=c["profile"]["features"],
                placed=c["placed"],
                predictions=c["profile"]["predictions"],
            )
            for state, c in zip(states, cases, strict=True)
        ]
        assert got == expected
        # without narrowing, stays or placements: every rule answered afresh
        assert plan.evaluate(
            states,
            FEATURES,
            at_ms,
            documents=[c["profile"]["features"] for c in cases],
            predictions=[c["profile"]["predictions"] for c in cases],
        ) == [
            evaluate_profile_segments(
                state,
                compiled,
                FEATURES,
                at_ms,
                document=c["profile"]["features"],
                predictions=c["profile"]["predictions"],
            )
            for state, c in zip(states, cases, strict=True)
        ]


def test_a_profile_without_consent_is_in_no_segment_and_the_others_are_answered() -> None:
    compiled = compiled_of([{"trait": "plan", "op": "eq", "value": "pro"}, {"segment": "vip"}])
    plan = ColumnPlan(compiled)
    profile = {"traits": {"plan": "pro"}}
    states = [state_of(profile, [], compiled, denied) for denied in (False, True, False)]
    got = plan.evaluate(states, FEATURES, T, current=[{"vip"}, {"vip", "s0"}, set()])
    assert got == [{"s0", "s1", "vip"}, set(), {"s0"}]


def test_an_empty_batch_and_no_rules() -> None:
    assert (
        ColumnPlan(compiled_of([{"trait": "plan", "op": "exists"}])).evaluate([], FEATURES, T) == []
    )
    assert ColumnPlan(CompiledSegments()).evaluate([ProfileState()], FEATURES, T) == [set()]


@settings(max_examples=300, deadline=None)
@given(
    leaf=event_leaves(),
    properties=st.lists(
        st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(["category", "price", "tags"]), PROPERTY_VALUES, max_size=3
            ),
        ),
        max_size=10,
    ),
    name=st.sampled_from([*NAMES, "$page"]),
)
def test_a_property_column_matches_event_by_event(
    leaf: dict[str, Any], properties: list[dict[str, Any] | None], name: str
) -> None:
    (counter,) = event_counters(leaf)
    column = PropertyColumn(list(properties))
    expected = [counter.matches(name, props) for props in properties]
    assert counter.match_column(name, column).tolist() == expected
    # the column's memo, now holding this counter's reads, answers the same again
    assert counter.match_column(name, column).tolist() == expected


def test_a_document_of_some_paths_holds_what_the_whole_document_holds_there() -> None:
    state = ProfileState()
    events = [
        {"type": "track", "event": "Order Completed", "properties": {"revenue": 30}},
        {"type": "track", "event": "Product Viewed", "properties": {"category": "shoes"}},
        {"type": "track", "event": "Video.Played", "properties": {}},
        {"type": "page", "name": "Home", "context": {"userAgent": "Mozilla/5.0 (iPhone)"}},
    ]
    for n, data in enumerate(events):
        view = view_event(
            {
                **data,
                "messageId": f"m{n}",
                "anonymousId": "a1",
                "timestamp": "2024-05-01T10:00:00.000Z",
                "receivedAt": "2024-05-01T10:00:00.000Z",
                "sourceId": "src",
            }
        )
        apply_event(state, view, FEATURES)
    paths = [
        ("orders", "all"),
        ("event_counts", "Product Viewed", "7d"),
        ("event_counts", "Video", "Played", "7d"),
        ("affinities", "product_category", "shoes"),
        ("sessions", "count_7d"),
        ("context", "last"),
        ("recency_days",),
    ]
    whole = evaluate_profile(state, FEATURES, T)
    part = evaluate_profile(state, FEATURES, T, reach=document_reach(paths, FEATURES))
    for path in paths:
        assert resolve_path(part, path) == resolve_path(whole, path)
    # what no path reaches is not computed
    assert "last_events" not in part
    assert "revenue" not in part
    assert set(part["event_counts"]) == {"Product Viewed", "Video.Played"}
    # the rules' document computes only the windows they read, with the same values
    plan = ColumnPlan(compiled_of([{"feature": ".".join(path), "op": "exists"} for path in paths]))
    for at_ms in (T, T + 3 * 86_400_000, T + 40 * 86_400_000):
        whole = evaluate_profile(state, FEATURES, at_ms)
        rules = plan._reach(FEATURES).document(state, FEATURES, at_ms)
        for path in paths:
            assert resolve_path(rules, path) == resolve_path(whole, path)
    assert rules["orders"] == {"all": whole["orders"]["all"]}
    assert rules["event_counts"] == {"Product Viewed": {"7d": 0}, "Video.Played": {"7d": 0}}


def test_a_column_tests_each_value_for_what_it_is() -> None:
    # 1, 1.0 and True are one key of a dict, and not one value to the operators
    values = [1, True, 1.0, 0, False, None, MISSING, "1", [1], [True], {"a": 1}, 1]
    column = factorize(values)
    assert len(column.distinct) == len(values) - 1
    assert evaluate_column(column, build_test("eq", 1)).tolist() == [
        v in (1,) and type(v) is not bool and not isinstance(v, str | list | dict) for v in values
    ]
    assert evaluate_column(column, build_test("eq", True)).tolist() == [v is True for v in values]
    assert evaluate_column(column, build_test("contains", 1)).tolist() == [
        v is values[8] for v in values
    ]
    assert evaluate_column(column, build_test("exists")).tolist() == [
        v is not None and v is not MISSING for v in values
    ]


KEY_PARTS = st.sampled_from(["a", "b", "c", "a.b", "b.c", "a.b.c"])
DOCUMENTS = st.recursive(
    st.one_of(st.integers(0, 3), st.none(), st.text(max_size=2)),
    lambda inner: st.dictionaries(KEY_PARTS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    document=DOCUMENTS,
    paths=st.lists(
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map(tuple),
        min_size=1,
        max_size=6,
        unique=True,
    ),
)
def test_the_paths_of_a_plan_resolve_together_as_each_alone(
    document: Any, paths: list[tuple[str, ...]]
) -> None:
    # keys that hold dots take precedence at their level: the shared walk must see them
    tree = _PathTree(paths)
    values: list[Any] = [MISSING] * len(paths)
    tree.resolve(document, values)
    assert values == [resolve_path(document, parts) for parts in paths]
