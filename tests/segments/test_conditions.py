"""The segment condition language: validation with JSON pointers, operators, combinators,
cycles, event counters, and compiled predicates against a brute-force evaluator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.errors import ValidationError
from personify.profiles.events import MS_PER_DAY, event_name, format_ms, parse_ms
from personify.segments import (
    EvaluationContext,
    EventCounter,
    compile_condition,
    event_counters,
    parse_condition,
    parse_window_ms,
)
from personify.segments.validation import MAX_DEPTH, MAX_LEAVES

T = parse_ms("t", "2024-05-01T12:00:00.000Z")
ABSENT = object()  # a trait that is not there at all


def problems(condition: Any, **kwargs: Any) -> list[tuple[str, str]]:
    """The (pointer, code) of every problem the validation reports."""
    with pytest.raises(ValidationError) as caught:
        parse_condition(condition, **kwargs)
    assert caught.value.code == "invalid_condition"
    return [(p["pointer"], p["code"]) for p in caught.value.details["errors"]]


def matches(condition: Any, **context: Any) -> bool:
    return compile_condition(condition).evaluate(EvaluationContext(**context))


# --- validation ---------------------------------------------------------------------------


def test_every_problem_is_reported_with_its_pointer() -> None:
    condition = {
        "all": [
            {"trait": "plan", "op": "equals", "value": "pro"},
            {
                "event": "Product Viewed",
                "where": [
                    {"property": "category", "op": "eq", "value": "shoes"},
                    {"property": "price", "op": "gte", "value": [1]},
                    {"property": "size", "op": "wat"},
                ],
                "within": "7 days",
                "count": {"op": "gte", "value": -1},
                "colour": "red",
            },
            {"any": []},
            {"not": {"feature": "orders..all", "op": "exists", "value": 1}},
            {"prediction": "churn.probability", "op": "between", "value": [0.9, 0.1]},
        ]
    }
    assert problems(condition) == [
        ("/all/0/op", "unknown_operator"),
        ("/all/1/colour", "unknown_key"),
        ("/all/1/within", "invalid_window"),
        ("/all/1/where/1/value", "invalid_value"),
        ("/all/1/where/2/op", "unknown_operator"),
        ("/all/1/count/value", "invalid_value"),
        ("/all/2/any", "empty_combinator"),
        ("/all/3/not/feature", "invalid_path"),
        ("/all/3/not/value", "unexpected_value"),
        ("/all/4/value", "invalid_value"),
    ]


def test_the_error_message_names_the_first_problem_and_counts_the_rest() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_condition({"any": [{"trait": "a", "op": "nope", "value": 1}, {"all": []}]})
    assert caught.value.message.startswith("invalid condition at /any/0/op: unknown operator")
    assert caught.value.message.endswith("(and 1 more problem)")
    assert caught.value.to_dict()["details"]["errors"][1]["pointer"] == "/any/1/all"


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("plan = pro", [("", "invalid_node")]),
        ({"plan": "pro"}, [("", "unknown_node")]),
        ({"trait": "a", "segment": "b"}, [("", "ambiguous_node")]),
        ({"all": {"trait": "a", "op": "exists"}}, [("/all", "invalid_value")]),
        ({"all": [1]}, [("/all/0", "invalid_node")]),
        ({"trait": "plan", "op": "eq"}, [("", "missing_value")]),
        ({"trait": "plan", "value": 1}, [("", "missing_key")]),
        ({"trait": "", "op": "exists"}, [("/trait", "invalid_path")]),
        ({"trait": 3, "op": "exists"}, [("/trait", "invalid_path")]),
        ({"trait": "a", "op": "eq", "value": None}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "eq", "value": [1]}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "eq", "value": float("nan")}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "lt", "value": True}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "in", "value": "pro"}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "in", "value": [1, "1"]}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "between", "value": [1]}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "between", "value": [1, "z"]}, [("/value", "invalid_value")]),
        ({"trait": "a", "op": "contains", "value": {"x": 1}}, [("/value", "invalid_value")]),
        ({"event": ""}, [("/event", "invalid_value")]),
        ({"event": "A", "within": "0d"}, [("/within", "invalid_window")]),
        ({"event": "A", "within": 7}, [("/within", "invalid_window")]),
        ({"event": "A", "within": "99999w"}, [("/within", "invalid_window")]),
        ({"event": "A", "where": {"a": 1}}, [("/where", "invalid_value")]),
        (
            {"event": "A", "where": [{"property": "a", "op": "eq", "value": 1, "x": 0}]},
            [("/where/0/x", "unknown_key")],
        ),
        ({"event": "A", "count": 3}, [("/count", "invalid_value")]),
        ({"event": "A", "count": {"op": "exists"}}, [("/count/op", "operator_not_allowed")]),
        ({"event": "A", "count": {"op": "gte", "value": 1.5}}, [("/count/value", "invalid_value")]),
        ({"segment": ""}, [("/segment", "invalid_value")]),
        ({"not": {"segment": "a"}, "x": 1}, [("/x", "unknown_key")]),
        ({"not": []}, [("/not", "invalid_node")]),
        ({"any": [{"trait": "a~b/c", "op": "exists", "o/p": 1}]}, [("/any/0/o~1p", "unknown_key")]),
    ],
)
def test_each_kind_of_problem_has_its_code_and_pointer(
    condition: Any, expected: list[tuple[str, str]]
) -> None:
    assert problems(condition) == expected


def test_nesting_is_limited() -> None:
    ok: Any = {"trait": "a", "op": "exists"}
    for _ in range(MAX_DEPTH):
        ok = {"not": ok}
    parse_condition(ok)
    too_deep = {"all": [ok]}
    assert problems(too_deep) == [("/all/0" + "/not" * (MAX_DEPTH - 1), "too_deep")]


def test_the_number_of_leaves_is_limited() -> None:
    leaf = {"trait": "a", "op": "exists"}
    parse_condition({"any": [leaf] * MAX_LEAVES})
    assert problems({"any": [leaf] * (MAX_LEAVES + 2)}) == [
        (f"/any/{MAX_LEAVES}", "too_many_conditions")
    ]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30m", 1_800_000),
        ("12h", 43_200_000),
        ("7d", 7 * MS_PER_DAY),
        ("2w", 14 * MS_PER_DAY),
        ("45s", 45_000),
        ("3660d", 3660 * MS_PER_DAY),
        ("3661d", None),
        ("7", None),
        ("d", None),
        ("07d", None),
        ("-1d", None),
        ("1.5h", None),
        (" 7d", None),
        ("7D", None),
        (None, None),
    ],
)
def test_windows(text: Any, ms: int | None) -> None:
    assert parse_window_ms(text) == ms


# --- cycles -------------------------------------------------------------------------------


def test_a_segment_referring_to_itself_is_a_cycle() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_condition(
            {"any": [{"trait": "a", "op": "exists"}, {"segment": "loyal"}]}, key="loyal"
        )
    (problem,) = caught.value.details["errors"]
    assert (problem["pointer"], problem["code"], problem["cycle"]) == (
        "/any/1",
        "segment_cycle",
        ["loyal", "loyal"],
    )
    # the same reference from another segment is fine
    parse_condition({"segment": "loyal"}, key="vip")


def test_indirect_cycles_and_unknown_segments_are_found_through_the_lookup() -> None:
    others = {
        "a": {"all": [{"trait": "x", "op": "exists"}, {"not": {"segment": "b"}}]},
        "b": {"any": [{"segment": "c"}]},
        "c": {"segment": "new"},
        "d": None,  # a segment without a rule, such as a cluster
        "e": {"trait": "x", "op": "exists"},
    }
    with pytest.raises(ValidationError) as caught:
        parse_condition(
            {"all": [{"segment": "d"}, {"segment": "a"}, {"segment": "ghost"}, {"segment": "e"}]},
            key="new",
            segments=others,
        )
    found = [(p["pointer"], p["code"], p.get("cycle")) for p in caught.value.details["errors"]]
    assert found == [
        ("/all/1", "segment_cycle", ["new", "a", "b", "c", "new"]),
        ("/all/2", "unknown_segment", None),
    ]
    # without the reference back to "new", the same graph is acyclic
    parse_condition({"segment": "a"}, key="new", segments={**others, "c": None})


def test_a_loop_among_other_segments_is_reported_too() -> None:
    others = {"a": {"segment": "b"}, "b": {"segment": "a"}}
    with pytest.raises(ValidationError) as caught:
        parse_condition({"segment": "a"}, key="z", segments=others)
    assert caught.value.details["errors"][0]["cycle"] == ["a", "b", "a"]


def test_editing_a_segment_checks_its_new_condition_not_the_stored_one() -> None:
    stored = {"a": {"segment": "b"}, "b": {"trait": "x", "op": "exists"}}
    # a's stored condition refers to b; b may now refer to a only if a does not lead back
    with pytest.raises(ValidationError):
        parse_condition({"segment": "a"}, key="b", segments=stored)
    parse_condition({"trait": "y", "op": "exists"}, key="a", segments=stored)
    parse_condition({"segment": "b"}, key="a", segments=stored)


# --- operators ----------------------------------------------------------------------------

# (op, operand, actual value, expected); ABSENT is a trait that is not there
TRUTH_TABLE: list[tuple[str, Any, Any, bool]] = [
    # eq / ne on numbers, strings, booleans, and across kinds
    ("eq", 2, 2, True),
    ("eq", 2, 2.0, True),
    ("eq", 2, 3, False),
    ("eq", 2, "2", False),
    ("eq", 1, True, False),
    ("eq", True, 1, False),
    ("eq", True, True, True),
    ("eq", "pro", "pro", True),
    ("eq", "pro", "Pro", False),
    ("eq", "pro", None, False),
    ("eq", "pro", ABSENT, False),
    ("eq", "pro", ["pro"], False),
    ("eq", 2, {"a": 2}, False),
    ("ne", 2, 3, True),
    ("ne", 2, 2, False),
    ("ne", 2, "3", False),
    ("ne", "a", "b", True),
    ("ne", "a", ABSENT, False),
    ("ne", "a", None, False),
    ("ne", False, True, True),
    ("ne", False, 0, False),
    # order on numbers and strings (code points)
    ("lt", 5, 4.5, True),
    ("lt", 5, 5, False),
    ("lte", 5, 5, True),
    ("lte", 5, 6, False),
    ("gt", 5, 6, True),
    ("gt", 5, 5, False),
    ("gte", 5, 5, True),
    ("gte", 5, 4, False),
    ("lt", "b", "a", True),
    ("lt", "b", "B", True),
    ("gt", "b", "ba", True),
    ("gte", "2024-05-01", "2024-05-01T10:00:00.000Z", True),
    ("lt", 5, "4", False),
    ("lt", "5", 4, False),
    ("gt", 0, True, False),
    ("lt", 5, ABSENT, False),
    ("lt", 5, None, False),
    ("gt", 0, [1], False),
    # between, inclusive
    ("between", [1, 3], 1, True),
    ("between", [1, 3], 3, True),
    ("between", [1, 3], 2.5, True),
    ("between", [1, 3], 0.99, False),
    ("between", [1, 3], 4, False),
    ("between", [1, 3], "2", False),
    ("between", ["b", "d"], "c", True),
    ("between", ["b", "d"], "e", False),
    ("between", [1, 1], 1, True),
    ("between", [1, 3], ABSENT, False),
    # in / not_in
    ("in", ["pro", "team"], "pro", True),
    ("in", ["pro", "team"], "free", False),
    ("in", [1, 2], 2.0, True),
    ("in", [1, 2], "1", False),
    ("in", [1, 2], True, False),
    ("in", [True], True, True),
    ("in", [True], 1, False),
    ("in", ["a"], ABSENT, False),
    ("in", ["a"], ["a"], False),
    ("not_in", ["pro", "team"], "free", True),
    ("not_in", ["pro", "team"], "pro", False),
    ("not_in", [1, 2], 3, True),
    ("not_in", [1, 2], "3", False),
    ("not_in", ["a"], ABSENT, False),
    ("not_in", ["a"], None, False),
    ("not_in", [False], True, True),
    # contains: substring of a string, element of a list
    ("contains", "shoe", "red shoes", True),
    ("contains", "shoe", "hats", False),
    ("contains", "", "x", True),
    ("contains", "1", 1, False),
    ("contains", 1, "1", False),
    ("contains", "a", ["a", "b"], True),
    ("contains", "a", ["ab"], False),
    ("contains", 1, [2, 1.0], True),
    ("contains", 1, [True], False),
    ("contains", True, [1, True], True),
    ("contains", "a", {"a": 1}, False),
    ("contains", "a", ABSENT, False),
    ("contains", "a", None, False),
    # exists
    ("exists", None, 0, True),
    ("exists", None, "", True),
    ("exists", None, False, True),
    ("exists", None, [], True),
    ("exists", None, {}, True),
    ("exists", None, None, False),
    ("exists", None, ABSENT, False),
]


@pytest.mark.parametrize(("op", "operand", "actual", "expected"), TRUTH_TABLE)
def test_operator_truth_table(op: str, operand: Any, actual: Any, expected: bool) -> None:
    leaf = (
        {"trait": "t", "op": op} if op == "exists" else {"trait": "t", "op": op, "value": operand}
    )
    traits = {} if actual is ABSENT else {"t": actual}
    assert matches(leaf, traits=traits) is expected
    # the same leaf reads features, predictions and event properties alike
    feature = {**leaf, "feature": "f.t"}
    del feature["trait"]
    assert matches(feature, features={"f": traits}) is expected
    prediction = {**leaf, "prediction": "p.t"}
    del prediction["trait"]
    assert matches(prediction, predictions={"p": traits}) is expected
    where = {"property": "t", "op": op, **({} if op == "exists" else {"value": operand})}
    (counter,) = event_counters({"event": "A", "where": [where]})
    assert counter.matches("A", traits) is expected


def test_a_missing_prediction_never_matches_whatever_the_operator() -> None:
    for op, value in [("exists", None), ("ne", 1), ("not_in", [1]), ("lt", 1)]:
        leaf = {"prediction": "churn.probability", "op": op}
        if value is not None:
            leaf["value"] = value
        assert not matches(leaf)
        assert not matches(leaf, predictions={"churn": {}})
        assert matches({"not": leaf}, predictions=None)
    assert matches(
        {"prediction": "churn.probability", "op": "gt", "value": 0.7},
        predictions={"churn": {"probability": 0.71}},
    )


def test_dotted_paths_reach_into_the_profile_document() -> None:
    features = {
        "orders": {"7d": 0, "30d": 1, "all": 2},
        "event_counts": {"Product Viewed": {"7d": 4}, "v1.2 Opened": {"all": 1}},
        "sessions": {"count_7d": 3},
    }
    assert matches({"feature": "orders.all", "op": "gte", "value": 2}, features=features)
    assert not matches({"feature": "orders.7d", "op": "gte", "value": 1}, features=features)
    assert matches(
        {"feature": "event_counts.Product Viewed.7d", "op": "eq", "value": 4}, features=features
    )
    # a key holding a dot is matched whole
    assert matches(
        {"feature": "event_counts.v1.2 Opened.all", "op": "eq", "value": 1}, features=features
    )
    assert not matches({"feature": "orders.all.x", "op": "exists"}, features=features)
    assert not matches({"feature": "nothing.here", "op": "exists"}, features=features)
    assert matches(
        {"trait": "address.city", "op": "eq", "value": "Oslo"}, traits={"address": {"city": "Oslo"}}
    )


# --- combinators and leaves ---------------------------------------------------------------


def test_combinators() -> None:
    yes = {"trait": "a", "op": "eq", "value": 1}
    no = {"trait": "a", "op": "eq", "value": 2}
    traits = {"a": 1}
    assert matches({"all": [yes, yes]}, traits=traits)
    assert not matches({"all": [yes, no]}, traits=traits)
    assert matches({"any": [no, yes]}, traits=traits)
    assert not matches({"any": [no, no]}, traits=traits)
    assert matches({"not": no}, traits=traits)
    assert not matches({"not": yes}, traits=traits)
    assert matches({"not": {"not": yes}}, traits=traits)
    assert matches({"all": [{"any": [no, yes]}, {"not": {"all": [yes, no]}}]}, traits=traits)


def test_segment_membership_leaf() -> None:
    leaf = {"segment": "churn-risk"}
    assert matches(leaf, segments={"churn-risk", "vip"})
    assert not matches(leaf, segments={"vip"})
    assert compile_condition({"any": [leaf, {"not": {"segment": "x/y"}}]}).segment_keys == {
        "churn-risk",
        "x/y",
    }


def test_event_leaf_reads_its_counter_and_defaults_to_at_least_one() -> None:
    plain = compile_condition({"event": "Signed Up"})
    (counter,) = plain.counters
    assert not plain.evaluate(EvaluationContext())  # a counter the mapping lacks counts 0
    assert plain.evaluate(EvaluationContext(event_counts={counter.id: 1}))
    three = compile_condition({"event": "Signed Up", "count": {"op": "gte", "value": 3}})
    assert three.counters == (counter,)
    assert not three.evaluate(EvaluationContext(event_counts={counter.id: 2}))
    assert three.evaluate(EvaluationContext(event_counts=lambda c: 3 if c == counter else 0))
    none = compile_condition(
        {"event": "Signed Up", "within": "7d", "count": {"op": "eq", "value": 0}}
    )
    assert none.evaluate(EvaluationContext(event_counts={counter.id: 5}))


def test_counter_ids_are_stable_and_shared_by_equal_counters() -> None:
    where = [
        {"property": "category", "op": "eq", "value": "shoes"},
        {"property": "price", "op": "in", "value": [20, 10.0, 10]},
    ]
    a = event_counters({"event": "Product Viewed", "where": where, "within": "7d"})
    b = event_counters(
        {
            "all": [
                {
                    "event": "Product Viewed",
                    "where": [where[1], where[0], where[0]],
                    "within": "168h",
                    "count": {"op": "gte", "value": 3},
                },
                {
                    "not": {
                        "event": "Product Viewed",
                        "where": [
                            {"property": "category", "op": "eq", "value": "shoes"},
                            {"property": "price", "op": "in", "value": [10, 20]},
                        ],
                        "within": "1w",
                    }
                },
            ]
        }
    )
    assert len(b) == 1 and a[0].id == b[0].id
    # a hash of the canonical JSON: pinned, so that a stored counter keeps its id
    assert a[0].to_json() == {
        "event": "Product Viewed",
        "where": [
            {"property": "category", "op": "eq", "value": "shoes"},
            {"property": "price", "op": "in", "value": [10, 20]},
        ],
        "within_ms": 7 * MS_PER_DAY,
    }
    assert a[0].id == EventCounter("Product Viewed", a[0].where, 7 * MS_PER_DAY).id
    assert len(a[0].id) == 16
    distinct = event_counters(
        {
            "any": [
                {"event": "Product Viewed", "where": where, "within": "7d"},
                {"event": "Product Viewed", "where": where, "within": "6d"},
                {"event": "Product Viewed", "where": where},
                {"event": "Product Viewed", "where": where[:1], "within": "7d"},
                {"event": "Product Clicked", "where": where, "within": "7d"},
            ]
        }
    )
    assert len({c.id for c in distinct}) == 5
    assert distinct[0].id == a[0].id


def test_a_counter_window_is_open_at_the_start_and_closed_at_the_end() -> None:
    (counter,) = event_counters({"event": "A", "within": "1h"})
    hour = 3_600_000
    assert counter.covers(T, T)
    assert counter.covers(T - hour + 1, T)
    assert not counter.covers(T - hour, T)
    assert not counter.covers(T + 1, T)  # a future event does not count yet
    (forever,) = event_counters({"event": "*"})
    assert forever.covers(0, T) and not forever.covers(T + 1, T)
    assert forever.matches("$page", None) and forever.matches("Anything", {})


def test_compile_refuses_an_invalid_condition() -> None:
    with pytest.raises(ValidationError) as caught:
        compile_condition({"all": [{"trait": "a", "op": "is", "value": 1}]})
    assert caught.value.details["errors"][0]["pointer"] == "/all/0/op"
    with pytest.raises(ValidationError):
        event_counters({"event": "A", "within": "soon"})


# --- compiled predicate == brute force over raw events ------------------------------------

NAMES = ["Product Viewed", "Order Completed", "Signed Up"]
TYPES_OF_NAMES = {"$page": "page", "$screen": "screen"}
PROPERTY_VALUES = st.one_of(
    st.sampled_from(["shoes", "hats", "red shoes", "", "Shoes"]),
    st.integers(-3, 30),
    st.sampled_from([0.5, 2.0, 12.25]),
    st.booleans(),
    st.none(),
    st.lists(st.sampled_from(["shoes", "hats", 1, True]), max_size=3),
)
STRINGS = st.sampled_from(["shoes", "hats", "red shoes", "", "s", "pro", "free"])
NUMBERS = st.one_of(st.integers(-3, 30), st.sampled_from([0.5, 2.0, 12.25]))


@st.composite
def comparisons(draw: st.DrawFn, *, counts: bool = False) -> dict[str, Any]:
    if counts:
        op = draw(
            st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between"])
        )
        scalar: st.SearchStrategy[Any] = st.integers(0, 5)
    else:
        op = draw(
            st.sampled_from(
                [
                    "eq",
                    "ne",
                    "lt",
                    "lte",
                    "gt",
                    "gte",
                    "in",
                    "not_in",
                    "contains",
                    "exists",
                    "between",
                ]
            )
        )
        if op == "exists":
            return {"op": op}
        kinds = (
            [STRINGS, NUMBERS]
            if op in ("lt", "lte", "gt", "gte", "between")
            else [STRINGS, NUMBERS, st.booleans()]
        )
        scalar = draw(st.sampled_from(kinds))
    if op in ("in", "not_in"):
        return {"op": op, "value": draw(st.lists(scalar, min_size=1, max_size=4))}
    if op == "between":
        low, high = sorted([draw(scalar), draw(scalar)])
        return {"op": op, "value": [low, high]}
    return {"op": op, "value": draw(scalar)}


def event_leaves() -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        leaf: dict[str, Any] = {"event": draw(st.sampled_from([*NAMES, "$page", "*"]))}
        if draw(st.booleans()):
            leaf["where"] = draw(
                st.lists(
                    st.builds(
                        lambda p, c: {"property": p, **c},
                        st.sampled_from(["category", "price", "tags"]),
                        comparisons(),
                    ),
                    max_size=2,
                )
            )
        within = draw(st.sampled_from([None, "30m", "12h", "1d", "3d", "2w"]))
        if within:
            leaf["within"] = within
        if draw(st.booleans()):
            leaf["count"] = draw(comparisons(counts=True))
        return leaf

    return build()


LEAVES = st.one_of(
    event_leaves(),
    st.builds(lambda c, p: {"trait": p, **c}, comparisons(), st.sampled_from(["plan", "age"])),
    st.builds(
        lambda c, p: {"feature": p, **c},
        comparisons(),
        st.sampled_from(["orders.all", "orders.7d", "recency_days"]),
    ),
    st.builds(lambda c: {"prediction": "churn.probability", **c}, comparisons()),
    st.builds(lambda k: {"segment": k}, st.sampled_from(["vip", "churn-risk"])),
)
CONDITIONS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=8,
)


WINDOWS_MS = [1_800_000, 43_200_000, MS_PER_DAY, 3 * MS_PER_DAY, 14 * MS_PER_DAY]
# an event exactly at a window's start (outside), just after it (inside), at T, just after T
EDGES_MS = [0, -1, *WINDOWS_MS, *(w - 1 for w in WINDOWS_MS)]


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from([*NAMES, "$page"]))
    # from three weeks before T to two hours after it, including the window edges exactly
    offset_ms = draw(
        st.one_of(
            st.integers(-2 * 3_600_000, 21 * MS_PER_DAY),
            st.sampled_from(EDGES_MS),
        )
    )
    properties = draw(
        st.dictionaries(st.sampled_from(["category", "price", "tags"]), PROPERTY_VALUES, max_size=3)
    )
    base = (
        {"type": TYPES_OF_NAMES[name], "name": "Home"}
        if name in TYPES_OF_NAMES
        else {"type": "track", "event": name}
    )
    return {**base, "properties": properties, "timestamp": format_ms(T - offset_ms)}


# The brute force: the documented meaning, written out case by case over the raw JSON.


def brute_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def brute_holds(op: str, operand: Any, present: bool, actual: Any) -> bool:
    if op == "exists":
        return present and actual is not None
    if not present:
        return False
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(operand, str) and operand in actual
        if isinstance(actual, list):
            return any(brute_kind(x) == brute_kind(operand) and x == operand for x in actual)
        return False
    probe = operand[0] if op in ("in", "not_in", "between") else operand
    if brute_kind(actual) is None or brute_kind(actual) != brute_kind(probe):
        return False
    if op == "in":
        return any(actual == x for x in operand)
    if op == "not_in":
        return all(actual != x for x in operand)
    if op == "between":
        return operand[0] <= actual <= operand[1]
    return {
        "eq": actual == operand,
        "ne": actual != operand,
        "lt": actual < operand,
        "lte": actual <= operand,
        "gt": actual > operand,
        "gte": actual >= operand,
    }[op]


def brute_lookup(root: Any, path: str) -> tuple[bool, Any]:
    node = root
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def brute_count(leaf: dict[str, Any], events: list[dict[str, Any]], at_ms: int) -> int:
    window_ms = {
        None: None,
        "30m": 1_800_000,
        "12h": 43_200_000,
        "1d": MS_PER_DAY,
        "3d": 3 * MS_PER_DAY,
        "2w": 14 * MS_PER_DAY,
    }[leaf.get("within")]
    n = 0
    for ev in events:
        name = ev["event"] if ev["type"] == "track" else "$" + ev["type"]
        if leaf["event"] != "*" and name != leaf["event"]:
            continue
        ts = parse_ms("timestamp", ev["timestamp"])
        if ts > at_ms or (window_ms is not None and ts <= at_ms - window_ms):
            continue
        if all(
            brute_holds(w["op"], w.get("value"), *brute_lookup(ev["properties"], w["property"]))
            for w in leaf.get("where", [])
        ):
            n += 1
    return n


def brute_force(
    cond: dict[str, Any], events: list[dict[str, Any]], at_ms: int, profile: dict[str, Any]
) -> bool:
    if "all" in cond:
        return all(brute_force(c, events, at_ms, profile) for c in cond["all"])
    if "any" in cond:
        return any(brute_force(c, events, at_ms, profile) for c in cond["any"])
    if "not" in cond:
        return not brute_force(cond["not"], events, at_ms, profile)
    if "segment" in cond:
        return cond["segment"] in profile["segments"]
    if "event" in cond:
        count = cond.get("count", {"op": "gte", "value": 1})
        return brute_holds(count["op"], count["value"], True, brute_count(cond, events, at_ms))
    for source, section in (
        ("trait", "traits"),
        ("feature", "features"),
        ("prediction", "predictions"),
    ):
        if source in cond:
            if profile[section] is None:
                return False
            present, actual = brute_lookup(profile[section], cond[source])
            if source == "prediction" and actual is None:
                return False
            return brute_holds(cond["op"], cond.get("value"), present, actual)
    raise AssertionError(cond)


def compiled_counts(events: list[dict[str, Any]], at_ms: int) -> Callable[[EventCounter], int]:
    """Counts by the counters' own matching, as a later slice keeps them per profile."""

    def count(counter: EventCounter) -> int:
        return sum(
            counter.matches(event_name(ev["type"], ev), ev.get("properties"))
            and counter.covers(parse_ms("timestamp", ev["timestamp"]), at_ms)
            for ev in events
        )

    return count


