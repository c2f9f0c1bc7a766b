"""Experiments in the state database: definitions, phases, status changes, the sticky
assignments the worker records, and bandit allocations (docs/experiments.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.content.tables import placements
from personify.errors import Conflict, InvalidDefinition, NotFound, ValidationError
from personify.experiments.metrics import ExperimentScope
from personify.experiments.model import (
    ALLOCATION_FIELDS,
    RunningExperiment,
    check_experiment,
    compile_experiment,
    variant_keys,
)
from personify.experiments.tables import (
    experiment_allocations,
    experiment_assignments,
    experiment_phases,
    experiments,
)
from personify.segments.tables import segment_definitions
from personify.store.database import Database

__all__ = [
    "ExperimentRepository",
    "experiments_revision",
    "load_running",
    "record_assignments",
    "sticky_assignments",
]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_CHUNK: Final = 500

_REVISION = sa.select(sa.func.coalesce(sa.func.max(experiments.c.revision), 0))


def experiments_revision(conn: sa.Connection) -> int:
    """A number that grows with every change of any experiment or bandit allocation."""
    return int(conn.execute(_REVISION).scalar_one())


def _next_revision(conn: sa.Connection, now: datetime) -> int:
    # a clock-based floor keeps revisions growing across a restored backup
    return max(experiments_revision(conn) + 1, int(now.timestamp() * 1_000_000))


def load_running(conn: sa.Connection) -> list[RunningExperiment]:
    """Every running experiment, compiled, with its bandit allocations."""
    rows = conn.execute(
        sa.select(experiments.c.document, experiments.c.phase).where(
            experiments.c.status == "running"
        )
    ).all()
    if not rows:
        return []
    allocations: dict[str, dict[str, dict[str, float]]] = {}
    a = experiment_allocations.c
    for key, context, allocation in conn.execute(
        sa.select(a.experiment_key, a.context, a.allocation)
    ):
        allocations.setdefault(str(key), {})[str(context)] = _decode(allocation)
    running = []
    for text, phase in rows:
        document = _decode(text)
        running.append(compile_experiment(document, int(phase), allocations.get(document["key"])))
    return running


_a = experiment_assignments.c
# built once: a decision reads them whenever its user's facts are not cached
_STICKY: Final = sa.select(_a.experiment_key, _a.variant, _a.phase, _a.first_exposed_at).where(
    _a.unit.in_(sa.bindparam("units", expanding=True))
)


def sticky_assignments(conn: sa.Connection, units: Iterable[str]) -> dict[str, tuple[str, int]]:
    """The variant (and phase) each experiment first exposed any of ``units`` to: the
    earliest exposure wins when a profile's ids were exposed apart."""
    wanted = sorted(set(units))
    if not wanted:
        return {}
    found: dict[str, tuple[str, int, datetime]] = {}
    for start in range(0, len(wanted), _CHUNK):
        for key, variant, phase, at in conn.execute(
            _STICKY, {"units": wanted[start : start + _CHUNK]}
        ):
            seen = found.get(key)
            if seen is None or at < seen[2]:
                found[str(key)] = (str(variant), int(phase), at)
    return {key: (variant, phase) for key, (variant, phase, _) in found.items()}


def record_assignments(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Keep the first exposure of each (experiment, unit); later ones change nothing. Rows:
    ``experiment_key``, ``unit``, ``variant``, ``phase``, ``first_exposed_at``."""
    if not rows:
        return 0
    first: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        key = (row["experiment_key"], row["unit"])
        seen = first.get(key)
        if seen is None or row["first_exposed_at"] < seen["first_exposed_at"]:
            first[key] = row
    c = experiment_assignments.c
    known: set[tuple[str, str]] = set()
    units = sorted({unit for _, unit in first})
    for start in range(0, len(units), _CHUNK):
        known.update(
            (str(k), str(u))
            for k, u in conn.execute(
                sa.select(c.experiment_key, c.unit).where(c.unit.in_(units[start : start + _CHUNK]))
            )
        )
    fresh = [row for key, row in first.items() if key not in known]
    if fresh:
        conn.execute(experiment_assignments.insert(), fresh)
    return len(fresh)


def _aware(moment: datetime, like: datetime) -> datetime:
    """``moment`` with a time zone (SQLite hands back naive UTC datetimes)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=like.tzinfo)


