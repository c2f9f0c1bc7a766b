"""Thompson-sampling allocation, contextual allocation, choosing an arm and its propensity."""

from __future__ import annotations

import math
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.errors import ValidationError
from personify.experiments.bandits import (
    ArmStatistics,
    allocate,
    allocate_by_context,
    choose,
    context_of,
)


def binary(arm: str, n: int, successes: int) -> ArmStatistics:
    return ArmStatistics(arm, n, successes, successes)


def continuous(arm: str, n: int, mean: float, sd: float) -> ArmStatistics:
    return ArmStatistics(arm, n, n * mean, n * (sd**2 + mean**2))


@st.composite
def binary_arms(draw: st.DrawFn) -> list[ArmStatistics]:
    count = draw(st.integers(1, 6))
    arms = []
    for i in range(count):
        n = draw(st.integers(0, 5_000))
        arms.append(binary(f"arm{i}", n, draw(st.integers(0, n))))
    return arms


@st.composite
def continuous_arms(draw: st.DrawFn) -> list[ArmStatistics]:
    count = draw(st.integers(1, 6))
    arms = []
    for i in range(count):
        n = draw(st.integers(0, 5_000))
        mean = draw(st.floats(-1e3, 1e3)) if n else 0.0
        sd = draw(st.floats(0, 1e2)) if n else 0.0
        arms.append(continuous(f"arm{i}", n, mean, sd))
    return arms


def check_allocation(allocation: dict[str, float], arms: list[ArmStatistics], floor: float) -> None:
    assert list(allocation) == [arm.arm for arm in arms]
    assert math.fsum(allocation.values()) == 1.0
    assert all(share >= floor - 1e-12 for share in allocation.values())
    assert all(share <= 1.0 for share in allocation.values())


def test_a_floor_of_one_over_the_arms_gives_every_arm_the_floor() -> None:
    # one arm wins outright: the four others are floored, and what they leave, 1 - 4 * 0.2,
    # rounds under 0.2, so the winner is floored too (this divided by zero once)
    arms = [binary("a", 1000, 1000), *(binary(name, 1000, 0) for name in "bcde")]
    allocation = allocate(arms, reward="binary", min_share=0.2, draws=500, seed=1)
    assert math.fsum(allocation.values()) == 1.0
    assert all(abs(share - 0.2) < 1e-12 for share in allocation.values())


@settings(max_examples=60, deadline=None)
@given(arms=binary_arms(), data=st.data(), seed=st.integers(0, 2**32) | st.text(max_size=8))
def test_binary_allocation_sums_to_one_respects_the_floor_and_is_deterministic(
    arms: list[ArmStatistics], data: st.DataObject, seed: int | str
) -> None:
    floor = data.draw(st.floats(0, 1 / len(arms)))
    allocation = allocate(arms, reward="binary", min_share=floor, draws=500, seed=seed)
    check_allocation(allocation, arms, floor)
    assert allocate(arms, reward="binary", min_share=floor, draws=500, seed=seed) == allocation


@settings(max_examples=60, deadline=None)
@given(arms=continuous_arms(), data=st.data(), seed=st.integers(0, 2**32))
def test_continuous_allocation_sums_to_one_respects_the_floor_and_is_deterministic(
    arms: list[ArmStatistics], data: st.DataObject, seed: int
) -> None:
    floor = data.draw(st.floats(0, 1 / len(arms)))
    allocation = allocate(arms, reward="continuous", min_share=floor, draws=500, seed=seed)
    check_allocation(allocation, arms, floor)
    assert allocate(arms, reward="continuous", min_share=floor, draws=500, seed=seed) == allocation


@settings(max_examples=40, deadline=None)
@given(arms=binary_arms(), split=st.data())
def test_statistics_added_over_partitions_allocate_as_the_whole(
    arms: list[ArmStatistics], split: st.DataObject
) -> None:
    parts = []
    for arm in arms:
        n_first = split.draw(st.integers(0, arm.n))
        s_first = split.draw(
            st.integers(
                max(0, int(arm.reward_sum) - (arm.n - n_first)), min(n_first, int(arm.reward_sum))
            )
        )
        first = binary(arm.arm, n_first, s_first)
        second = binary(arm.arm, arm.n - n_first, int(arm.reward_sum) - s_first)
        assert first + second == arm
        parts.append(first + second)
    assert allocate(parts, reward="binary", draws=300) == allocate(arms, reward="binary", draws=300)


def test_adding_statistics_of_different_arms_is_refused() -> None:
    with pytest.raises(ValidationError):
        _ = binary("a", 10, 1) + binary("b", 10, 1)


