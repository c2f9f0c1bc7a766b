"""Integers too large for a double (310 to 4,300 digits) reach the lake and the profile.

Regression: ``float()`` of such an integer raised ``OverflowError`` in the lake's column
conversion, which ended the lake writer for good (its lag only grew), and in the features'
number reading, which dead-lettered the event in the worker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
from click.testing import CliRunner

from personify.cli.main import main
from personify.lake.schema import events_to_table, row_to_event
from personify.lake.table import Lake
from personify.predict.features import feature_table
from tests.lake.conftest import T0, Served, cli_env, fill_log, normalized, track

DIGITS_310 = "9" * 310
DIGITS_4000 = "7" * 4000


async def test_huge_integers_are_tracked_into_the_lake_and_the_profile(served: Served) -> None:
    bodies = [
        f'{{"userId":"u","event":"x","messageId":"m310","properties":{{"n":{DIGITS_310}}}}}',
        f'{{"userId":"u","event":"Order Completed","messageId":"m4000",'
        f'"properties":{{"n":-{DIGITS_4000},"revenue":{DIGITS_4000},"category":{DIGITS_310}}}}}',
        '{"userId":"u","event":"x","messageId":"after","properties":{"n":1.5}}',
    ]
    for body in bodies:
        response = await served.send("/v1/track", body)
        assert response.status_code == 200, response.text

    await served.settled()

    by_id = {row["message_id"]: row for row in served.lake_rows()}
    assert set(by_id) == {"m310", "m4000", "after"}
    # the promoted column holds what fits a double; the JSON keeps every digit
    assert [by_id[m]["prop_n"] for m in ("m310", "m4000", "after")] == [None, None, 1.5]
    assert msgspec.json.decode(by_id["m310"]["properties"]) == {"n": int(DIGITS_310)}
    assert row_to_event(by_id["m4000"])["properties"]["revenue"] == int(DIGITS_4000)

    profile = (await served.client.get("/v1/profiles/u")).json()
    features = profile["features"]
    assert features["event_counts"]["x"]["all"] == 2
    assert features["orders"]["all"] == 1
    assert features["revenue"]["all"] == 0  # not a number a sum can hold: left out
    timeline = (await served.client.get("/v1/profiles/u/events")).json()
    assert len(timeline["data"]) == 3
    assert served.services.failed_events.list() == []
    stages = await served.stages()
    assert {name: (s["state"], s["restarts"]) for name, s in stages.items()} == {
        "worker": ("running", 0),
        "lake": ("running", 0),
    }


def test_a_promoted_column_is_null_where_the_integer_does_not_fit_a_double() -> None:
    events = [
        normalized(track(1, properties={"n": 2.5, "flag": True})),
        normalized(track(2, properties={"n": int(DIGITS_310), "flag": int(DIGITS_4000)})),
        normalized(track(3, properties={"n": -int(DIGITS_4000), "flag": False})),
    ]
    first = events_to_table(events[:1], partitions=[0], offsets=["1"])
    assert first.schema.field("prop_n").type == pa.float64()
    rows = events_to_table(
        events, partitions=[0] * 3, offsets=["1", "2", "3"], existing=first.schema
    )
    assert rows.column("prop_n").to_pylist() == [2.5, None, None]
    assert rows.column("prop_flag").to_pylist() == [True, None, False]
    # a new column whose only values are such integers is a double column of NULLs
    alone = events_to_table(events[1:2], partitions=[0], offsets=["2"])
    assert alone.schema.field("prop_n").type == pa.float64()
    assert alone.column("prop_n").to_pylist() == [None]
    assert [row_to_event(r) for r in rows.to_pylist()] == events


def test_the_lake_sink_command_writes_a_310_digit_integer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    events: list[dict[str, Any]] = [
        normalized(track(1, properties={"n": 1})),
        normalized(track(2, properties={"n": int(DIGITS_310)})),
        normalized(track(3, properties={"n": int(DIGITS_4000)})),
        normalized(track(4, properties={"n": 4})),
    ]
    asyncio.run(fill_log(data / "events.db", events))

    result = CliRunner().invoke(main, ["lake", "sink", "--once"], env=cli_env(data))

    assert result.exit_code == 0, result.output
    assert "wrote 4 events" in result.output
    table = Lake(str(data / "lake")).open().to_pyarrow_table(columns=["message_id", "prop_n"])
    assert sorted(zip(*table.to_pydict().values(), strict=True)) == [
        ("m1", 1.0),
        ("m2", None),
        ("m3", None),
        ("m4", 4.0),
    ]


def test_a_feature_table_holds_integers_beyond_int64_and_double() -> None:
    documents = {
        "a": {"traits": {"n": 1, "big": 2**63, "huge": int(DIGITS_310)}},
        "b": {"traits": {"n": 2, "big": 3, "huge": 4}},
    }
    table = feature_table(documents, T0)
    assert table.column("traits__n").type == pa.int64()
    assert table.column("traits__big").to_pylist() == [float(2**63), 3.0]
    assert table.column("traits__huge").to_pylist() == [None, 4.0]


async def test_one_message_id_from_two_sources_reaches_the_lake_twice(served: Served) -> None:
    # a messageId is unique per source: the lake's batch check once refused this pair as a
    # duplicate, which stopped the lake writer on events the collector had accepted
    _, other_key = served.services.sources.create("app")
    body = '{"userId":"u","event":"x","messageId":"same"}'
    assert (await served.send("/v1/track", body)).status_code == 200
    response = await served.client.post(
        "/v1/track",
        content=body,
        auth=(other_key, ""),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text

    await served.settled()

    rows = served.lake_rows()
    assert sorted(r["message_id"] for r in rows) == ["same", "same"]
    assert len({r["source_id"] for r in rows}) == 2
    assert served.services.failed_events.list() == []
