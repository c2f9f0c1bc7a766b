"""Experiment assignment: deterministic, weighted, independent, stable, disjoint and sticky."""

from __future__ import annotations

from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from personify.errors import ValidationError
from personify.experiments.assignment import (
    Allocation,
    Assigner,
    Assignment,
    assign_variant,
    bucket,
    sticky_key,
)

# fixed ids, so the statistical tests give the same answer on every run and cannot flake
IDS = [f"user-{i}" for i in range(20_000)]
# a test fails only at p <= 0.001 on data that is right
ALPHA = 0.001

units = st.text(min_size=1, max_size=30)
seeds = st.text(min_size=1, max_size=12)
weight_lists = st.lists(
    st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=1, max_size=6
).filter(lambda weights: sum(weights) > 0)
probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def make(weights: list[float], seed: str = "hero", **kwargs: Any) -> Allocation:
    return Allocation(seed, tuple((f"v{i}", w) for i, w in enumerate(weights)), **kwargs)


def reference_bucket(*parts: str) -> float:
    return xxhash.xxh3_64_intdigest("\x1f".join(parts).encode()) / 2.0**64


def reference_assign(allocation: Allocation, unit: str) -> int | None:
    """The documented rule, evaluated the slow and obvious way."""
    if allocation.namespace is not None:
        namespace, start, end = allocation.namespace
        if not start <= reference_bucket(namespace, unit) < end:
            return None
    if not reference_bucket(allocation.seed, "coverage", unit) < allocation.coverage:
        return None
    position = reference_bucket(allocation.seed, "variant", unit)
    total = sum(w for _, w in allocation.variants)
    cumulative = 0.0
    for i, (_, weight) in enumerate(allocation.variants):
        cumulative += weight
        if weight > 0 and position < cumulative / total:
            return i
    return max(i for i, (_, w) in enumerate(allocation.variants) if w > 0)


def counts(allocation: Allocation, ids: list[str]) -> list[int]:
    found = [0] * len(allocation.variants)
    for unit in ids:
        assignment = assign_variant(allocation, unit)
        if assignment is not None:
            found[assignment.index] += 1
    return found


def definition(
    key: str = "hero",
    weights: tuple[float, ...] = (0.5, 0.5),
    names: tuple[str, ...] = ("control", "b"),
    **overrides: Any,
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "key": key,
        "seed": key,
        "status": "running",
        "phase": 1,
        "coverage": 1.0,
        "namespace": None,
        "variants": [{"key": n, "weight": w} for n, w in zip(names, weights, strict=True)],
    }
    base.update(overrides)
    return base


# -- determinism ------------------------------------------------------------------------------


@given(seed=seeds, weights=weight_lists, coverage=probabilities, unit=units)
def test_assignment_is_deterministic_and_follows_the_documented_rule(
    seed: str, weights: list[float], coverage: float, unit: str
) -> None:
    allocation = make(weights, seed, coverage=coverage)
    first = assign_variant(allocation, unit)
    assert assign_variant(allocation, unit) == first
    # a new, equal allocation (another process, another server) gives the same answer
    assert assign_variant(make(weights, seed, coverage=coverage), unit) == first
    expected = reference_assign(allocation, unit)
    assert (first is None) == (expected is None)
    if first is not None:
        assert first.index == expected
        assert first.variant == f"v{expected}"
        assert weights[first.index] > 0
        assert first.probability == pytest.approx(weights[first.index] / sum(weights))


@given(parts=st.lists(st.text(max_size=10), min_size=1, max_size=4))
def test_bucket_is_xxh3_of_the_parts_joined_by_the_unit_separator(parts: list[str]) -> None:
    value = bucket(*parts)
    assert value == reference_bucket(*parts)
    assert 0.0 <= value < 1.0


def test_the_hashing_is_frozen() -> None:
    # changing the construction would move every user of every running experiment
    allocation = Allocation("hero", (("control", 0.5), ("b", 0.5)))
    got = [assign_variant(allocation, unit) for unit in ("u1", "u2", "u3", "u4", "u5")]
    assert [a.variant if a else None for a in got] == ["b", "control", "control", "b", "control"]
    assert bucket("hero", "variant", "u1") == 12340091177494729280 / 2**64


def test_an_empty_unit_is_in_no_experiment() -> None:
    assert assign_variant(make([1.0]), "") is None