def test_a_clearly_better_binary_arm_gets_most_of_the_traffic() -> None:
    allocation = allocate(
        [binary("a", 2_000, 100), binary("b", 2_000, 160), binary("c", 2_000, 95)],
        reward="binary",
        min_share=0.05,
    )
    assert allocation["b"] == pytest.approx(0.9)
    assert allocation["a"] == allocation["c"] == 0.05


def test_a_clearly_better_continuous_arm_gets_most_of_the_traffic() -> None:
    allocation = allocate(
        [continuous("a", 400, 20.0, 8.0), continuous("b", 400, 23.0, 8.0)],
        reward="continuous",
        min_share=0.05,
    )
    assert allocation == {"a": 0.05, "b": 0.95}


def test_equal_arms_share_the_traffic_evenly() -> None:
    allocation = allocate(
        [binary("a", 1_000, 100), binary("b", 1_000, 100)], reward="binary", min_share=0.0
    )
    assert allocation["a"] == pytest.approx(0.5, abs=0.03)


def test_without_spread_the_continuous_arms_tie_and_split_evenly() -> None:
    allocation = allocate(
        [continuous("a", 50, 3.0, 0.0), continuous("b", 50, 3.0, 0.0)],
        reward="continuous",
        min_share=0.0,
    )
    assert allocation["a"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(
    ("reward", "arms"),
    [
        ("binary", [binary("a", 5_000, 500), binary("b", 5_000, 520), binary("new", 0, 0)]),
        (
            "continuous",
            [
                continuous("a", 5_000, 10.0, 3.0),
                continuous("b", 5_000, 10.2, 3.0),
                continuous("new", 0, 0.0, 0.0),
            ],
        ),
    ],
)
def test_an_arm_without_data_gets_a_share(
    reward: Literal["binary", "continuous"], arms: list[ArmStatistics]
) -> None:
    assert allocate(arms, reward=reward, min_share=0.0)["new"] > 0.05
    assert allocate(arms, reward=reward, min_share=0.1)["new"] >= 0.1


def test_the_seed_changes_the_draws_but_not_the_conclusion() -> None:
    arms = [binary("a", 100, 10), binary("b", 100, 12)]
    first = allocate(arms, reward="binary", seed=1, min_share=0.0)
    second = allocate(arms, reward="binary", seed="experiment-7", min_share=0.0)
    assert first != second
    assert first["b"] == pytest.approx(second["b"], abs=0.03)


@pytest.mark.parametrize(
    ("arms", "settings_"),
    [
        ([binary("a", 1, 0), binary("b", 1, 0)], {"min_share": 0.6}),
        ([], {}),
        ([binary("a", 1, 0), binary("a", 2, 1)], {}),
        ([binary("a", 3, 4)], {}),
        ([ArmStatistics("a", -1, 0, 0)], {}),
        ([ArmStatistics("a", 0, 2, 4)], {}),
        ([binary("a", 3, 1)], {"draws": 0}),
        ([binary("a", 3, 1)], {"min_share": -0.1}),
    ],
)
def test_impossible_inputs_are_refused(
    arms: list[ArmStatistics], settings_: dict[str, float]
) -> None:
    with pytest.raises(ValidationError):
        allocate(arms, reward="binary", **settings_)  # type: ignore[arg-type]


# contexts: the pooled data favour "a" (30% vs 10%); the "mobile" segment favours "b"
POOLED = [binary("a", 20_000, 6_000), binary("b", 20_000, 2_000)]


def test_a_segment_with_a_different_best_arm_is_allocated_differently_once_it_has_data() -> None:
    allocation = allocate_by_context(
        {"*": POOLED, "mobile": [binary("a", 2_000, 200), binary("b", 2_000, 400)]},
        reward="binary",
        min_share=0.05,
    )
    assert allocation["*"] == {"a": 0.95, "b": 0.05}
    assert allocation["mobile"] == {"a": 0.05, "b": 0.95}


def test_a_tiny_context_follows_the_pooled_allocation() -> None:
    # three users each way, and by chance "b" looks better: too few to act on
    tiny = [binary("a", 3, 0), binary("b", 3, 2)]
    with_prior = allocate_by_context(
        {"*": POOLED, "tablet": tiny}, reward="binary", min_share=0.05, min_context_n=100
    )
    assert with_prior["tablet"]["a"] > 0.85
    # without borrowing, the same three users would send most traffic to "b"
    alone = allocate_by_context(
        {"*": POOLED, "tablet": tiny}, reward="binary", min_share=0.05, min_context_n=0
    )
    assert alone["tablet"]["b"] > 0.75


def test_borrowing_fades_out_as_the_context_reaches_min_context_n() -> None:
    # a context of exactly min_context_n observations is allocated on its own data alone
    context = [binary("a", 50, 5), binary("b", 50, 15)]
    shrunk = allocate_by_context({"*": POOLED, "c": context}, reward="binary", min_context_n=100)
    alone = allocate_by_context({"*": POOLED, "c": context}, reward="binary", min_context_n=0)
    assert shrunk["c"] == alone["c"]
    assert shrunk["c"]["b"] > 0.9


def test_contextual_continuous_rewards() -> None:
    allocation = allocate_by_context(
        {
            "*": [continuous("a", 5_000, 12.0, 5.0), continuous("b", 5_000, 10.0, 5.0)],
            "vip": [continuous("a", 500, 40.0, 10.0), continuous("b", 500, 55.0, 10.0)],
            "new": [continuous("a", 2, 10.0, 1.0), continuous("b", 2, 15.0, 1.0)],
        },
        reward="continuous",
        min_share=0.05,
        min_context_n=100,
    )
    assert allocation["*"]["a"] == 0.95
    assert allocation["vip"]["b"] == 0.95
    assert allocation["new"]["a"] > 0.5


def test_every_context_covers_every_arm_and_the_answer_ignores_mapping_order() -> None:
    stats = {
        "mobile": [binary("a", 300, 30)],
        "desktop": [binary("b", 300, 45), binary("c", 10, 1)],
    }
    allocation = allocate_by_context(stats, reward="binary", min_share=0.05, draws=2_000)
    assert set(allocation) == {"mobile", "desktop", "*"}
    for shares in allocation.values():
        assert list(shares) == ["a", "b", "c"]
        assert math.fsum(shares.values()) == 1.0
        assert min(shares.values()) >= 0.05
    reordered = allocate_by_context(
        dict(reversed(stats.items())), reward="binary", min_share=0.05, draws=2_000
    )
    assert reordered["mobile"] == pytest.approx(allocation["mobile"], abs=0.02)
    assert reordered["desktop"] == pytest.approx(allocation["desktop"], abs=0.02)


def test_contextual_settings_are_checked() -> None:
    with pytest.raises(ValidationError):
        allocate_by_context({"*": POOLED}, reward="binary", min_context_n=-1)
    with pytest.raises(ValidationError):
        allocate_by_context({"*": []}, reward="binary")
    with pytest.raises(ValidationError):
        allocate_by_context({"x": [binary("a", 1, 0), binary("a", 1, 1)]}, reward="binary")


def test_choose_maps_u_to_arms_by_cumulative_probability_and_returns_the_propensity() -> None:
    allocation = {"a": 0.2, "b": 0.0, "c": 0.5, "d": 0.3}
    assert choose(allocation, 0.0) == ("a", 0.2)
    assert choose(allocation, 0.1999) == ("a", 0.2)
    assert choose(allocation, 0.2) == ("c", 0.5)
    assert choose(allocation, 0.6999) == ("c", 0.5)
    assert choose(allocation, 0.7) == ("d", 0.3)
    assert choose(allocation, 0.9999999999) == ("d", 0.3)


def test_choose_skips_zero_arms_at_the_end_even_when_rounding_leaves_the_sum_short() -> None:
    allocation = {"a": 0.7, "b": 0.2, "c": 0.1, "z": 0.0}
    # 0.7 + 0.2 + 0.1 adds up to 0.9999999999999999 in floating point, under the largest u
    assert choose(allocation, 1 - 2**-53) == ("c", 0.1)


@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.integers(0, 20), min_size=1, max_size=6).filter(any))
def test_choose_frequencies_over_a_grid_of_u_equal_the_allocation(weights: list[int]) -> None:
    total = sum(weights)
    allocation = {f"arm{i}": w / total for i, w in enumerate(weights)}
    grid = 10_000
    counts = dict.fromkeys(allocation, 0)
    for i in range(grid):
        arm, propensity = choose(allocation, (i + 0.5) / grid)
        assert propensity == allocation[arm] > 0
        counts[arm] += 1
    for arm, share in allocation.items():
        assert counts[arm] / grid == pytest.approx(share, abs=1.5 / grid)


@pytest.mark.parametrize(
    ("allocation", "u"),
    [
        ({"a": 1.0}, 1.0),
        ({"a": 1.0}, -0.1),
        ({}, 0.5),
        ({"a": 0.5, "b": 0.4}, 0.5),
        ({"a": 1.5, "b": -0.5}, 0.5),
    ],
)
def test_choose_refuses_bad_input(allocation: dict[str, float], u: float) -> None:
    with pytest.raises(ValidationError):
        choose(allocation, u)


def test_context_of_is_the_first_listed_context_the_user_is_in() -> None:
    contexts = ["vip", "mobile", "returning"]
    assert context_of({"returning", "mobile"}, contexts) == "mobile"
    assert context_of(["vip", "mobile"], contexts) == "vip"
    assert context_of({"newsletter"}, contexts) == "*"
    assert context_of(set(), contexts) == "*"
    assert context_of({"vip"}, []) == "*"
