"""Clusterings as a product: definitions, runs, their segments, rollback and schedules.

A *clustering* is a named set of segments discovered from data. Its definition names the
features (dotted paths into a profile's ``features``, as in a ``feature`` leaf), the
algorithm, k and a schedule. A *run* (numbered 1, 2, ... per clustering) reads every profile's
point-in-time features in shards (a ``FeatureSource``), fits them
(``personify.segments.clustering.fit_shards``), matches its clusters to the current run's so
keys stay, and stores its model, report, lineage and every profile's cluster. Then it becomes
the current run:

* each cluster is an active segment ``KEY/CLUSTER`` (kind ``cluster``, version = the run's
  number), named by its automatic description unless a person named it (names survive reruns);
  a cluster the run no longer has is archived;
* every profile's memberships become exactly the run's assignments, with ``Segment Entered``
  and ``Segment Exited`` events for whoever moves (reason ``recluster`` or ``rollback``);
* between runs the worker places every profile a batch touches in the nearest cluster of the
  current run (``personify.segments.stage``), from the same features evaluated on its state.

A rollback is a run too: it copies an earlier run's model, report and assignments, and applies
them like a fit, so the memberships are exactly that run's again.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.errors import Conflict, NotFound, ValidationError
from personify.profiles.features import FeatureSet
from personify.profiles.state import ProfileState, evaluate_profile
from personify.profiles.tables import profiles
from personify.segments.clustering import (
    ClusterDescription,
    ClusteringSpec,
    ClusterRun,
    fit_shards,
    spec_dict,
    spec_from_dict,
)
from personify.segments.conditions import parse_window_ms, resolve_path
from personify.segments.membership import MembershipChanges
from personify.segments.operators import MISSING
from personify.segments.repository import (
    ACTIVE,
    ARCHIVED,
    SegmentRepository,
    check_text,
    user_profiles,
)
from personify.segments.tables import (
    clustering_assignments,
    clustering_runs,
    clusterings,
    segment_members,
)
from personify.store.database import Database, aware

__all__ = [
    "KEPT_ASSIGNMENTS",
    "ClusteringDefinition",
    "ClusteringRepository",
    "ClusteringRunner",
    "FeatureShard",
    "FeatureSource",
    "RunRecord",
    "feature_vector",
    "feature_vectors",
]

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,59}$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_SCHEDULES = {"hourly": "1h", "daily": "1d", "weekly": "7d"}
MANUAL = "manual"
# cluster keys that would read as a route of /v1/segments/{key}/...
_RESERVED = frozenset({"members", "stats", "versions"})
_CHUNK = 2_000
_MAX_NAME_CHARS = 200
# the runs of a clustering whose assignments are kept, for rollback (the newest that
# succeeded); older runs keep their model and report
KEPT_ASSIGNMENTS = 10
# a run still running after this long was left by a process that died
_ABANDONED_AFTER = timedelta(hours=6)
_encode = msgspec.json.Encoder(order="deterministic").encode
_decode = msgspec.json.decode

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"


# -- feature vectors ----------------------------------------------------------------------------


def _number(value: Any) -> float:
    if value is MISSING or value is None or isinstance(value, str | Mapping | list):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def feature_vector(document: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> list[float]:
    """A profile's values of ``paths`` in its evaluated features (``evaluate_profile``); a value
    that is missing or not a number is NaN, which a run reads as the feature's mean."""
    return [_number(resolve_path(document, parts)) for parts in paths]


def feature_vectors(
    states: Mapping[str, ProfileState], features: FeatureSet, paths: Sequence[str], at_ms: int
) -> tuple[list[str], list[bool], np.ndarray[Any, Any]]:
    """Every profile's ids, whether a userId names it, and its feature vector at ``at_ms``,
    in profile-id order: one shard of a run's input."""
    parts = [tuple(p.split(".")) for p in paths]
    ids = sorted(states)
    rows = [feature_vector(evaluate_profile(states[pid], features, at_ms), parts) for pid in ids]
    matrix = np.array(rows, dtype=np.float64).reshape(len(ids), len(paths))
    return ids, [bool(states[pid].user_ids) for pid in ids], matrix


@dataclass(frozen=True, slots=True)
class FeatureShard:
    """Some profiles' feature vectors: ids, whether each is named by a userId, the matrix."""

    ids: list[str]
    is_user: list[bool]
    matrix: np.ndarray[Any, Any]