def test_probability_and_index_describe_the_variant() -> None:
    allocation = Allocation("x", (("a", 1.0), ("b", 0.0), ("c", 3.0)))
    seen = {assign_variant(allocation, unit) for unit in IDS[:2000]}
    assert seen == {Assignment("a", 0.25, 0), Assignment("c", 0.75, 2)}
    assert allocation.index_of("b") == 1
    assert allocation.index_of("z") is None
    assert allocation.assignment_for(1) == Assignment("b", 0.0, 1)


# -- close to the weights ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "weights"),
    [
        ("hero", [0.5, 0.5]),
        ("cta", [0.1, 0.9]),
        ("layout", [1.0, 1.0, 1.0]),
        ("pricing", [0.2, 0.3, 0.5]),
        ("banner", [5.0, 0.0, 3.0, 2.0]),
        ("tiny", [0.01, 0.99]),
        ("menu", [1.0] * 8),
    ],
)
def test_split_fits_the_weights(seed: str, weights: list[float]) -> None:
    found = counts(make(weights, seed), IDS)
    assert sum(found) == len(IDS)
    positive = [i for i, w in enumerate(weights) if w > 0]
    assert all(found[i] == 0 for i, w in enumerate(weights) if w == 0)
    total = sum(weights)
    expected = [len(IDS) * weights[i] / total for i in positive]
    # Pearson's chi-square goodness of fit, k - 1 degrees of freedom
    assert stats.chisquare([found[i] for i in positive], expected).pvalue > ALPHA


@pytest.mark.parametrize("coverage", [0.05, 0.3, 0.5, 0.9])
def test_coverage_takes_its_share_and_keeps_the_weights(coverage: float) -> None:
    allocation = make([0.25, 0.75], "promo", coverage=coverage)
    found = counts(allocation, IDS)
    inside = sum(found)
    # two-sided exact binomial test of the covered share
    assert stats.binomtest(inside, len(IDS), coverage).pvalue > ALPHA
    # the coverage hash does not bias the variants of those it lets in
    assert stats.chisquare(found, [inside * 0.25, inside * 0.75]).pvalue > ALPHA


def test_the_test_detects_a_wrong_split() -> None:
    # the goodness-of-fit test has the power to see a 50/50 split that is really 48/52
    found = counts(make([0.5, 0.5]), IDS)
    assert stats.chisquare(found, [len(IDS) * 0.48, len(IDS) * 0.52]).pvalue < ALPHA


# -- independent between experiments ----------------------------------------------------------


def contingency(first: Allocation, second: Allocation, ids: list[str]) -> list[list[int]]:
    table = [[0] * len(second.variants) for _ in first.variants]
    for unit in ids:
        a, b = assign_variant(first, unit), assign_variant(second, unit)
        assert a is not None
        assert b is not None
        table[a.index][b.index] += 1
    return table


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (make([0.5, 0.5], "hero"), make([0.5, 0.5], "cta")),
        (make([1.0, 1.0, 1.0], "layout"), make([0.1, 0.2, 0.3, 0.4], "pricing")),
        (make([0.5, 0.5], "hero"), make([0.5, 0.5], "hero-2")),
    ],
)
def test_experiments_with_different_seeds_are_independent(
    first: Allocation, second: Allocation
) -> None:
    table = contingency(first, second, IDS)
    # Pearson's chi-square test of independence, (r - 1)(c - 1) degrees of freedom
    assert stats.chi2_contingency(table, correction=False).pvalue > ALPHA


def test_the_same_seed_gives_the_same_split() -> None:
    # the independence test has the power to see dependence (and seeds are what separates)
    table = contingency(make([0.5, 0.5], "hero"), make([0.5, 0.5], "hero"), IDS)
    assert table[0][1] == table[1][0] == 0
    assert stats.chi2_contingency(table, correction=False).pvalue < ALPHA


@given(seed=seeds, weights=weight_lists, other=seeds, unit=units)
def test_a_unit_variant_depends_on_the_seed_only(
    seed: str, weights: list[float], other: str, unit: str
) -> None:
    # the seed, not the allocation's other fields, decides the variant bucket
    plain = assign_variant(make(weights, seed), unit)
    spaced = assign_variant(make(weights, seed, namespace=(other, 0.0, 1.0)), unit)
    assert plain == spaced


# -- stable when coverage grows ---------------------------------------------------------------


