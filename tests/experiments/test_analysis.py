"""The analysis document: validation with JSON pointers, degenerate data as error codes, the
SRM check, Holm and Benjamini-Hochberg over the family, and statistics that add."""

from __future__ import annotations

import copy
import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from personify.errors import ValidationError
from personify.experiments.analysis import analyze, validate_request
from personify.experiments.sufficient import CupedStatistic, RatioStatistic, SampleStatistic


def sample(values: list[float] | np.ndarray) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    return {"n": len(array), "sum": float(array.sum()), "sum_squares": float((array**2).sum())}


def document() -> dict[str, Any]:
    """The contract's example: a conversion, a ratio and a CUPED metric, two variants."""
    rng = np.random.default_rng(7)
    pre_a, pre_b = rng.lognormal(1.5, 0.5, 1000), rng.lognormal(1.5, 0.5, 1010)
    post_a = 0.9 * pre_a + rng.normal(0, 1, 1000)
    post_b = 0.9 * pre_b + rng.normal(0.3, 1, 1010)

    def cuped(post: np.ndarray, pre: np.ndarray) -> dict[str, Any]:
        return {
            **sample(post),
            "covariate_sum": float(pre.sum()),
            "covariate_sum_squares": float((pre**2).sum()),
            "main_covariate_sum_product": float((post * pre).sum()),
        }

    return {
        "method": "frequentist",
        "alpha": 0.05,
        "correction": "holm",
        "metrics": [
            {
                "key": "purchase",
                "type": "mean",
                "goal": "increase",
                "variants": {
                    "control": {"n": 1000, "sum": 50, "sum_squares": 50},
                    "b": {"n": 1010, "sum": 61, "sum_squares": 61},
                },
            },
            {
                "key": "revenue_per_session",
                "type": "ratio",
                "variants": {
                    "control": {
                        "n": 1000,
                        "sum": 5000.0,
                        "sum_squares": 90000.0,
                        "denominator_sum": 2500,
                        "denominator_sum_squares": 8000,
                        "main_denominator_sum_product": 16000.0,
                    },
                    "b": {
                        "n": 1010,
                        "sum": 5300.0,
                        "sum_squares": 95000.0,
                        "denominator_sum": 2520,
                        "denominator_sum_squares": 8100,
                        "main_denominator_sum_product": 16900.0,
                    },
                },
            },
            {
                "key": "revenue",
                "type": "mean",
                "cuped": True,
                "variants": {"control": cuped(post_a, pre_a), "b": cuped(post_b, pre_b)},
            },
        ],
    }


def variant_of(result: dict[str, Any], metric: int, name: str = "b") -> dict[str, Any]:
    return next(v for v in result["metrics"][metric]["variants"] if v["variant"] == name)


# --- the result's shape and numbers ----------------------------------------------------


