"""Experiment routes (Bearer API key): definitions, phases, start and stop, results and
reports, bandit allocations, off-policy estimates, and analysis of summary statistics from
anywhere (docs/experiments.md).

Reads need the ``read`` role, changes the ``admin`` role. An experiment that breaks the rules
is a 422 whose ``error.details.errors`` points at each problem with a JSON pointer; changing
the variants or weights of a running experiment is a 409 (``phase_required``) unless the
change asks for a new phase (``?newPhase=true``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Request, Response, Router, delete, get, patch, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from personify.api.admin import NO_NUL
from personify.api.documents import admin_responses, error_response
from personify.api.errors import personify_error_handler
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.decide.engine import DecisionEngine
from personify.errors import ValidationError
from personify.experiments.analysis import analyze
from personify.experiments.service import ExperimentService, chart_html, chart_png

__all__ = ["experiments_router"]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
READ = needs("experiments:read")
WRITE = needs("experiments:write")
_UNSET: Any = msgspec.UNSET

Key = Annotated[
    str, PathParameter(max_length=200, pattern=NO_NUL, description="an experiment's key")
]
Phase = Annotated[
    int | None, QueryParameter(ge=1, le=1_000_000, description="a phase (default: the current)")
]
At = Annotated[
    datetime | None,
    QueryParameter(description="ISO 8601 with an offset; default now (not in the future)"),
]
Method = Annotated[
    Literal["frequentist", "bayesian", "sequential"] | None,
    QueryParameter(description="the analysis method (default: the experiment's)"),
]


class ExperimentBody(msgspec.Struct):
    """An experiment to save; on a change, the fields given replace the saved ones. Every
    field is checked, so that a problem is a 422 with a JSON pointer (docs/experiments.md)."""

    key: Annotated[Any, msgspec.Meta(description="1-200 letters, digits, . _ : - (creation)")] = (
        _UNSET
    )
    name: Annotated[Any, msgspec.Meta(description="a title")] = _UNSET
    hypothesis: Annotated[Any, msgspec.Meta(description="what it should show, and why")] = _UNSET
    type: Annotated[Any, msgspec.Meta(description="ab (default), multivariate or bandit")] = _UNSET
    placements: Annotated[Any, msgspec.Meta(description="the placement ids it varies")] = _UNSET
    variants: Annotated[
        Any, msgspec.Meta(description="[{key, weight, placements: {id: {items|strategy|fields}}}]")
    ] = _UNSET
    factors: Annotated[
        Any, msgspec.Meta(description="multivariate: [{key, levels: [{key, weight, placements}]}]")
    ] = _UNSET
    coverage: Annotated[Any, msgspec.Meta(description="the share of traffic in it (0-1)")] = _UNSET
    targeting: Annotated[Any, msgspec.Meta(description="{segments, condition} or null")] = _UNSET
    namespace: Annotated[Any, msgspec.Meta(description="{id, start, end} or null")] = _UNSET
    seed: Annotated[Any, msgspec.Meta(description="the hash seed (default: the key)")] = _UNSET
    metrics: Annotated[Any, msgspec.Meta(description="{primary: [...], guardrails: [...]}")] = (
        _UNSET
    )
    bandit: Annotated[
        Any, msgspec.Meta(description="{reward, rewardType, minShare, contexts, windowHours}")
    ] = _UNSET
    analysis: Annotated[
        Any, msgspec.Meta(description="{method, alpha, sequentialTuning, correction}")
    ] = _UNSET


class PhaseDocument(msgspec.Struct):
    """One phase: when it ran, why it began, and its weights."""

    phase: int
    reason: str | None
    startedAt: str
    endedAt: str | None
    weights: dict[str, float]


class ExperimentDocument(msgspec.Struct):
    """An experiment: its definition, status and phases."""

    key: str
    name: str | None
    hypothesis: str | None
    type: Annotated[str, msgspec.Meta(description="ab, multivariate or bandit")]
    placements: list[str]
    variants: list[dict[str, Any]]
    factors: list[dict[str, Any]] | None
    coverage: float
    targeting: dict[str, Any] | None
    namespace: dict[str, Any] | None
    seed: str
    metrics: dict[str, Any]
    bandit: dict[str, Any] | None
    analysis: dict[str, Any]
    status: Annotated[str, msgspec.Meta(description="draft, running or stopped")]
    phase: Annotated[int, msgspec.Meta(description="the current phase (0: never started)")]
    phases: list[PhaseDocument]
    createdAt: str
    updatedAt: str
    startedAt: str | None
    stoppedAt: str | None


class ExperimentList(msgspec.Struct):
    """Experiments by key; the Python client's ``assign()`` reads the running ones."""

    data: list[ExperimentDocument]