class FeatureSource(Protocol):
    """Where a run reads features: every profile's vector for ``paths`` as of ``as_of``, in
    shards, and the lineage of what was read (lake version, definitions digest, ...)."""

    def __call__(
        self, paths: Sequence[str], as_of: datetime
    ) -> tuple[Iterable[FeatureShard], dict[str, Any]]: ...


def check_features(paths: Any, features: FeatureSet) -> tuple[str, ...]:
    """The feature paths of a definition, each a number in a profile's ``features``: a path
    to a section (``orders``) or to nothing a profile has is refused, with where."""
    if not isinstance(paths, list) or not paths or len(paths) > 100:
        raise ValidationError(
            "features is a list of 1 to 100 feature paths, such as orders.all",
            code="invalid_features",
            details={"pointer": "/features"},
        )
    blank = evaluate_profile(ProfileState(), features, 0)
    seen: set[str] = set()
    for index, path in enumerate(paths):
        where = {"pointer": f"/features/{index}"}
        if not isinstance(path, str) or not path or len(path) > 300 or path in seen:
            raise ValidationError(
                "each feature is a distinct dotted path", code="invalid_features", details=where
            )
        seen.add(path)
        parts = tuple(path.split("."))
        found = resolve_path(blank, parts)
        if isinstance(found, Mapping | str):
            raise ValidationError(
                f"{path!r} is not a number (a section, or text); name a value such as {path}.all",
                code="invalid_features",
                details=where,
            )
        grouped = next(
            (f for f in features.features if f.name == parts[0] and f.group_by is not None),
            None,
        )
        if grouped is not None:
            # a grouped feature nests by group, then window: name.GROUP.WINDOW
            windows = ["all" if w == "all" else f"{w}d" for w in grouped.definition.windows]
            if len(parts) != 3 or parts[2] not in windows:
                raise ValidationError(
                    f"{path!r} is not a number: {parts[0]} is grouped, so name a group and a "
                    f"window, such as {parts[0]}.NAME.{windows[0]}",
                    code="invalid_features",
                    details=where,
                )
        elif found is MISSING:
            # under a section whose keys come from the data (affinities, context)
            section = resolve_path(blank, parts[:1])
            if not (isinstance(section, Mapping) and not section and len(parts) > 1):
                known = sorted(k for k, v in blank.items() if not isinstance(v, str))
                raise ValidationError(
                    f"no feature {path!r}; profiles have {', '.join(known)}",
                    code="invalid_features",
                    details=where,
                )
    return tuple(paths)


# -- definitions --------------------------------------------------------------------------------


def schedule_interval(schedule: Any) -> timedelta | None:
    """How often a schedule runs (``None``: manual). ``hourly``, ``daily``, ``weekly``,
    ``manual``, or a window such as ``12h`` or ``3d`` (at least an hour)."""
    if schedule == MANUAL:
        return None
    window = parse_window_ms(_SCHEDULES.get(schedule, schedule))
    if window is None or window < 3_600_000:
        raise ValidationError(
            "schedule is hourly, daily, weekly, manual, or an interval such as 12h or 3d "
            "(at least 1h)",
            code="invalid_schedule",
            details={"field": "schedule"},
        )
    return timedelta(milliseconds=window)


def slug(name: str) -> str:
    """A cluster key made of its name: ``high spend, low sessions`` -> ``high-spend-low-sessions``."""
    return _NOT_SLUG.sub("-", name.lower()).strip("-")[:60].strip("-") or "cluster"


