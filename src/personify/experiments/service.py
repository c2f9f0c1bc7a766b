"""Experiment results, bandit updates and off-policy evaluation, from the lake
(docs/experiments.md).

A result is reproducible: it records the experiment's phase, the lake version it read, the
time it is as of and the method, and is computed from the exposures and events in the lake
(``personify.experiments.metrics``) into summable statistics, then analysed
(``personify.experiments.analysis``). A multivariate test is analysed per combination and,
adding the statistics of the cells that share a level, per factor.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final

from personify.clock import Clock, SystemClock
from personify.errors import ValidationError
from personify.experiments.analysis import analyze
from personify.experiments.bandits import ArmStatistics, allocate_by_context
from personify.experiments.metrics import (
    daily_statistics,
    decision_log,
    metric_statistics,
)
from personify.experiments.offpolicy import (
    Estimate,
    LoggedDecision,
    evaluate_policy,
    logged_policy_value,
)
from personify.experiments.repository import ExperimentRepository

if TYPE_CHECKING:
    from personify.lake.warehouse import Warehouse

__all__ = ["ExperimentService", "chart_html", "chart_png"]

logger = logging.getLogger("personify.experiments")

_STAT_FIELDS: Final = (
    "n",
    "sum",
    "sum_squares",
    "denominator_sum",
    "denominator_sum_squares",
    "main_denominator_sum_product",
    "covariate_sum",
    "covariate_sum_squares",
    "main_covariate_sum_product",
)


def _add(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Sufficient statistics add field by field."""
    return {
        name: a.get(name, 0) + b.get(name, 0) for name in _STAT_FIELDS if name in a or name in b
    }


def _factor_document(
    document: Mapping[str, Any], data: Mapping[str, Any], factor: Mapping[str, Any], index: int
) -> dict[str, Any]:
    """The analysis document of one factor: each level's cells added together."""
    levels = [level["key"] for level in factor["levels"]]

    def level_of(variant: str) -> str:
        return variant.split(",")[index].split("=", 1)[1]

    weights: dict[str, float] = dict.fromkeys(levels, 0.0)
    for variant in document["variants"]:
        weights[level_of(variant["key"])] += float(variant["weight"])
    units: dict[str, int] = dict.fromkeys(levels, 0)
    for variant, count in data["units"].items():
        units[level_of(variant)] += int(count)
    metrics = []
    for metric in data["metrics"]:
        pooled: dict[str, dict[str, Any]] = {}
        for variant, stats in metric["variants"].items():
            level = level_of(variant)
            pooled[level] = _add(pooled[level], stats) if level in pooled else dict(stats)
        metrics.append(
            {**metric, "variants": {level: pooled[level] for level in levels if level in pooled}}
        )
    return {"control": levels[0], "weights": weights, "units": units, "metrics": metrics}