def _allocation_part(document: Mapping[str, Any]) -> dict[str, Any]:
    """What moves users: compared to decide whether a change needs a new phase."""
    part = {name: document.get(name) for name in ALLOCATION_FIELDS}
    part["variants"] = [
        {"key": v["key"], "weight": v["weight"], "placements": v["placements"]}
        for v in document["variants"]
    ]
    return part


class ExperimentRepository:
    """Create, change, start and stop experiments; read them with their phases."""

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()

    def _check(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The checked document; its placements must exist (``InvalidDefinition``)."""
        document = check_experiment(body, segments=self._segment_conditions())
        with self._db.connect() as conn:
            known = {
                str(pid)
                for (pid,) in conn.execute(
                    sa.select(placements.c.id).where(placements.c.status == "active")
                )
            }
        missing = [
            {
                "pointer": f"/placements/{index}",
                "code": "unknown_placement",
                "message": f"no placement {pid!r}",
            }
            for index, pid in enumerate(document["placements"])
            if pid not in known
        ]
        if missing:
            raise InvalidDefinition(
                f"invalid experiment at {missing[0]['pointer']}: {missing[0]['message']}",
                code="invalid_experiment",
                details={"errors": missing},
            )
        return document

    def _segment_conditions(self) -> dict[str, Mapping[str, Any] | None]:
        """Every active segment's condition (targeting may name only these)."""
        d = segment_definitions.c
        with self._db.connect() as conn:
            return {
                str(key): _decode(condition) if condition is not None else None
                for key, condition in conn.execute(
                    sa.select(d.key, d.condition).where(d.status == "active")
                )
            }

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Save a new experiment as a draft; ``Conflict`` when the key is taken."""
        document = self._check(body)
        now = self._clock.now()
        with self._db.begin() as conn:
            if conn.execute(
                sa.select(experiments.c.key).where(experiments.c.key == document["key"])
            ).first():
                raise Conflict(
                    f"experiment {document['key']!r} exists already", code="experiment_exists"
                )
            conn.execute(
                experiments.insert().values(
                    key=document["key"],
                    status="draft",
                    phase=0,
                    document=_encode(document).decode(),
                    revision=_next_revision(conn, now),
                    created_at=now,
                    updated_at=now,
                )
            )
            return self._view(conn, document["key"])

    def get(self, key: str) -> dict[str, Any]:
        """One experiment with its phases; ``NotFound`` when there is none."""
        with self._db.connect() as conn:
            return self._view(conn, key)

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every experiment (of one status), by key."""
        query = sa.select(experiments.c.key).order_by(experiments.c.key)
        if status is not None:
            query = query.where(experiments.c.status == status)
        with self._db.connect() as conn:
            return [self._view(conn, str(key)) for (key,) in conn.execute(query).all()]

    def update(
        self,
        key: str,
        changes: Mapping[str, Any],
        *,
        new_phase: bool = False,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Change an experiment's definition (the fields given replace the saved ones).

        A running experiment's type, seed, variants, weights, factors, placements and
        namespace move users between variants: changing them raises ``Conflict``
        (``phase_required``) unless ``new_phase``, which ends the current phase and starts the
        next with the new allocation. Units already exposed keep their variant (sticky)."""
        now = self._clock.now()
        with self._db.begin() as conn:
            row = self._row(conn, key)
            current = _decode(row.document)
            merged = {**current, **dict(changes), "key": key}
            if merged.get("type") == "multivariate":
                merged.pop("variants", None)
            document = self._check(merged)
            phase = int(row.phase)
            moves = _allocation_part(document) != _allocation_part(current)
            if row.status == "running":
                if moves and not new_phase:
                    raise Conflict(
                        f"experiment {key!r} is running: changing its variants, weights, "
                        "factors, placements, seed or namespace would move users between "
                        "variants; start a new phase explicitly (newPhase) to change them",
                        code="phase_required",
                    )
                self._check_namespace(conn, document)
                if new_phase:
                    conn.execute(
                        experiment_phases.update()
                        .where(
                            experiment_phases.c.experiment_key == key,
                            experiment_phases.c.phase == phase,
                        )
                        .values(ended_at=now)
                    )
                    phase += 1
                    self._open_phase(conn, document, phase, now, reason or "changed while running")
                    # a bandit learns again from the new phase's arms
                    conn.execute(
                        experiment_allocations.delete().where(
                            experiment_allocations.c.experiment_key == key
                        )
                    )
            elif new_phase:
                raise Conflict(
                    f"experiment {key!r} is not running: change it and start it",
                    code="not_running",
                )
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(
                    document=_encode(document).decode(),
                    phase=phase,
                    revision=_next_revision(conn, now),
                    updated_at=now,
                )
            )
            return self._view(conn, key)

    def start(
        self, key: str, *, reason: str | None = None, at: datetime | None = None
    ) -> dict[str, Any]:
        """Start a draft (phase 1) or restart a stopped experiment (its next phase). ``at``
        backdates the phase's start, for an experiment that ran elsewhere and whose exposures
        are imported: not in the future, nor before the previous phase ended."""
        now = self._clock.now()
        when = now if at is None else _aware(at, now)
        with self._db.begin() as conn:
            row = self._row(conn, key)
            if row.status == "running":
                raise Conflict(f"experiment {key!r} is running already", code="already_running")
            if when > now:
                raise ValidationError(
                    "a phase cannot start in the future",
                    code="invalid_parameter",
                    details={"parameter": "at"},
                )
            if row.stopped_at is not None and when < _aware(row.stopped_at, now):
                raise ValidationError(
                    "a phase cannot start before the previous one ended",
                    code="invalid_parameter",
                    details={"parameter": "at"},
                )
            document = _decode(row.document)
            self._check_namespace(conn, document)
            phase = int(row.phase) + 1
            self._open_phase(
                conn, document, phase, when, reason or ("started" if phase == 1 else "restarted")
            )
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(
                    status="running",
                    phase=phase,
                    revision=_next_revision(conn, now),
                    updated_at=now,
                    started_at=row.started_at or when,
                    stopped_at=None,
                )
            )
            return self._view(conn, key)

    def stop(self, key: str, *, at: datetime | None = None) -> dict[str, Any]:
        """Stop a running experiment: decisions show the placement as configured again.
        ``at`` backdates the phase's end (an imported experiment's), not before its start."""
        now = self._clock.now()
        when = now if at is None else _aware(at, now)
        with self._db.begin() as conn:
            row = self._row(conn, key)
            if row.status != "running":
                raise Conflict(f"experiment {key!r} is not running", code="not_running")
            started = conn.execute(
                sa.select(experiment_phases.c.started_at).where(
                    experiment_phases.c.experiment_key == key,
                    experiment_phases.c.phase == row.phase,
                )
            ).scalar_one()
            if when > now or when < _aware(started, now):
                raise ValidationError(
                    "a phase ends after it started and not in the future",
                    code="invalid_parameter",
                    details={"parameter": "at"},
                )
            conn.execute(
                experiment_phases.update()
                .where(
                    experiment_phases.c.experiment_key == key,
                    experiment_phases.c.phase == row.phase,
                )
                .values(ended_at=when)
            )
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(
                    status="stopped",
                    revision=_next_revision(conn, now),
                    updated_at=now,
                    stopped_at=when,
                )
            )
            return self._view(conn, key)

    def delete(self, key: str) -> None:
        """Delete an experiment that is not running, with its phases and assignments."""
        with self._db.begin() as conn:
            row = self._row(conn, key)
            if row.status == "running":
                raise Conflict(f"experiment {key!r} is running: stop it first", code="running")
            for table, column in (
                (experiment_phases, experiment_phases.c.experiment_key),
                (experiment_assignments, experiment_assignments.c.experiment_key),
                (experiment_allocations, experiment_allocations.c.experiment_key),
            ):
                conn.execute(table.delete().where(column == key))
            # not running, so not in any decision: the engine's snapshot does not change
            conn.execute(experiments.delete().where(experiments.c.key == key))

    def scope(self, key: str, phase: int | None = None) -> tuple[dict[str, Any], ExperimentScope]:
        """An experiment's document and the scope of one of its phases (the current one by
        default) for analysis; ``NotFound`` for a phase it never had."""
        with self._db.connect() as conn:
            row = self._row(conn, key)
            wanted = int(row.phase) if phase is None else phase
            phase_row = conn.execute(
                sa.select(experiment_phases).where(
                    experiment_phases.c.experiment_key == key,
                    experiment_phases.c.phase == wanted,
                )
            ).first()
        if phase_row is None:
            raise NotFound(f"experiment {key!r} has no phase {wanted} (was it started?)")
        document = _decode(phase_row.document)
        return document, ExperimentScope(
            key=key,
            phase=wanted,
            phase_start=phase_row.started_at,
            phase_end=phase_row.ended_at,
            variants=tuple(variant_keys(document)),
        )

    def save_allocations(
        self,
        key: str,
        allocations: Mapping[str, Mapping[str, float]],
        statistics: Mapping[str, Any],
    ) -> None:
        """Replace a bandit's allocations (context -> arm -> share) and bump the revision so
        decisions follow them."""
        now = self._clock.now()
        with self._db.begin() as conn:
            conn.execute(
                experiment_allocations.delete().where(
                    experiment_allocations.c.experiment_key == key
                )
            )
            if allocations:
                conn.execute(
                    experiment_allocations.insert(),
                    [
                        {
                            "experiment_key": key,
                            "context": context,
                            "allocation": _encode(dict(shares)).decode(),
                            "statistics": _encode(statistics.get(context, {})).decode(),
                            "updated_at": now,
                        }
                        for context, shares in allocations.items()
                    ],
                )
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(revision=_next_revision(conn, now))
            )

    def allocations(self, key: str) -> dict[str, Any]:
        """A bandit's allocations now: context -> {allocation, statistics, updatedAt}."""
        a = experiment_allocations.c
        with self._db.connect() as conn:
            rows = conn.execute(
                sa.select(a.context, a.allocation, a.statistics, a.updated_at).where(
                    a.experiment_key == key
                )
            ).all()
        return {
            str(context): {
                "allocation": _decode(allocation),
                "statistics": _decode(statistics),
                "updatedAt": updated_at.isoformat(),
            }
            for context, allocation, statistics, updated_at in rows
        }

    # -- helpers -------------------------------------------------------------------------------

    def _row(self, conn: sa.Connection, key: str) -> Any:
        row = conn.execute(sa.select(experiments).where(experiments.c.key == key)).first()
        if row is None:
            raise NotFound(f"no experiment {key!r}", code="experiment_not_found")
        return row

    def _open_phase(
        self,
        conn: sa.Connection,
        document: Mapping[str, Any],
        phase: int,
        now: datetime,
        reason: str,
    ) -> None:
        conn.execute(
            experiment_phases.insert().values(
                experiment_key=document["key"],
                phase=phase,
                document=_encode(document).decode(),
                reason=reason,
                started_at=now,
            )
        )

    def _check_namespace(self, conn: sa.Connection, document: Mapping[str, Any]) -> None:
        """Running experiments of one namespace claim disjoint ranges of it."""
        namespace = document.get("namespace")
        if namespace is None:
            return
        rows = conn.execute(
            sa.select(experiments.c.key, experiments.c.document).where(
                experiments.c.status == "running", experiments.c.key != document["key"]
            )
        ).all()
        for other_key, text in rows:
            other = (_decode(text) or {}).get("namespace")
            if (
                other is not None
                and other["id"] == namespace["id"]
                and other["start"] < namespace["end"]
                and namespace["start"] < other["end"]
            ):
                raise Conflict(
                    f"namespace {namespace['id']!r}: the range [{namespace['start']}, "
                    f"{namespace['end']}) overlaps running experiment {other_key!r}'s "
                    f"[{other['start']}, {other['end']})",
                    code="namespace_overlap",
                )

    def _view(self, conn: sa.Connection, key: str) -> dict[str, Any]:
        row = self._row(conn, key)
        phases = conn.execute(
            sa.select(experiment_phases)
            .where(experiment_phases.c.experiment_key == key)
            .order_by(experiment_phases.c.phase)
        ).all()
        return {
            **_decode(row.document),
            "status": row.status,
            "phase": int(row.phase),
            "phases": [
                {
                    "phase": int(p.phase),
                    "reason": p.reason,
                    "startedAt": p.started_at.isoformat(),
                    "endedAt": p.ended_at.isoformat() if p.ended_at else None,
                    "weights": {v["key"]: v["weight"] for v in _decode(p.document)["variants"]},
                }
                for p in phases
            ],
            "createdAt": row.created_at.isoformat(),
            "updatedAt": row.updated_at.isoformat(),
            "startedAt": row.started_at.isoformat() if row.started_at else None,
            "stoppedAt": row.stopped_at.isoformat() if row.stopped_at else None,
        }
