"""The evaluation report: one well-formed, self-contained HTML page with the metric table
(better side marked), the validation note and a plot per chart, every text escaped."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest

from personify.predict.metrics import churn_metrics, clv_metrics, cumulative_gains
from personify.predict.report import evaluation_report

SVG = "{http://www.w3.org/2000/svg}svg"
HOSTILE = '<script>alert("x")</script>'


def churn_evaluation(event: str = "Order Completed") -> tuple[dict[str, Any], dict[str, Any]]:
    """A churn evaluation where the model ranks and calibrates better than the baseline."""
    rng = np.random.default_rng(3)
    probability = rng.uniform(size=400)
    churned = (rng.uniform(size=400) < probability).astype(np.float64)
    baseline = np.clip(probability + rng.normal(0, 0.3, 400), 0, 1)
    evaluation = {
        "target": "churn",
        "asOf": "2024-06-01T00:00:00+00:00",
        "horizonDays": 90,
        "event": event,
        "users": 400,
        "validation": {"split": "trained as of 2024-03-03, scored as of 2024-06-01"},
        "model": churn_metrics(churned, probability),
        "baseline": churn_metrics(churned, baseline),
        "modelVersion": "churn-7",
    }
    curves = {
        "model": {"gains": cumulative_gains(churned, probability)},
        "baseline": {"gains": cumulative_gains(churned, baseline)},
    }
    return evaluation, curves


def clv_evaluation() -> tuple[dict[str, Any], dict[str, Any]]:
    """A lifetime-value evaluation, curves as lists (as they come back from JSON)."""
    revenue = np.array([0.0, 120.0, 35.0, 0.0, 980.0, 15.0, 60.0, 0.0, 240.0, 5.0])
    model = revenue * 0.9 + 3.0
    baseline = np.full(10, 140.0) + np.arange(10)
    orders = np.array([0, 3, 1, 0, 9, 1, 2, 0, 4, 1], dtype=np.float64)
    evaluation = {
        "target": "clv",
        "asOf": "2024-06-01T00:00:00+00:00",
        "horizonDays": 365,
        "event": "Order Completed",
        "users": 10,
        "validation": "revenue over the 365 days after the cut-off",
        "model": clv_metrics(revenue, model, orders, orders * 0.8),
        "baseline": clv_metrics(revenue, baseline, orders, np.full(10, 2.0)),
    }
    curves = {
        "model": {"gains": [list(point) for point in cumulative_gains(revenue, model)]},
        "baseline": {"gains": [list(point) for point in cumulative_gains(revenue, baseline)]},
    }
    return evaluation, curves


def metric_row(page: ET.Element, key: str) -> list[ET.Element]:
    """The cells of the comparison table's row for ``key`` (the header cell first)."""
    for row in page.iter("tr"):
        header = row.find("th")
        code = header.find("code") if header is not None else None
        if code is not None and code.text == key:
            return list(row)
    raise AssertionError(f"no row for {key}")


def marked(cell: ET.Element) -> bool:
    """Whether a table cell is marked as the better value."""
    return "better" in cell.get("class", "").split()


def remote_references(page: ET.Element) -> list[str]:
    """Every attribute value or text that points outside the page. Namespace declarations
    (``xmlns="http://www.w3.org/2000/svg"``) are consumed by the parser, so they are not
    references here, as they are not for a browser."""
    found = []
    for element in page.iter():
        for name, value in element.attrib.items():
            local = name.rsplit("}", 1)[-1]
            is_link = local in ("src", "href") and not value.startswith("#")
            if is_link or re.search(r"https?://|url\(\s*['\"]?(?!#)", value):
                found.append(f"{name}={value}")
        for text in (element.text, element.tail):
            if text and re.search(r"https?://|@import|url\(\s*['\"]?(?!#)", text):
                found.append(text.strip()[:80])
    return found


def test_churn_report_is_well_formed_with_both_plots() -> None:
    evaluation, curves = churn_evaluation()
    html = evaluation_report(evaluation, curves)
    assert html.startswith("<!DOCTYPE html>")
    page = ET.fromstring(html)
    assert page.tag == "html"
    # calibration and cumulative gains
    assert len(list(page.iter(SVG))) == 2
    title = page.find("head/title")
    assert title is not None
    assert "churn" in (title.text or "")
    heading = "".join(page.itertext())
    for shown in ("2024-06-01T00:00:00+00:00", "90 days", "Order Completed", "churn-7"):
        assert shown in heading
    assert "trained as of 2024-03-03, scored as of 2024-06-01" in heading


def test_churn_table_names_every_metric_with_values_and_marks_the_better_side() -> None:
    evaluation, curves = churn_evaluation()
    page = ET.fromstring(evaluation_report(evaluation, curves))
    model, baseline = evaluation["model"], evaluation["baseline"]
    for key in ("users", "churn_rate", "roc_auc", "pr_auc", "brier", "log_loss"):
        cells = metric_row(page, key)
        text = "".join(cells[1].itertext())
        if key == "users":
            assert text.strip() == "400"
        else:
            assert f"{model[key]:.4f}" in text
            assert f"{baseline[key]:.4f}" in "".join(cells[2].itertext())
    assert "ROC AUC" in "".join(metric_row(page, "roc_auc")[0].itertext())
    assert "Brier" in "".join(metric_row(page, "brier")[0].itertext())
    # the model is better on all four: higher AUCs, lower Brier and log loss
    assert model["roc_auc"] > baseline["roc_auc"]
    assert model["brier"] < baseline["brier"]
    for key in ("roc_auc", "pr_auc", "brier", "log_loss"):
        cells = metric_row(page, key)
        assert marked(cells[1])
        assert not marked(cells[2])
    # no better side on a count or on the observed rate
    for key in ("users", "churn_rate"):
        assert not any(marked(cell) for cell in metric_row(page, key))