class ExperimentService:
    """Results, reports, bandit allocations and policy estimates of saved experiments."""

    def __init__(
        self,
        repository: ExperimentRepository,
        warehouse: Callable[[], Warehouse],
        *,
        clock: Clock | None = None,
    ) -> None:
        self.repository = repository
        self._warehouse = warehouse
        self._clock = clock or SystemClock()

    # -- results -----------------------------------------------------------------------------

    def results(
        self,
        key: str,
        *,
        phase: int | None = None,
        method: str | None = None,
        as_of: datetime | None = None,
        daily: bool = False,
    ) -> dict[str, Any]:
        """Every metric's result per variant against control, the SRM check, per-factor
        results for a multivariate test, and (``daily``) the primary metrics' uplift as a
        daily peek would have seen it."""
        document, scope = self.repository.scope(key, phase)
        as_of = as_of or self._clock.now()
        primary = list(document["metrics"]["primary"])
        guardrails = list(document["metrics"]["guardrails"])
        metrics = primary + guardrails
        settings = dict(document["analysis"])
        if method is not None:
            settings["method"] = method
        total = sum(float(v["weight"]) for v in document["variants"]) or 1.0
        weights = {v["key"]: float(v["weight"]) / total for v in document["variants"]}
        with self._warehouse() as warehouse:
            data = metric_statistics(warehouse, scope, metrics, as_of=as_of)
            days = daily_statistics(warehouse, scope, primary, as_of=as_of) if daily else []
            lake_version = warehouse.version
        guarded = {m["key"] for m in guardrails}
        for metric in data["metrics"]:
            metric["guardrail"] = metric["key"] in guarded
        request = {**settings, "control": scope.variants[0], "weights": weights, **data}
        result = analyze(request)
        factors = {}
        if document.get("factors"):
            for index, factor in enumerate(document["factors"]):
                factors[factor["key"]] = analyze(
                    {**settings, **_factor_document(document, data, factor, index)}
                )
        timeline = [
            {"date": day.isoformat(), **self._peek(settings, scope.variants[0], weights, doc)}
            for day, doc in days
        ]
        return {
            "experiment": key,
            "name": document.get("name"),
            "hypothesis": document.get("hypothesis"),
            "type": document["type"],
            "phase": scope.phase,
            "phaseStart": scope.phase_start.isoformat(),
            "phaseEnd": scope.phase_end.isoformat() if scope.phase_end else None,
            "asOf": as_of.isoformat(),
            "lakeVersion": lake_version,
            "units": data["units"],
            "multipleExposures": data["multipleExposures"],
            "firstExposure": data.get("firstExposure"),
            "lastExposure": data.get("lastExposure"),
            **result,
            "factors": factors or None,
            "timeline": timeline if daily else None,
        }

    @staticmethod
    def _peek(
        settings: Mapping[str, Any],
        control: str,
        weights: Mapping[str, float],
        doc: Mapping[str, Any],
    ) -> dict[str, Any]:
        """One day's relative uplift and interval per primary metric and variant."""
        result = analyze({**settings, "control": control, "weights": weights, **doc})
        return {
            "metrics": {
                metric["key"]: {
                    entry["variant"]: {
                        "users": entry.get("users"),
                        "relative": entry.get("relative"),
                    }
                    for entry in metric["variants"]
                }
                for metric in result["metrics"]
            }
        }

    # -- bandits -----------------------------------------------------------------------------

    def update_bandit(self, key: str, *, as_of: datetime | None = None) -> dict[str, Any]:
        """Recompute a running bandit's allocation per context from its decisions' rewards
        in the lake (Thompson sampling with its minimum exploration share), and save it."""
        document, scope = self.repository.scope(key)
        bandit = document.get("bandit")
        if document["type"] != "bandit" or not bandit:
            raise ValidationError(f"experiment {key!r} is not a bandit", code="not_a_bandit")
        as_of = as_of or self._clock.now()
        with self._warehouse() as warehouse:
            rows = decision_log(
                warehouse, scope, bandit["reward"], window_hours=bandit["windowHours"], as_of=as_of
            )
        arms = [v["key"] for v in document["variants"] if float(v["weight"]) > 0]
        contexts = ["*", *bandit["contexts"]]
        sums: dict[str, dict[str, list[float]]] = {
            c: {a: [0, 0.0, 0.0] for a in arms} for c in contexts
        }
        for row in rows:
            context = row["context"] if row["context"] in sums else "*"
            found = sums[context].get(row["action"])
            if found is None:
                continue
            found[0] += 1
            found[1] += row["reward"]
            found[2] += row["reward"] ** 2
        stats = {
            context: [
                ArmStatistics(arm, int(n), float(s), float(q)) for arm, (n, s, q) in by_arm.items()
            ]
            for context, by_arm in sums.items()
        }
        allocations = allocate_by_context(
            stats,
            reward=bandit["rewardType"],
            min_share=bandit["minShare"],
            seed=f"{key}:{scope.phase}:{as_of.isoformat()}",
        )
        statistics = {
            context: {a.arm: {"n": a.n, "rewardSum": a.reward_sum} for a in listed}
            for context, listed in stats.items()
        }
        self.repository.save_allocations(key, allocations, statistics)
        return {
            "experiment": key,
            "decisions": len(rows),
            "allocations": allocations,
            "statistics": statistics,
        }

    def update_bandits(self) -> list[dict[str, Any]]:
        """Update every running bandit (the scheduled job)."""
        done = []
        for experiment in self.repository.list("running"):
            if experiment["type"] == "bandit":
                done.append(self.update_bandit(experiment["key"]))
        return done

    def evaluate(
        self, key: str, policy: Mapping[str, Any], *, alpha: float = 0.05
    ) -> dict[str, Any]:
        """How a candidate policy would have done on this experiment's logged decisions
        (IPS, self-normalised IPS and doubly robust, with intervals), next to the logged
        policy's own value. ``policy``: ``{"arm": KEY}`` (always one arm), ``{"allocation":
        {arm: share}}`` (the same shares everywhere) or ``{"byContext": {context:
        {arm: share}}}`` (``"*"`` for contexts not listed)."""
        document, scope = self.repository.scope(key)
        reward = (document.get("bandit") or {}).get("reward") or (
            (document["metrics"]["primary"] or [None])[0]
        )
        if reward is None:
            raise ValidationError(
                f"experiment {key!r} has no reward: give it a bandit reward or a primary metric",
                code="no_reward",
            )
        window_hours = (document.get("bandit") or {}).get(
            "windowHours", 24.0 * reward.get("windowDays", 14)
        )
        chooser = _policy(policy, [v["key"] for v in document["variants"]])
        with self._warehouse() as warehouse:
            rows = decision_log(
                warehouse, scope, reward, window_hours=window_hours, as_of=self._clock.now()
            )
        logs = [
            LoggedDecision(r["context"], r["action"], float(r["reward"]), float(r["propensity"]))
            for r in rows
        ]
        estimates = evaluate_policy(logs, chooser, alpha=alpha) if logs else {}
        return {
            "experiment": key,
            "phase": scope.phase,
            "decisions": len(logs),
            "policy": dict(policy),
            "logged": _estimate(logged_policy_value(logs, alpha=alpha)),
            "estimates": {name: _estimate(value) for name, value in estimates.items()},
        }