@dataclass(frozen=True, slots=True)
class ClusteringDefinition:
    """A clustering as saved."""

    key: str
    name: str
    description: str
    spec: ClusteringSpec
    schedule: str
    status: str
    names: dict[str, str]
    current_run: int | None
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the API and the CLI."""
        return {
            "key": self.key,
            "name": self.name,
            "description": self.description,
            **spec_dict(self.spec),
            "schedule": self.schedule,
            "status": self.status,
            "names": dict(self.names),
            "currentRun": self.current_run,
            "nextRunAt": self.next_run_at.isoformat() if self.next_run_at else None,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a clustering: what it was asked, and (once done) what it found."""

    clustering_key: str
    number: int
    status: str
    trigger: str
    restored_from: int | None
    spec: dict[str, Any]
    report: dict[str, Any] | None
    lineage: dict[str, Any] | None
    error: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    id: int = 0
    model: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the API and the CLI (the model itself is not shown)."""

        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {
            "clustering": self.clustering_key,
            "run": self.number,
            "status": self.status,
            "trigger": self.trigger,
            "restoredFrom": self.restored_from,
            "spec": self.spec,
            **(self.report or {}),
            "lineage": self.lineage,
            "error": self.error,
            "requestedAt": iso(self.requested_at),
            "startedAt": iso(self.started_at),
            "finishedAt": iso(self.finished_at),
        }


def _definition(row: Any) -> ClusteringDefinition:
    return ClusteringDefinition(
        key=row.key,
        name=row.name,
        description=row.description,
        spec=spec_from_dict(_decode(row.spec)),
        schedule=row.schedule,
        status=row.status,
        names=dict(_decode(row.names)),
        current_run=row.current_run,
        next_run_at=aware(row.next_run_at),
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        updated_at=aware(row.updated_at),  # type: ignore[arg-type]
    )


def _run(row: Any) -> RunRecord:
    return RunRecord(
        id=int(row.id),
        clustering_key=row.clustering_key,
        number=int(row.number),
        status=row.status,
        trigger=row.trigger,
        restored_from=row.restored_from,
        spec=_decode(row.spec),
        model=_decode(row.model) if row.model else None,
        report=_decode(row.report) if row.report else None,
        lineage=_decode(row.lineage) if row.lineage else None,
        error=row.error,
        requested_at=aware(row.requested_at),  # type: ignore[arg-type]
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
    )


class ClusteringRepository:
    """Saves clusterings and their runs; reads them back."""

    def __init__(
        self,
        db: Database,
        segments: SegmentRepository,
        features: FeatureSet,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self._segments = segments
        self._features = features
        self._clock = clock or SystemClock()

    def create(
        self,
        key: Any,
        spec: Mapping[str, Any],
        *,
        name: Any = None,
        description: Any = "",
        schedule: Any = "weekly",
    ) -> ClusteringDefinition:
        """Save a new clustering; unless its schedule is manual, its first run is due now."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValidationError(
                "a clustering key is 1-60 letters, digits, '-', '_' or '.', starting with a "
                "letter or digit",
                code="invalid_key",
                details={"field": "key"},
            )
        parsed = self._spec(spec)
        name = check_text("name", key if name is None else name, _MAX_NAME_CHARS)
        description = check_text("description", description, 10_000)
        interval = schedule_interval(schedule)
        now = self._clock.now()
        with self._db.begin() as conn:
            row = self._row(conn, key)
            if row is not None and row.status == ACTIVE:
                raise Conflict(f"clustering {key!r} exists already", code="clustering_exists")
            values = {
                "name": name,
                "description": description,
                "spec": _encode(spec_dict(parsed)).decode(),
                "schedule": schedule,
                "status": ACTIVE,
                "names": "{}",
                "current_run": None,
                "next_run_at": now if interval is not None else None,
                "updated_at": now,
            }
            if row is None:
                conn.execute(clusterings.insert().values(key=key, created_at=now, **values))
            else:
                # an archived key comes back: its run numbers go on
                conn.execute(clusterings.update().where(clusterings.c.key == key).values(**values))
            return _definition(self._row(conn, key))

    def update(self, key: str, changes: Mapping[str, Any]) -> ClusteringDefinition:
        """Change a clustering; a new spec is used from its next run on."""
        with self._db.begin() as conn:
            row = self._active(conn, key)
            values: dict[str, Any] = {"updated_at": self._clock.now()}
            if "name" in changes:
                values["name"] = check_text("name", changes["name"], _MAX_NAME_CHARS)
            if "description" in changes:
                values["description"] = check_text("description", changes["description"], 10_000)
            if "schedule" in changes:
                interval = schedule_interval(changes["schedule"])
                values["schedule"] = changes["schedule"]
                values["next_run_at"] = (
                    None if interval is None else (aware(row.next_run_at) or self._clock.now())
                )
            spec_keys = {"features", "algorithm", "k", "kRange", "pca", "sampleSize", "seed"}
            if spec_keys & set(changes):
                merged = {**_decode(row.spec), **{k: changes[k] for k in spec_keys & set(changes)}}
                values["spec"] = _encode(spec_dict(self._spec(merged))).decode()
            conn.execute(clusterings.update().where(clusterings.c.key == key).values(**values))
            return _definition(self._row(conn, key))

    def archive(self, key: str) -> ClusteringDefinition:
        """Archive a clustering: its segments are archived and their members exit. Refused
        while an active rule reads one of its segments."""
        with self._db.begin() as conn:
            self._active(conn, key)
            self._segments.archive_clusters(conn, key)
            conn.execute(
                clusterings.update()
                .where(clusterings.c.key == key)
                .values(status=ARCHIVED, next_run_at=None, updated_at=self._clock.now())
            )
            return _definition(self._row(conn, key))

    def get(self, key: str) -> ClusteringDefinition:
        """An active clustering."""
        with self._db.connect() as conn:
            return _definition(self._active(conn, key))

    def definitions(self) -> list[ClusteringDefinition]:
        """Every active clustering, by key."""
        with self._db.connect() as conn:
            rows = conn.execute(
                sa.select(clusterings)
                .where(clusterings.c.status == ACTIVE)
                .order_by(clusterings.c.key)
            )
            return [_definition(r) for r in rows]

    def rename_cluster(self, key: str, cluster: str, name: str | None) -> ClusteringDefinition:
        """Give a cluster a name (``None``: its automatic one again); it survives reruns."""
        with self._db.begin() as conn:
            row = self._active(conn, key)
            current = self._current(conn, row)
            report = (current.report if current is not None else None) or {}
            clusters = {c["key"]: c for c in report.get("clusters", [])}
            if cluster not in clusters:
                raise NotFound(
                    f"clustering {key!r} has no cluster {cluster!r} in its current run",
                    code="cluster_not_found",
                )
            names = dict(_decode(row.names))
            if name is None:
                names.pop(cluster, None)
            else:
                names[cluster] = check_text("name", name, _MAX_NAME_CHARS).strip() or cluster
            conn.execute(
                clusterings.update()
                .where(clusterings.c.key == key)
                .values(names=_encode(names).decode(), updated_at=self._clock.now())
            )
            self._segments.rename_cluster(
                conn, f"{key}/{cluster}", names.get(cluster, clusters[cluster]["name"])
            )
            return _definition(self._row(conn, key))

    # -- runs ---------------------------------------------------------------------------------

    def request_run(
        self, key: str, *, trigger: str = "requested", restore: int | None = None
    ) -> RunRecord:
        """Queue a run (``restore``: a rollback to that earlier run) and return it."""
        with self._db.begin() as conn:
            row = self._active(conn, key)
            if restore is not None:
                source = self._run_row(conn, key, restore)
                if source.status != SUCCEEDED:
                    raise Conflict(
                        f"run {restore} of {key!r} did not succeed; only a finished run can be "
                        "restored",
                        code="run_not_restorable",
                    )
                kept = conn.execute(
                    sa.select(clustering_assignments.c.run_id)
                    .where(clustering_assignments.c.run_id == source.id)
                    .limit(1)
                ).first()
                if kept is None:
                    raise Conflict(
                        f"run {restore} of {key!r} is older than the {KEPT_ASSIGNMENTS} newest "
                        "runs whose assignments are kept; it can no longer be restored exactly",
                        code="run_not_restorable",
                    )
            return self._insert_run(conn, key, row.spec, trigger, restore)

    def _insert_run(
        self, conn: sa.Connection, key: str, spec: str, trigger: str, restore: int | None
    ) -> RunRecord:
        top = conn.execute(
            sa.select(sa.func.max(clustering_runs.c.number)).where(
                clustering_runs.c.clustering_key == key
            )
        ).scalar()
        number = int(top or 0) + 1
        conn.execute(
            clustering_runs.insert().values(
                clustering_key=key,
                number=number,
                status=PENDING,
                trigger=trigger,
                restored_from=restore,
                spec=spec,
                requested_at=self._clock.now(),
            )
        )
        return _run(self._run_row(conn, key, number))

    def request_due(self) -> list[RunRecord]:
        """Queue a scheduled run of every clustering whose time has come (none queued twice)."""
        now = self._clock.now()
        queued = []
        with self._db.begin() as conn:
            # a run its process never finished (it died) stops blocking the schedule
            conn.execute(
                clustering_runs.update()
                .where(
                    clustering_runs.c.status == RUNNING,
                    clustering_runs.c.started_at < now - _ABANDONED_AFTER,
                )
                .values(status=FAILED, error="abandoned: not finished in 6 hours", finished_at=now)
            )
            rows = conn.execute(
                sa.select(clusterings).where(
                    clusterings.c.status == ACTIVE, clusterings.c.next_run_at <= now
                )
            ).all()
            for row in rows:
                interval = schedule_interval(row.schedule)
                conn.execute(
                    clusterings.update()
                    .where(clusterings.c.key == row.key)
                    .values(next_run_at=now + interval if interval else None)
                )
                waiting = conn.execute(
                    sa.select(sa.func.count()).where(
                        clustering_runs.c.clustering_key == row.key,
                        clustering_runs.c.status.in_((PENDING, RUNNING)),
                    )
                ).scalar()
                if not waiting:
                    queued.append(self._insert_run(conn, row.key, row.spec, "scheduled", None))
        return queued

    def runs(self, key: str, *, limit: int = 100, before: int | None = None) -> list[RunRecord]:
        """A clustering's runs, newest first: ``limit`` of them, numbered below ``before``."""
        with self._db.connect() as conn:
            if self._row(conn, key) is None:
                raise NotFound(f"no clustering {key!r}", code="clustering_not_found")
            rows = conn.execute(
                sa.select(clustering_runs)
                .where(
                    clustering_runs.c.clustering_key == key,
                    clustering_runs.c.number < (before if before is not None else 2**31),
                )
                .order_by(clustering_runs.c.number.desc())
                .limit(limit)
            )
            return [_run(r) for r in rows]

    def run(self, key: str, number: int) -> RunRecord:
        """One run of a clustering."""
        with self._db.connect() as conn:
            return _run(self._run_row(conn, key, number))

    def with_current(self, key: str) -> tuple[ClusteringDefinition, RunRecord | None]:
        """An active clustering and its current run."""
        with self._db.connect() as conn:
            row = self._active(conn, key)
            return _definition(row), self._current(conn, row)

    def make_current(
        self, conn: sa.Connection, key: str, run: RunRecord, describe: Callable[[Any], str]
    ) -> dict[str, int]:
        """Make ``run`` the clustering's current run and its clusters its segments (named as
        people named them, else automatically), and schedule the next run one interval on;
        returns each segment's version."""
        row = self._row(conn, key)
        names = dict(_decode(row.names))
        clusters = (run.report or {}).get("clusters", [])
        versions = self._segments.save_clusters(
            conn,
            key,
            run.number,
            [(c["key"], names.get(c["key"], c["name"]), describe(c)) for c in clusters],
        )
        now = self._clock.now()
        interval = schedule_interval(row.schedule)
        # a run of any kind restarts the schedule's clock: no scheduled run right after it
        conn.execute(
            clusterings.update()
            .where(clusterings.c.key == key)
            .values(
                current_run=run.number,
                next_run_at=now + interval if interval else None,
                updated_at=now,
            )
        )
        return versions

    def pending(self) -> list[RunRecord]:
        """The queued runs, oldest first."""
        with self._db.connect() as conn:
            rows = conn.execute(
                sa.select(clustering_runs)
                .where(clustering_runs.c.status == PENDING)
                .order_by(clustering_runs.c.id)
            )
            return [_run(r) for r in rows]

    # -- helpers ------------------------------------------------------------------------------

    def _spec(self, data: Mapping[str, Any]) -> ClusteringSpec:
        if not isinstance(data, Mapping):
            raise ValidationError("a clustering needs its features", code="invalid_features")
        paths = check_features(data.get("features"), self._features)
        return spec_from_dict({**data, "features": list(paths)})

    def _row(self, conn: sa.Connection, key: str) -> Any:
        return conn.execute(sa.select(clusterings).where(clusterings.c.key == key)).one_or_none()

    def _active(self, conn: sa.Connection, key: str) -> Any:
        row = self._row(conn, key)
        if row is None or row.status != ACTIVE:
            raise NotFound(f"no active clustering {key!r}", code="clustering_not_found")
        return row

    def _run_row(self, conn: sa.Connection, key: str, number: int) -> Any:
        row = conn.execute(
            sa.select(clustering_runs).where(
                clustering_runs.c.clustering_key == key, clustering_runs.c.number == number
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"clustering {key!r} has no run {number}", code="run_not_found")
        return row

    def _current(self, conn: sa.Connection, row: Any) -> RunRecord | None:
        if row.current_run is None:
            return None
        return _run(self._run_row(conn, row.key, int(row.current_run)))


# -- running ------------------------------------------------------------------------------------


class _Spilled:
    """A source's shards written to a temporary folder once (features as ``.npy``, ids and
    whether a userId names each as Arrow IPC), then read as often as a fit needs: features
    memory-mapped, ids a shard at a time, so memory holds one shard."""

    def __init__(self, shards: Iterable[FeatureShard], folder: Path, width: int) -> None:
        self._folder = folder
        self._count = 0
        self.rows = 0
        for shard in shards:
            if not shard.ids:
                continue
            number = self._count
            matrix = np.asarray(shard.matrix, dtype=np.float64).reshape(-1, width)
            np.save(folder / f"shard-{number}.npy", matrix)
            table = pa.table(
                {
                    "id": pa.array(shard.ids, pa.string()),
                    "is_user": pa.array(shard.is_user, pa.bool_()),
                }
            )
            path = str(folder / f"shard-{number}.arrow")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            self._count += 1
            self.rows += len(shard.ids)

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        for number in range(self._count):
            yield np.load(self._folder / f"shard-{number}.npy", mmap_mode="r")

    def ids(self, number: int) -> tuple[list[str], list[bool]]:
        """Shard ``number``'s profile ids, and whether a userId names each."""
        with pa.memory_map(str(self._folder / f"shard-{number}.arrow")) as source:
            table = pa.ipc.open_file(source).read_all()
        return table.column("id").to_pylist(), table.column("is_user").to_pylist()


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A finished run and the membership changes it made."""

    run: RunRecord
    entered: int
    exited: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``personify segments recluster`` and the job's result."""
        return {
            **self.run.to_dict(),
            "entered": self.entered,
            "exited": self.exited,
            "elapsedSeconds": round(self.elapsed_s, 3),
        }


class ClusteringRunner:
    """Carries out queued runs: fits (or restores), stores, and applies them."""

    def __init__(
        self,
        db: Database,
        repository: ClusteringRepository,
        segments: SegmentRepository,
        source: FeatureSource,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self._repository = repository
        self._segments = segments
        self._source = source
        self._clock = clock or SystemClock()

    def run_pending(self, *, progress: Callable[[str], None] | None = None) -> list[RunOutcome]:
        """Queue the scheduled runs that are due, then carry out every queued run."""
        self._repository.request_due()
        outcomes = []
        for run in self._repository.pending():
            try:
                outcomes.append(self.execute(run, progress=progress))
            except Conflict as exc:
                # another process claimed it first
                if exc.code != "run_not_queued":
                    raise
        return outcomes

    def run_now(
        self, key: str, *, restore: int | None = None, progress: Callable[[str], None] | None = None
    ) -> RunOutcome:
        """Queue a run of ``key`` (or a rollback to run ``restore``) and carry it out."""
        run = self._repository.request_run(
            key, trigger="rollback" if restore is not None else "requested", restore=restore
        )
        return self.execute(run, progress=progress)

    def execute(
        self, run: RunRecord, *, progress: Callable[[str], None] | None = None
    ) -> RunOutcome:
        """Carry out one queued run; a run that fails is stored as failed, with why."""
        say = progress or (lambda _: None)
        started = time.monotonic()
        with self._db.begin() as conn:
            claimed = conn.execute(
                clustering_runs.update()
                .where(clustering_runs.c.id == run.id, clustering_runs.c.status == PENDING)
                .values(status=RUNNING, started_at=self._clock.now())
            ).rowcount
        if claimed != 1:
            raise Conflict(
                f"run {run.number} of {run.clustering_key!r} is not queued", code="run_not_queued"
            )
        try:
            definition, current = self._repository.with_current(run.clustering_key)
            if run.restored_from is not None:
                say(f"restoring run {run.restored_from} of {run.clustering_key}")
                self._restore(run, run.restored_from)
            else:
                self._fit(run, definition, current, say)
            say("applying the assignments")
            entered, exited = self._apply(run, definition)
        except Exception as exc:
            with self._db.begin() as conn:
                conn.execute(
                    clustering_assignments.delete().where(clustering_assignments.c.run_id == run.id)
                )
                conn.execute(
                    clustering_runs.update()
                    .where(clustering_runs.c.id == run.id)
                    .values(status=FAILED, error=str(exc)[:2000], finished_at=self._clock.now())
                )
            if isinstance(exc, ValidationError | NotFound | Conflict):
                return RunOutcome(
                    self._repository.run(run.clustering_key, run.number),
                    0,
                    0,
                    time.monotonic() - started,
                )
            raise
        return RunOutcome(
            self._repository.run(run.clustering_key, run.number),
            entered,
            exited,
            time.monotonic() - started,
        )

    def _fit(
        self,
        run: RunRecord,
        definition: ClusteringDefinition,
        current: RunRecord | None,
        say: Callable[[str], None],
    ) -> None:
        spec = spec_from_dict(run.spec)
        as_of = self._clock.now()
        say(f"reading features of {run.clustering_key} as of {as_of.isoformat()}")
        previous = (
            ClusterRun.from_model(spec_from_dict(current.spec), current.model)
            if current is not None and current.model is not None
            else None
        )
        # a key any earlier cluster had is never given to a new one
        taken = {
            k.split("/", 1)[1] for k in self._segments.cluster_segment_keys(run.clustering_key)
        }
        folder = Path(tempfile.mkdtemp(prefix="personify-clustering-"))
        try:
            shards, lineage = self._source(spec.features, as_of)
            spilled = _Spilled(shards, folder, len(spec.features))
            say(f"fitting {spec.algorithm} on {spilled.rows} profiles")

            def new_key(attempt: int, cluster: ClusterDescription) -> str:
                base = slug(cluster.name)
                if base in _RESERVED:
                    base = f"{base}-cluster"
                return base if attempt == 1 else f"{base}-{attempt}"

            def store(number: int, clusters: Any, _keys: Sequence[str]) -> None:
                rows = [
                    {
                        "run_id": run.id,
                        "profile_id": pid,
                        "cluster": cluster if cluster >= 0 else None,
                        "is_user": user,
                    }
                    for pid, user, cluster in zip(
                        *spilled.ids(number), clusters.tolist(), strict=True
                    )
                ]
                with self._db.begin() as conn:
                    for start in range(0, len(rows), 5_000):
                        conn.execute(clustering_assignments.insert(), rows[start : start + 5_000])

            fitted = fit_shards(
                spilled,
                spec,
                previous=previous,
                previous_labels=(
                    (lambda n: self._previous_labels(current, spilled.ids(n)[0]))
                    if current is not None
                    else None
                ),
                new_key=new_key,
                reserved=taken,
                on_labels=store,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        report = {
            "k": fitted.k,
            "rows": fitted.rows,
            "silhouette": fitted.silhouette,
            "daviesBouldin": fitted.davies_bouldin,
            "candidates": {str(k): v for k, v in sorted(fitted.candidates.items())},
            "clusters": [c.to_dict() for c in fitted.clusters],
            "changes": fitted.changes,
        }
        lineage = {**lineage, "asOf": as_of.isoformat(), "profiles": fitted.rows}
        with self._db.begin() as conn:
            conn.execute(
                clustering_runs.update()
                .where(clustering_runs.c.id == run.id)
                .values(
                    model=_encode(fitted.model()).decode(),
                    report=_encode(report).decode(),
                    lineage=_encode(lineage).decode(),
                )
            )

    def _previous_labels(self, current: RunRecord, ids: Sequence[str]) -> list[str | None]:
        """The current run's cluster key of each of ``ids`` (``None``: not in it)."""
        a = clustering_assignments.c
        keys = (current.model or {}).get("keys", [])
        found: dict[str, str | None] = {}
        with self._db.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                for pid, cluster in conn.execute(
                    sa.select(a.profile_id, a.cluster).where(
                        a.run_id == current.id, a.profile_id.in_(chunk)
                    )
                ):
                    found[str(pid)] = keys[cluster] if cluster is not None else None
        return [found.get(pid) for pid in ids]

    def _restore(self, run: RunRecord, number: int) -> None:
        """Copy an earlier run's model, report, lineage and assignments into ``run``."""
        source = self._repository.run(run.clustering_key, number)
        a = clustering_assignments.c
        with self._db.begin() as conn:
            conn.execute(
                clustering_assignments.insert().from_select(
                    ["run_id", "profile_id", "cluster", "is_user"],
                    sa.select(
                        sa.literal(run.id, sa.BigInteger), a.profile_id, a.cluster, a.is_user
                    ).where(a.run_id == source.id),
                )
            )
            conn.execute(
                clustering_runs.update()
                .where(clustering_runs.c.id == run.id)
                .values(
                    spec=_encode(source.spec).decode(),
                    model=_encode(source.model).decode(),
                    report=_encode(source.report).decode(),
                    lineage=_encode(source.lineage).decode(),
                )
            )

    def _apply(self, run: RunRecord, definition: ClusteringDefinition) -> tuple[int, int]:
        """Make the run current: its clusters the clustering's segments, and every profile's
        memberships exactly its assignments (in chunks of profiles, by id)."""
        key = run.clustering_key
        stored = self._repository.run(key, run.number)
        now = self._clock.now()
        with self._db.begin() as conn:
            versions = self._repository.make_current(
                conn, key, stored, lambda c: _cluster_text(definition, c)
            )
        segment_keys = self._segments.cluster_segment_keys(key)
        cluster_keys = (stored.model or {}).get("keys", [])
        reason = "rollback" if run.restored_from is not None else "recluster"
        a = clustering_assignments.c
        m = segment_members.c
        entered = exited = 0
        after: str | None = None
        while True:
            with self._db.begin() as conn:
                query = sa.select(a.profile_id, a.cluster, a.is_user).where(a.run_id == run.id)
                if after is not None:
                    query = query.where(a.profile_id > after)
                page = conn.execute(query.order_by(a.profile_id).limit(_CHUNK)).all()
                last = str(page[-1].profile_id) if len(page) == _CHUNK else None
                # the profiles of this chunk are locked (PostgreSQL) against the worker
                bounds = [profiles.c.profile_id > after] if after is not None else []
                if last is not None:
                    bounds.append(profiles.c.profile_id <= last)
                # a profile no longer stored, or whose consent withdraws personalization, is in
                # no cluster (as in no segment)
                allowed = {
                    str(pid)
                    for pid, ok in conn.execute(
                        sa.select(profiles.c.profile_id, profiles.c.personalization_allowed)
                        .where(*bounds)
                        .with_for_update()
                    )
                    if ok
                }
                stays_query = sa.select(m.id, m.profile_id, m.segment_key, m.segment_version).where(
                    m.segment_key.in_(segment_keys), m.exited_at.is_(None)
                )
                if after is not None:
                    stays_query = stays_query.where(m.profile_id > after)
                if last is not None:
                    stays_query = stays_query.where(m.profile_id <= last)
                held: dict[str, list[Any]] = {}
                for stay in conn.execute(stays_query.order_by(m.id)):
                    held.setdefault(str(stay.profile_id), []).append(stay)
                target = {
                    str(r.profile_id): (
                        f"{key}/{cluster_keys[r.cluster]}"
                        if r.cluster is not None and str(r.profile_id) in allowed
                        else None,
                        bool(r.is_user),
                    )
                    for r in page
                }
                changes = MembershipChanges(now)
                users = user_profiles(conn, [p for p in held if p not in target])
                for pid in sorted(set(held) | set(target)):
                    wanted, is_user = target.get(pid, (None, pid in users))
                    stays = held.get(pid, [])
                    kept = False
                    for stay in stays:
                        if stay.segment_key == wanted and not kept:
                            kept = True
                            continue
                        changes.exit(
                            int(stay.id),
                            pid,
                            is_user,
                            stay.segment_key,
                            int(stay.segment_version),
                            reason,
                        )
                        exited += 1
                    if wanted is not None and not kept:
                        changes.enter(pid, is_user, wanted, versions[wanted], reason)
                        entered += 1
                changes.flush(conn)
            if last is None:
                break
            after = last
        with self._db.begin() as conn:
            conn.execute(
                clustering_runs.update()
                .where(clustering_runs.c.id == run.id)
                .values(status=SUCCEEDED, finished_at=self._clock.now())
            )
            r = clustering_runs.c
            older = conn.execute(
                sa.select(r.id)
                .where(r.clustering_key == key, r.status == SUCCEEDED)
                .order_by(r.number.desc())
                .offset(KEPT_ASSIGNMENTS)
            ).scalars()
            stale = list(older)
            for start in range(0, len(stale), 500):
                conn.execute(
                    clustering_assignments.delete().where(
                        clustering_assignments.c.run_id.in_(stale[start : start + 500])
                    )
                )
        return entered, exited


def _cluster_text(definition: ClusteringDefinition, cluster: Mapping[str, Any]) -> str:
    top = ", ".join(
        f"{d['feature']} d={d['effectSize']:+.2f}" for d in cluster.get("distinguishing", [])[:3]
    )
    return f"a cluster of {definition.key!r} ({cluster['size']} profiles at its run; {top})"
