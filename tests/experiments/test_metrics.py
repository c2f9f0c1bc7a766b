"""Experiment metrics from the lake: exposures, windows, filters, caps, CUPED, ratios, phases,
identity resolution and analysis time, against hand-computed answers on a real Delta Lake and
a real warehouse; and the statistics of disjoint sets of units add up."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personify.errors import InvalidDefinition, ValidationError
from personify.experiments.metrics import (
    ExperimentScope,
    daily_statistics,
    decision_log,
    metric_statistics,
    validate_metrics,
)
from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from tests.lake.conftest import normalized, write_lake

START = datetime(2024, 3, 1, tzinfo=UTC)
AS_OF = datetime(2024, 3, 31, tzinfo=UTC)
RECEIVED = datetime(2025, 1, 1, tzinfo=UTC)
HERO = ExperimentScope("hero", 1, START, None, ("control", "b"))


def day(days: float) -> datetime:
    """``days`` after the phase start."""
    return START + timedelta(days=days)


class Events:
    """Raw events with unique message ids, written to a lake as the collector would."""

    def __init__(self) -> None:
        self.raw: list[dict[str, Any]] = []
        self._ids = itertools.count()

    def add(
        self,
        at: datetime,
        *,
        user: str | None = None,
        anon: str | None = None,
        **fields: Any,
    ) -> None:
        """One event at ``at`` by ``user`` and/or ``anon``."""
        event: dict[str, Any] = {
            "type": "track",
            "messageId": f"e{next(self._ids)}",
            "timestamp": at.isoformat(),
            **fields,
        }
        if user:
            event["userId"] = user
        if anon:
            event["anonymousId"] = anon
        self.raw.append(event)

    def exposed(
        self,
        at: datetime,
        variant: str,
        *,
        user: str | None = None,
        anon: str | None = None,
        key: str = "hero",
        phase: int = 1,
        also: tuple[tuple[str, str], ...] = (),
        probability: float | None = 0.5,
        context: str | None = None,
    ) -> None:
        """A decision's ``Content Exposed``: a plain placement, then the experiment's."""
        placements: list[dict[str, Any]] = [{"id": "home", "items": [{"id": "banner-1"}]}]
        for experiment, chosen in ((key, variant), *also):
            label: dict[str, Any] = {"key": experiment, "variant": chosen, "phase": phase}
            if probability is not None:
                label["probability"] = probability
            if context is not None:
                label["context"] = context
            placements.append(
                {
                    "id": f"slot-{experiment}",
                    "items": [{"id": f"item-{chosen}"}],
                    "experiment": label,
                }
            )
        properties = {"decisionId": f"d{len(self.raw)}", "placements": placements}
        self.add(at, user=user, anon=anon, event="Content Exposed", properties=properties)

    def order(self, at: datetime, user: str, revenue: Any, category: str = "shoes") -> None:
        """An ``Order Completed``."""
        properties = {"revenue": revenue, "category": category}
        self.add(at, user=user, event="Order Completed", properties=properties)

    def lake(self, folder: Path) -> Lake:
        """A Delta Lake holding the events."""
        return write_lake(folder, [normalized(e, received_at=RECEIVED) for e in self.raw])


def shop() -> Events:
    """Five units of ``hero`` (phase 1) with hand-computed answers, and distractors."""
    events = Events()
    # u1, control: two orders in the window, one after it, one before exposure (CUPED)
    events.exposed(day(1), "control", user="u1")
    events.order(day(-3), "u1", 40)
    events.order(day(2), "u1", 50)
    events.order(day(3), "u1", 30, category="apparel")
    events.order(day(20), "u1", 100)
    events.add(day(1.5), user="u1", event="Page Viewed")
    events.add(day(1.6), user="u1", event="Page Viewed")
    # u2, control: exposed twice to the same variant, never buys
    events.exposed(day(2), "control", user="u2")
    events.exposed(day(5), "control", user="u2")
    # u3, b: a big order an hour after exposure, a small one later, a non-numeric revenue
    events.exposed(day(1), "b", user="u3")
    events.order(day(1) + timedelta(hours=1), "u3", 200)
    events.order(day(4), "u3", 10)
    events.order(day(4.5), "u3", "n/a", category="toys")
    events.add(day(1) + timedelta(hours=2), user="u3", event="Page Viewed")
    # u4: b, then control: excluded everywhere, counted once
    events.exposed(day(3), "b", user="u4")
    events.order(day(4), "u4", 70)
    events.exposed(day(6), "control", user="u4")
    # u5: exposed and browsing anonymously, identifies, then buys logged in
    events.exposed(day(2), "b", anon="anon-5")
    events.add(day(2) + timedelta(minutes=30), anon="anon-5", event="Page Viewed")
    events.add(
        day(2) + timedelta(hours=1), anon="anon-5", user="u5", type="identify", traits={"a": 1}
    )
    events.order(day(3), "u5", 60)
    # u6: exposed in phase 2 only; u8: exposed after the analysis time; u9: another experiment
    events.exposed(day(2), "b", user="u6", phase=2)
    events.order(day(3), "u6", 500)
    events.exposed(AS_OF + timedelta(days=1), "control", user="u8")
    events.exposed(day(1), "control", user="u9", key="other")
    events.order(day(2), "u9", 500)
    return events


METRICS: list[dict[str, Any]] = [
    {
        "key": "purchase",
        "type": "conversion",
        "event": "Order Completed",
        "where": [{"property": "category", "op": "eq", "value": "shoes"}],
        "windowDays": 7,
    },
    {"key": "orders", "type": "count", "event": "Order Completed", "windowDays": 14},
    {"key": "revenue", "type": "sum", "event": "Order Completed", "property": "revenue"},
    {
        "key": "revenue_capped",
        "type": "sum",
        "event": "Order Completed",
        "property": "revenue",
        "cap": {"value": 100},
        "cuped": False,
    },
    {
        "key": "revenue_p50",
        "type": "sum",
        "event": "Order Completed",
        "property": "revenue",
        "cap": {"percentile": 0.5},
        "cuped": False,
    },
    {"key": "order_value", "type": "mean", "event": "Order Completed", "property": "revenue"},
    {
        "key": "revenue_per_visit",
        "type": "ratio",
        "numerator": {"event": "Order Completed", "property": "revenue"},
        "denominator": {"event": "Page Viewed"},
        "goal": "increase",
    },
]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    """The shop's lake in a warehouse (one per module: every test only reads)."""
    lake = shop().lake(tmp_path_factory.mktemp("shop") / "lake")
    with Warehouse(lake) as opened:
        yield opened


