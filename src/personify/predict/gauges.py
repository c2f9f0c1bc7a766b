"""The served models' health as Prometheus metrics, read from the monitoring checks when
scraped (``GET /metrics``).

The checks are made by whichever process runs the ``prediction-monitor`` job (or by
``personify predict monitor``) and kept in the state database, so every API process
reports the same figures, from the newest check of each served target:

| metric | labels | what |
|---|---|---|
| ``personify_prediction_served_version`` | target | the version number served |
| ``personify_prediction_validation`` | target, metric | the served version's validation metric (``roc_auc``, ``revenue_mae``) |
| ``personify_prediction_checked_timestamp_seconds`` | target | when it was last checked |
| ``personify_prediction_feature_psi`` | target, feature | population stability index of a feature, training against the last day's scored users |
| ``personify_prediction_score_psi`` | target | the same of the scores |
| ``personify_prediction_score_mean`` | target | the mean score of the last day's scored users |
| ``personify_prediction_realised`` | target, metric | the newest realised ROC-AUC / Brier (churn) or revenue MAE (clv) of a cohort whose horizon passed |
| ``personify_prediction_alerts`` | target, kind | the newest check's alerts, by kind (0 when none) |
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from personify.predict.monitor import ALERT_KINDS, ModelMonitor
from personify.predict.registry import ModelRegistry

__all__ = ["PredictionCollector"]

# how far back the newest realised figures are looked for
_HISTORY = 30
_REALISED = {"churn": ("roc_auc", "brier"), "clv": ("revenue_mae", "revenue_rmse")}
_VALIDATION = {"churn": "roc_auc", "clv": "revenue_mae"}
# every family: its name after ``personify_prediction_``, its help text, its labels
_FAMILIES: tuple[tuple[str, str, list[str]], ...] = (
    ("served_version", "The model version served for each target", ["target"]),
    ("validation", "The served version's validation metric", ["target", "metric"]),
    ("checked_timestamp_seconds", "When the served model was last checked", ["target"]),
    (
        "feature_psi",
        "Population stability index of a model feature, training against the last day",
        ["target", "feature"],
    ),
    (
        "score_psi",
        "Population stability index of the scores, as of training against the last day",
        ["target"],
    ),
    ("score_mean", "Mean score of the users scored in the last day", ["target"]),
    (
        "realised",
        "Realised performance of the newest cohort whose horizon has passed",
        ["target", "metric"],
    ),
    ("alerts", "Alerts of the newest check, by kind", ["target", "kind"]),
)


class PredictionCollector(Collector):
    """Yields the served models' metrics from the newest checks (module docstring)."""

    def __init__(self, registry: ModelRegistry, monitor: ModelMonitor) -> None:
        self._registry = registry
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """The metric families, read now."""
        families = {
            name: GaugeMetricFamily(f"personify_prediction_{name}", text, labels=labels)
            for name, text, labels in _FAMILIES
        }
        served, validation, checked = (
            families["served_version"],
            families["validation"],
            families["checked_timestamp_seconds"],
        )
        feature_psi, score_psi, score_mean = (
            families["feature_psi"],
            families["score_psi"],
            families["score_mean"],
        )
        realised, alerts = families["realised"], families["alerts"]
        for target, model_id in sorted(self._registry.served_ids().items()):
            version = self._registry.get(model_id)
            served.add_metric([target], version.number)
            value = (version.report.get("model") or {}).get(_VALIDATION[target])
            if isinstance(value, int | float):
                validation.add_metric([target, _VALIDATION[target]], float(value))
            history = self._monitor.history(target, limit=_HISTORY)
            if not history:
                continue
            newest = history[0]
            checked.add_metric([target], datetime.fromisoformat(newest["checkedAt"]).timestamp())
            for feature, psi in sorted((newest.get("featureDrift") or {}).items()):
                if psi is not None:
                    feature_psi.add_metric([target, feature], psi)
            drift = newest.get("scoreDrift") or {}
            if drift.get("psi") is not None:
                score_psi.add_metric([target], drift["psi"])
            if drift.get("mean") is not None:
                score_mean.add_metric([target], drift["mean"])
            cohort = next((c["realised"][-1] for c in history if c.get("realised")), None)
            if cohort is not None:
                for metric in _REALISED[target]:
                    number = (cohort.get("metrics") or {}).get(metric)
                    if isinstance(number, int | float):
                        realised.add_metric([target, metric], float(number))
            kinds = [a["kind"] for a in newest.get("alerts", [])]
            for kind in ALERT_KINDS:
                alerts.add_metric([target, kind], kinds.count(kind))
        yield from (
            served,
            validation,
            checked,
            feature_psi,
            score_psi,
            score_mean,
            realised,
            alerts,
        )
