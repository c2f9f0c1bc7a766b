"""The baseline's orders read from the lake as training frames read it: only what was known at
T, matched to profiles through the ids they had then."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from personify.clock import format_timestamp
from personify.predict.replay import replay_shards
from personify.predict.transactions import order_summaries
from personify.profiles.features import FeatureSet
from tests.lake.conftest import T0, normalized, write_lake

FEATURES = FeatureSet()
LATER = T0 + timedelta(days=2)


def event(number: int, days_ago: float, *, received: Any = None, **fields: Any) -> dict[str, Any]:
    moment = T0 - timedelta(days=days_ago)
    raw = {"type": "track", "messageId": f"m{number}", "timestamp": format_timestamp(moment)}
    raw.update(fields)
    return normalized(raw, received_at=received or min(moment + timedelta(minutes=1), T0))


def order(number: int, days_ago: float, value: float, **ids: Any) -> dict[str, Any]:
    return event(number, days_ago, event="Order Completed", properties={"revenue": value}, **ids)


def test_orders_known_at_the_cut_off_summarised_per_profile(tmp_path: Path) -> None:
    events = [
        order(1, 10, 10.0, userId="u1"),
        order(2, 7, 20.0, userId="u1"),
        # a device linked to u1, then an order from the device alone: it is u1's
        event(3, 6, event="Page Viewed", userId="u1", anonymousId="a1"),
        order(4, 3, 40.0, userId="u1"),
        order(5, 1, 0.0, anonymousId="a1"),
        order(6, 5, 99.0, userId="u2"),
        # an order with a total instead of a revenue
        event(7, 4, event="Order Completed", userId="u6", properties={"total": 12.5}),
        event(8, 2, event="Order Completed", userId="u6", properties={"total": 7.5}),
        # received after the cut-off, though it happened before: not known at T
        order(9, 4, 50.0, userId="u3", received=LATER),
        event(10, 4, event="Product Viewed", userId="u3"),
        # browsing only
        event(11, 2, event="Product Viewed", userId="u5"),
        # after the cut-off
        event(
            12,
            -1,
            event="Order Completed",
            userId="u2",
            received=LATER,
            properties={"revenue": 1000.0},
        ),
    ]
    lake = write_lake(tmp_path / "lake", events)
    owner: dict[str, str] = {}
    for shard in replay_shards(lake, FEATURES, T0):
        owner.update((i, pid) for pid, s in shard.states.items() for i in s.all_ids())
    ids, summary = order_summaries(lake, owner, as_of=T0)
    assert ids == ["u1", "u2", "u6"]
    assert summary.frequency.tolist() == [3.0, 0.0, 1.0]
    assert summary.recency.tolist() == pytest.approx([9.0, 0.0, 2.0])
    assert summary.age.tolist() == pytest.approx([10.0, 5.0, 4.0])
    assert summary.monetary.tolist() == pytest.approx([20.0, 0.0, 7.5])
    # with every id's owner unknown, nothing is anyone's
    assert order_summaries(lake, {}, as_of=T0)[0] == []
    # later, the late order and the future one count
    later_owner = dict(owner, u3="u3")
    ids, summary = order_summaries(lake, later_owner, as_of=LATER)
    assert ids == ["u1", "u2", "u3", "u6"]
    assert summary.frequency.tolist() == [3.0, 1.0, 0.0, 1.0]