def _estimate(value: Estimate) -> dict[str, Any]:
    return {
        "value": value.value,
        "ci": list(value.ci) if value.ci is not None else None,
        "n": value.n,
        "error": value.error,
    }


def _policy(policy: Mapping[str, Any], arms: Sequence[str]) -> Callable[[str], Mapping[str, float]]:
    """A candidate policy from its JSON form; ``ValidationError`` naming what is wrong."""

    def shares(value: Any, where: str) -> dict[str, float]:
        if not isinstance(value, Mapping) or not value:
            raise ValidationError(f"{where} is an object: arm -> share", code="invalid_policy")
        found: dict[str, float] = {}
        for arm, share in value.items():
            if arm not in arms:
                raise ValidationError(f"{where}: no arm {arm!r}", code="invalid_policy")
            if not isinstance(share, int | float) or isinstance(share, bool) or share < 0:
                raise ValidationError(
                    f"{where}/{arm} is a share of at least 0", code="invalid_policy"
                )
            found[arm] = float(share)
        total = sum(found.values())
        if total <= 0:
            raise ValidationError(f"{where}: the shares add up to 0", code="invalid_policy")
        return {arm: share / total for arm, share in found.items()}

    if "arm" in policy:
        arm = policy["arm"]
        if arm not in arms:
            raise ValidationError(f"/policy/arm: no arm {arm!r}", code="invalid_policy")
        return lambda _context: {arm: 1.0}
    if "allocation" in policy:
        fixed = shares(policy["allocation"], "/policy/allocation")
        return lambda _context: fixed
    if "byContext" in policy:
        listed = policy["byContext"]
        if not isinstance(listed, Mapping) or "*" not in listed:
            raise ValidationError(
                "/policy/byContext is an object: context -> {arm: share}, with '*' for the rest",
                code="invalid_policy",
            )
        table = {
            context: shares(value, f"/policy/byContext/{context}")
            for context, value in listed.items()
        }
        return lambda context: table.get(context, table["*"])
    raise ValidationError(
        "a policy is {'arm': KEY}, {'allocation': {...}} or {'byContext': {...}}",
        code="invalid_policy",
    )


