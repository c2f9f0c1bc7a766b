"""Events become lake rows and back without loss; promoted columns evolve instead of failing."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from personify.lake.schema import (
    STABLE_COLUMNS,
    InvalidLakeEvent,
    check_timestamps,
    decode_payload,
    events_to_table,
    promoted_column,
    row_to_event,
)
from tests.lake.conftest import normalized, track


def _table(events: list[dict[str, Any]], existing: pa.Schema | None = None, **kw: Any) -> pa.Table:
    return events_to_table(
        events,
        partitions=[0] * len(events),
        offsets=[str(i + 1) for i in range(len(events))],
        existing=existing,
        **kw,
    )


def test_row_to_event_gives_back_the_normalised_event() -> None:
    events = [
        normalized(
            {
                "type": "identify",
                "userId": "ada",
                "anonymousId": "anon-1",
                "traits": {"email": "Ada@Example.com", "plan": "pro"},
                "context": {"ip": "1.2.3.4", "page": {"path": "/"}},
                "integrations": {"All": False},
                "timestamp": "2024-03-01T10:00:00.123Z",
                "sentAt": "2024-03-01T10:00:01.000Z",
                "messageId": "id-1",
                "custom_top_level": [1, 2],
            }
        ),
        normalized({"type": "page", "anonymousId": "anon-2", "name": "Home", "category": "Docs"}),
        normalized({"type": "alias", "userId": "ada", "previousId": "anon-1"}),
        normalized({"type": "group", "userId": "ada", "groupId": "acme", "traits": {"n": 1}}),
    ]
    table = _table(events)
    assert table.column_names[: len(STABLE_COLUMNS)] == list(STABLE_COLUMNS)
    for original, row in zip(events, table.to_pylist(), strict=True):
        assert row_to_event(row) == original
    assert events[0]["traits"]["email"].startswith("hmac-sha256:")


def test_event_date_is_the_utc_date_of_the_event_time() -> None:
    late_evening = normalized(track(1, at=None) | {"timestamp": "2024-02-29T23:59:59.999-01:00"})
    table = _table([late_evening])
    assert str(table.column("event_date")[0]) == "2024-03-01"


def test_scalar_properties_are_promoted_with_one_type_per_column() -> None:
    events = [
        normalized(track(1, properties={"Price": 3, "SKU": "a", "on sale": True, "obj": {"x": 1}})),
        normalized(track(2, properties={"Price": 2.5, "SKU": 7, "on sale": False})),
    ]
    table = _table(events)
    assert table.schema.field("prop_price").type == pa.float64()
    assert table.schema.field("prop_sku").type == pa.string()  # mixed kinds become text
    assert table.schema.field("prop_on_sale").type == pa.bool_()
    assert "prop_obj" not in table.column_names  # objects stay in the properties JSON only
    assert table.column("prop_price").to_pylist() == [3.0, 2.5]
    assert table.column("prop_sku").to_pylist() == ["a", "7"]


def test_an_established_column_type_wins_and_misfits_become_null() -> None:
    existing = _table([normalized(track(1, properties={"price": 3}))]).schema
    clash = normalized(track(2, properties={"price": "cheap", "qty": "4"}))
    numeric_text = normalized(track(3, properties={"price": "4.5"}))
    table = _table([clash, numeric_text], existing)
    assert table.schema.field("prop_price").type == pa.float64()
    assert table.column("prop_price").to_pylist() == [None, 4.5]
    # the value is never lost: the properties JSON keeps it
    assert row_to_event(table.to_pylist()[0])["properties"]["price"] == "cheap"


def test_no_new_promoted_columns_beyond_the_limit() -> None:
    existing = _table([normalized(track(1, properties={"a": 1, "b": 2}))]).schema
    table = _table(
        [normalized(track(2, properties={"a": 1, "c": 3, "d": 4}))], existing, max_promoted=3
    )
    promoted = [n for n in table.column_names if n.startswith("prop_")]
    assert promoted == ["prop_a", "prop_c"]


@pytest.mark.parametrize(
    ("key", "column"),
    [
        ("Order ID", "prop_order_id"),
        ("__x__", "prop_x"),
        ("Ünïcode!", "prop_n_code"),
        ("???", None),
    ],
)
def test_promoted_column_names_are_safe(key: str, column: str | None) -> None:
    assert promoted_column(key) == column


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1,2]", b'{"timestamp": "2024-01-01T00:00:00Z"}', b'{"messageId": "x"}'],
)
def test_undecodable_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(InvalidLakeEvent):
        decode_payload(payload)


def test_unparseable_timestamps_are_refused() -> None:
    with pytest.raises(InvalidLakeEvent):
        check_timestamps({"messageId": "x", "timestamp": "yesterday"})