PROFILES = st.fixed_dictionaries(
    {
        "traits": st.dictionaries(st.sampled_from(["plan", "age"]), PROPERTY_VALUES, max_size=2),
        "features": st.fixed_dictionaries(
            {
                "orders": st.dictionaries(st.sampled_from(["all", "7d"]), st.integers(0, 5)),
                "recency_days": st.one_of(st.none(), NUMBERS),
            }
        ),
        "predictions": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"churn": st.fixed_dictionaries({"probability": st.floats(0, 1)})}
            ),
        ),
        "segments": st.sets(st.sampled_from(["vip", "churn-risk", "other"])),
    }
)


@settings(max_examples=400, deadline=None)
@given(
    cond=CONDITIONS,
    events=st.lists(raw_events(), max_size=12),
    profile=PROFILES,
    late_ms=st.integers(0, 2 * MS_PER_DAY),
)
def test_compiled_predicate_equals_brute_force(
    cond: dict[str, Any], events: list[dict[str, Any]], profile: dict[str, Any], late_ms: int
) -> None:
    predicate = compile_condition(cond)
    for at_ms in (T, T + late_ms):  # the same events read later: windows slide
        context = EvaluationContext(
            traits=profile["traits"],
            features=profile["features"],
            event_counts=compiled_counts(events, at_ms),
            segments=profile["segments"],
            predictions=profile["predictions"],
        )
        assert predicate.evaluate(context) is brute_force(cond, events, at_ms, profile)
        # counting through the mapping of counter ids gives the same answer
        counts = compiled_counts(events, at_ms)
        by_id = EvaluationContext(
            traits=profile["traits"],
            features=profile["features"],
            event_counts={c.id: counts(c) for c in predicate.counters},
            segments=profile["segments"],
            predictions=profile["predictions"],
        )
        assert predicate.evaluate(by_id) is predicate.evaluate(context)


@settings(max_examples=200, deadline=None)
@given(cond=CONDITIONS)
def test_counters_are_the_distinct_event_leaves(cond: dict[str, Any]) -> None:
    def leaves(node: dict[str, Any]) -> list[dict[str, Any]]:
        if "all" in node or "any" in node:
            return [x for c in node.get("all", node.get("any")) for x in leaves(c)]
        if "not" in node:
            return leaves(node["not"])
        return [node] if "event" in node else []

    counters = event_counters(cond)
    ids = [c.id for c in counters]
    assert len(ids) == len(set(ids))
    expected = {
        (leaf["event"], parse_window_ms(leaf["within"]) if "within" in leaf else None)
        for leaf in leaves(cond)
    }
    assert {(c.event, c.within_ms) for c in counters} == expected


@settings(max_examples=300, deadline=None)
@given(leaf=event_leaves(), events=st.lists(raw_events(), max_size=12))
def test_counter_counts_equal_brute_force(
    leaf: dict[str, Any], events: list[dict[str, Any]]
) -> None:
    (counter,) = event_counters(leaf)
    assert compiled_counts(events, T)(counter) == brute_count(leaf, events, T)
