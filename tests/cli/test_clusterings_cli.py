"""``personify segments recluster``, ``rollback`` and ``clusterings …`` run in-process with
click's runner, on a temporary data folder: a real state database and a real lake the runs
read their features from."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import Result

from personify.clock import format_timestamp
from personify.lake.schema import events_to_table
from personify.lake.table import Lake
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.store.database import Database
from tests.cli.conftest import Invoke, ok
from tests.conftest import make_settings
from tests.lake.conftest import T0, normalized

FEATURES = ["--feature", "orders.all", "--feature", "revenue.all", "--feature", "events_total"]


class Shop:
    """Events of three kinds of users written to the data folder's lake, batch by batch, and
    applied to its state database's profiles (as the lake writer and the worker do)."""

    def __init__(self, data_dir: Path) -> None:
        settings = make_settings(data_dir)
        self.lake = Lake(settings.resolved_lake_url)
        self.db_url = settings.resolved_state_url
        self.sent = 0
        self.offset = 0
        self.batch: list[dict[str, Any]] = []
        self.rng = random.Random(0)

    def send(self, who: str, event: str, **properties: Any) -> None:
        self.sent += 1
        raw = {
            "type": "track",
            "messageId": f"m-{self.sent}",
            "userId": who,
            "event": event,
            "properties": properties,
            "timestamp": format_timestamp(T0 - timedelta(minutes=self.sent)),
        }
        self.batch.append(normalized(raw))

    def spender(self, who: str) -> None:
        for _ in range(self.rng.randint(8, 12)):
            self.send(who, "Order Completed", revenue=self.rng.uniform(150, 250))

    def browser(self, who: str) -> None:
        for _ in range(self.rng.randint(15, 25)):
            self.send(who, "Product Viewed", category="shoes")

    def shopper(self, who: str) -> None:
        for _ in range(self.rng.randint(2, 3)):
            self.send(who, "Order Completed", revenue=self.rng.uniform(20, 40))
        for _ in range(self.rng.randint(3, 5)):
            self.send(who, "Product Viewed", category="hats")

    def populate(self, per_kind: int) -> dict[str, str]:
        kinds = {}
        for i in range(per_kind):
            for kind in ("spender", "browser", "shopper"):
                who = f"{kind}-{i:02d}"
                getattr(self, kind)(who)
                kinds[who] = kind
        return kinds

    def commit(self) -> None:
        """Append the events sent since the last commit to the lake, as the lake writer does."""
        offsets = [str(self.offset + i + 1) for i in range(len(self.batch))]
        rows = events_to_table(
            self.batch,
            partitions=[0] * len(self.batch),
            offsets=offsets,
            existing=self.lake.schema(),
        )
        self.lake.append(rows, group="lake", offsets={0: offsets[-1]})
        db = Database(self.db_url)
        try:
            ProfileProcessor(db, FeatureSet()).apply([view_event(e) for e in self.batch])
        finally:
            db.dispose()
        self.offset += len(self.batch)
        self.batch = []


def stdout(result: Result) -> str:
    """What a command that must have succeeded printed on stdout (progress goes to stderr)."""
    ok(result)
    return result.stdout


def members(run: Invoke, clustering: str) -> dict[str, str]:
    """Every profile's cluster segment of ``clustering``, through ``segments members``."""
    shown = json.loads(ok(run("segments", "clusterings", "show", clustering)))
    current = next(r for r in shown["runs"] if r["run"] == shown["currentRun"])
    found: dict[str, str] = {}
    for cluster in current["clusters"]:
        key = f"{clustering}/{cluster['key']}"
        for line in ok(run("segments", "members", key)).splitlines():
            profile = json.loads(line)["profileId"]
            assert profile not in found, f"{profile} is in two clusters"
            found[profile] = key
    return found