@pytest.fixture(scope="module")
def document(warehouse: Warehouse) -> dict[str, Any]:
    """``hero`` phase 1 as of the end of March."""
    return metric_statistics(warehouse, HERO, METRICS, as_of=AS_OF)


def stats(document: dict[str, Any], key: str) -> dict[str, Any]:
    """One metric's entry of a document."""
    found: list[dict[str, Any]] = [m for m in document["metrics"] if m["key"] == key]
    assert len(found) == 1
    return found[0]


def test_units_per_variant_multiple_exposures_and_span(document: dict[str, Any]) -> None:
    assert document["units"] == {"control": 2, "b": 2}
    assert document["multipleExposures"] == 1
    assert document["firstExposure"] == "2024-03-02T00:00:00.000Z"
    # u4's control exposure on day 6 is the last of the phase (u8's is after the analysis)
    assert document["lastExposure"] == "2024-03-07T00:00:00.000Z"


def test_conversion_within_the_window_with_a_filter_and_its_cuped_covariate(
    document: dict[str, Any],
) -> None:
    purchase = stats(document, "purchase")
    assert purchase["type"] == "mean" and purchase["cuped"] is True
    assert purchase["goal"] == "increase" and purchase["guardrail"] is False
    # u1 bought shoes on day 2 (and, before exposure, on day -3); u3 and u5 bought shoes
    assert purchase["variants"] == {
        "control": {
            "n": 2,
            "sum": 1.0,
            "sum_squares": 1.0,
            "covariate_sum": 1.0,
            "covariate_sum_squares": 1.0,
            "main_covariate_sum_product": 1.0,
        },
        "b": {
            "n": 2,
            "sum": 2.0,
            "sum_squares": 2.0,
            "covariate_sum": 0.0,
            "covariate_sum_squares": 0.0,
            "main_covariate_sum_product": 0.0,
        },
    }


