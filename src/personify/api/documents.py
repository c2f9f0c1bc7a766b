"""The JSON documents the admin API answers with, as the OpenAPI document describes them.

Open-ended parts (a profile's traits, a stored event, a dead letter's payload) are objects of
any shape; everything else is typed, and the contract test holds every answer to these shapes.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec


class ErrorInfo(msgspec.Struct):
    """What went wrong: a machine-readable ``code``, a message for people, and details."""

    code: str
    message: str
    details: Any = None


class ErrorDocument(msgspec.Struct):
    """Every error answer: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfo


class Health(msgspec.Struct):
    """The process is alive."""

    status: str


class Readiness(msgspec.Struct):
    """Every background stage of this process is running, and the engines it needs answer
    (``checks``: one probe each of the event log, the state database and the cache)."""

    status: str
    stages: list[dict[str, Any]]
    checks: list[dict[str, Any]] = msgspec.field(default_factory=list)


class FailedEventPage(msgspec.Struct):
    """Dead letters, oldest first; ``next`` is the ``after`` of the next page."""

    data: list[dict[str, Any]]
    next: int | None


class LogStatus(msgspec.Struct):
    """How many records a consumer group has not committed yet."""

    group: str
    lag: int


class UnavailableCounts(msgspec.Struct):
    """The collector's 503 answers since start, by error code."""

    total: int
    byCode: dict[str, int]


class IngestStatus(msgspec.Struct):
    """The collector's state in this process."""

    unavailable: UnavailableCounts


class CacheStats(msgspec.Struct):
    """The profile cache's counters in this process."""

    hits: int
    misses: int
    fills: int
    invalidations: int


class WorkerStatus(msgspec.Struct):
    """The stream worker: lag, this process's worker and stages, every live worker's beat."""

    group: str
    lag: int
    inProcess: dict[str, Any] | None
    stages: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    cache: CacheStats
    # this process's scheduled jobs (profile pruning, log trimming): runs, failures, last result
    jobs: list[dict[str, Any]] = []


class ProfileSegment(msgspec.Struct):
    """A segment the profile is in, and since when (ISO-8601 UTC)."""

    key: str
    since: str


class Profile(msgspec.Struct):
    """A profile: its ids, traits, features and consent, as of now or of ``as_of``, and the
    segments it is in then; as of now, its predictions by target (``churn``: probability;
    ``clv``: expectedRevenue and expectedOrders; each with model, version, scoredAt,
    coldStart and reasons, or ``status: unavailable`` when the served model failed)."""

    profileId: str
    segments: list[ProfileSegment]
    predictions: dict[str, dict[str, Any]] | None = None


class ProfileHistory(msgspec.Struct):
    """A profile's versions newest first, and the merges that formed it."""

    profileId: str
    data: list[dict[str, Any]]
    merges: list[dict[str, Any]]
    next: int | None


class ProfileEvents(msgspec.Struct):
    """A profile's applied events, newest first; ``next`` is the ``cursor`` of the next page."""

    profileId: str
    data: list[dict[str, Any]]
    next: str | None


class RfmCutPoints(msgspec.Struct):
    """The 20th, 40th, 60th and 80th percentiles of every buyer's figures."""

    recencyDays: list[float]
    frequency: list[float]
    monetary: list[float]


class RfmRun(msgspec.Struct):
    """An RFM run: when, over how many buyers and which lake version, its cut points, and the
    segments of its cells (``docs/segments.md``, RFM)."""

    run: int
    computedAt: str
    buyers: int
    lakeVersion: int | None
    cutPoints: RfmCutPoints
    cells: list[str]
    elapsedSeconds: float | None = None


class SegmentBackfill(msgspec.Struct):
    """The newest backfill of a segment: every stored profile evaluated again after a save."""

    version: int
    status: str
    done: int
    total: int
    requestedAt: str | None
    startedAt: str | None
    finishedAt: str | None


class Segment(msgspec.Struct):
    """A segment's newest version; ``condition`` is its JSON condition (``docs/segments.md``);
    ``backfill`` is the progress of evaluating every stored profile after the last save."""

    key: str
    name: str
    description: str
    kind: str
    condition: Any
    version: int
    status: str
    createdAt: str
    updatedAt: str
    backfill: SegmentBackfill | None = None


class SegmentList(msgspec.Struct):
    """Segments by key."""

    data: list[Segment]


