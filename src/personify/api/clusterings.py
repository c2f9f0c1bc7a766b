"""Clustering routes (Bearer API key): machine-learned segments, their runs, rollback, and the
names people give clusters.

Reads need the ``read`` role, writes the ``admin`` role. A definition whose features,
algorithm, k, PCA, sample size or schedule break the rules is a 422 carrying the
repository's ``code`` and, where it can say, ``details.pointer`` (a feature) or
``details.field``. A run is queued (202) and carried out by the scheduler's
``segment-recluster`` job, woken at once where this process runs it; elsewhere the run waits
for that job's next turn or ``personify segments recluster``. Each cluster is the segment
``KEY/CLUSTER``, read through ``/v1/segments/{clustering}/{cluster}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Router, delete, get, patch, post, put
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from personify.api.admin import MAX_NAME_CHARS, NO_NUL, unprocessable_in_thread
from personify.api.documents import (
    Clustering,
    ClusteringList,
    ClusteringRun,
    ClusteringRuns,
    ClusterSummary,
    CurrentRun,
    admin_responses,
    error_response,
)
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.errors import ValidationError
from personify.jobs.segments import RECLUSTER_JOB
from personify.runtime import Runtime
from personify.segments.clusterings import (
    ClusteringDefinition,
    ClusteringRepository,
    RunRecord,
)

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
READ = needs("segments:read")
WRITE = needs("segments:write")
# the repository's codes for a definition that breaks its rules: 422, as a segment's
# condition is; a bad key, name or description stays a 400, as it is for segments
_DEFINITION_CODES = frozenset(
    {
        "invalid_features",
        "no_features",
        "invalid_algorithm",
        "invalid_k",
        "invalid_pca",
        "invalid_sample_size",
        "invalid_schedule",
    }
)
# numpy and scikit-learn take seeds from 0 to 2**32 - 1
_MAX_SEED = 2**32 - 1
# run numbers are a database integer
_MAX_RUN = 2**31 - 1

T = TypeVar("T")

ClusteringKey = Annotated[
    str,
    PathParameter(max_length=MAX_NAME_CHARS, pattern=NO_NUL, description="a clustering key"),
]
RunNumber = Annotated[int, PathParameter(ge=1, le=_MAX_RUN, description="a run's number")]
ClusterKey = Annotated[
    str,
    PathParameter(
        max_length=MAX_NAME_CHARS,
        pattern=NO_NUL,
        description="a cluster's key (the part of its segment's key after the slash)",
    ),
]
Features = Annotated[
    list[str],
    msgspec.Meta(
        description="1-100 feature paths into a profile's features, each a number "
        "(orders.all, revenue.all, event_counts.Product Viewed.all)"
    ),
]
Algorithm = Annotated[
    str, msgspec.Meta(description="auto, kmeans, minibatch-kmeans, gmm or hdbscan")
]
K = Annotated[int | str, msgspec.Meta(description="the number of clusters (2 to 50), or auto")]
KRange = Annotated[
    list[int], msgspec.Meta(description="[low, high], 2 <= low <= high <= 50: the k auto tries")
]
Pca = Annotated[
    int | None,
    msgspec.Meta(description="principal components to project onto (null: none)"),
]
SampleSize = Annotated[
    int, msgspec.Meta(description="rows sampled to choose k and score runs, 100-100,000")
]
Seed = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SEED, description="the random seed")]
Schedule = Annotated[
    str,
    msgspec.Meta(
        description="weekly, daily, hourly, manual, or an interval such as 12h or 3d (1h or more)"
    ),
]


class NewClustering(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/clusterings``."""

    key: Annotated[
        str,
        msgspec.Meta(description="1-60 letters, digits, '-', '_' or '.', starting with one"),
    ]
    features: Features
    name: Annotated[
        str | None, msgspec.Meta(description="up to 200 characters (the key when absent)")
    ] = None
    description: Annotated[str, msgspec.Meta(description="up to 10,000 characters")] = ""
    algorithm: Algorithm = "auto"
    k: K = "auto"
    kRange: KRange = msgspec.field(default_factory=lambda: [2, 10])
    pca: Pca = None
    sampleSize: SampleSize = 5_000
    seed: Seed = 0
    schedule: Schedule = "weekly"