def test_conversion_outside_the_window_does_not_count(warehouse: Warehouse) -> None:
    # u1's only shoes after exposure within 0.5 days: none (its order is a day later)
    narrow = [{**METRICS[0], "windowDays": 0.5}]
    purchase = stats(metric_statistics(warehouse, HERO, narrow, as_of=AS_OF), "purchase")
    assert purchase["variants"]["control"]["sum"] == 0.0
    # u3 bought an hour after exposure, u5 a day after: only u3 within half a day
    assert purchase["variants"]["b"]["sum"] == 1.0


def test_count_and_sum_per_variant(document: dict[str, Any]) -> None:
    orders = stats(document, "orders")["variants"]
    # u3's third order has a non-numeric revenue: still an order
    assert (orders["control"]["sum"], orders["control"]["sum_squares"]) == (2.0, 4.0)
    assert (orders["b"]["sum"], orders["b"]["sum_squares"]) == (4.0, 10.0)
    assert orders["control"]["covariate_sum"] == 1.0
    revenue = stats(document, "revenue")["variants"]
    # the order of day 20 is outside u1's 14 days; "n/a" is ignored
    assert (revenue["control"]["sum"], revenue["control"]["sum_squares"]) == (80.0, 6400.0)
    assert (revenue["b"]["sum"], revenue["b"]["sum_squares"]) == (270.0, 210.0**2 + 60.0**2)
    assert revenue["control"]["main_covariate_sum_product"] == 80.0 * 40.0


def test_caps_by_value_and_by_percentile(document: dict[str, Any]) -> None:
    capped = stats(document, "revenue_capped")
    assert capped["cuped"] is False and "covariate_sum" not in capped["variants"]["b"]
    assert capped["variants"]["b"]["sum"] == 160.0
    assert capped["variants"]["b"]["sum_squares"] == 100.0**2 + 60.0**2
    assert capped["variants"]["control"]["sum"] == 80.0
    # the median of the nonzero per-unit values (80, 210, 60) of every unit is 80
    p50 = stats(document, "revenue_p50")["variants"]
    assert (p50["b"]["sum"], p50["b"]["sum_squares"]) == (140.0, 80.0**2 + 60.0**2)
    assert p50["control"]["sum"] == 80.0


def test_mean_is_a_ratio_of_sum_over_events_with_a_value(document: dict[str, Any]) -> None:
    mean = stats(document, "order_value")
    assert mean["type"] == "ratio" and mean["cuped"] is False
    assert mean["variants"]["control"] == {
        "n": 2,
        "sum": 80.0,
        "sum_squares": 6400.0,
        "denominator_sum": 2.0,
        "denominator_sum_squares": 4.0,
        "main_denominator_sum_product": 160.0,
    }
    # u3: 210 over 2 orders with a number (the "n/a" order is not one); u5: 60 over 1
    assert mean["variants"]["b"]["denominator_sum"] == 3.0
    assert mean["variants"]["b"]["main_denominator_sum_product"] == 210.0 * 2 + 60.0


def test_ratio_counts_anonymous_page_views_of_an_identified_unit(
    document: dict[str, Any],
) -> None:
    ratio = stats(document, "revenue_per_visit")
    assert ratio["type"] == "ratio"
    # u5's page view was anonymous, before identifying: resolved to u5 by the identity map
    assert ratio["variants"]["b"] == {
        "n": 2,
        "sum": 270.0,
        "sum_squares": 210.0**2 + 60.0**2,
        "denominator_sum": 2.0,
        "denominator_sum_squares": 2.0,
        "main_denominator_sum_product": 270.0,
    }
    assert ratio["variants"]["control"]["denominator_sum"] == 2.0
    assert ratio["variants"]["control"]["main_denominator_sum_product"] == 160.0