class SegmentVersion(msgspec.Struct):
    """One saved version of a segment."""

    version: int
    name: str
    description: str
    condition: Any
    status: str
    savedAt: str


class SegmentVersions(msgspec.Struct):
    """Every saved version of a segment, newest first."""

    key: str
    data: list[SegmentVersion]


class SegmentMember(msgspec.Struct):
    """A current member: since when, and by which version of the segment it entered."""

    profileId: str
    since: str
    segmentVersion: int


class SegmentMembers(msgspec.Struct):
    """Current members by profile id; ``next`` is the ``cursor`` of the next page."""

    data: list[SegmentMember]
    next: str | None


class SegmentSize(msgspec.Struct):
    """How many profiles were in the segment at a moment."""

    at: str
    size: int


class SegmentStats(msgspec.Struct):
    """A segment's size now, entries and exits ever, and its size at the end of each day."""

    key: str
    version: int
    status: str
    size: int
    entries: int
    exits: int
    series: list[SegmentSize]


class ClusteringSpecDocument(msgspec.Struct):
    """What a clustering fits: feature paths, the algorithm, k (a number or ``auto``), the
    range ``auto`` tries, PCA components, the sample size and the seed."""

    features: list[str]
    algorithm: str
    k: int | str
    kRange: list[int]
    pca: int | None
    sampleSize: int
    seed: int


class ClusterSummary(msgspec.Struct):
    """A cluster of the current run: its key, its segment, its name and its size then."""

    key: str
    segment: str
    name: str
    size: int


class CurrentRun(msgspec.Struct):
    """The run whose clusters are the clustering's segments now."""

    run: int
    k: int | None
    silhouette: float | None
    finishedAt: str | None
    clusters: list[ClusterSummary]


class Clustering(msgspec.Struct):
    """A clustering: what it fits, how often, the names people gave its clusters, and its
    current run (``docs/segments.md``, clusterings)."""

    key: str
    name: str
    description: str
    features: list[str]
    algorithm: str
    k: int | str
    kRange: list[int]
    pca: int | None
    sampleSize: int
    seed: int
    schedule: str
    status: str
    names: dict[str, str]
    currentRun: int | None
    nextRunAt: str | None
    createdAt: str
    updatedAt: str
    current: CurrentRun | None = None


class ClusteringList(msgspec.Struct):
    """Active clusterings by key."""

    data: list[Clustering]


class ClusterReport(msgspec.Struct):
    """A cluster a run found: its size, its centroid in the features' units, the features
    that set it apart most (Cohen's d) and its automatic name."""

    key: str
    name: str
    size: int
    centroid: dict[str, float]
    distinguishing: list[dict[str, Any]]


class ClusteringRun(msgspec.Struct):
    """A run of a clustering: what it was asked and, once it succeeded, what it found (k,
    the quality figures, every k candidate's silhouette, the clusters, what changed since the
    run before) and what it read (``lineage``)."""

    clustering: str
    run: int
    status: str
    trigger: str
    restoredFrom: int | None
    spec: ClusteringSpecDocument
    lineage: dict[str, Any] | None
    error: str | None
    requestedAt: str
    startedAt: str | None
    finishedAt: str | None
    k: int | None = None
    rows: int | None = None
    silhouette: float | None = None
    daviesBouldin: float | None = None
    candidates: dict[str, float] = {}
    clusters: list[ClusterReport] = []
    changes: dict[str, list[Any]] | None = None


class ClusteringRuns(msgspec.Struct):
    """A page of a clustering's runs, newest first; ``next`` is the next page's cursor."""

    clustering: str
    data: list[ClusteringRun]
    next: int | None = None


def error_response(description: str) -> ResponseSpec:
    """An error answer in the one shape."""
    return ResponseSpec(data_container=ErrorDocument, description=description)


UNAVAILABLE = ResponseSpec(
    data_container=ErrorDocument,
    description="an engine (state database, event log, cache) is down: retry after Retry-After",
)


def admin_responses(*, parameters: bool = True, found: bool = False) -> dict[int, ResponseSpec]:
    """The error answers of an admin route (Bearer API key)."""
    responses = {
        401: error_response("missing_api_key, or invalid_api_key (unknown or revoked)"),
        403: error_response("the key lacks the role the route needs"),
        503: UNAVAILABLE,
    }
    if parameters:
        responses[400] = error_response("invalid_parameter: details.parameter names it")
    if found:
        responses[404] = error_response("no profile has that id (profile_not_found)")
    return responses
