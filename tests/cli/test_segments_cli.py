"""``personify segments …`` run in-process with click's runner on a temporary data dir."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from personify.segments.tables import segment_members
from personify.store.database import open_database
from tests.cli.conftest import Invoke, ok
from tests.conftest import make_settings

PRO = {"trait": "plan", "op": "eq", "value": "pro"}


def add_members(data_dir: Path, key: str, profile_ids: list[str], entered: datetime) -> None:
    """Open membership rows written straight into the table the worker fills."""
    db = open_database(make_settings(data_dir))
    try:
        with db.begin() as conn:
            conn.execute(
                segment_members.insert(),
                [
                    {
                        "segment_key": key,
                        "profile_id": profile_id,
                        "segment_version": 1,
                        "entered_at": entered,
                        "entry_reason": "evaluated",
                    }
                    for profile_id in profile_ids
                ],
            )
    finally:
        db.dispose()


def test_create_show_update_list_and_delete(run: Invoke, tmp_path: Path) -> None:
    created = json.loads(
        ok(run("segments", "create", "vip", "--condition", json.dumps(PRO), "--name", "VIPs"))
    )
    assert (created["key"], created["name"], created["version"]) == ("vip", "VIPs", 1)
    assert created["condition"] == PRO
    assert json.loads(ok(run("segments", "show", "vip"))) == created

    # a condition from a file
    shoes = {"event": "Product Viewed", "within": "7d"}
    path = tmp_path / "shoes.json"
    path.write_text(json.dumps(shoes))
    updated = json.loads(
        ok(run("segments", "update", "vip", "--condition", f"@{path}", "--description", "d"))
    )
    assert (updated["version"], updated["condition"], updated["description"]) == (2, shoes, "d")
    assert updated["name"] == "VIPs"

    ok(run("segments", "create", "all-pro", "--condition", json.dumps(PRO)))
    lines = ok(run("segments", "list")).strip().splitlines()
    assert [line.split()[0] for line in lines] == ["all-pro", "vip"]
    assert "v2" in lines[1] and "active" in lines[1] and "VIPs" in lines[1]
    # the columns line up whatever the keys' lengths
    assert lines[0].index("  v") == lines[1].index("  v") == len("all-pro")

    archived = json.loads(ok(run("segments", "delete", "vip")))
    assert (archived["status"], archived["version"]) == ("archived", 3)
    assert [line.split()[0] for line in ok(run("segments", "list")).splitlines()] == ["all-pro"]
    everything = ok(run("segments", "list", "--archived")).splitlines()
    assert [line.split()[0] for line in everything] == ["all-pro", "vip"]
    assert "archived" in everything[1]


def test_errors_are_one_line_and_exit_non_zero(run: Invoke) -> None:
    bad = run("segments", "create", "s", "--condition", '{"trait": "plan", "op": "equals"}')
    assert bad.exit_code == 1
    assert "error [invalid_condition]" in bad.output and "/op" in bad.output
    assert "Traceback" not in bad.output

    not_json = run("segments", "create", "s", "--condition", "{plan: pro}")
    assert not_json.exit_code == 2
    assert "not JSON" in not_json.output
    missing_file = run("segments", "create", "s", "--condition", "@/nonexistent/c.json")
    assert missing_file.exit_code == 2
    assert "cannot read" in missing_file.output

    ok(run("segments", "create", "a", "--condition", json.dumps(PRO)))
    ok(run("segments", "create", "b", "--condition", '{"segment": "a"}'))
    duplicate = run("segments", "create", "a", "--condition", json.dumps(PRO))
    assert duplicate.exit_code == 1 and "error [segment_exists]" in duplicate.output
    in_use = run("segments", "delete", "a")
    assert in_use.exit_code == 1 and "error [segment_in_use]" in in_use.output
    for command in (["show", "nope"], ["members", "nope"], ["stats", "nope"]):
        result = run("segments", *command)
        assert result.exit_code == 1 and "error [segment_not_found]" in result.output
    nothing = run("segments", "update", "a")
    assert nothing.exit_code == 2


def test_members_as_csv_and_as_json_lines(run: Invoke, data_dir: Path, tmp_path: Path) -> None:
    ok(run("segments", "create", "vip", "--condition", json.dumps(PRO)))
    entered = datetime(2024, 5, 1, 12, tzinfo=UTC)
    ids = [f"p{n:04d}" for n in range(1, 1204)]
    add_members(data_dir, "vip", list(reversed(ids)), entered)

    output = tmp_path / "vip.csv"
    assert "wrote 1203 members of vip" in ok(
        run("segments", "members", "vip", "--output", str(output))
    )
    with output.open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["profile_id", "since", "segment_version"]
    assert [row[0] for row in rows[1:]] == ids
    assert rows[1] == ["p0001", entered.isoformat(), "1"]

    lines = ok(run("segments", "members", "vip", "--limit", "3")).splitlines()
    assert [json.loads(line) for line in lines] == [
        {"profileId": pid, "since": entered.isoformat(), "segmentVersion": 1} for pid in ids[:3]
    ]
    limited = tmp_path / "first.csv"
    ok(run("segments", "members", "vip", "--limit", "1100", "--output", str(limited)))
    with limited.open(newline="") as file:
        assert len(list(csv.reader(file))) == 1 + 1100


def test_stats(run: Invoke, data_dir: Path) -> None:
    ok(run("segments", "create", "vip", "--condition", json.dumps(PRO)))
    add_members(data_dir, "vip", ["a", "b"], datetime.now(UTC) - timedelta(days=2))
    stats: dict[str, Any] = json.loads(ok(run("segments", "stats", "vip", "--days", "5")))
    assert (stats["key"], stats["size"], stats["entries"], stats["exits"]) == ("vip", 2, 2, 0)
    assert len(stats["series"]) == 5 and stats["series"][-1]["size"] == 2
    assert run("segments", "stats", "vip", "--days", "0").exit_code == 2


def test_backfill_evaluates_stored_profiles_and_appends_their_events(
    run: Invoke, data_dir: Path
) -> None:
    from personify.profiles.events import view_event
    from personify.profiles.features import FeatureSet
    from personify.profiles.processor import ProfileProcessor

    db = open_database(make_settings(data_dir))
    try:
        when = datetime.now(UTC).isoformat()
        events = [
            {
                "type": "identify",
                "messageId": f"m{n}",
                "userId": f"u{n}",
                "timestamp": when,
                "context": {"traits": {"plan": "pro" if n % 2 else "free"}},
            }
            for n in range(10)
        ]
        ProfileProcessor(db, FeatureSet()).apply([view_event(e) for e in events])
    finally:
        db.dispose()

    ok(run("segments", "create", "pro", "--condition", json.dumps(PRO)))
    result = run("segments", "backfill")
    ok(result)
    # the progress bar goes to stderr, the result alone to stdout
    assert "profiles [" in result.stderr and "10/10" in result.stderr
    done = json.loads(result.stdout)
    assert (done["backfills"], done["profiles"], done["entries"]) == (1, 10, 5)
    assert done["eventsAppended"] == 5
    shown = json.loads(ok(run("segments", "show", "pro")))
    assert shown["backfill"]["status"] == "done"
    assert (shown["backfill"]["done"], shown["backfill"]["total"]) == (10, 10)
    members = [
        json.loads(line)["profileId"] for line in ok(run("segments", "members", "pro")).splitlines()
    ]
    assert members == ["u1", "u3", "u5", "u7", "u9"]
    # nothing waits: a second pass does nothing
    again = json.loads(ok(run("segments", "backfill", "--quiet")))
    assert (again["backfills"], again["profiles"], again["eventsAppended"]) == (0, 0, 0)
    swept = json.loads(ok(run("segments", "sweep")))
    assert swept["profiles"] == 0
