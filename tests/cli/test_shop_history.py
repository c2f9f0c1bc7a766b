"""The generated shop history: well-formed Segment events, and the planted drivers of churn and
spend visible in them (what the churn and lifetime-value models are benchmarked on)."""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scipy.stats import spearmanr

from personify.cli.shop_history import ShopHistory, generate_history

END = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def timed() -> tuple[ShopHistory, float]:
    started = time.perf_counter()
    history = generate_history(END)
    return history, time.perf_counter() - started


@pytest.fixture(scope="module")
def history(timed: tuple[ShopHistory, float]) -> ShopHistory:
    return timed[0]


@pytest.fixture(scope="module")
def orders(history: ShopHistory) -> dict[str, list[dict[str, Any]]]:
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in history.events:
        if event.get("event") == "Order Completed":
            by_user[event["userId"]].append(event)
    return by_user


def test_the_same_seed_gives_the_same_history_and_another_seed_another() -> None:
    first = generate_history(END, customers=150, seed=3)
    again = generate_history(END, customers=150, seed=3)
    other = generate_history(END, customers=150, seed=4)
    assert first.events == again.events
    assert first.customers == again.customers
    assert first.events != other.events


def test_default_size_and_speed(timed: tuple[ShopHistory, float]) -> None:
    history, seconds = timed
    assert len(history.customers) == 1000
    assert 40_000 <= len(history.events) <= 80_000
    # the brief's bound for the defaults, with room for a busy machine
    assert seconds < 2.0


def test_events_are_segment_events_in_time_order_up_to_end(history: ShopHistory) -> None:
    events = history.events
    stamps = [e["timestamp"] for e in events]
    assert all(ISO.match(s) for s in stamps)
    assert stamps == sorted(stamps)
    assert stamps[-1] <= iso(END)
    assert stamps[0] >= iso(history.start)
    assert len({e["messageId"] for e in events}) == len(events)
    for event in events:
        assert event["userId"] in history.customers
        assert event["type"] in {"track", "page", "identify"}
        if event["type"] == "track":
            assert isinstance(event["event"], str)
            assert isinstance(event["properties"], dict)
        elif event["type"] == "page":
            assert isinstance(event["name"], str)
            assert isinstance(event["properties"], dict)
        else:
            assert set(event["traits"]) >= {"plan", "country", "email"}


def test_one_identify_per_customer_first_at_sign_up(history: ShopHistory) -> None:
    first: dict[str, dict[str, Any]] = {}
    identifies: Counter[str] = Counter()
    for event in history.events:
        first.setdefault(event["userId"], event)
        identifies[event["userId"]] += event["type"] == "identify"
    assert set(first) == set(history.customers)
    assert set(identifies.values()) == {1}
    for user_id, event in first.items():
        truth = history.customers[user_id]
        assert event["type"] == "identify"
        assert event["traits"]["plan"] == truth.plan
        assert parse(event["timestamp"]) == truth.born_at.replace(
            microsecond=truth.born_at.microsecond // 1000 * 1000
        )


def test_births_are_staggered_most_in_the_first_two_thirds(history: ShopHistory) -> None:
    span = END - history.start
    shares = [(t.born_at - history.start) / span for t in history.customers.values()]
    early = sum(share < 2 / 3 for share in shares) / len(shares)
    assert 0.7 < early < 0.9
    # spread across the period, not in a lump
    assert max(shares) > 0.95
    assert min(shares) < 0.05
    assert Counter(int(share * 10) for share in shares if share < 2 / 3).most_common(1)[0][1] < 200


def test_orders_carry_products_adding_up_to_the_revenue(history: ShopHistory) -> None:
    seen: set[str] = set()
    for event in history.events:
        if event.get("event") != "Order Completed":
            continue
        properties = event["properties"]
        assert properties["currency"] == "EUR"
        assert properties["order_id"] not in seen
        seen.add(properties["order_id"])
        products = properties["products"]
        assert products
        for product in products:
            assert set(product) >= {"product_id", "category", "price", "quantity"}
        total = sum(p["price"] * p["quantity"] for p in products)
        assert properties["revenue"] == pytest.approx(total, abs=0.01)
    assert len(seen) > 1000