def test_contract_example_is_analysed() -> None:
    result = analyze(document())
    json.dumps(result, allow_nan=False)  # plain JSON: no NaN, no numpy scalars
    assert result["method"] == "frequentist"
    assert result["control"] == "control"
    assert result["correction"] == "holm"
    assert result["errors"] == []
    assert result["srm"]["ok"] is True
    assert result["srm"]["observed"] == {"control": 1000, "b": 1010}
    assert result["srm"]["expected"] == {"control": 1005.0, "b": 1005.0}
    purchase = result["metrics"][0]
    assert purchase["control"] == {"variant": "control", "users": 1000, "mean": 0.05}
    b = variant_of(result, 0)
    assert b["users"] == 1010
    assert b["absolute"]["estimate"] == pytest.approx(61 / 1010 - 0.05)
    assert b["relative"]["estimate"] == pytest.approx((61 / 1010 - 0.05) / 0.05)
    low, high = b["absolute"]["ci"]
    assert low < b["absolute"]["estimate"] < high
    # Welch's p-value, checked against scipy from the same summary statistics
    sd_a = math.sqrt((50 - 50**2 / 1000) / 999)
    sd_b = math.sqrt((61 - 61**2 / 1010) / 1009)
    welch = scipy_stats.ttest_ind_from_stats(
        61 / 1010, sd_b, 1010, 0.05, sd_a, 1000, equal_var=False
    )
    assert b["pValue"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert b["chanceToWin"] is None and b["expectedLoss"] is None
    assert "cuped" not in b and b["error"] is None
    revenue = variant_of(result, 2)
    assert revenue["cuped"]["theta"] == pytest.approx(0.9, abs=0.1)
    assert 0.3 < revenue["cuped"]["varianceReduction"] < 1.0
    assert revenue["significant"] is True  # a true +0.3 shift, found thanks to CUPED


def test_cuped_narrows_the_interval() -> None:
    with_cuped = variant_of(analyze(document()), 2)
    plain = document()
    plain["metrics"][2]["cuped"] = False
    without = variant_of(analyze(plain), 2)
    width = with_cuped["absolute"]["ci"][1] - with_cuped["absolute"]["ci"][0]
    plain_width = without["absolute"]["ci"][1] - without["absolute"]["ci"][0]
    assert width < 0.8 * plain_width


def test_bayesian_goal_flips_chance_and_loss() -> None:
    request = document() | {"method": "bayesian"}
    up = variant_of(analyze(request), 0)
    request["metrics"][0]["goal"] = "decrease"
    down = variant_of(analyze(request), 0)
    assert up["pValue"] is None and up["adjustedPValue"] is None
    assert up["chanceToWin"] + down["chanceToWin"] == pytest.approx(1.0)
    assert up["expectedLoss"] < down["expectedLoss"]  # b looks better, so losing by it is unlikely
    assert up["absolute"] == down["absolute"]
    low, high = up["absolute"]["ci"]
    assert up["significant"] is (low > 0 or high < 0)


def test_sequential_is_more_conservative_than_fixed_horizon() -> None:
    fixed = analyze(document())
    sequential = analyze(document() | {"method": "sequential", "sequentialTuning": 2000})
    for index in range(3):
        a, b = variant_of(fixed, index), variant_of(sequential, index)
        assert b["pValue"] >= a["pValue"]
        assert b["absolute"]["ci"][0] <= a["absolute"]["ci"][0]
        assert b["absolute"]["ci"][1] >= a["absolute"]["ci"][1]
        assert b["adjustedPValue"] >= b["pValue"]


# --- validation -----------------------------------------------------------------------


def broken(change: str) -> dict[str, Any]:
    request = document()
    metric = request["metrics"][0]
    if change == "method":
        request["method"] = "magic"
    elif change == "alpha-zero":
        request["alpha"] = 0
    elif change == "alpha-high":
        request["alpha"] = 0.6
    elif change == "alpha-bool":
        request["alpha"] = True
    elif change == "negative-n":
        metric["variants"]["b"]["n"] = -3
    elif change == "fractional-n":
        metric["variants"]["b"]["n"] = 10.5
    elif change == "not-a-number":
        metric["variants"]["control"]["sum"] = "50"
    elif change == "nan":
        metric["variants"]["control"]["sum"] = math.nan
    elif change == "huge-int":
        metric["variants"]["control"]["sum_squares"] = 10**400
    elif change == "negative-squares":
        metric["variants"]["control"]["sum_squares"] = -1
    elif change == "missing-field":
        del request["metrics"][1]["variants"]["b"]["denominator_sum"]
    elif change == "cuped-field":
        del request["metrics"][2]["variants"]["control"]["covariate_sum"]
    elif change == "cuped-ratio":
        request["metrics"][1]["cuped"] = True
    elif change == "one-variant":
        request["metrics"] = [
            {"key": "m", "variants": {"control": {"n": 5, "sum": 1, "sum_squares": 1}}}
        ]
    elif change == "control":
        request["control"] = "nope"
    elif change == "weights":
        request["weights"] = {"control": 0.5, "b": 0.5, "zzz": 1}
    elif change == "units":
        request["units"] = {"control": 10, "b": -1}
    elif change == "type":
        metric["type"] = "median"
    elif change == "slash":
        metric["variants"]["a/b"] = {"n": -1, "sum": 0, "sum_squares": 0}
    elif change == "correction":
        request["correction"] = "bonferroni"
    elif change == "tuning":
        request["sequentialTuning"] = 0
    elif change == "duplicate-key":
        request["metrics"][1]["key"] = "purchase"
    return request


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ("method", "/method"),
        ("alpha-zero", "/alpha"),
        ("alpha-high", "/alpha"),
        ("alpha-bool", "/alpha"),
        ("negative-n", "/metrics/0/variants/b/n"),
        ("fractional-n", "/metrics/0/variants/b/n"),
        ("not-a-number", "/metrics/0/variants/control/sum"),
        ("nan", "/metrics/0/variants/control/sum"),
        ("huge-int", "/metrics/0/variants/control/sum_squares"),
        ("negative-squares", "/metrics/0/variants/control/sum_squares"),
        ("missing-field", "/metrics/1/variants/b/denominator_sum"),
        ("cuped-field", "/metrics/2/variants/control/covariate_sum"),
        ("cuped-ratio", "/metrics/1/cuped"),
        ("one-variant", "/metrics"),
        ("control", "/control"),
        ("weights", "/weights/zzz"),
        ("units", "/units/b"),
        ("type", "/metrics/0/type"),
        ("slash", "/metrics/0/variants/a~1b/n"),
        ("correction", "/correction"),
        ("tuning", "/sequentialTuning"),
        ("duplicate-key", "/metrics/1/key"),
    ],
)
def test_malformed_requests_name_the_pointer(change: str, pointer: str) -> None:
    with pytest.raises(ValidationError) as raised:
        analyze(broken(change))
    assert f"at {pointer}:" in raised.value.message
    assert pointer in [problem["pointer"] for problem in raised.value.details["errors"]]


