"""The experiment pages (``/console/experiments``): every experiment with its status, type,
variants and phase, and one experiment's latest results: per variant its users, the metric's
mean, the uplift with its interval, the chance to beat control, and the sample-ratio check.

The pages read through the same service as ``/v1/experiments``: the results are
``ExperimentService.results``, the call behind ``GET /v1/experiments/{key}/results``, so the
console and the API never disagree. A role that may change experiments also gets the start
and stop buttons, which make the same repository calls as ``POST …/start`` and ``…/stop``
and then, as those routes do, tell the decision engine that what it serves changed.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from litestar import Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.enums import RequestEncodingType
from litestar.params import Body, PathParameter, QueryParameter
from litestar.response import Redirect

from personify.errors import PersonifyError
from personify.experiments.service import ExperimentService
from personify.runtime import Runtime
from personify.ui.rendering import page_headers, render
from personify.ui.session import page

__all__ = ["ROUTES"]

# the notices a redirect after a change may ask the page to show
_NOTICES: Final = {
    "started": "The experiment is running: decisions assign its variants from now on.",
    "stopped": "The experiment is stopped: its placements show what they are configured to.",
}

Key = Annotated[str, PathParameter(max_length=200, description="an experiment's key")]
Notice = Annotated[str | None, QueryParameter(max_length=20)]
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


@get("/experiments", opt=page("experiments:read"), name="console:experiments")
async def experiment_list(request: Request[Any, Any, Any]) -> Response[str]:
    """Every experiment by key with its status, type, variants and phase."""
    runtime: Runtime = request.app.state.runtime
    found = await sync_to_thread(runtime.experiments.repository.list)
    return render(request, "experiments.html", title="Experiments", experiments=found)


def _results(service: ExperimentService, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """The current phase's results, or why there are none (a draft, a lake that cannot be
    read): the page shows the definition either way."""
    try:
        return service.results(key), None
    except PersonifyError as exc:
        return None, exc.message


@get("/experiments/{key:str}", opt=page("experiments:read"), name="console:experiment")
async def experiment_detail(
    request: Request[Any, Any, Any], key: Key, notice: Notice = None
) -> Response[str]:
    """One experiment: its definition, phases, and the latest analysis."""
    runtime: Runtime = request.app.state.runtime
    experiment = await sync_to_thread(runtime.experiments.repository.get, key)
    results: dict[str, Any] | None = None
    problem: str | None = None
    if experiment["phase"] > 0:
        results, problem = await sync_to_thread(_results, runtime.experiments, key)
    return render(
        request,
        "experiment.html",
        title=f"Experiment {key}",
        experiment=experiment,
        results=results,
        problem=problem,
        notice=_NOTICES.get(notice or ""),
    )


async def _changed(request: Request[Any, Any, Any], key: str, notice: str) -> Response[Any]:
    runtime: Runtime = request.app.state.runtime
    # every process serving decisions reloads its snapshot, as after the API's change
    await runtime.decisions.catalog_changed()
    return Redirect(
        f"/console/experiments/{key}?notice={notice}", status_code=303, headers=page_headers()
    )


@post(
    "/experiments/{key:str}/start",
    opt=page("experiments:write"),
    name="console:experiment-start",
    status_code=303,
)
async def experiment_start(request: Request[Any, Any, Any], key: Key, data: Form) -> Response[Any]:
    """Start a draft, or restart a stopped experiment in its next phase."""
    runtime: Runtime = request.app.state.runtime
    await sync_to_thread(lambda: runtime.experiments.repository.start(key))
    return await _changed(request, key, "started")


@post(
    "/experiments/{key:str}/stop",
    opt=page("experiments:write"),
    name="console:experiment-stop",
    status_code=303,
)
async def experiment_stop(request: Request[Any, Any, Any], key: Key, data: Form) -> Response[Any]:
    """Stop a running experiment."""
    runtime: Runtime = request.app.state.runtime
    await sync_to_thread(lambda: runtime.experiments.repository.stop(key))
    return await _changed(request, key, "stopped")


ROUTES = [experiment_list, experiment_detail, experiment_start, experiment_stop]
