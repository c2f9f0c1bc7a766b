"""``personify experiments …`` in-process: summary statistics from a file analysed, and an
experiment that ran in another tool imported with ``personify import`` and reported from
the lake, with its chart."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cli.conftest import Invoke, ok


def test_analyze_reads_summary_statistics_from_a_file(run: Invoke, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(
        json.dumps(
            {
                "weights": {"control": 0.5, "b": 0.5},
                "metrics": [
                    {
                        "key": "signup",
                        "type": "mean",
                        "variants": {
                            "control": {"n": 4500, "sum": 450, "sum_squares": 450},
                            "b": {"n": 5500, "sum": 660, "sum_squares": 660},
                        },
                    }
                ],
            }
        )
    )
    text = ok(run("experiments", "analyze", str(stats)))
    # 4,500 against 5,500 when 50/50 was configured: the mismatch comes first
    assert "SAMPLE RATIO MISMATCH" in text and "signup" in text
    result = json.loads(
        ok(run("experiments", "analyze", str(stats), "--format", "json", "--method", "bayesian"))
    )
    assert result["method"] == "bayesian" and result["srm"]["ok"] is False
    (entry,) = result["metrics"][0]["variants"]
    assert 0.5 < entry["chanceToWin"] < 1 and entry["pValue"] is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "magic", "metrics": []}))
    failed = run("experiments", "analyze", str(bad))
    assert failed.exit_code != 0 and "/method" in failed.output


def test_an_experiment_run_elsewhere_is_imported_and_reported(
    run: Invoke, tmp_path: Path, data_dir: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
    lines = []
    for number in range(40):
        user = f"shopper-{number}"
        variant = "one-page" if number % 2 else "control"
        seen = start + timedelta(hours=number)
        lines.append(
            {
                "type": "track",
                "userId": user,
                "event": "Experiment Viewed",
                "properties": {"experiment_id": "checkout-flow", "variation_id": variant},
                "timestamp": seen.isoformat(),
            }
        )
        # three in four one-page users buy; one in two control users
        if number % 4 == 0 or (variant == "one-page" and number % 8 != 7):
            lines.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "properties": {"revenue": 50},
                    "timestamp": (seen + timedelta(hours=1)).isoformat(),
                }
            )
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(line) for line in lines))
    ok(run("import", str(events)))
    ok(run("lake", "sink", "--once"))
    definition = tmp_path / "experiment.json"
    definition.write_text(
        json.dumps(
            {
                "key": "checkout-flow",
                "variants": [{"key": "control"}, {"key": "one-page"}],
                "metrics": {
                    "primary": [{"key": "order", "type": "conversion", "event": "Order Completed"}]
                },
                "analysis": {"method": "frequentist"},
            }
        )
    )
    ok(run("experiments", "create", f"@{definition}"))
    ok(
        run(
            "experiments",
            "start",
            "checkout-flow",
            "--at",
            (start - timedelta(hours=1)).isoformat(),
        )
    )
    ok(run("experiments", "stop", "checkout-flow", "--at", (start + timedelta(days=5)).isoformat()))
    report = json.loads(ok(run("experiments", "report", "checkout-flow", "--format", "json")))
    assert report["units"] == {"control": 20, "one-page": 20}
    (metric,) = report["metrics"]
    assert metric["control"]["mean"] == 0.5 and metric["variants"][0]["mean"] == 0.75
    chart = tmp_path / "report.html"
    text = ok(run("experiments", "report", "checkout-flow", "--chart", str(chart)))
    assert "order" in text and "one-page" in text
    assert "data:image/png;base64," in chart.read_text()
    listed = ok(run("experiments", "list"))
    assert "checkout-flow\tstopped\tphase 1" in listed
    future = run("experiments", "start", "checkout-flow", "--at", "2999-01-01T00:00:00+00:00")
    assert future.exit_code != 0