def test_phase_filtering(warehouse: Warehouse) -> None:
    second = ExperimentScope("hero", 2, day(10), None, ("control", "b"))
    document = metric_statistics(warehouse, second, METRICS[1:2], as_of=AS_OF)
    # only u6 named phase 2; its order came a day after exposure
    assert document["units"] == {"control": 0, "b": 1}
    assert stats(document, "orders")["variants"]["b"]["sum"] == 1.0
    assert stats(document, "orders")["variants"]["control"] == {
        "n": 0,
        "sum": 0.0,
        "sum_squares": 0.0,
        "covariate_sum": 0.0,
        "covariate_sum_squares": 0.0,
        "main_covariate_sum_product": 0.0,
    }


def test_analysis_time_ignores_later_exposures_and_events(warehouse: Warehouse) -> None:
    as_of = day(3.5)
    document = metric_statistics(warehouse, HERO, METRICS, as_of=as_of)
    # u4's control exposure (day 6) has not happened: u4 is a single-variant unit of b
    assert document["units"] == {"control": 2, "b": 3}
    assert document["multipleExposures"] == 0
    orders = stats(document, "orders")["variants"]
    # u1: days 2 and 3; u3: the hour after exposure only; u4: its day 4 order is later; u5: 1
    assert orders["control"]["sum"] == 2.0
    assert orders["b"]["sum"] == 2.0
    assert stats(document, "revenue")["variants"]["b"]["sum"] == 260.0


def test_daily_statistics_are_the_documents_of_each_day_end(warehouse: Warehouse) -> None:
    series = daily_statistics(warehouse, HERO, METRICS, as_of=AS_OF)
    assert series[0][0] == day(1).date() and series[-1][0] == AS_OF.date()
    assert len(series) == (AS_OF.date() - day(1).date()).days + 1
    by_day = dict(series)
    end_of_day_3 = day(4) - timedelta(microseconds=1)
    assert by_day[day(3).date()] == metric_statistics(warehouse, HERO, METRICS, as_of=end_of_day_3)
    assert series[-1][1] == metric_statistics(warehouse, HERO, METRICS, as_of=AS_OF)
    assert [d["units"]["b"] for _, d in series[:7]] == [1, 2, 3, 3, 3, 2, 2]
    last_three = daily_statistics(warehouse, HERO, METRICS[:1], as_of=AS_OF, days=3)
    assert [d for d, _ in last_three] == [AS_OF.date() - timedelta(days=n) for n in (2, 1, 0)]


def test_no_exposures_gives_empty_variants_and_no_days(warehouse: Warehouse) -> None:
    nobody = ExperimentScope("never-ran", 1, START, None, ("a", "b"))
    document = metric_statistics(warehouse, nobody, METRICS, as_of=AS_OF)
    assert document["units"] == {"a": 0, "b": 0}
    assert document["firstExposure"] is None and document["lastExposure"] is None
    assert stats(document, "order_value")["variants"]["a"]["n"] == 0
    assert daily_statistics(warehouse, nobody, METRICS, as_of=AS_OF) == []


def test_experiment_viewed_events_from_another_tool(tmp_path: Path) -> None:
    events = Events()
    viewed = "Experiment Viewed"
    events.add(
        day(1), user="v1", event=viewed, properties={"experiment_id": "co", "variation_id": 0}
    )
    events.add(day(1), user="v2", event=viewed, properties={"experimentKey": "co", "variant": "1"})
    # before the phase without naming one: not this phase; naming phase 1: this phase
    events.add(
        day(-1), user="v3", event=viewed, properties={"experiment_id": "co", "variation_id": 1}
    )
    events.add(
        day(-1),
        user="v4",
        event=viewed,
        properties={"experiment_id": "co", "variation_id": 1, "phase": 1},
    )
    # a variant the experiment does not have, and a phase that is not this one
    events.add(
        day(1), user="v5", event=viewed, properties={"experiment_id": "co", "variation_id": 7}
    )
    events.add(
        day(1),
        user="v6",
        event=viewed,
        properties={"experiment_id": "co", "variation_id": 0, "phase": "2"},
    )
    events.order(day(2), "v2", 25.5)
    events.order(day(2), "v3", 99)
    scope = ExperimentScope("co", 1, START, day(30), ("0", "1"))
    with Warehouse(events.lake(tmp_path / "lake")) as warehouse:
        document = metric_statistics(warehouse, scope, METRICS[:1], as_of=AS_OF)
    assert document["units"] == {"0": 1, "1": 2}
    assert stats(document, "purchase")["variants"]["1"]["sum"] == 1.0
    assert stats(document, "purchase")["variants"]["0"]["sum"] == 0.0


