"""The HTML report of ``personify predict evaluate``: the learned model against the BG/NBD
baseline, as a table and as plots.

One self-contained file that opens offline: plots are inline SVG drawn by matplotlib (its
object API, no pyplot state), the style is inline CSS, there is no JavaScript and no link to
anything outside the file. Every piece of text that comes from the evaluation is escaped.
The page is also well-formed XML, so a test can parse it strictly.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["METRICS", "evaluation_report"]

Direction = Literal["higher", "lower", "closer", "none"]

# every known scalar metric: its label, and which value is better. "closer" means nearer to
# the actual total revenue (a prediction of a total is good when it matches that total)
METRICS: dict[str, tuple[str, Direction]] = {
    "users": ("Users", "none"),
    "churn_rate": ("Churn rate (observed)", "none"),
    "roc_auc": ("ROC AUC", "higher"),
    "pr_auc": ("PR AUC (average precision)", "higher"),
    "brier": ("Brier score", "lower"),
    "log_loss": ("Log loss", "lower"),
    "revenue_mae": ("Revenue MAE", "lower"),
    "revenue_rmse": ("Revenue RMSE", "lower"),
    "orders_mae": ("Orders MAE", "lower"),
    "spearman": ("Spearman rank correlation (revenue)", "higher"),
    "top_decile_revenue_share": ("Top-decile revenue share", "higher"),
    "total_revenue": ("Total revenue (actual)", "none"),
    "predicted_total_revenue": ("Predicted total revenue", "closer"),
}

# the keys shown in the title, or as their own section, rather than in the run table
_SHOWN_ELSEWHERE = {"target", "asOf", "horizonDays", "event", "validation", "model", "baseline"}

# churn's baseline is BG/NBD alone (no purchase in the horizon); clv's multiplies the BG/NBD
# expected orders by the Gamma-Gamma expected order value
_BASELINE_NAMES = {"churn": "baseline (BG/NBD)", "clv": "baseline (BG/NBD + Gamma-Gamma)"}

_MODEL_COLOUR = "#1f6fb4"
_BASELINE_COLOUR = "#d9822b"
_REFERENCE_COLOUR = "#888888"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.7rem; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.better { background: #e3f4e3; font-weight: bold; }
code { color: #666; font-size: 0.85em; }
.note { color: #555; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
"""


def _text(value: Any) -> str:
    """``value`` as escaped text: strings as they are, anything else as compact JSON."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return html.escape(value)
    return html.escape(json.dumps(value, default=str))


def _is_number(value: Any) -> bool:
    """A real number (JSON booleans are not metrics)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _format(value: Any) -> str:
    """A metric for the table: counts as integers, money-sized numbers with two decimals
    and thousands separators, small ones with four decimals."""
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if _is_number(value):
        number = float(value)
        if not math.isfinite(number):
            return str(number)
        return f"{number:,.2f}" if abs(number) >= 1000 else f"{number:.4f}"
    return _text(value)


def _better(
    key: str, model: Any, baseline: Any, reference: Any
) -> Literal["model", "baseline"] | None:
    """Which side is better on ``key``, or ``None`` for a tie, a missing value or a metric
    that has no better side."""
    direction = METRICS.get(key, ("", "none"))[1]
    if direction == "none" or not (_is_number(model) and _is_number(baseline)):
        return None
    if direction == "closer":
        if not _is_number(reference):
            return None
        model, baseline = -abs(model - reference), -abs(baseline - reference)
    elif direction == "lower":
        model, baseline = -model, -baseline
    if model == baseline:
        return None
    return "model" if model > baseline else "baseline"


def _is_scalar(value: Any) -> bool:
    """A value the comparison table can show: a number or missing."""
    return value is None or _is_number(value)