class PolicyBody(msgspec.Struct):
    """A candidate policy to estimate from the logged decisions."""

    policy: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description='{"arm": KEY}, {"allocation": {arm: share}} or '
            '{"byContext": {context: {arm: share}, "*": {...}}}'
        ),
    ]
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05


def _given(body: msgspec.Struct) -> dict[str, Any]:
    return {
        name: value
        for name, value in msgspec.structs.asdict(body).items()
        if value is not msgspec.UNSET
    }


def _document(found: dict[str, Any]) -> ExperimentDocument:
    return msgspec.convert(found, ExperimentDocument)


T = TypeVar("T")


async def _write(decisions: DecisionEngine, call: Callable[..., T], *args: Any, **kw: Any) -> T:
    """A change in a thread; then every process serving decisions reloads its snapshot."""
    result = await sync_to_thread(call, *args, **kw)
    await decisions.catalog_changed()
    return result


def _too_deep(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    error = ValidationError("the JSON body nests too deeply", code="invalid_json")
    return personify_error_handler(request, error)


_MISSING = {404: error_response("experiment_not_found: no experiment has that key")}
_INVALID = error_response(
    "invalid_experiment: details.errors has a JSON pointer, a code and a message per problem"
)


@get("/v1/experiments", opt=READ, responses=admin_responses())
async def list_experiments(
    experiments: NamedDependency[ExperimentService],
    status: Annotated[
        Literal["draft", "running", "stopped"] | None,
        QueryParameter(description="only experiments with this status"),
    ] = None,
) -> ExperimentList:
    """Every experiment by key (of one status)."""
    found = await sync_to_thread(experiments.repository.list, status)
    return ExperimentList(data=[_document(e) for e in found])


@post(
    "/v1/experiments",
    opt=WRITE,
    responses={
        **admin_responses(),
        409: error_response("experiment_exists: an experiment has that key"),
        422: _INVALID,
    },
)
async def create_experiment(
    experiments: NamedDependency[ExperimentService], data: JSONBody[ExperimentBody]
) -> ExperimentDocument:
    """Save a new experiment as a draft (start it with POST …/start)."""
    return _document(await sync_to_thread(experiments.repository.create, _given(data)))


@post(
    "/v1/experiments/analyze",
    opt=READ,
    status_code=200,
    responses={
        **admin_responses(),
        422: error_response("invalid_input: the message names the JSON pointer"),
    },
)
async def analyze_statistics(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    """Analyse an experiment that ran anywhere from its per-variant summary statistics
    (``n``, ``sum``, ``sum_squares``; for ratios and CUPED the further sums): every
    variant against control, with the method asked for, and the SRM check."""
    return await sync_to_thread(analyze, data)


@get("/v1/experiments/{key:str}", opt=READ, responses={**admin_responses(), **_MISSING})
async def show_experiment(
    experiments: NamedDependency[ExperimentService], key: Key
) -> ExperimentDocument:
    """One experiment with its phases."""
    return _document(await sync_to_thread(experiments.repository.get, key))


@patch(
    "/v1/experiments/{key:str}",
    opt=WRITE,
    responses={
        **admin_responses(),
        **_MISSING,
        409: error_response("phase_required: the change moves users; ask for newPhase"),
        422: _INVALID,
    },
)
async def update_experiment(
    experiments: NamedDependency[ExperimentService],
    decisions: NamedDependency[DecisionEngine],
    key: Key,
    data: JSONBody[ExperimentBody],
    newPhase: Annotated[
        bool, QueryParameter(description="end the current phase and start the next with this")
    ] = False,
    reason: Annotated[
        str | None, QueryParameter(max_length=500, pattern=NO_NUL, description="why (new phase)")
    ] = None,
) -> ExperimentDocument:
    """Change an experiment; a running one's variants and weights only with a new phase."""
    changes = _given(data)
    changes.pop("key", None)
    found = await _write(
        decisions, experiments.repository.update, key, changes, new_phase=newPhase, reason=reason
    )
    return _document(found)


@delete(
    "/v1/experiments/{key:str}",
    opt=WRITE,
    responses={**admin_responses(), **_MISSING, 409: error_response("running: stop it first")},
)
async def delete_experiment(experiments: NamedDependency[ExperimentService], key: Key) -> None:
    """Delete an experiment that is not running, with its phases and assignments."""
    await sync_to_thread(experiments.repository.delete, key)


@post(
    "/v1/experiments/{key:str}/start",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        **_MISSING,
        409: error_response("already_running or namespace_overlap"),
    },
)
async def start_experiment(
    experiments: NamedDependency[ExperimentService],
    decisions: NamedDependency[DecisionEngine],
    key: Key,
    at: At = None,
) -> ExperimentDocument:
    """Start a draft (phase 1), or restart a stopped experiment in its next phase; ``at``
    backdates the start (an experiment that ran elsewhere, its exposures imported)."""
    return _document(await _write(decisions, experiments.repository.start, key, at=at))


@post(
    "/v1/experiments/{key:str}/stop",
    opt=WRITE,
    status_code=200,
    responses={**admin_responses(), **_MISSING, 409: error_response("not_running")},
)
async def stop_experiment(
    experiments: NamedDependency[ExperimentService],
    decisions: NamedDependency[DecisionEngine],
    key: Key,
    at: At = None,
) -> ExperimentDocument:
    """Stop a running experiment: its placements show what they are configured to again;
    ``at`` backdates the end."""
    return _document(await _write(decisions, experiments.repository.stop, key, at=at))


@get("/v1/experiments/{key:str}/results", opt=READ, responses={**admin_responses(), **_MISSING})
async def experiment_results(
    experiments: NamedDependency[ExperimentService],
    key: Key,
    phase: Phase = None,
    method: Method = None,
    daily: Annotated[
        bool, QueryParameter(description="add the primary metrics' uplift per day (timeline)")
    ] = False,
) -> dict[str, Any]:
    """Per metric and variant: the users, the statistic, absolute and relative uplift with
    interval, p-value or chance to beat control; the SRM check; the method; per-factor
    results of a multivariate test; the lake version read."""
    return await sync_to_thread(experiments.results, key, phase=phase, method=method, daily=daily)


@get(
    "/v1/experiments/{key:str}/report",
    opt=READ,
    responses={**admin_responses(), **_MISSING},
    media_type="text/html",
)
async def experiment_report(
    experiments: NamedDependency[ExperimentService],
    key: Key,
    phase: Phase = None,
    method: Method = None,
) -> Response[bytes]:
    """The report as one HTML page: the chart of uplift with intervals over time, the SRM
    check first when it fails, and every metric's result."""
    results = await sync_to_thread(experiments.results, key, phase=phase, method=method, daily=True)
    body = await sync_to_thread(chart_html, results)
    return Response(body.encode(), media_type="text/html; charset=utf-8")


@get(
    "/v1/experiments/{key:str}/chart",
    opt=READ,
    responses={**admin_responses(), **_MISSING},
    media_type="image/png",
)
async def experiment_chart(
    experiments: NamedDependency[ExperimentService],
    key: Key,
    phase: Phase = None,
    method: Method = None,
) -> Response[bytes]:
    """The primary metrics' relative uplift per variant with its interval, day by day, as
    a PNG image."""
    results = await sync_to_thread(experiments.results, key, phase=phase, method=method, daily=True)
    return Response(await sync_to_thread(chart_png, results), media_type="image/png")


@get("/v1/experiments/{key:str}/allocations", opt=READ, responses={**admin_responses(), **_MISSING})
async def bandit_allocations(
    experiments: NamedDependency[ExperimentService], key: Key
) -> dict[str, Any]:
    """A bandit's traffic allocation per context, with the statistics behind it."""
    await sync_to_thread(experiments.repository.get, key)
    return {
        "experiment": key,
        "contexts": await sync_to_thread(experiments.repository.allocations, key),
    }


@post(
    "/v1/experiments/{key:str}/allocations",
    opt=WRITE,
    status_code=200,
    responses={**admin_responses(), **_MISSING, 400: error_response("not_a_bandit")},
)
async def update_allocations(
    experiments: NamedDependency[ExperimentService],
    decisions: NamedDependency[DecisionEngine],
    key: Key,
) -> dict[str, Any]:
    """Recompute a bandit's allocation now from its decisions' rewards in the lake."""
    return await _write(decisions, experiments.update_bandit, key)


@post(
    "/v1/experiments/{key:str}/evaluate",
    opt=READ,
    status_code=200,
    responses={**admin_responses(), **_MISSING},
)
async def evaluate_policy(
    experiments: NamedDependency[ExperimentService], key: Key, data: JSONBody[PolicyBody]
) -> dict[str, Any]:
    """Off-policy evaluation: how a candidate policy would have done on the logged
    decisions (IPS, self-normalised IPS, doubly robust, with intervals)."""
    return await sync_to_thread(experiments.evaluate, key, data.policy, alpha=data.alpha)


def experiments_router() -> Router:
    """The experiments' routes, behind the API key guard (changes need the admin role)."""
    return Router(
        "/",
        route_handlers=[
            list_experiments,
            create_experiment,
            analyze_statistics,
            show_experiment,
            update_experiment,
            delete_experiment,
            start_experiment,
            stop_experiment,
            experiment_results,
            experiment_report,
            experiment_chart,
            bandit_allocations,
            update_allocations,
            evaluate_policy,
        ],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["experiments"],
        exception_handlers={RecursionError: _too_deep},
    )