WHERE_CASES: list[tuple[dict[str, Any], float]] = [
    ({"property": "category", "op": "eq", "value": "shoes"}, 2),
    ({"property": "category", "op": "ne", "value": "shoes"}, 2),
    ({"property": "price", "op": "eq", "value": 10}, 1),
    ({"property": "price", "op": "eq", "value": "10"}, 0),
    ({"property": "price", "op": "gt", "value": 10}, 3),
    ({"property": "price", "op": "gte", "value": 10}, 4),
    ({"property": "price", "op": "lt", "value": 30}, 2),
    ({"property": "price", "op": "lte", "value": 30}, 3),
    ({"property": "price", "op": "between", "value": [15, 30]}, 2),
    ({"property": "category", "op": "in", "value": ["shoes", "toys"]}, 3),
    ({"property": "category", "op": "not_in", "value": ["shoes", "toys"]}, 1),
    ({"property": "category", "op": "contains", "value": "oe"}, 2),
    ({"property": "tags", "op": "contains", "value": "sale"}, 2),
    ({"property": "tags", "op": "contains", "value": 3}, 1),
    ({"property": "gift", "op": "eq", "value": True}, 1),
    ({"property": "gift", "op": "exists"}, 2),
    ({"property": 'it\'s "odd"/~', "op": "eq", "value": "x'); DROP TABLE t; --"}, 1),
]


def test_where_filters_follow_the_segment_operators(tmp_path: Path) -> None:
    events = Events()
    events.exposed(day(0), "control", user="w")
    orders = [
        {"category": "shoes", "price": 10, "tags": ["sale", "new"], "gift": True},
        {"category": "shoes", "price": 20, "tags": ["new", 3], "gift": None},
        {"category": "toys", "price": 30, "tags": "sale", "gift": False},
        {"category": "books", "price": 40, 'it\'s "odd"/~': "x'); DROP TABLE t; --"},
    ]
    for index, properties in enumerate(orders):
        events.add(day(1 + index), user="w", event="Order Completed", properties=properties)
    metrics = [
        {"key": f"m{i}", "type": "count", "event": "Order Completed", "where": [condition]}
        for i, (condition, _) in enumerate(WHERE_CASES)
    ]
    with Warehouse(events.lake(tmp_path / "lake")) as warehouse:
        document = metric_statistics(warehouse, HERO, metrics, as_of=AS_OF)
    found = {m["key"]: m["variants"]["control"]["sum"] for m in document["metrics"]}
    expected = {f"m{i}": count for i, (_, count) in enumerate(WHERE_CASES)}
    assert found == expected


def test_pages_as_metric_events(tmp_path: Path) -> None:
    events = Events()
    events.exposed(day(0), "b", user="p")
    events.add(day(1), user="p", type="page", name="Checkout")
    events.add(day(1), user="p", type="page", name="Home")
    events.add(day(2), user="p", type="page", name="Checkout")
    metrics = [
        {"key": "checkout", "type": "count", "event": {"page": "Checkout"}},
        {"key": "pages", "type": "count", "event": {"page": True}},
    ]
    with Warehouse(events.lake(tmp_path / "lake")) as warehouse:
        document = metric_statistics(warehouse, HERO, metrics, as_of=AS_OF)
    assert stats(document, "checkout")["variants"]["b"]["sum"] == 2.0
    assert stats(document, "pages")["variants"]["b"]["sum"] == 3.0


