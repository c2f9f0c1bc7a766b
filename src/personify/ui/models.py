"""The prediction pages (``/console/models``): the churn and lifetime-value model registry,
which version each target serves, how each validated, and what monitoring last saw.

The pages read through the same registry and monitor as ``/v1/models``. The registry keeps
each version's training report as data (metrics of the model, of the BG/NBD baseline and of
the version served when it was trained, the calibration table, the gate's decision), so the
version page draws its tables from that data; the HTML report with matplotlib plots is a
file ``personify predict evaluate`` writes on request, not something the registry stores,
and the console shows none of it inline. Promotion and rollback stay in the API and the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from litestar import Request, Response, get
from litestar.concurrency import sync_to_thread
from litestar.params import PathParameter

from personify.errors import NotFound
from personify.predict import targets
from personify.predict.monitor import ModelMonitor
from personify.predict.registry import ModelRegistry, ModelVersion
from personify.predict.report import METRICS
from personify.runtime import Runtime
from personify.ui.rendering import render
from personify.ui.session import page

__all__ = ["ROUTES"]

# monitoring checks the target page lists
_CHECKS: Final = 30
_MAX_ID: Final = 2**31 - 1

TargetName = Annotated[str, PathParameter(max_length=64, description="churn or clv")]
ModelId = Annotated[int, PathParameter(ge=1, le=_MAX_ID, description="a model version's id")]


def _target_name(name: str) -> str:
    """A target the registry knows, or the page is not found."""
    if name not in targets.TARGETS:
        raise NotFound(f"no target {name!r} (churn or clv)", code="invalid_target")
    return name


def _status(check: Mapping[str, Any] | None) -> str:
    """A monitoring check in one word: ok, alert, or none (never checked)."""
    if check is None:
        return "none"
    return "alert" if check.get("alerts") else "ok"


def _overview(registry: ModelRegistry, monitor: ModelMonitor) -> list[dict[str, Any]]:
    """Each target with its versions, its served version and its newest check."""
    by_target = []
    for name in targets.TARGETS:
        versions = registry.versions(name)
        checks = monitor.history(name, limit=1)
        check = checks[0] if checks else None
        by_target.append(
            {
                "name": name,
                "versions": [version.to_dict() for version in versions],
                "served": next((v.to_dict() for v in versions if v.served), None),
                "check": check,
                "status": _status(check),
            }
        )
    return by_target


@get("/models", opt=page("models:read"), name="console:models")
async def model_list(request: Request[Any, Any, Any]) -> Response[str]:
    """Every target's model versions, the served one, and the monitoring status."""
    runtime: Runtime = request.app.state.runtime
    found = await sync_to_thread(_overview, runtime.models, runtime.model_monitor)
    return render(request, "models.html", title="Predictions", targets=found)


def _target_detail(registry: ModelRegistry, monitor: ModelMonitor, name: str) -> dict[str, Any]:
    checks = monitor.history(name, limit=_CHECKS)
    return {
        "versions": [version.to_dict() for version in registry.versions(name)],
        "promotions": registry.promotions(name),
        "checks": checks,
        "status": _status(checks[0] if checks else None),
    }


@get("/models/{target:str}", opt=page("models:read"), name="console:model-target")
async def model_target(request: Request[Any, Any, Any], target: TargetName) -> Response[str]:
    """One target: its versions, its promotions and its monitoring checks."""
    runtime: Runtime = request.app.state.runtime
    name = _target_name(target)
    detail = await sync_to_thread(_target_detail, runtime.models, runtime.model_monitor, name)
    return render(request, "model.html", title=f"Model {name}", target=name, **detail)


def _metric_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's scalar metrics side by side: the model, the baseline, the served one."""
    model = report.get("model") or {}
    baseline = report.get("baseline") or {}
    current = (report.get("current") or {}).get("metrics") or {}
    rows = []
    for key, (label, better) in METRICS.items():
        if key in model or key in baseline or key in current:
            rows.append(
                {
                    "key": key,
                    "label": label,
                    "better": better,
                    "model": model.get(key),
                    "baseline": baseline.get(key),
                    "current": current.get(key),
                }
            )
    return rows


def _version_view(version: ModelVersion) -> dict[str, Any]:
    report = version.report
    model = report.get("model") or {}
    return {
        "version": version.to_dict(full=True),
        "metrics": _metric_rows(report),
        "reliability": model.get("reliability") or [],
        "baseline_reliability": (report.get("baseline") or {}).get("reliability") or [],
        "gate": report.get("gate"),
        "current": report.get("current"),
        "error": model.get("error"),
    }


@get("/models/versions/{model_id:int}", opt=page("models:read"), name="console:model-version")
async def model_version(request: Request[Any, Any, Any], model_id: ModelId) -> Response[str]:
    """One model version: its evaluation against the baseline, calibration, gate, features."""
    runtime: Runtime = request.app.state.runtime
    found = await sync_to_thread(runtime.models.get, model_id)
    view = _version_view(found)
    return render(
        request,
        "model_version.html",
        title=f"Model {found.target.name} v{found.number}",
        **view,
    )


ROUTES = [model_list, model_target, model_version]
