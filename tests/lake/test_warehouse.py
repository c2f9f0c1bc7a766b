"""The DuckDB warehouse: star-schema views over the lake, and ``personify sql``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from personify.cli.main import main
from personify.errors import ValidationError
from personify.lake.table import Lake
from personify.lake.warehouse import StateProfiles, Warehouse
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.settings import Settings
from personify.store.database import open_database
from tests.lake.conftest import T0, cli_env, normalized, write_lake


def _events() -> list[dict[str, Any]]:
    at = [T0 - timedelta(days=d) for d in range(4)]
    raw: list[dict[str, Any]] = [
        {"type": "page", "anonymousId": "anon-1", "name": "Home", "timestamp": at[3].isoformat()},
        {
            "type": "track",
            "anonymousId": "anon-1",
            "event": "Product Viewed",
            "properties": {"product_id": "p1", "name": "Runner", "category": "shoes", "price": 80},
            "timestamp": at[3].isoformat(),
        },
        {
            "type": "identify",
            "anonymousId": "anon-1",
            "userId": "ada",
            "traits": {"plan": "pro", "email": "ada@x.io"},
            "timestamp": at[2].isoformat(),
        },
        {
            "type": "track",
            "userId": "ada",
            "event": "Order Completed",
            "properties": {
                "revenue": 95.0,
                "products": [
                    {"product_id": "p1", "category": "shoes", "price": 80},
                    {"sku": "s9", "name": "Socks", "category": "apparel", "price": 15},
                ],
            },
            "timestamp": at[1].isoformat(),
        },
        {
            "type": "track",
            "userId": "bob",
            "event": "Article Viewed",
            "properties": {"content_id": "a7", "title": "How to run", "category": "blog"},
            "timestamp": at[0].isoformat(),
        },
    ]
    return [normalized(r | {"messageId": f"w{i}"}) for i, r in enumerate(raw)]


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """A lake with a small shop's events, the order written twice (a late re-send)."""
    events = _events()
    return write_lake(tmp_path / "data" / "lake", [*events, events[3]], batch=3)


def test_fact_events_has_each_event_once_with_user_item_and_revenue(lake: Lake) -> None:
    with Warehouse(lake) as warehouse:
        rows = warehouse.query(
            "SELECT message_id, user_key, item_id, revenue FROM fact_events ORDER BY message_id"
        ).to_pylist()
    assert rows == [
        {"message_id": "w0", "user_key": "ada", "item_id": None, "revenue": None},
        {"message_id": "w1", "user_key": "ada", "item_id": "p1", "revenue": None},
        {"message_id": "w2", "user_key": "ada", "item_id": None, "revenue": None},
        {"message_id": "w3", "user_key": "ada", "item_id": None, "revenue": 95.0},
        {"message_id": "w4", "user_key": "bob", "item_id": "a7", "revenue": None},
    ]


def test_dim_users_joins_anonymous_history_to_the_user(lake: Lake) -> None:
    with Warehouse(lake) as warehouse:
        users = {r["user_key"]: r for r in warehouse.query("SELECT * FROM dim_users").to_pylist()}
    assert set(users) == {"ada", "bob"}
    ada = users["ada"]
    assert ada["anonymous_ids"] == ["anon-1"] and ada["events"] == 4
    assert msgspec.json.decode(ada["traits"])["plan"] == "pro"
    assert msgspec.json.decode(ada["traits"])["email"].startswith("hmac-sha256:")
    assert ada["first_seen"] < ada["last_seen"]


def test_dim_items_collects_products_and_content(lake: Lake) -> None:
    with Warehouse(lake) as warehouse:
        items = {r["item_id"]: r for r in warehouse.query("SELECT * FROM dim_items").to_pylist()}
    assert set(items) == {"p1", "s9", "a7"}
    assert items["p1"]["name"] == "Runner" and items["p1"]["events"] == 2
    assert items["s9"]["category"] == "apparel" and items["s9"]["sku"] == "s9"
    assert items["a7"]["item_type"] == "content" and items["a7"]["name"] == "How to run"