def test_validation_fills_defaults_and_is_idempotent() -> None:
    checked = validate_metrics(METRICS)
    assert checked[0]["cuped"] is True and checked[0]["cupedDays"] == 14
    assert checked[1]["windowDays"] == 14 and checked[1]["goal"] == "increase"
    assert checked[2]["cap"] is None and checked[2]["where"] == []
    assert checked[5]["cuped"] is False  # a mean is a ratio: no CUPED
    assert checked[6]["numerator"] == {
        "event": "Order Completed",
        "where": [],
        "property": "revenue",
        "cap": None,
    }
    assert validate_metrics(checked) == checked


@pytest.mark.parametrize(
    ("metrics", "pointers"),
    [
        (
            [
                {
                    "key": "a",
                    "type": "conversion",
                    "event": "X",
                    "windowDays": -1,
                    "cap": {"value": 3},
                }
            ],
            ["/metrics/0/cap", "/metrics/0/windowDays"],
        ),
        (
            [
                {"key": "a", "type": "count", "event": "X"},
                {"key": "a", "type": "sum", "event": "Y", "extra": 1},
            ],
            ["/metrics/1/extra", "/metrics/1/property", "/metrics/1/key"],
        ),
        (
            [
                {
                    "key": "r",
                    "type": "ratio",
                    "event": "X",
                    "numerator": {"event": "X", "where": [{"property": "p", "op": "near"}]},
                    "denominator": {"event": "", "cap": {"percentile": 2}},
                }
            ],
            [
                "/metrics/0/event",
                "/metrics/0/numerator/where/0/op",
                "/metrics/0/denominator/event",
                "/metrics/0/denominator/cap/percentile",
            ],
        ),
        (
            [{"key": "bad key!", "type": "median", "event": "X"}],
            ["/metrics/0/key", "/metrics/0/type"],
        ),
        (
            [
                {
                    "key": "k",
                    "type": "count",
                    "event": "X",
                    "where": [{"property": "p", "op": "in", "value": []}],
                    "goal": "up",
                }
            ],
            ["/metrics/0/where/0/value", "/metrics/0/goal"],
        ),
    ],
)
def test_validation_names_every_problem_by_pointer(
    metrics: list[dict[str, Any]], pointers: list[str]
) -> None:
    with pytest.raises(InvalidDefinition) as caught:
        validate_metrics(metrics)
    assert [p["pointer"] for p in caught.value.details["errors"]] == pointers
    assert pointers[0] in caught.value.message
    assert isinstance(caught.value, ValidationError)


def test_validation_pointer_prefix_and_bad_metrics_refused_by_the_query(
    warehouse: Warehouse,
) -> None:
    with pytest.raises(InvalidDefinition, match="/metrics/primary/0/event"):
        validate_metrics([{"key": "k", "type": "count"}], pointer="/metrics/primary")
    with pytest.raises(ValidationError, match="/metrics/0/type"):
        metric_statistics(warehouse, HERO, [{"key": "k", "type": "p99"}], as_of=AS_OF)


