"""Quality runs and lineage are recorded in the state database and shown by the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from click.testing import CliRunner

from personify.cli.main import main
from personify.clock import FrozenClock
from personify.quality.lineage import LineageRepository, code_version
from personify.quality.results import QualityRepository
from personify.quality.runner import CheckResult, QualityRun
from personify.settings import Settings
from personify.store.database import open_database
from tests.lake.conftest import cli_env, normalized, track, write_lake

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def _run(stage: str, rows: int, at: datetime, *, passed: bool = True) -> QualityRun:
    return QualityRun(
        stage=stage,
        dataset="lake",
        row_count=rows,
        created_at=at,
        results=[CheckResult("user_id", "not_nullable", "critical", passed, 0 if passed else 2)],
    )


def test_runs_are_recorded_and_the_latest_read_back(settings: Settings) -> None:
    db = open_database(settings)
    repo = QualityRepository(db)
    for day in range(5):
        repo.record(_run("features", 100 + day, NOW + timedelta(days=day)))
    repo.record(_run("features", 999, NOW + timedelta(days=6), passed=False))
    repo.record(_run("lake", 7, NOW))
    latest = repo.latest()
    assert [(r.stage, r.row_count, r.status) for r in latest] == [
        ("features", 999, "failed"),
        ("lake", 7, "passed"),
    ]
    assert latest[0].results[0] == CheckResult("user_id", "not_nullable", "critical", False, 2)
    # failed runs are not history to compare volumes against
    assert repo.row_counts("features", limit=3) == [102, 103, 104]
    assert repo.prune("features", keep=2) == 4
    assert len(repo.latest("features", limit=10)) == 2
    db.dispose()


def test_quality_report_and_check_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = cli_env(data)
    runner = CliRunner()
    assert "no quality runs" in runner.invoke(main, ["quality", "report"], env=env).output

    empty = runner.invoke(main, ["quality", "check"], env=env)
    assert empty.exit_code == 1
    assert "quality FAILED: stage lake" in empty.output and "has_events" in empty.output

    now = datetime.now(UTC)
    write_lake(
        data / "lake",
        [normalized(track(i, at=now - timedelta(hours=i)), received_at=now) for i in range(30)],
    )
    checked = runner.invoke(main, ["quality", "check"], env=env)
    assert checked.exit_code == 0, checked.output
    assert "stage lake" in checked.output

    report = runner.invoke(main, ["quality", "report", "--stage", "lake", "--all-checks"], env=env)
    assert report.exit_code == 0
    assert "ok       None" not in report.output
    assert "ok       events.greater_than_or_equal_to(0)" in report.output
    as_json = msgspec.json.decode(
        runner.invoke(main, ["quality", "report", "--json"], env=env).output
    )
    assert [r["stage"] for r in as_json] == ["lake"]
    assert as_json[0]["rowCount"] == 16  # 14 days of history, yesterday and today


def test_lineage_is_recorded_and_shown(tmp_path: Path, settings: Settings) -> None:
    db = open_database(settings)
    repo = LineageRepository(db, clock=FrozenClock(NOW))
    record = repo.record(
        "feature_table",
        lake_uri="/lake",
        lake_versions={"events": 12},
        time_start=None,
        time_end=NOW,
        parameters={"as_of": NOW.isoformat(), "definitions": "abc"},
        output="/out/features.parquet",
        row_count=10,
    )
    assert repo.get(record.id[:8]) == record
    assert record.code_version == code_version()
    assert record.code_version.startswith("personify ")
    assert [r.id for r in repo.list("feature_table")] == [record.id]
    db.dispose()

    env = cli_env(settings.data_dir)
    runner = CliRunner()
    shown = runner.invoke(main, ["lineage", "show", record.id], env=env)
    assert shown.exit_code == 0, shown.output
    body = msgspec.json.decode(shown.output)
    assert body["lakeVersions"] == {"events": 12}
    assert body["timeEnd"] == NOW.isoformat()
    assert body["parameters"]["definitions"] == "abc"
    listed = runner.invoke(main, ["lineage", "list"], env=env)
    assert record.id in listed.output and "events@12" in listed.output
    missing = runner.invoke(main, ["lineage", "show", "nope"], env=env)
    assert missing.exit_code == 1 and "lineage_not_found" in missing.output