@given(
    seed=seeds,
    weights=weight_lists,
    low=probabilities,
    high=probabilities,
    ids=st.lists(units, max_size=20),
)
def test_growing_coverage_only_adds_units(
    seed: str, weights: list[float], low: float, high: float, ids: list[str]
) -> None:
    low, high = min(low, high), max(low, high)
    small = make(weights, seed, coverage=low)
    large = make(weights, seed, coverage=high)
    for unit in [*ids, *IDS[:200]]:
        before = assign_variant(small, unit)
        if before is not None:
            assert assign_variant(large, unit) == before


def test_growing_coverage_keeps_everyone_on_many_ids() -> None:
    steps = [make([1.0, 2.0, 1.0], "ramp", coverage=c) for c in (0.01, 0.1, 0.5, 0.99, 1.0)]
    for unit in IDS:
        seen = [assign_variant(step, unit) for step in steps]
        first = next((i for i, a in enumerate(seen) if a is not None), len(seen))
        assert all(a is None for a in seen[:first])
        assert all(a == seen[-1] for a in seen[first:])
        assert seen[-1] is not None


# -- namespaces -------------------------------------------------------------------------------


@given(
    cuts=st.lists(probabilities, min_size=3, max_size=3, unique=True).map(sorted),
    seeds_=st.lists(seeds, min_size=2, max_size=2, unique=True),
    ids=st.lists(units, max_size=20),
)
def test_disjoint_ranges_in_a_namespace_never_share_a_unit(
    cuts: list[float], seeds_: list[str], ids: list[str]
) -> None:
    low, middle, high = cuts
    first = make([1.0, 1.0], seeds_[0], namespace=("home", low, middle))
    second = make([1.0, 1.0], seeds_[1], namespace=("home", middle, high))
    for unit in [*ids, *IDS[:500]]:
        assert assign_variant(first, unit) is None or assign_variant(second, unit) is None


def test_ranges_that_tile_a_namespace_partition_its_units() -> None:
    ranges = [(0.0, 0.25), (0.25, 0.6), (0.6, 1.0)]
    layer = [
        make([0.5, 0.5], f"exp-{i}", namespace=("home", start, end))
        for i, (start, end) in enumerate(ranges)
    ]
    owners = [0, 0, 0]
    variants = [[0, 0], [0, 0], [0, 0]]
    for unit in IDS:
        found = [(i, a) for i, a in enumerate(assign_variant(e, unit) for e in layer) if a]
        assert len(found) == 1
        owner, assignment = found[0]
        owners[owner] += 1
        variants[owner][assignment.index] += 1
    widths = [end - start for start, end in ranges]
    assert stats.chisquare(owners, [len(IDS) * w for w in widths]).pvalue > ALPHA
    # the namespace hash does not bias the variants inside a range
    for counted in variants:
        assert stats.chisquare(counted).pvalue > ALPHA


def test_experiments_in_different_namespaces_may_share_units() -> None:
    home = make([1.0], "a", namespace=("home", 0.0, 0.5))
    checkout = make([1.0], "b", namespace=("checkout", 0.0, 0.5))
    both = sum(
        1 for u in IDS if assign_variant(home, u) and assign_variant(checkout, u) is not None
    )
    # independent namespace buckets: about a quarter of all units are in both
    assert stats.binomtest(both, len(IDS), 0.25).pvalue > ALPHA


# -- the assigner and its sticky mapping ------------------------------------------------------


@given(seed=seeds, weights=weight_lists, coverage=probabilities, unit=units)
def test_the_assigner_assigns_as_assign_variant(
    seed: str, weights: list[float], coverage: float, unit: str
) -> None:
    names = tuple(f"v{i}" for i in range(len(weights)))
    assigner = Assigner.from_definitions(
        [definition("exp", tuple(weights), names, seed=seed, coverage=coverage)]
    )
    expected = assign_variant(make(weights, seed, coverage=coverage), unit)
    assert assigner.assign("exp", unit) == expected
    sticky: dict[str, str] = {}
    assert assigner.assign("exp", unit, sticky=sticky) == expected
    assert sticky == ({} if expected is None else {f"exp:{unit}": expected.variant})


def test_the_seed_defaults_to_the_key_and_namespaces_are_read() -> None:
    assigner = Assigner.from_definitions(
        [
            definition("hero", seed=None, namespace={"id": "home", "start": 0.2, "end": 0.7}),
            definition("cta", weights=(1.0, 3.0), coverage=0.4, phase=3),
        ]
    )
    hero = Allocation("hero", (("control", 0.5), ("b", 0.5)), namespace=("home", 0.2, 0.7))
    cta = Allocation("cta", (("control", 1.0), ("b", 3.0)), coverage=0.4)
    for unit in IDS[:2000]:
        assert assigner.assign("hero", unit) == assign_variant(hero, unit)
        assert assigner.assign("cta", unit) == assign_variant(cta, unit)
    assert assigner.phase("cta") == 3
    assert assigner.phase("hero") == 1
    assert len(assigner) == 2
    assert "hero" in assigner