def test_purchase_rates_are_heterogeneous_with_visitors_and_one_time_buyers(
    history: ShopHistory, orders: dict[str, list[dict[str, Any]]]
) -> None:
    buyers = [t for t in history.customers.values() if not t.is_visitor]
    rates = [t.purchase_rate_per_day for t in buyers]
    assert statistics.stdev(rates) / statistics.mean(rates) > 0.5
    visitors = [u for u, t in history.customers.items() if t.is_visitor]
    assert len(visitors) > 100
    assert all(u not in orders for u in visitors)
    counts = Counter(len(orders.get(u, [])) for u in history.customers)
    assert counts[0] > 200
    assert counts[1] > 50
    assert sum(n for c, n in counts.items() if c >= 5) > 50
    # who buys often in truth buys often in the events
    users = [u for u, t in history.customers.items() if not t.is_visitor]
    per_day = [len(orders.get(u, [])) / max(1.0, active_days(history, u, END)) for u in users]
    truth = [history.customers[u].purchase_rate_per_day for u in users]
    assert spearmanr(truth, per_day).statistic > 0.5


def active_days(history: ShopHistory, user_id: str, until: datetime) -> float:
    truth = history.customers[user_id]
    stop = min(until, truth.dropout_at or until)
    return max(0.0, (stop - truth.born_at) / timedelta(days=1))


def test_order_values_vary_across_customers_and_follow_premium_browsing(
    history: ShopHistory, orders: dict[str, list[dict[str, Any]]]
) -> None:
    means = {
        u: statistics.mean(o["properties"]["revenue"] for o in found)
        for u, found in orders.items()
        if len(found) >= 3
    }
    values = list(means.values())
    assert statistics.stdev(values) / statistics.mean(values) > 0.3
    truth = [history.customers[u].mean_order_value for u in means]
    assert spearmanr(truth, values).statistic > 0.6
    plus = [v for u, v in means.items() if history.customers[u].plan == "plus"]
    free = [v for u, v in means.items() if history.customers[u].plan == "free"]
    assert statistics.mean(plus) > 1.3 * statistics.mean(free)
    # the prices a customer looks at foretell what they spend
    viewed: dict[str, list[float]] = defaultdict(list)
    for event in history.events:
        if event.get("event") == "Product Viewed" and event["userId"] in means:
            viewed[event["userId"]].append(event["properties"]["price"])
    users = [u for u in means if len(viewed[u]) >= 5]
    assert (
        spearmanr([statistics.mean(viewed[u]) for u in users], [means[u] for u in users]).statistic
        > 0.4
    )


def test_drop_outs_send_nothing_after_they_leave(history: ShopHistory) -> None:
    last: dict[str, str] = {}
    for event in history.events:
        last[event["userId"]] = event["timestamp"]
    dropped = [u for u, t in history.customers.items() if t.dropout_at is not None]
    assert 0.3 < len(dropped) / len(history.customers) < 0.7
    for user_id in dropped:
        dropout_at = history.customers[user_id].dropout_at
        assert dropout_at is not None
        assert last[user_id] <= iso(dropout_at)


def test_sessions_fade_in_the_weeks_before_a_customer_leaves(history: ShopHistory) -> None:
    leaving = {
        u: t.dropout_at
        for u, t in history.customers.items()
        if t.dropout_at is not None and (t.dropout_at - t.born_at) > timedelta(days=60)
    }
    assert len(leaving) > 50
    recent = earlier = 0
    for event in history.events:
        user_id = event["userId"]
        if event.get("name") != "Home" or user_id not in leaving:
            continue
        before = leaving[user_id] - parse(event["timestamp"])
        if before <= timedelta(days=7):
            recent += 1
        elif timedelta(days=28) < before <= timedelta(days=56):
            earlier += 1
    # per day: the week before leaving against four weeks a month earlier (orders, which
    # open with Home too, do not fade: transactions alone do not show it)
    assert recent / 7 < 0.6 * earlier / 28