def test_every_problem_is_listed() -> None:
    request = broken("method")
    request["alpha"] = 2
    request["metrics"][0]["variants"]["b"]["n"] = -1
    with pytest.raises(ValidationError) as raised:
        validate_request(request)
    pointers = {problem["pointer"] for problem in raised.value.details["errors"]}
    assert pointers == {"/method", "/alpha", "/metrics/0/variants/b/n"}
    assert "and 2 more problems" in raised.value.message


def test_not_an_object_is_refused() -> None:
    with pytest.raises(ValidationError, match="at /:"):
        validate_request([1, 2])


# --- degenerate data ------------------------------------------------------------------


def one_metric(control: dict[str, Any], b: dict[str, Any], **metric: Any) -> dict[str, Any]:
    healthy = {
        "key": "ok",
        "variants": {"control": sample([1, 2, 3, 4]), "b": sample([2, 3, 4, 6])},
    }
    return {
        "metrics": [healthy, {"key": "broken", **metric, "variants": {"control": control, "b": b}}]
    }


RATIO_OK = {
    "n": 10,
    "sum": 20.0,
    "sum_squares": 60.0,
    "denominator_sum": 15.0,
    "denominator_sum_squares": 30.0,
    "main_denominator_sum_product": 35.0,
}


@pytest.mark.parametrize("method", ["frequentist", "bayesian", "sequential"])
@pytest.mark.parametrize(
    ("request_body", "code", "blamed"),
    [
        (one_metric(sample([1, 2, 3]), {"n": 0, "sum": 0, "sum_squares": 0}), "NO_UNITS", "b"),
        (one_metric(sample([]), sample([1, 2])), "NO_UNITS", "control"),
        (one_metric(sample([1, 2, 3]), sample([5])), "ZERO_VARIANCE", "b"),
        (one_metric(sample([2, 2, 2]), sample([1, 5])), "ZERO_VARIANCE", "b"),
        (one_metric(sample([-1, 1, -2, 2]), sample([1, 5])), "ZERO_CONTROL_MEAN", "b"),
        (
            one_metric(RATIO_OK, {**RATIO_OK, "denominator_sum": 0}, type="ratio"),
            "ZERO_DENOMINATOR",
            "b",
        ),
        (
            one_metric({"n": 3, "sum": 1e300, "sum_squares": 1e300}, sample([1, 5])),
            "NON_FINITE",
            "b",
        ),
    ],
)
def test_degenerate_data_give_codes(
    method: str, request_body: dict[str, Any], code: str, blamed: str
) -> None:
    result = analyze(copy.deepcopy(request_body) | {"method": method})
    healthy, broken_metric = result["metrics"]
    assert healthy["variants"][0]["error"] is None
    entry = broken_metric["variants"][0]
    assert entry["error"] == code
    for field in (
        "absolute",
        "relative",
        "pValue",
        "adjustedPValue",
        "chanceToWin",
        "expectedLoss",
    ):
        assert entry[field] is None
    assert entry["significant"] is False
    assert {"code": code, "pointer": f"/metrics/1/variants/{blamed}"} in [
        {"code": e["code"], "pointer": e["pointer"]} for e in result["errors"]
    ]