@pytest.mark.parametrize("status", ["draft", "stopped", None])
def test_only_running_experiments_assign(status: str | None) -> None:
    # a draft may be incomplete: it is neither validated nor served
    draft = definition("hero", status=status, variants=[])
    assigner = Assigner.from_definitions([draft, definition("cta")])
    sticky = {"hero:u1": "control"}
    assert assigner.assign("hero", "u1") is None
    assert assigner.assign("hero", "u1", sticky=sticky) is None
    assert assigner.phase("hero") is None
    assert assigner.assign("nope", "u1") is None
    assert assigner.assign("cta", "u1") is not None


def test_a_weight_change_moves_users_but_the_sticky_mapping_keeps_them() -> None:
    before = Assigner.from_definitions([definition(weights=(0.5, 0.5))])
    after = Assigner.from_definitions([definition(weights=(0.8, 0.2))])
    sticky: dict[str, str] = {}
    first = {unit: before.assign("hero", unit, sticky=sticky) for unit in IDS[:5000]}
    assert len(sticky) == 5000
    assert sticky[sticky_key("hero", "user-7")] == first["user-7"].variant  # type: ignore[union-attr]
    moved = sum(
        1
        for unit, a in first.items()
        if a is None or getattr(after.assign("hero", unit), "variant", None) != a.variant
    )
    # the boundary moved from 0.5 to 0.8: about 30 % of the users changed variant
    assert 0.25 * 5000 < moved < 0.35 * 5000
    for unit, assignment in first.items():
        kept = after.assign("hero", unit, sticky=sticky)
        assert kept is not None
        assert assignment is not None
        assert kept.variant == assignment.variant
        # the probability is the variant's share of the weights now in force
        assert kept.probability == {"control": 0.8, "b": 0.2}[kept.variant]
    # a new user is assigned under the new weights, and remembered
    assert after.assign("hero", "newcomer", sticky=sticky) == after.assign("hero", "newcomer")
    assert sticky["hero:newcomer"] == after.assign("hero", "newcomer").variant  # type: ignore[union-attr]


@given(
    old=st.lists(probabilities, min_size=3, max_size=3).filter(lambda w: sum(w) > 0),
    new=st.lists(probabilities, min_size=3, max_size=3).filter(lambda w: sum(w) > 0),
    coverage=st.tuples(probabilities, probabilities),
    ids=st.lists(units, min_size=1, max_size=20),
)
@settings(max_examples=50)
def test_sticky_keeps_any_variant_that_still_exists(
    old: list[float], new: list[float], coverage: tuple[float, float], ids: list[str]
) -> None:
    names = ("a", "b", "c")
    before = Assigner.from_definitions([definition("x", tuple(old), names, coverage=coverage[0])])
    after = Assigner.from_definitions([definition("x", tuple(new), names, coverage=coverage[1])])
    sticky: dict[str, str] = {}
    for unit in ids:
        first = before.assign("x", unit, sticky=sticky)
        again = after.assign("x", unit, sticky=sticky)
        if first is not None:
            assert again is not None
            assert again.variant == first.variant
        else:
            assert again == after.assign("x", unit)


def test_a_removed_variant_is_reassigned_and_overwritten() -> None:
    before = Assigner.from_definitions(
        [definition(weights=(1.0, 1.0, 1.0), names=("control", "b", "c"))]
    )
    after = Assigner.from_definitions([definition(weights=(1.0, 1.0), names=("control", "b"))])
    sticky: dict[str, str] = {}
    gone = [u for u in IDS[:300] if before.assign("hero", u, sticky=sticky).variant == "c"]  # type: ignore[union-attr]
    assert gone
    for unit in gone:
        now = after.assign("hero", unit, sticky=sticky)
        assert now == after.assign("hero", unit)
        assert now is not None
        assert sticky[f"hero:{unit}"] == now.variant