# -- the report's chart ------------------------------------------------------------------------


def chart_png(results: Mapping[str, Any]) -> bytes:
    """The primary metrics' relative uplift per variant over time, with its interval, as
    PNG (matplotlib; the results must have been computed with ``daily``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = results.get("timeline") or []
    keys = sorted({key for day in timeline for key in day["metrics"]})
    figure, axes = plt.subplots(
        max(1, len(keys)), 1, figsize=(8, 3 * max(1, len(keys))), squeeze=False
    )
    for row, key in enumerate(keys):
        ax = axes[row][0]
        variants = sorted({v for day in timeline for v in day["metrics"].get(key, {})})
        plotted = False
        for variant in variants:
            xs: list[date] = []
            mid: list[float] = []
            low: list[float] = []
            high: list[float] = []
            for day in timeline:
                relative = (day["metrics"].get(key, {}).get(variant) or {}).get("relative") or {}
                ci = relative.get("ci")
                if relative.get("estimate") is None or not ci:
                    continue
                xs.append(date.fromisoformat(day["date"]))
                mid.append(100 * relative["estimate"])
                low.append(100 * ci[0])
                high.append(100 * ci[1])
            if xs:
                ax.plot(xs, mid, marker="o", label=variant)
                ax.fill_between(xs, low, high, alpha=0.2)
                plotted = True
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"{results['experiment']}: {key} (relative uplift vs control, %)")
        if plotted:
            ax.legend(loc="best")
    if not keys:
        axes[0][0].text(0.5, 0.5, "no exposures yet", ha="center", va="center")
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def chart_html(results: Mapping[str, Any]) -> str:
    """A self-contained HTML report: the chart (inline PNG) and every metric's table."""
    png = base64.b64encode(chart_png(results)).decode()
    rows = []
    for metric in results.get("metrics", []):
        for entry in metric["variants"]:
            relative = entry.get("relative") or {}
            ci = relative.get("ci") or [None, None]
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(value))}</td>"
                    for value in (
                        metric["key"],
                        entry["variant"],
                        entry.get("users"),
                        _pct(relative.get("estimate")),
                        f"[{_pct(ci[0])}, {_pct(ci[1])}]",
                        entry.get("pValue")
                        if entry.get("pValue") is not None
                        else entry.get("chanceToWin"),
                        entry.get("error") or "",
                    )
                )
                + "</tr>"
            )
    srm = results.get("srm") or {}
    warning = (
        f'<p class="srm"><strong>Sample ratio mismatch</strong> (p = {srm.get("pValue")}): '
        "the split is not what was configured; do not trust these results.</p>"
        if srm and not srm.get("ok", True)
        else ""
    )
    title = html.escape(str(results.get("experiment")))
    return (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{title}</title>"
        f"<h1>Experiment {title}, phase {results.get('phase')}</h1>{warning}"
        f"<p>Method: {html.escape(str(results.get('method')))}; as of "
        f"{html.escape(str(results.get('asOf')))}</p>"
        f"<img alt='relative uplift over time' src='data:image/png;base64,{png}'>"
        "<table><tr><th>metric</th><th>variant</th><th>users</th><th>uplift</th>"
        "<th>interval</th><th>p-value / chance to win</th><th>error</th></tr>"
        + "".join(rows)
        + "</table></html>"
    )


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):+.2f}%"