def test_missing_variant() -> None:
    request = document()
    request["metrics"][0]["variants"]["c"] = {"n": 990, "sum": 48, "sum_squares": 48}
    result = analyze(request)
    assert [v["variant"] for v in result["metrics"][0]["variants"]] == ["b", "c"]
    missing = variant_of(result, 1, "c")
    assert missing["error"] == "MISSING_VARIANT" and missing["users"] is None
    assert variant_of(result, 1, "b")["error"] is None
    assert {"MISSING_VARIANT"} == {e["code"] for e in result["errors"]}
    assert "/metrics/1/variants/c" in [e["pointer"] for e in result["errors"]]


# --- SRM ------------------------------------------------------------------------------


def test_srm_detects_a_45_55_split_of_a_50_50_test() -> None:
    request = document() | {
        "weights": {"control": 0.5, "b": 0.5},
        "units": {"control": 4500, "b": 5500},
    }
    srm = analyze(request)["srm"]
    assert srm["ok"] is False
    assert srm["expected"] == {"control": 5000.0, "b": 5000.0}
    expected_p = scipy_stats.chisquare([4500, 5500], [5000, 5000]).pvalue
    assert srm["pValue"] == pytest.approx(expected_p, rel=1e-9)
    assert srm["pValue"] < 1e-20
    errors = analyze(request)["errors"]
    assert errors[0]["code"] == "SAMPLE_RATIO_MISMATCH" and errors[0]["pointer"] == "/units"


def test_srm_accepts_a_fair_split_and_honours_weights() -> None:
    assert analyze(document() | {"units": {"control": 5000, "b": 5040}})["srm"]["ok"] is True
    skewed = document() | {
        "weights": {"control": 0.2, "b": 0.8},
        "units": {"control": 2010, "b": 7990},
    }
    srm = analyze(skewed)["srm"]
    assert srm["ok"] is True and srm["expected"] == {"control": 2000.0, "b": 8000.0}


# --- multiple comparisons -------------------------------------------------------------


def family_request(correction: str) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    metrics = []
    for index, shift in enumerate([0.0, 0.1, 0.2, 0.3]):
        variants = {
            "control": sample(rng.normal(10, 2, 800)),
            "b": sample(rng.normal(10 + shift, 2, 800)),
        }
        metrics.append({"key": f"m{index}", "variants": variants})
    return {"correction": correction, "metrics": metrics}