def test_decision_log_rewards_each_logged_decision(tmp_path: Path) -> None:
    events = Events()
    # one decision naming the bandit in two placements is one decision
    events.exposed(
        day(1),
        "a",
        user="x",
        key="bandit",
        also=(("bandit", "a"),),
        probability=0.25,
        context="vip",
    )
    events.order(day(1) + timedelta(hours=2), "x", 30)
    events.exposed(day(2), "b", user="y", key="bandit", probability=0.75)
    events.exposed(day(2), "a", user="z", key="bandit", probability=None)  # no propensity
    events.exposed(day(3), "b", user="x", key="bandit")
    events.order(day(3) + timedelta(hours=5), "x", 10)
    events.order(day(3) + timedelta(hours=30), "x", 10)  # after the window and the analysis
    scope = ExperimentScope("bandit", 1, START, None, ("a", "b"))
    reward = {"key": "r", "type": "sum", "event": "Order Completed", "property": "revenue"}
    capped = {**reward, "cap": {"value": 20}}
    as_of = day(3) + timedelta(hours=6)
    with Warehouse(events.lake(tmp_path / "lake")) as warehouse:
        rows = decision_log(warehouse, scope, capped, window_hours=24, as_of=as_of)
        closed = decision_log(
            warehouse, scope, reward, window_hours=24, as_of=as_of, closed_only=True
        )
        converted = decision_log(
            warehouse,
            scope,
            {"key": "c", "type": "conversion", "event": "Order Completed"},
            window_hours=1,
            as_of=AS_OF,
        )
        with pytest.raises(ValidationError, match="conversion, count or sum"):
            decision_log(warehouse, scope, {**reward, "type": "mean"}, window_hours=24, as_of=AS_OF)
    picked = [(r["unit"], r["context"], r["action"], r["propensity"], r["reward"]) for r in rows]
    assert picked == [
        ("x", "vip", "a", 0.25, 20.0),
        ("y", "*", "b", 0.75, 0.0),
        ("x", "*", "b", 0.5, 10.0),
    ]
    assert len({r["decision"] for r in rows}) == 3 and rows[0]["at"] == day(1)
    assert [(r["unit"], r["reward"]) for r in closed] == [("x", 30.0), ("y", 0.0)]
    # within an hour of a decision: no order came that soon
    assert [r["reward"] for r in converted] == [0.0, 0.0, 0.0]


# -- summability -----------------------------------------------------------------------------

SUMMABLE = [m for m in METRICS if "percentile" not in (m.get("cap") or {})]
_unit = st.fixed_dictionaries(
    {
        "variant": st.sampled_from(["control", "b"]),
        "part": st.sampled_from(["part-a", "part-b"]),
        "exposed_hours": st.integers(0, 72),
        "switch_hours": st.none() | st.integers(1, 48),
        "orders": st.lists(
            st.tuples(st.integers(-200, 400), st.integers(0, 300), st.booleans()), max_size=4
        ),
        "visits": st.lists(st.integers(-48, 400), max_size=3),
    }
)


@settings(max_examples=20, deadline=None)
@given(units=st.lists(_unit, min_size=1, max_size=8))
def test_statistics_of_disjoint_units_add_up(
    tmp_path_factory: pytest.TempPathFactory, units: list[dict[str, Any]]
) -> None:
    # every unit is exposed in "all" and, in the same decision, in one of two parts
    events = Events()
    for index, unit in enumerate(units):
        user = f"h{index}"
        at = day(unit["exposed_hours"] / 24)
        events.exposed(
            at, unit["variant"], user=user, key="all", also=((unit["part"], unit["variant"]),)
        )
        if unit["switch_hours"] is not None:
            other = "b" if unit["variant"] == "control" else "control"
            later = at + timedelta(hours=unit["switch_hours"])
            events.exposed(later, other, user=user, key="all", also=((unit["part"], other),))
        for hours, revenue, shoes in unit["orders"]:
            category = "shoes" if shoes else "hats"
            events.order(at + timedelta(hours=hours), user, revenue, category=category)
        for hours in unit["visits"]:
            events.add(at + timedelta(hours=hours), user=user, event="Page Viewed")
    as_of = day(12)
    with Warehouse(events.lake(tmp_path_factory.mktemp("sum") / "lake")) as warehouse:
        documents = {
            key: metric_statistics(
                warehouse,
                ExperimentScope(key, 1, START, None, ("control", "b")),
                SUMMABLE,
                as_of=as_of,
            )
            for key in ("all", "part-a", "part-b")
        }
    whole, a, b = documents["all"], documents["part-a"], documents["part-b"]
    assert whole["multipleExposures"] == a["multipleExposures"] + b["multipleExposures"]
    assert whole["units"] == {v: a["units"][v] + b["units"][v] for v in ("control", "b")}
    assert sum(whole["units"].values()) + whole["multipleExposures"] == len(units)
    for metric, part_a, part_b in zip(whole["metrics"], a["metrics"], b["metrics"], strict=True):
        for variant, fields in metric["variants"].items():
            added = {
                name: part_a["variants"][variant][name] + part_b["variants"][variant][name]
                for name in fields
            }
            assert fields == pytest.approx(added), (metric["key"], variant)