def test_sticky_keeps_users_when_coverage_shrinks() -> None:
    full = Assigner.from_definitions([definition(coverage=1.0)])
    tenth = Assigner.from_definitions([definition(coverage=0.1)])
    sticky: dict[str, str] = {}
    for unit in IDS[:1000]:
        full.assign("hero", unit, sticky=sticky)
    assert sum(1 for u in IDS[:1000] if tenth.assign("hero", u) is None) > 800
    assert all(tenth.assign("hero", u, sticky=sticky) is not None for u in IDS[:1000])


def test_units_outside_the_experiment_are_not_written() -> None:
    assigner = Assigner.from_definitions([definition(coverage=0.0)])
    sticky: dict[str, str] = {}
    assert all(assigner.assign("hero", u, sticky=sticky) is None for u in IDS[:100])
    assert sticky == {}


def test_an_empty_unit_is_assigned_nothing_even_through_an_alias() -> None:
    assigner = Assigner.from_definitions([definition()])
    sticky = {"hero:anon": "b", "hero:": "b"}
    assert assigner.assign("hero", "", sticky=sticky, aliases=["anon"]) is None
    assert sticky == {"hero:anon": "b", "hero:": "b"}


def test_an_anonymous_user_who_identifies_keeps_the_variant() -> None:
    assigner = Assigner.from_definitions(
        [definition(weights=(1.0,) * 6, names=("a", "b", "c", "d", "e", "f"))]
    )
    sticky: dict[str, str] = {}
    anonymous = assigner.assign("hero", "anon-42", sticky=sticky)
    assert anonymous is not None
    # find a user id that the hash alone would put elsewhere
    user = next(u for u in IDS if assigner.assign("hero", u) != anonymous)
    identified = assigner.assign("hero", user, sticky=sticky, aliases=["anon-42"])
    assert identified == anonymous
    assert sticky[f"hero:{user}"] == anonymous.variant
    # its own entry wins from then on, without the alias
    assert assigner.assign("hero", user, sticky=sticky) == anonymous


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variants": ()}, "at least one variant"),
        ({"variants": (("a", -1.0), ("b", 2.0))}, "finite number >= 0"),
        ({"variants": (("a", float("nan")),)}, "finite number >= 0"),
        ({"variants": (("a", float("inf")),)}, "finite number >= 0"),
        ({"variants": (("a", True),)}, "finite number >= 0"),
        ({"variants": (("a", 0.0), ("b", 0.0))}, "positive, finite total"),
        ({"variants": (("a", 1e308), ("b", 1e308))}, "positive, finite total"),
        ({"variants": (("a", 1.0), ("a", 1.0))}, "unique"),
        ({"variants": (("", 1.0),)}, "non-empty string"),
        ({"seed": ""}, "seed"),
        ({"coverage": 1.5}, "coverage"),
        ({"coverage": -0.1}, "coverage"),
        ({"coverage": float("nan")}, "coverage"),
        ({"namespace": ("home", 0.5, 0.5)}, "start < end"),
        ({"namespace": ("home", 0.6, 0.5)}, "start < end"),
        ({"namespace": ("home", -0.1, 0.5)}, "start < end"),
        ({"namespace": ("home", 0.5, 1.1)}, "start < end"),
        ({"namespace": ("", 0.0, 1.0)}, "namespace id"),
        ({"namespace": ("home", 0.0)}, "(id, start, end)"),
    ],
)
def test_invalid_allocations_are_refused(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"seed": "hero", "variants": (("a", 1.0), ("b", 1.0)), **kwargs}
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Allocation(**fields)


@pytest.mark.parametrize(
    ("definitions", "message"),
    [
        ([definition("a:b")], "must not contain ':'"),
        ([definition(""), definition()], "non-empty string"),
        ([definition(), definition()], "defined twice"),
        ([{k: v for k, v in definition().items() if k != "variants"}], "'variants' is missing"),
        ([definition(variants=[{"weight": 1.0}])], "'key' is missing"),
        ([definition(variants="ab")], "must be a list"),
        ([definition(variants=["a"])], "must be an object"),
        ([definition(weights=(1.0, -1.0))], "experiment 'hero': variant 'b'"),
        ([definition(coverage=2)], "coverage"),
        ([definition(phase=0)], "phase"),
        ([definition(seed=3)], "seed"),
        ([definition(namespace={"id": "home", "start": 0.5})], "'end' is missing"),
        ([definition(namespace=[0, 1])], "'namespace' must be an object"),
        ([definition(namespace={"id": "home", "start": 0.5, "end": 0.1})], "start < end"),
    ],
)
def test_invalid_definitions_are_refused(definitions: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        Assigner.from_definitions(definitions)