class ClusteringChange(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PATCH /v1/clusterings/{key}``: what is given changes, the rest is kept;
    a new spec is fitted from the next run on."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    features: Features | msgspec.UnsetType = msgspec.UNSET
    algorithm: Algorithm | msgspec.UnsetType = msgspec.UNSET
    k: K | msgspec.UnsetType = msgspec.UNSET
    kRange: KRange | msgspec.UnsetType = msgspec.UNSET
    pca: Pca | msgspec.UnsetType = msgspec.UNSET
    sampleSize: SampleSize | msgspec.UnsetType = msgspec.UNSET
    seed: Seed | msgspec.UnsetType = msgspec.UNSET
    schedule: Schedule | msgspec.UnsetType = msgspec.UNSET


class ClusterName(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PUT /v1/clusterings/{key}/clusters/{cluster}/name``."""

    name: Annotated[
        str | None,
        msgspec.Meta(description="up to 200 characters; null gives back the automatic name"),
    ]


_SPEC_FIELDS = ("features", "algorithm", "k", "kRange", "pca", "sampleSize", "seed")


def _not_found(what: str = "") -> dict[int, ResponseSpec]:
    codes = "clustering_not_found: no active clustering has that key"
    return {404: error_response(f"{codes}{what}")}


def _definition_errors() -> dict[int, ResponseSpec]:
    return {
        400: error_response(
            "invalid_key, invalid_field (details.field), nothing_to_change, or "
            "invalid_parameter (a body that is not the documented object)"
        ),
        422: error_response(
            "invalid_features (details.pointer: the feature), invalid_algorithm, invalid_k, "
            "invalid_pca, invalid_sample_size or invalid_schedule (details.field)"
        ),
    }


async def _saving(call: Callable[..., T], *args: Any) -> T:
    """``call`` in a thread; a definition that breaks its rules becomes a 422 with the same
    code and details."""
    return await unprocessable_in_thread(_DEFINITION_CODES, call, *args)


def _current(definition: ClusteringDefinition, run: RunRecord | None) -> CurrentRun | None:
    if run is None:
        return None
    report = run.report or {}
    return CurrentRun(
        run=run.number,
        k=report.get("k"),
        silhouette=report.get("silhouette"),
        finishedAt=run.finished_at.isoformat() if run.finished_at else None,
        clusters=[
            ClusterSummary(
                key=cluster["key"],
                segment=f"{definition.key}/{cluster['key']}",
                # the name a person gave wins over the run's automatic one
                name=definition.names.get(cluster["key"], cluster["name"]),
                size=cluster["size"],
            )
            for cluster in report.get("clusters", [])
        ],
    )


def _document(definition: ClusteringDefinition, run: RunRecord | None = None) -> Clustering:
    document = msgspec.convert(definition.to_dict(), Clustering)
    document.current = _current(definition, run)
    return document


def _run_document(run: RunRecord) -> ClusteringRun:
    return msgspec.convert(run.to_dict(), ClusteringRun)


def _every_with_current(
    clusterings: ClusteringRepository,
) -> list[tuple[ClusteringDefinition, RunRecord | None]]:
    return [
        (d, clusterings.run(d.key, d.current_run) if d.current_run is not None else None)
        for d in clusterings.definitions()
    ]


def _wake_runner(runtime: Runtime) -> None:
    """Start the queued run now where this process schedules the job that carries it out."""
    if runtime.scheduler is not None:
        runtime.scheduler.trigger(RECLUSTER_JOB)


@get("/v1/clusterings", opt=READ, responses=admin_responses())
async def list_clusterings(clusterings: NamedDependency[ClusteringRepository]) -> ClusteringList:
    """Every active clustering by key, with its current run's clusters."""
    found = await sync_to_thread(_every_with_current, clusterings)
    return ClusteringList(data=[_document(definition, run) for definition, run in found])


@post(
    "/v1/clusterings",
    opt=WRITE,
    responses={
        **admin_responses(),
        **_definition_errors(),
        409: error_response("clustering_exists: an active clustering has that key"),
    },
)
async def create_clustering(
    clusterings: NamedDependency[ClusteringRepository], data: JSONBody[NewClustering]
) -> Clustering:
    """Save a new clustering; unless its schedule is manual, its first run is due now."""
    spec = {name: getattr(data, name) for name in _SPEC_FIELDS}
    definition = await _saving(
        lambda: clusterings.create(
            data.key,
            spec,
            name=data.name,
            description=data.description,
            schedule=data.schedule,
        )
    )
    return _document(definition)


@get("/v1/clusterings/{key:str}", opt=READ, responses={**admin_responses(), **_not_found()})
async def show_clustering(
    clusterings: NamedDependency[ClusteringRepository], key: ClusteringKey
) -> Clustering:
    """An active clustering, with its current run's clusters."""
    return _document(*await sync_to_thread(clusterings.with_current, key))


@patch(
    "/v1/clusterings/{key:str}",
    opt=WRITE,
    responses={**admin_responses(), **_not_found(), **_definition_errors()},
)
async def update_clustering(
    clusterings: NamedDependency[ClusteringRepository],
    key: ClusteringKey,
    data: JSONBody[ClusteringChange],
) -> Clustering:
    """Change an active clustering: its name, description, schedule, or what it fits."""
    changes = {
        name: value
        for name in data.__struct_fields__
        if (value := getattr(data, name)) is not msgspec.UNSET
    }
    if not changes:
        raise ValidationError(
            "give at least one field to change: name, description, schedule, "
            + ", ".join(_SPEC_FIELDS),
            code="nothing_to_change",
        )
    await _saving(clusterings.update, key, changes)
    return _document(*await sync_to_thread(clusterings.with_current, key))


@delete(
    "/v1/clusterings/{key:str}",
    opt=WRITE,
    # the archived definition is the answer, so not the 204 Litestar gives a DELETE
    status_code=200,
    responses={
        **admin_responses(),
        **_not_found(),
        409: error_response(
            "segment_in_use: active rule segments read its clusters' segments (details.usedBy)"
        ),
    },
)
async def archive_clustering(
    clusterings: NamedDependency[ClusteringRepository], key: ClusteringKey
) -> Clustering:
    """Archive a clustering: its segments are archived and their members exit; refused while
    a rule reads one of them."""
    return _document(await sync_to_thread(clusterings.archive, key))


@post(
    "/v1/clusterings/{key:str}/runs",
    opt=WRITE,
    status_code=202,
    responses={**admin_responses(), **_not_found()},
)
async def request_run(
    runtime: NamedDependency[Runtime],
    clusterings: NamedDependency[ClusteringRepository],
    key: ClusteringKey,
) -> ClusteringRun:
    """Queue a run of the clustering's spec (status ``pending``); follow it at
    ``GET /v1/clusterings/{key}/runs/{run}``."""
    run = await sync_to_thread(clusterings.request_run, key)
    _wake_runner(runtime)
    return _run_document(run)


@get("/v1/clusterings/{key:str}/runs", opt=READ, responses={**admin_responses(), **_not_found()})
async def list_runs(
    clusterings: NamedDependency[ClusteringRepository],
    key: ClusteringKey,
    limit: Annotated[
        int, QueryParameter(ge=1, le=1000, description="runs per page (default 100)")
    ] = 100,
    before: Annotated[
        int | None,
        QueryParameter(ge=1, le=2**31 - 1, description="the cursor: runs numbered below it"),
    ] = None,
) -> ClusteringRuns:
    """A clustering's runs, newest first, a page at a time (archived clusterings' too: their
    history stays readable); ``next`` is the cursor of the next page."""
    runs = await sync_to_thread(clusterings.runs, key, limit=limit, before=before)
    following = runs[-1].number if len(runs) == limit and runs[-1].number > 1 else None
    return ClusteringRuns(clustering=key, data=[_run_document(run) for run in runs], next=following)


@get(
    "/v1/clusterings/{key:str}/runs/{number:int}",
    opt=READ,
    responses={
        **admin_responses(),
        404: error_response("run_not_found: the clustering has no run of that number"),
    },
)
async def show_run(
    clusterings: NamedDependency[ClusteringRepository], key: ClusteringKey, number: RunNumber
) -> ClusteringRun:
    """One run: its status and, once it succeeded, its report and lineage."""
    return _run_document(await sync_to_thread(clusterings.run, key, number))


@post(
    "/v1/clusterings/{key:str}/runs/{number:int}/restore",
    opt=WRITE,
    status_code=202,
    responses={
        **admin_responses(),
        **_not_found(", or run_not_found: it has no run of that number"),
        409: error_response("run_not_restorable: that run did not succeed"),
    },
)
async def restore_run(
    runtime: NamedDependency[Runtime],
    clusterings: NamedDependency[ClusteringRepository],
    key: ClusteringKey,
    number: RunNumber,
) -> ClusteringRun:
    """Queue a rollback to an earlier run that succeeded: a new run that copies its model and
    assignments, so the memberships are exactly that run's again."""
    run = await sync_to_thread(
        lambda: clusterings.request_run(key, trigger="rollback", restore=number)
    )
    _wake_runner(runtime)
    return _run_document(run)


@put(
    "/v1/clusterings/{key:str}/clusters/{cluster:str}/name",
    opt=WRITE,
    responses={
        **admin_responses(),
        **_not_found(", or cluster_not_found: its current run has no such cluster"),
        400: error_response(
            "invalid_field (details.field), or invalid_parameter (a body that is not the "
            "documented object)"
        ),
    },
)
async def name_cluster(
    clusterings: NamedDependency[ClusteringRepository],
    key: ClusteringKey,
    cluster: ClusterKey,
    data: JSONBody[ClusterName],
) -> Clustering:
    """Name a cluster (its segment's name), or give it back its automatic name with null; a
    name a person gave survives reruns."""
    await sync_to_thread(clusterings.rename_cluster, key, cluster, data.name)
    return _document(*await sync_to_thread(clusterings.with_current, key))


def clustering_router() -> Router:
    """The clustering routes, behind the API key guard (writes need the admin role)."""
    return Router(
        "/",
        route_handlers=[
            list_clusterings,
            create_clustering,
            show_clustering,
            update_clustering,
            archive_clustering,
            request_run,
            list_runs,
            show_run,
            restore_run,
            name_cluster,
        ],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["clusterings"],
    )