def test_lower_is_better_marks_the_baseline_when_it_wins() -> None:
    evaluation, curves = churn_evaluation()
    evaluation["model"] = {**evaluation["model"], "brier": 0.3, "roc_auc": 0.6}
    evaluation["baseline"] = {**evaluation["baseline"], "brier": 0.2, "roc_auc": 0.6}
    page = ET.fromstring(evaluation_report(evaluation, curves))
    brier = metric_row(page, "brier")
    assert marked(brier[2])
    assert not marked(brier[1])
    # a tie marks neither
    assert not any(marked(cell) for cell in metric_row(page, "roc_auc"))


def test_clv_report_has_one_gains_plot_and_its_metrics() -> None:
    evaluation, curves = clv_evaluation()
    html = evaluation_report(evaluation, curves)
    page = ET.fromstring(html)
    assert len(list(page.iter(SVG))) == 1
    text = "".join(page.itertext())
    assert "365 days" in text
    assert "revenue over the 365 days after the cut-off" in text
    model, baseline = evaluation["model"], evaluation["baseline"]
    for key in ("revenue_mae", "revenue_rmse", "orders_mae", "spearman"):
        cells = metric_row(page, key)
        assert f"{model[key]:.4f}" in "".join(cells[1].itertext())
        assert marked(cells[1])
    share = metric_row(page, "top_decile_revenue_share")
    assert model["top_decile_revenue_share"] > baseline["top_decile_revenue_share"]
    assert marked(share[1])
    # total revenue 1,455.00: money-sized numbers get two decimals and separators
    assert "1,455.00" in "".join(metric_row(page, "total_revenue")[1].itertext())
    # the prediction of the total that lands closer to the actual total is marked
    predicted = metric_row(page, "predicted_total_revenue")
    closer = abs(model["predicted_total_revenue"] - model["total_revenue"]) < abs(
        baseline["predicted_total_revenue"] - baseline["total_revenue"]
    )
    assert marked(predicted[1]) == closer
    assert marked(predicted[2]) != closer


def test_hostile_text_is_escaped() -> None:
    evaluation, curves = churn_evaluation(event=HOSTILE)
    evaluation["validation"] = {"note": "<b>bold</b> & <img src=x>"}
    evaluation["modelVersion"] = "<iframe>"
    html = evaluation_report(evaluation, curves)
    assert "<script" not in html
    assert "<iframe" not in html
    assert "<img" not in html
    assert "&lt;script&gt;" in html
    page = ET.fromstring(html)
    text = "".join(page.itertext())
    assert HOSTILE in text
    assert "<b>bold</b> & <img src=x>" in text
    assert not list(page.iter("script"))


def test_nothing_outside_the_page_is_referenced() -> None:
    for evaluation, curves in (churn_evaluation(), clv_evaluation()):
        html = evaluation_report(evaluation, curves)
        # the inline SVG declares its namespace, which is not a resource
        assert 'xmlns="http://www.w3.org/2000/svg"' in html
        assert remote_references(ET.fromstring(html)) == []
        assert not re.search(r"<script|<link|<iframe|<img", html)


def test_the_reference_check_catches_a_remote_resource() -> None:
    page = ET.fromstring(
        '<html><body><img src="https://example.com/x.png" />'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
        '<use xlink:href="#local" /><image xlink:href="http://example.com/y.png" /></svg>'
        "</body></html>"
    )
    assert remote_references(page) == [
        "src=https://example.com/x.png",
        "{http://www.w3.org/1999/xlink}href=http://example.com/y.png",
    ]


@pytest.mark.parametrize("target", ["churn", "clv"])
def test_degenerate_results_still_render(target: str) -> None:
    empty = np.array([])
    metrics = (
        churn_metrics(empty, empty)
        if target == "churn"
        else clv_metrics(empty, empty, empty, empty)
    )
    evaluation = {
        "target": target,
        "asOf": "2024-06-01T00:00:00+00:00",
        "horizonDays": 30,
        "event": "Order Completed",
        "users": 0,
        "validation": None,
        "model": metrics,
        "baseline": metrics,
    }
    curves: dict[str, Any] = {"model": {"gains": []}, "baseline": {"gains": []}}
    html = evaluation_report(evaluation, curves)
    page = ET.fromstring(html)
    assert len(list(page.iter(SVG))) == (2 if target == "churn" else 1)
    error = metric_row(page, "error")
    assert "NO_USERS" in "".join(error[1].itertext())
    assert not any(marked(cell) for row in page.iter("tr") for cell in row)


def test_matplotlib_is_imported_only_to_draw_and_never_through_pyplot() -> None:
    script = (
        "import sys\n"
        "import personify.predict.metrics, personify.predict.report as report\n"
        "assert 'matplotlib' not in sys.modules, 'imported with the module'\n"
        "report.evaluation_report({'target': 'clv', 'model': {}, 'baseline': {}}, {})\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