def test_holm_adjusts_the_whole_family() -> None:
    entries = [m["variants"][0] for m in analyze(family_request("holm"))["metrics"]]
    raw = [e["pValue"] for e in entries]
    # by hand: sort, multiply the i-th smallest (0-based) by m - i, carry the running maximum
    order = sorted(range(4), key=lambda i: raw[i])
    expected = [0.0] * 4
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * raw[i]))
        expected[i] = running
    assert [e["adjustedPValue"] for e in entries] == pytest.approx(expected)
    assert [e["significant"] for e in entries] == [p < 0.05 for p in expected]


def test_bh_adjusts_the_whole_family() -> None:
    entries = [m["variants"][0] for m in analyze(family_request("bh"))["metrics"]]
    raw = [e["pValue"] for e in entries]
    order = sorted(range(4), key=lambda i: raw[i])
    expected = [0.0] * 4
    running = 1.0
    for rank in (3, 2, 1, 0):
        i = order[rank]
        running = min(running, 4 * raw[i] / (rank + 1))
        expected[i] = running
    assert [e["adjustedPValue"] for e in entries] == pytest.approx(expected)
    holm_entries = [m["variants"][0] for m in analyze(family_request("holm"))["metrics"]]
    assert all(
        b["adjustedPValue"] <= h["adjustedPValue"] + 1e-15
        for b, h in zip(entries, holm_entries, strict=True)
    )


def test_no_correction_keeps_p_values() -> None:
    entries = [m["variants"][0] for m in analyze(family_request("none"))["metrics"]]
    assert all(e["adjustedPValue"] == e["pValue"] for e in entries)


# --- statistics that add --------------------------------------------------------------

# integer-valued floats below 2**40 add exactly, so associativity can be asserted with ==
exact = st.integers(-(2**40), 2**40).map(float)
counts = st.integers(0, 2**30)
samples = st.builds(SampleStatistic, counts, exact, exact)
ratios = st.builds(RatioStatistic, counts, exact, exact, exact, exact, exact)
cupeds = st.builds(CupedStatistic, counts, exact, exact, exact, exact, exact)


@settings(max_examples=200)
@given(
    st.one_of(
        st.tuples(samples, samples, samples),
        st.tuples(ratios, ratios, ratios),
        st.tuples(cupeds, cupeds, cupeds),
    )
)
def test_statistics_add_associatively(triple: tuple[Any, Any, Any]) -> None:
    a, b, c = triple
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a
    assert a + type(a).zero() == a
    assert type(a).from_mapping(a.as_mapping()) == a


@settings(max_examples=100)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=60),
    st.lists(st.integers(0, 60), max_size=4),
)
def test_partitions_add_up_to_the_whole(values: list[float], cuts: list[int]) -> None:
    edges = sorted({0, len(values), *[min(c, len(values)) for c in cuts]})
    parts = [values[lo:hi] for lo, hi in itertools.pairwise(edges)]
    total = SampleStatistic.zero()
    for part in parts:
        total = total + SampleStatistic(len(part), math.fsum(part), math.fsum(x * x for x in part))
    assert total.n == len(values)
    assert total.mean == pytest.approx(float(np.mean(values)), rel=1e-9, abs=1e-9)
    assert total.variance == pytest.approx(float(np.var(values, ddof=1)), rel=1e-6, abs=1e-6)


def test_merged_cells_analyse_like_one_arm() -> None:
    # the lead's per-factor analysis of a multivariate test adds the cells sharing a level
    rng = np.random.default_rng(11)
    cells = [rng.normal(5, 1, 300) for _ in range(4)]
    merged = SampleStatistic.zero()
    for cell in cells:
        merged = merged + SampleStatistic.from_mapping(sample(cell))
    whole = SampleStatistic.from_mapping(sample(np.concatenate(cells)))
    assert merged.n == whole.n
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.variance == pytest.approx(whole.variance, rel=1e-9)