def test_dim_date_spans_the_events_and_joins_the_facts(lake: Lake) -> None:
    with Warehouse(lake) as warehouse:
        days = warehouse.query("SELECT * FROM dim_date ORDER BY date_key").to_pylist()
        joined = warehouse.query(
            "SELECT count(*) AS n FROM fact_events f JOIN dim_date d ON d.date_key = f.event_date"
        ).to_pylist()
    assert len(days) == 4
    assert days[-1]["date_key"] == T0.date()
    assert joined == [{"n": 5}]


def test_an_earlier_version_can_be_queried(lake: Lake) -> None:
    with Warehouse(lake, version=0) as warehouse:
        assert warehouse.version == 0
        assert warehouse.query("SELECT count(*) AS n FROM fact_events").to_pylist() == [{"n": 3}]


def test_bad_sql_is_a_validation_error(lake: Lake) -> None:
    with Warehouse(lake) as warehouse, pytest.raises(ValidationError):
        warehouse.query("SELEC nothing")


def test_views_exist_before_the_first_event(tmp_path: Path) -> None:
    with Warehouse(Lake(str(tmp_path / "none"))) as warehouse:
        for view in ("fact_events", "dim_users", "dim_items", "dim_date"):
            assert warehouse.query(f"SELECT count(*) AS n FROM {view}").to_pylist() == [{"n": 0}]


def test_sql_command_prints_a_table_and_writes_files(lake: Lake, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    runner = CliRunner()
    query = "SELECT user_key, count(*) AS events FROM fact_events GROUP BY 1 ORDER BY 1"
    shown = runner.invoke(main, ["sql", query], env=env)
    assert shown.exit_code == 0, shown.output
    assert "user_key" in shown.output and "ada" in shown.output and "│" in shown.output

    for fmt in ("csv", "json", "parquet"):
        target = tmp_path / f"out.{fmt}"
        written = runner.invoke(
            main, ["sql", query, "--format", fmt, "--output", str(target)], env=env
        )
        assert written.exit_code == 0, written.output
    assert pacsv.read_csv(tmp_path / "out.csv").to_pylist() == [
        {"user_key": "ada", "events": 4},
        {"user_key": "bob", "events": 1},
    ]
    lines = (tmp_path / "out.json").read_bytes().splitlines()
    assert next(msgspec.json.decode(line) for line in lines) == {"user_key": "ada", "events": 4}
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 2

    to_stdout = runner.invoke(main, ["sql", query, "--format", "json"], env=env)
    assert to_stdout.output.splitlines()[1] == '{"user_key":"bob","events":1}'
    needs_file = runner.invoke(main, ["sql", query, "--format", "parquet"], env=env)
    assert needs_file.exit_code == 1 and "--output" in needs_file.output
    bad = runner.invoke(main, ["sql", "SELECT * FROM nowhere"], env=env)
    assert bad.exit_code == 1 and "invalid_sql" in bad.output


def test_with_profiles_users_are_the_workers_canonical_profiles(
    lake: Lake, tmp_path: Path, settings: Settings
) -> None:
    db = open_database(settings)
    features = FeatureSet()
    ProfileProcessor(db, features).apply([view_event(e) for e in _events()])
    with Warehouse(lake, profiles=StateProfiles(db)) as warehouse:
        users = warehouse.query("SELECT * FROM dim_users ORDER BY user_key").to_pylist()
        keys = (
            warehouse.query("SELECT DISTINCT user_key FROM fact_events ORDER BY 1")
            .column(0)
            .to_pylist()
        )
    assert [u["user_key"] for u in users] == ["ada", "bob"] == keys
    ada = users[0]
    assert ada["profile_source"] == "profiles" and ada["user_ids"] == ["ada"]
    assert ada["anonymous_ids"] == ["anon-1"] and ada["events"] == 4
    assert msgspec.json.decode(ada["traits"])["plan"] == "pro"
    assert ada["personalization_allowed"] is True and ada["profile_version"] == 1
    db.dispose()