def test_create_recluster_list_show_name_rollback_and_delete(run: Invoke, data_dir: Path) -> None:
    shop = Shop(data_dir)
    kinds = shop.populate(10)
    shop.commit()

    options = ["--k", "3", "--schedule", "manual", "--name", "Shoppers"]
    created = json.loads(
        ok(run("segments", "clusterings", "create", "shoppers", *FEATURES, *options))
    )
    assert (created["key"], created["name"], created["k"]) == ("shoppers", "Shoppers", 3)
    assert created["features"] == ["orders.all", "revenue.all", "events_total"]
    assert (created["schedule"], created["currentRun"], created["nextRunAt"]) == (
        "manual",
        None,
        None,
    )

    first = run("segments", "recluster", "shoppers")
    ok(first)
    # progress on stderr, the report alone on stdout
    assert "fitting" in first.stderr and "applying the assignments" in first.stderr
    report = first.stdout
    assert report.startswith("run 1 of shoppers: succeeded (requested)")
    assert "30 profiles, 3 features, k 3, silhouette" in report
    assert "memberships: 30 entered, 0 exited; 30 events appended to the log" in report
    assert "changes: appeared " in report
    before = members(run, "shoppers")
    assert set(before) == set(kinds)
    # one cluster of each kind, each a segment printed with its size and what sets it apart
    by_kind = {kind: {before[p] for p, k in kinds.items() if k == kind} for kind in kinds.values()}
    assert all(len(keys) == 1 for keys in by_kind.values())
    spenders = by_kind["spender"].pop()
    line = next(x for x in report.splitlines() if x.strip().startswith(spenders + " "))
    assert line.split()[1] == "10" and "high revenue.all" in line and "revenue.all +" in line

    listed = ok(run("segments", "clusterings")).splitlines()
    assert len(listed) == 1 and listed[0].split()[:4] == ["shoppers", "run", "1", "manual"]
    assert ok(run("segments", "clusterings", "list")).splitlines() == listed
    shown = json.loads(ok(run("segments", "clusterings", "show", "shoppers")))
    assert shown["currentRun"] == 1 and [r["run"] for r in shown["runs"]] == [1]
    assert shown["runs"][0]["status"] == "succeeded" and shown["runs"][0]["k"] == 3

    # a person's name for a cluster names its segment
    cluster = spenders.split("/", 1)[1]
    named = json.loads(ok(run("segments", "clusterings", "name", "shoppers", cluster, "Whales")))
    assert named["names"] == {cluster: "Whales"}
    assert json.loads(ok(run("segments", "show", spenders)))["name"] == "Whales"

    # the browsers start buying a lot: the second run moves them
    for i in range(10):
        shop.spender(f"browser-{i:02d}")
    shop.commit()
    second = json.loads(stdout(run("segments", "recluster", "shoppers", "--json")))
    assert (second["run"], second["status"], second["trigger"]) == (2, "succeeded", "requested")
    assert second["exited"] >= 10
    assert second["eventsAppended"] == second["entered"] + second["exited"]
    assert {"kept", "appeared", "disappeared", "split", "merged"} <= set(second["changes"])
    moved = members(run, "shoppers")
    assert moved != before
    assert json.loads(ok(run("segments", "show", spenders)))["name"] == "Whales"

    back = run("segments", "rollback", "shoppers", "1")
    ok(back)
    assert back.stdout.startswith("run 3 of shoppers: succeeded (restores run 1)")
    assert "restoring run 1 of shoppers" in back.stderr
    assert members(run, "shoppers") == before
    shown = json.loads(ok(run("segments", "clusterings", "show", "shoppers")))
    assert shown["currentRun"] == 3 and shown["runs"][0]["restoredFrom"] == 1

    cleared = json.loads(ok(run("segments", "clusterings", "name", "shoppers", cluster, "--clear")))
    assert cleared["names"] == {}
    assert json.loads(ok(run("segments", "show", spenders)))["name"] != "Whales"

    deleted = json.loads(ok(run("segments", "clusterings", "delete", "shoppers")))
    assert deleted["status"] == "archived"
    assert ok(run("segments", "clusterings")) == ""
    assert json.loads(ok(run("segments", "show", spenders)))["status"] == "archived"
    gone = run("segments", "recluster", "shoppers")
    assert gone.exit_code == 1 and "error [clustering_not_found]" in gone.stderr


def test_a_failing_run_exits_non_zero_with_the_reason(run: Invoke, data_dir: Path) -> None:
    shop = Shop(data_dir)
    shop.shopper("only-one")
    shop.browser("and-two")
    shop.commit()
    ok(run("segments", "clusterings", "create", "tiny", *FEATURES, "--schedule", "manual"))

    failed = run("segments", "recluster", "tiny")
    assert failed.exit_code == 1
    assert failed.stdout.startswith("run 1 of tiny: failed (requested)")
    assert "error [clustering_run_failed]" in failed.stderr
    assert "at least 3 users" in failed.stderr
    assert "Traceback" not in failed.output
    as_json = run("segments", "recluster", "tiny", "--json")
    assert as_json.exit_code == 1
    body = json.loads(as_json.stdout)
    assert (body["run"], body["status"]) == (2, "failed") and "at least 3" in body["error"]
    shown = json.loads(ok(run("segments", "clusterings", "show", "tiny")))
    assert shown["currentRun"] is None and [r["status"] for r in shown["runs"]] == ["failed"] * 2
    # nothing to roll back to
    refused = run("segments", "rollback", "tiny", "1")
    assert refused.exit_code == 1 and "error [run_not_restorable]" in refused.stderr


def test_bad_definitions_and_arguments_are_refused(run: Invoke) -> None:
    cases = [
        (["--feature", "orders"], "error [invalid_features]"),
        (["--feature", "orders.all", "--k", "1"], "error [invalid_k]"),
        (["--feature", "orders.all", "--algorithm", "dbscan"], "error [invalid_algorithm]"),
        (["--feature", "orders.all", "--schedule", "sometimes"], "error [invalid_schedule]"),
    ]
    for options, error in cases:
        result = run("segments", "clusterings", "create", "c", *options)
        assert result.exit_code == 1 and error in result.stderr, options
    assert run("segments", "clusterings", "create", "c").exit_code == 2
    assert run("segments", "clusterings", "create", "c", *FEATURES, "--k", "some").exit_code == 2
    ok(run("segments", "clusterings", "create", "c", *FEATURES))
    duplicate = run("segments", "clusterings", "create", "c", *FEATURES)
    assert duplicate.exit_code == 1 and "error [clustering_exists]" in duplicate.stderr
    # a cluster the current run does not have
    unknown = run("segments", "clusterings", "name", "c", "nope", "N")
    assert unknown.exit_code == 1 and "error [cluster_not_found]" in unknown.stderr
    assert run("segments", "clusterings", "name", "c", "nope").exit_code == 2
    assert run("segments", "clusterings", "name", "c", "nope", "N", "--clear").exit_code == 2
    missing = run("segments", "clusterings", "show", "nope")
    assert missing.exit_code == 1 and "error [clustering_not_found]" in missing.stderr
    no_run = run("segments", "rollback", "c", "7")
    assert no_run.exit_code == 1 and "error [run_not_found]" in no_run.stderr
