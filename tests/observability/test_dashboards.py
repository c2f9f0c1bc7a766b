"""The Grafana dashboard and the Prometheus alert rules of ``deploy/``: the rules pass
``promtool check rules`` and their unit tests (``promtool test rules``), and both refer only
to metrics ``GET /metrics`` exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api import running_app
from tests.conftest import service_missing

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "personify.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# promtool's unit tests of the rules: series as Personify exports them, the alerts expected
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
METRIC_NAME = re.compile(r"\bpersonify_[a-z0-9_]+")
# the sample names each family type shows in the text format
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[str] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        found.extend(target["expr"] for target in panel["targets"])
    return found


def alert_expressions() -> list[str]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


async def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name ``GET /metrics`` can show, from the families it declares (a labelled
    counter not moved yet has no sample, but its family is declared)."""
    async with running_app(tmp_path / "data") as harness:
        response = await harness.client.get("/metrics", headers=harness.admin)
        assert response.status_code == 200, response.text
    return {
        family.name + suffix
        for family in text_string_to_metric_families(response.text)
        for suffix in SUFFIXES[family.type]
    }


def test_the_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool is not installed (Debian package prometheus)")
        return
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        checked = subprocess.run(
            [promtool, *command], capture_output=True, text=True, timeout=60, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout


async def test_the_dashboard_and_the_alerts_refer_only_to_exported_metrics(
    tmp_path: Path,
) -> None:
    exported = await exported_names(tmp_path)
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert used, "the dashboard queries no Personify metric"
    assert used <= exported, sorted(used - exported)
    # and every counted family is on it somewhere
    families = {name.removesuffix("_total") for name in exported if name.endswith("_total")}
    charted = {name.removesuffix("_total") for name in used}
    assert not {f for f in families if not any(c.startswith(f) for c in charted)}
    alerting = {name for expr in alert_expressions() for name in METRIC_NAME.findall(expr)}
    assert {"personify_eventlog_lag", "personify_disk_free_bytes"} <= alerting
    assert alerting <= exported, sorted(alerting - exported)