def _metric_rows(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """One table row per scalar metric in either result: known metrics in their usual order,
    then any others by name; the better side's cell marked."""
    present = [key for key in (*model, *baseline) if key not in ("error", "reliability")]
    scalar = {key for key in present if all(_is_scalar(m.get(key)) for m in (model, baseline))}
    known = [key for key in METRICS if key in scalar]
    others = sorted(scalar - set(METRICS))
    reference = model.get("total_revenue", baseline.get("total_revenue"))
    rows = []
    for key in (*known, *others):
        label, direction = METRICS.get(key, (key, "none"))
        better = _better(key, model.get(key), baseline.get(key), reference)
        hint = {"higher": "higher is better", "lower": "lower is better"}.get(direction, "")
        if direction == "closer":
            hint = "closer to the actual total is better"
        cells = []
        for side, values in (("model", model), ("baseline", baseline)):
            mark = " ✓" if better == side else ""
            css = "number better" if better == side else "number"
            cells.append(f'<td class="{css}">{_format(values.get(key))}{mark}</td>')
        rows.append(
            f"<tr><th>{html.escape(label)} <code>{html.escape(key)}</code></th>"
            f'{"".join(cells)}<td class="note">{html.escape(hint)}</td></tr>'
        )
    errors = [model.get("error"), baseline.get("error")]
    if any(errors):
        rows.append(
            "<tr><th>Error <code>error</code></th>"
            + "".join(f"<td>{_text(error)}</td>" for error in errors)
            + '<td class="note">metrics that could not be computed are shown as —</td></tr>'
        )
    return rows


def _points(curve: Any) -> tuple[list[float], list[float]]:
    """The x and y of a curve given as ``(x, y)`` pairs (tuples, or lists after JSON)."""
    pairs: Sequence[Sequence[float]] = curve or []
    return [float(x) for x, _ in pairs], [float(y) for _, y in pairs]


def _svg(draw: Callable[[Axes], None], title: str) -> str:
    """A new matplotlib figure, drawn on by ``draw(axes)``, as an inline ``<svg>`` element
    (no XML declaration, no DOCTYPE, no metadata block)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.5))
    axes = figure.subplots()
    draw(axes)
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.StringIO()
    # None drops each metadata entry, so the SVG carries no links to its toolchain
    metadata = {"Creator": None, "Date": None, "Format": None, "Type": None}
    figure.savefig(buffer, format="svg", metadata=metadata)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _no_data(axes: Axes) -> None:
    """Say on the plot that there was nothing to draw."""
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


def _calibration_svg(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    """Mean predicted probability against observed churn rate per bin, both sides, with the
    diagonal a perfectly calibrated model would follow."""

    def draw(axes: Axes) -> None:
        axes.plot([0, 1], [0, 1], linestyle="--", color=_REFERENCE_COLOUR, label="perfect")
        drawn = 0
        for name, result, colour in (
            ("model", model, _MODEL_COLOUR),
            (_BASELINE_NAMES["churn"], baseline, _BASELINE_COLOUR),
        ):
            filled = [
                row
                for row in result.get("reliability") or []
                if row.get("users")
                and row.get("mean_predicted") is not None
                and row.get("observed_rate") is not None
            ]
            x = [float(row["mean_predicted"]) for row in filled]
            y = [float(row["observed_rate"]) for row in filled]
            if x:
                axes.plot(x, y, marker="o", color=colour, label=name)
                drawn += 1
        if not drawn:
            _no_data(axes)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("mean predicted churn probability")
        axes.set_ylabel("observed churn rate")
        axes.legend(loc="upper left")

    return _svg(draw, "Calibration")


def _gains_svg(curves: Mapping[str, Any], captured: str, baseline_name: str) -> str:
    """Cumulative gains of both sides against random targeting (the diagonal)."""

    def draw(axes: Axes) -> None:
        axes.plot([0, 1], [0, 1], linestyle="--", color=_REFERENCE_COLOUR, label="random")
        drawn = 0
        for name, key, colour in (
            ("model", "model", _MODEL_COLOUR),
            (baseline_name, "baseline", _BASELINE_COLOUR),
        ):
            x, y = _points((curves.get(key) or {}).get("gains"))
            if x:
                axes.plot(x, y, color=colour, label=name)
                drawn += 1
        if not drawn:
            _no_data(axes)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("share of users targeted (highest predicted first)")
        axes.set_ylabel(f"share of {captured} captured")
        axes.legend(loc="lower right")

    return _svg(draw, "Cumulative gains")


def _figure(svg: str, caption: str) -> str:
    """An SVG plot with its caption."""
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _definition_table(values: Mapping[str, Any]) -> str:
    """A two-column table of keys and their (escaped) values."""
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{_text(value)}</td></tr>"
        for key, value in values.items()
    )
    return f"<table>{rows}</table>"


def evaluation_report(evaluation: Mapping[str, Any], curves: Mapping[str, Any]) -> str:
    """The evaluation as one HTML page: a title naming the target, cut-off, horizon and
    event; a table of every scalar metric, model against baseline, the better one marked;
    the validation note; and the plots (churn: calibration and cumulative gains; clv:
    cumulative gains of revenue).

    ``evaluation`` is the JSON ``personify predict evaluate`` prints; ``curves`` holds the
    gains curves, ``{"model": {"gains": [(x, y), ...]}, "baseline": {"gains": [...]}}``.
    """
    target = str(evaluation.get("target", ""))
    model: Mapping[str, Any] = evaluation.get("model") or {}
    baseline: Mapping[str, Any] = evaluation.get("baseline") or {}
    validation = evaluation.get("validation")
    heading = f"Personify {target} model evaluation"
    baseline_name = _BASELINE_NAMES.get(target, "baseline")
    facts = [
        ("target", target),
        ("as of", evaluation.get("asOf")),
        ("horizon", f"{evaluation.get('horizonDays')} days"),
        ("event", evaluation.get("event")),
    ]
    subtitle = " · ".join(f"{label}: {_text(value)}" for label, value in facts)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8" />',
        f"<title>{html.escape(heading)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(heading)}</h1>",
        f'<p class="note">{subtitle}</p>',
        "<h2>Model against baseline</h2>",
        "<table><thead><tr><th>metric</th><th>model</th>"
        f"<th>{html.escape(baseline_name)}</th><th></th></tr></thead><tbody>",
        *_metric_rows(model, baseline),
        "</tbody></table>",
        '<p class="note">✓ marks the better value where one direction is better.</p>',
        "<h2>Validation</h2>",
    ]
    if isinstance(validation, Mapping):
        parts.append(_definition_table(validation))
    else:
        parts.append(f'<p class="note">{_text(validation)}</p>')
    run = {key: value for key, value in evaluation.items() if key not in _SHOWN_ELSEWHERE}
    if run:
        parts += ["<h2>Run</h2>", _definition_table(run)]

    parts.append("<h2>Plots</h2>")
    if target == "churn":
        parts.append(
            _figure(
                _calibration_svg(model, baseline),
                "Each point is a bin of users: their mean predicted churn probability against "
                "the share that churned. On the diagonal, predictions are calibrated.",
            )
        )
        captured = "churners"
    else:
        captured = "revenue"
    parts.append(
        _figure(
            _gains_svg(curves, captured, baseline_name),
            f"Target users from the highest prediction down: the share of all {captured} "
            "reached. Higher above the diagonal (random targeting) is better.",
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