def test_customers_with_support_tickets_drop_out_more(history: ShopHistory) -> None:
    ticketed = {e["userId"] for e in history.events if e.get("event") == "Support Ticket Opened"}
    assert len(ticketed) > 100

    def dropped_share(users: list[str]) -> float:
        return sum(history.customers[u].dropout_at is not None for u in users) / len(users)

    with_ticket = dropped_share(list(ticketed))
    without = dropped_share([u for u in history.customers if u not in ticketed])
    assert with_ticket > without + 0.25


def test_a_recent_ticket_foretells_silence_after_a_cut_off(history: ShopHistory) -> None:
    """As the model sees it: at T = end - 30 days, customers active in the 30 days before T
    with a ticket in that window are much less often seen in (T, end] than those without."""
    cut = iso(END - timedelta(days=30))
    window = iso(END - timedelta(days=60))
    active: set[str] = set()
    ticketed: set[str] = set()
    seen_after: set[str] = set()
    for event in history.events:
        stamp = event["timestamp"]
        if window < stamp <= cut:
            active.add(event["userId"])
            if event.get("event") == "Support Ticket Opened":
                ticketed.add(event["userId"])
        elif stamp > cut:
            seen_after.add(event["userId"])
    others = active - ticketed
    assert len(ticketed) >= 50
    returned_with = len(ticketed & seen_after) / len(ticketed)
    returned_without = len(others & seen_after) / len(others)
    assert returned_with < returned_without - 0.3


def test_weekends_are_busier_than_weekdays(history: ShopHistory) -> None:
    per_day = Counter(parse(e["timestamp"]).date() for e in history.events)
    days = [history.start.date() + timedelta(days=n) for n in range(1, 150)]
    weekend = [per_day[d] for d in days if d.weekday() >= 5]
    weekday = [per_day[d] for d in days if d.weekday() < 5]
    assert statistics.mean(weekend) > 1.3 * statistics.mean(weekday)


def test_the_sale_lifts_orders_per_active_customer(
    history: ShopHistory, orders: dict[str, list[dict[str, Any]]]
) -> None:
    def orders_per_customer_day(start: datetime, end: datetime) -> float:
        placed = sum(
            start <= parse(o["timestamp"]) < end for found in orders.values() for o in found
        )
        exposure = 0.0
        for truth in history.customers.values():
            begin = max(start, truth.born_at)
            stop = min(end, truth.dropout_at or end)
            exposure += max(0.0, (stop - begin) / timedelta(days=1))
        return placed / exposure

    sale_days = history.sale_end - history.sale_start
    assert sale_days == timedelta(days=14)
    during = orders_per_customer_day(history.sale_start, history.sale_end)
    before = orders_per_customer_day(history.sale_start - 2 * sale_days, history.sale_start)
    after = orders_per_customer_day(history.sale_end, history.sale_end + 2 * sale_days)
    assert during > 1.6 * before
    assert during > 1.6 * after


def test_browsing_leads_buying(history: ShopHistory) -> None:
    """Visits without an order in a customer's first 30 days rank their orders after."""
    early: Counter[str] = Counter()
    later: Counter[str] = Counter()
    users = [
        u
        for u, t in history.customers.items()
        if t.born_at + timedelta(days=90) <= END and t.dropout_at is None
    ]
    born = {u: history.customers[u].born_at for u in users}
    for event in history.events:
        user_id = event["userId"]
        if user_id not in born:
            continue
        age = parse(event["timestamp"]) - born[user_id]
        bought = event.get("event") == "Order Completed"
        if age <= timedelta(days=30):
            # every visit opens with Home; take away the visits that ended in an order
            early[user_id] += (event.get("name") == "Home") - bought
        elif bought:
            later[user_id] += 1
    assert len(users) > 150
    assert spearmanr([early[u] for u in users], [later[u] for u in users]).statistic > 0.3
