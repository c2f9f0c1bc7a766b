"""Segment definitions (with every version), their memberships, and the compiled set the worker
evaluates.

A definition is saved only when its condition is valid against every other active segment
(``InvalidDefinition``, HTTP 422, with a JSON pointer per problem). Each save is a new version;
deleting archives (a new version too), and is refused while an active segment refers to it.
Each change raises the table's ``revision``, so a worker notices it with one small query per
batch (``CompiledSegments.fingerprint``) and compiles the set again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.errors import Conflict, InvalidDefinition, NotFound, ValidationError
from personify.profiles.state import decode_state, state_text
from personify.profiles.tables import profiles
from personify.segments.clustering import ClusterRun, spec_from_dict
from personify.segments.conditions import EventCounter
from personify.segments.membership import MembershipChanges
from personify.segments.predicates import Predicate, compile_condition
from personify.segments.rfm import RFM_CELLS, RFM_PREFIX, RfmModel, RfmRuns, rfm_key
from personify.segments.tables import (
    clustering_runs,
    clusterings,
    segment_backfills,
    segment_definitions,
    segment_members,
    segment_versions,
)
from personify.store.database import Database, aware

__all__ = [
    "ACTIVE",
    "ARCHIVED",
    "CompiledSegment",
    "CompiledSegments",
    "MemberPage",
    "Membership",
    "SegmentDefinition",
    "SegmentRepository",
    "check_text",
    "user_profiles",
]

ACTIVE = "active"
ARCHIVED = "archived"
RULE = "rule"
RFM = "rfm"
CLUSTER = "cluster"
# keys name segments in conditions and URLs: letters, digits and - _ . (a cluster's segments,
# later, are KEY/NAME)
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_MAX_NAME_CHARS = 200
_MAX_DESCRIPTION_CHARS = 10_000
_encode = msgspec.json.encode
_decode = msgspec.json.decode
# profiles read at a time when a segment's members exit together
_PAGE = 500


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    """One segment as saved (its newest version)."""

    key: str
    name: str
    description: str
    kind: str
    condition: Any
    version: int
    status: str
    created_at: datetime
    updated_at: datetime
    # the newest backfill of the segment: status, done, total and its times
    backfill: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``GET /v1/segments/{key}``."""
        return {
            "backfill": self.backfill,
            "key": self.key,
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "condition": self.condition,
            "version": self.version,
            "status": self.status,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Membership:
    """A profile's stay in a segment (open while ``exited_at`` is ``None``)."""

    segment_key: str
    profile_id: str
    segment_version: int
    entered_at: datetime
    entry_reason: str
    exited_at: datetime | None = None
    exit_reason: str | None = None


@dataclass(frozen=True, slots=True)
class MemberPage:
    """One page of a segment's current members, by profile id; ``next`` is the cursor."""

    members: list[Membership]
    next: str | None


@dataclass(frozen=True, slots=True)
class CompiledSegment:
    """An active rule segment compiled for evaluation."""

    key: str
    version: int
    predicate: Predicate


@dataclass(frozen=True, slots=True)
class LiveClustering:
    """A clustering's current run, as the worker places profiles with it: the feature paths
    (split at dots), the model, and the segment key of each of its clusters."""

    key: str
    paths: tuple[tuple[str, ...], ...]
    run: ClusterRun
    segment_keys: tuple[str, ...]

    def place(self, matrix: Any) -> list[str]:
        """The segment key of the nearest cluster for each row of feature vectors."""
        index = {key: i for i, key in enumerate(self.run.keys)}
        return [self.segment_keys[index[key]] for key in self.run.assign(matrix)]


@dataclass(frozen=True, slots=True)
class CompiledSegments:
    """Every active rule segment, in an order where a segment comes after those it reads."""

    segments: tuple[CompiledSegment, ...] = ()
    fingerprint: tuple[int, int, int] = (0, 0, 0)
    counters: tuple[EventCounter, ...] = field(default=())
    # the newest RFM run: its cells are segments too (``personify.segments.rfm``)
    rfm: RfmModel | None = None
    # the current run of every clustering: the worker places touched profiles with them
    clusterings: tuple[LiveClustering, ...] = ()
    # the segments of those clusters, which only placing changes
    cluster_keys: frozenset[str] = frozenset()
    # the version of every segment evaluated: rules, RFM cells (the run's id), clusters
    versions: Mapping[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether anything is evaluated at all."""
        return bool(self.segments) or self.rfm is not None or bool(self.clusterings)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValidationError(
            "a segment key is 1-100 letters, digits, '-', '_' or '.', starting with a letter "
            "or digit",
            code="invalid_key",
            details={"field": "key"},
        )


def check_text(name: str, value: Any, limit: int) -> str:
    """``value`` when it is text of at most ``limit`` characters (no NUL), else a 400."""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise ValidationError(
            f"{name} must be text of at most {limit} characters",
            code="invalid_field",
            details={"field": name},
        )
    return value


def user_profiles(conn: sa.Connection, profile_ids: Sequence[str]) -> set[str]:
    """Which of ``profile_ids`` a userId names (their membership events say ``userId``, the
    others' ``anonymousId``), read from their stored states."""
    found: set[str] = set()
    for start in range(0, len(profile_ids), _PAGE):
        chunk = list(profile_ids[start : start + _PAGE])
        for profile_id, blob in conn.execute(
            sa.select(profiles.c.profile_id, profiles.c.state).where(
                profiles.c.profile_id.in_(chunk)
            )
        ):
            if decode_state(state_text(blob)).user_ids:
                found.add(str(profile_id))
    return found


def _iso(moment: datetime | None) -> str | None:
    found = aware(moment)
    return found.isoformat() if found is not None else None


def _backfill(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "version": int(row.segment_version),
        "status": row.status,
        "done": int(row.done),
        "total": int(row.total),
        "requestedAt": _iso(row.requested_at),
        "startedAt": _iso(row.started_at),
        "finishedAt": _iso(row.finished_at),
    }


def _definition(row: Any, backfill: dict[str, Any] | None = None) -> SegmentDefinition:
    return SegmentDefinition(
        backfill=backfill,
        key=row.key,
        name=row.name,
        description=row.description,
        kind=row.kind,
        condition=_decode(row.condition) if row.condition is not None else None,
        version=int(row.version),
        status=row.status,
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        updated_at=aware(row.updated_at),  # type: ignore[arg-type]
    )


def _membership(row: Any) -> Membership:
    return Membership(
        segment_key=row.segment_key,
        profile_id=row.profile_id,
        segment_version=int(row.segment_version),
        entered_at=aware(row.entered_at),  # type: ignore[arg-type]
        entry_reason=row.entry_reason,
        exited_at=aware(row.exited_at),
        exit_reason=row.exit_reason,
    )


_FINGERPRINT = sa.select(
    sa.func.count(),
    sa.func.coalesce(sa.func.max(segment_definitions.c.revision), 0),
    sa.func.coalesce(sa.func.sum(segment_definitions.c.revision), 0),
)


def segments_fingerprint(conn: sa.Connection) -> tuple[int, int, int]:
    """A value that changes whenever any definition changes (count, max and sum of revisions)."""
    count, top, total = conn.execute(_FINGERPRINT).one()
    return int(count), int(top), int(total)


def compile_segments(rows: Sequence[tuple[str, int, Any]]) -> tuple[CompiledSegment, ...]:
    """Compile ``(key, version, condition)`` rows, ordered so that a segment follows every
    segment its condition refers to (the definitions were checked for loops when saved)."""
    compiled = {
        key: CompiledSegment(key, version, compile_condition(cond)) for key, version, cond in rows
    }
    ordered: list[CompiledSegment] = []
    placed: set[str] = set()

    def place(key: str, trail: frozenset[str]) -> None:
        if key in placed or key not in compiled or key in trail:
            return
        for ref in sorted(compiled[key].predicate.segment_keys):
            place(ref, trail | {key})
        placed.add(key)
        ordered.append(compiled[key])

    for key in sorted(compiled):
        place(key, frozenset())
    return tuple(ordered)


class SegmentRepository:
    """Saves and reads segment definitions and memberships in the state database."""

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._compiled = CompiledSegments()

    # -- definitions -------------------------------------------------------------------------

    def create(
        self, key: str, *, name: str | None = None, description: str = "", condition: Any
    ) -> SegmentDefinition:
        """Save a new rule segment (version 1, or the next version of an archived one).

        Raises ``ValidationError`` for a bad key, name or description, ``InvalidDefinition``
        for a bad condition and ``Conflict`` when an active segment has the key already.
        """
        _check_key(key)
        if key.startswith(RFM_PREFIX):
            raise ValidationError(
                f"keys starting with {RFM_PREFIX!r} are the RFM cells' (docs/segments.md)",
                code="invalid_key",
                details={"field": "key"},
            )
        name = check_text("name", key if name is None else name, _MAX_NAME_CHARS)
        description = check_text("description", description, _MAX_DESCRIPTION_CHARS)
        with self._db.begin() as conn:
            existing = self._row(conn, key)
            if existing is not None and existing.status == ACTIVE:
                raise Conflict(f"segment {key!r} exists already", code="segment_exists")
            self._check_condition(conn, key, condition)
            version = int(existing.version) + 1 if existing is not None else 1
            return self._save(conn, key, name, description, condition, version, ACTIVE, existing)

    def update(
        self,
        key: str,
        *,
        name: str | None = None,
        description: str | None = None,
        condition: Any = None,
    ) -> SegmentDefinition:
        """Save a new version of an active segment; what is not given is kept."""
        with self._db.begin() as conn:
            existing = self._active(conn, key)
            name = check_text("name", existing.name if name is None else name, _MAX_NAME_CHARS)
            description = check_text(
                "description",
                existing.description if description is None else description,
                _MAX_DESCRIPTION_CHARS,
            )
            if condition is None:
                condition = _decode(existing.condition)
            else:
                self._check_condition(conn, key, condition)
            version = int(existing.version) + 1
            return self._save(conn, key, name, description, condition, version, ACTIVE, existing)

    def archive(self, key: str) -> SegmentDefinition:
        """Archive a segment (its members exit); refused while an active segment reads it."""
        with self._db.begin() as conn:
            existing = self._active(conn, key)
            users = [
                other
                for other, condition in self._active_conditions(conn).items()
                if other != key
                and condition is not None
                and key in compile_condition(condition).segment_keys
            ]
            if users:
                raise Conflict(
                    f"segment {key!r} is used by {', '.join(sorted(users))}; change those first",
                    code="segment_in_use",
                    details={"usedBy": sorted(users)},
                )
            condition = _decode(existing.condition) if existing.condition else None
            saved = self._save(
                conn,
                key,
                existing.name,
                existing.description,
                condition,
                int(existing.version) + 1,
                ARCHIVED,
                existing,
            )
            self._close_all(conn, key, int(existing.version))
            return saved

    def _close_all(self, conn: sa.Connection, key: str, version: int) -> None:
        """Every member of an archived segment exits, with an event each."""
        m = segment_members.c
        open_rows = [
            (int(row_id), str(profile_id))
            for row_id, profile_id in conn.execute(
                sa.select(m.id, m.profile_id).where(m.segment_key == key, m.exited_at.is_(None))
            )
        ]
        changes = MembershipChanges(self._clock.now())
        for start in range(0, len(open_rows), _PAGE):
            page = open_rows[start : start + _PAGE]
            users = user_profiles(conn, [pid for _, pid in page])
            for row_id, profile_id in page:
                changes.exit(row_id, profile_id, profile_id in users, key, version, "archived")
        changes.flush(conn)

    def get(self, key: str) -> SegmentDefinition:
        """The segment's newest version (archived ones too); ``NotFound`` if it never existed."""
        with self._db.connect() as conn:
            row = self._row(conn, key)
            backfill = self._newest_backfill(conn, key)
        if row is None:
            raise NotFound(f"no segment {key!r}", code="segment_not_found")
        return _definition(row, backfill)

    def definitions(self, *, include_archived: bool = False) -> list[SegmentDefinition]:
        """Every segment by key (active ones only unless ``include_archived``)."""
        query = sa.select(segment_definitions).order_by(segment_definitions.c.key)
        if not include_archived:
            query = query.where(segment_definitions.c.status == ACTIVE)
        b = segment_backfills.c
        newest = sa.select(sa.func.max(b.id)).group_by(b.segment_key).scalar_subquery()
        with self._db.connect() as conn:
            backfills = {
                str(row.segment_key): _backfill(row)
                for row in conn.execute(sa.select(segment_backfills).where(b.id.in_(newest)))
            }
            return [_definition(row, backfills.get(row.key)) for row in conn.execute(query)]

    def versions(self, key: str) -> list[dict[str, Any]]:
        """Every saved version of a segment, newest first."""
        query = (
            sa.select(segment_versions)
            .where(segment_versions.c.key == key)
            .order_by(segment_versions.c.version.desc())
        )
        with self._db.connect() as conn:
            rows = list(conn.execute(query))
        if not rows:
            raise NotFound(f"no segment {key!r}", code="segment_not_found")
        return [
            {
                "version": int(r.version),
                "name": r.name,
                "description": r.description,
                "condition": _decode(r.condition) if r.condition is not None else None,
                "status": r.status,
                "savedAt": aware(r.saved_at).isoformat(),  # type: ignore[union-attr]
            }
            for r in rows
        ]

    def compiled(self, conn: sa.Connection) -> CompiledSegments:
        """The active rule segments compiled, read again only when a definition changed."""
        fingerprint = segments_fingerprint(conn)
        if fingerprint == self._compiled.fingerprint:
            return self._compiled
        rows = [
            (str(key), int(version), _decode(condition))
            for key, version, condition in conn.execute(
                sa.select(
                    segment_definitions.c.key,
                    segment_definitions.c.version,
                    segment_definitions.c.condition,
                ).where(
                    segment_definitions.c.status == ACTIVE,
                    segment_definitions.c.kind == RULE,
                )
            )
        ]
        segments = compile_segments(rows)
        live, cluster_versions = _live_clusterings(conn)
        rfm = RfmRuns(self._db).newest(conn)
        counters: dict[str, EventCounter] = {}
        for segment in segments:
            for counter in segment.predicate.counters:
                counters.setdefault(counter.id, counter)
        self._compiled = CompiledSegments(
            segments=segments,
            fingerprint=fingerprint,
            counters=tuple(counters.values()),
            rfm=rfm,
            clusterings=live,
            cluster_keys=frozenset(cluster_versions),
            versions={
                **{s.key: s.version for s in segments},
                **({rfm_key(cell): rfm.run_id for cell in RFM_CELLS} if rfm else {}),
                **cluster_versions,
            },
        )
        return self._compiled

    # -- memberships -------------------------------------------------------------------------

    def members(self, key: str, *, limit: int = 100, after: str | None = None) -> MemberPage:
        """A page of the segment's current members by profile id, after cursor ``after``."""
        self.get(key)
        query = (
            sa.select(segment_members)
            .where(segment_members.c.segment_key == key, segment_members.c.exited_at.is_(None))
            .order_by(segment_members.c.profile_id)
            .limit(limit + 1)
        )
        if after:
            query = query.where(segment_members.c.profile_id > after)
        with self._db.connect() as conn:
            rows = [_membership(row) for row in conn.execute(query)]
        more = len(rows) > limit
        rows = rows[:limit]
        return MemberPage(rows, rows[-1].profile_id if more and rows else None)

    def profile_segments(
        self, profile_id: str, *, at: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The segments a profile is in now, or was in at ``at`` (from its membership
        history): ``[{"key", "since"}]`` by key. Stays in one segment never overlap, so each
        key comes once."""
        m = segment_members.c
        held = (
            m.exited_at.is_(None)
            if at is None
            else sa.and_(m.entered_at <= at, sa.or_(m.exited_at.is_(None), m.exited_at > at))
        )
        query = (
            sa.select(m.segment_key, m.entered_at)
            .where(m.profile_id == profile_id, held)
            .order_by(m.segment_key)
        )
        with self._db.connect() as conn:
            return [
                {"key": key, "since": aware(since).isoformat()}  # type: ignore[union-attr]
                for key, since in conn.execute(query)
            ]

    def stats(self, key: str, *, days: int = 30) -> dict[str, Any]:
        """The segment's size now, and at the end of each of the last ``days`` UTC days."""
        definition = self.get(key)
        now = self._clock.now()
        end = now.replace(hour=0, minute=0, second=0, microsecond=0)
        points = [end - timedelta(days=n) for n in range(days - 1, -1, -1)]
        m = segment_members.c
        ends = [*points[1:], now]

        def held(at: datetime) -> sa.ColumnElement[Any]:
            inside = sa.and_(m.entered_at <= at, sa.or_(m.exited_at.is_(None), m.exited_at > at))
            return sa.func.coalesce(sa.func.sum(sa.case((inside, 1), else_=0)), 0)

        # one pass over the segment's stays: every figure is a sum over them
        query = sa.select(
            sa.func.count(),
            sa.func.count(m.exited_at),
            sa.func.coalesce(sa.func.sum(sa.case((m.exited_at.is_(None), 1), else_=0)), 0),
            *(held(at) for at in ends),
        ).where(m.segment_key == key)
        with self._db.connect() as conn:
            entered, exited, size, *sizes = conn.execute(query).one()
        series = [{"at": at.isoformat(), "size": int(n)} for at, n in zip(ends, sizes, strict=True)]
        return {
            "key": key,
            "version": definition.version,
            "status": definition.status,
            "size": int(size),
            "entries": int(entered),
            "exits": int(exited),
            "series": series,
        }

    # -- internals ---------------------------------------------------------------------------

    def _row(self, conn: sa.Connection, key: str) -> Any:
        return conn.execute(
            sa.select(segment_definitions).where(segment_definitions.c.key == key)
        ).first()

    def _newest_backfill(self, conn: sa.Connection, key: str) -> dict[str, Any] | None:
        b = segment_backfills.c
        return _backfill(
            conn.execute(
                sa.select(segment_backfills)
                .where(b.segment_key == key)
                .order_by(b.id.desc())
                .limit(1)
            ).first()
        )

    def _active(self, conn: sa.Connection, key: str) -> Any:
        row = self._row(conn, key)
        if row is None or row.status != ACTIVE:
            raise NotFound(f"no active segment {key!r}", code="segment_not_found")
        if row.kind != RULE:
            raise Conflict(
                f"segment {key!r} is kept by its {row.kind} runs; it cannot be edited or deleted",
                code="segment_managed",
            )
        return row

    def save_rfm_cells(self, conn: sa.Connection, run_id: int) -> None:
        """Make every RFM cell an active segment at version ``run_id`` (with a backfill)."""
        for cell in RFM_CELLS:
            key = rfm_key(cell)
            existing = self._row(conn, key)
            name = f"RFM: {cell.replace('_', ' ')}"
            description = f"buyers in the RFM cell {cell} (docs/segments.md, RFM)"
            self._save(conn, key, name, description, None, run_id, ACTIVE, existing, kind=RFM)

    # -- the segments of clusterings -----------------------------------------------------------

    def save_clusters(
        self,
        conn: sa.Connection,
        clustering: str,
        run: int,
        clusters: Sequence[tuple[str, str, str]],
    ) -> dict[str, int]:
        """Make ``(cluster key, name, description)`` the active segments ``clustering/KEY``
        (no backfill: a run assigns everyone itself) and archive the clustering's others;
        returns each segment's version."""
        saved: dict[str, int] = {}
        wanted = {f"{clustering}/{cluster}": (name, text) for cluster, name, text in clusters}
        for key in sorted(set(wanted) | set(self._cluster_rows(conn, clustering))):
            existing = self._row(conn, key)
            version = max(run, int(existing.version) + 1) if existing is not None else run
            if key in wanted:
                name, text = wanted[key]
                self._save(
                    conn,
                    key,
                    name,
                    text,
                    None,
                    version,
                    ACTIVE,
                    existing,
                    kind=CLUSTER,
                    backfill=False,
                )
                saved[key] = version
            elif existing.status == ACTIVE:
                self._archive_cluster(conn, existing, version)
        return saved

    def _archive_cluster(self, conn: sa.Connection, existing: Any, version: int) -> None:
        self._save(
            conn,
            existing.key,
            existing.name,
            existing.description,
            None,
            version,
            ARCHIVED,
            existing,
            kind=CLUSTER,
            backfill=False,
        )

    def archive_clusters(self, conn: sa.Connection, clustering: str) -> None:
        """Archive every segment of a clustering (its members exit), refused while an active
        rule reads one of them."""
        keys = [
            k for k, row in self._cluster_rows(conn, clustering).items() if row.status == ACTIVE
        ]
        users = sorted(
            other
            for other, condition in self._active_conditions(conn).items()
            if condition is not None and set(keys) & compile_condition(condition).segment_keys
        )
        if users:
            raise Conflict(
                f"segments of {clustering!r} are used by {', '.join(users)}; change those first",
                code="segment_in_use",
                details={"usedBy": users},
            )
        for key in keys:
            existing = self._row(conn, key)
            self._archive_cluster(conn, existing, int(existing.version) + 1)
            self._close_all(conn, key, int(existing.version))

    def rename_cluster(self, conn: sa.Connection, key: str, name: str) -> None:
        """Name a cluster's segment (a new version of it, same members)."""
        existing = self._row(conn, key)
        if existing is None or existing.status != ACTIVE:
            raise NotFound(f"no active segment {key!r}", code="segment_not_found")
        self._save(
            conn,
            key,
            name,
            existing.description,
            None,
            int(existing.version) + 1,
            ACTIVE,
            existing,
            kind=CLUSTER,
            backfill=False,
        )

    def cluster_segment_keys(self, clustering: str) -> list[str]:
        """Every segment a clustering has ever had, active or archived."""
        with self._db.connect() as conn:
            return sorted(self._cluster_rows(conn, clustering))

    def _cluster_rows(self, conn: sa.Connection, clustering: str) -> dict[str, Any]:
        d = segment_definitions.c
        prefix = f"{clustering}/"
        return {
            row.key: row
            for row in conn.execute(
                sa.select(segment_definitions).where(
                    d.kind == CLUSTER, sa.func.substr(d.key, 1, len(prefix)) == prefix
                )
            )
        }

    def _active_conditions(self, conn: sa.Connection) -> dict[str, Any]:
        return {
            str(key): _decode(condition) if condition is not None else None
            for key, condition in conn.execute(
                sa.select(segment_definitions.c.key, segment_definitions.c.condition).where(
                    segment_definitions.c.status == ACTIVE
                )
            )
        }

    def _check_condition(self, conn: sa.Connection, key: str, condition: Any) -> None:
        if condition is None:
            raise InvalidDefinition(
                "a rule segment needs a condition",
                code="invalid_condition",
                details={"errors": [{"pointer": "", "code": "missing", "message": "no condition"}]},
            )
        others = {k: c for k, c in self._active_conditions(conn).items() if k != key}
        compile_condition(condition, key=key, segments=others)

    def _save(
        self,
        conn: sa.Connection,
        key: str,
        name: str,
        description: str,
        condition: Any,
        version: int,
        status: str,
        existing: Any,
        *,
        kind: str = RULE,
        backfill: bool = True,
    ) -> SegmentDefinition:
        now = self._clock.now()
        top = conn.execute(sa.select(sa.func.max(segment_definitions.c.revision))).scalar()
        # microseconds, and always past the last: concurrent saves on PostgreSQL still differ
        revision = max(int(top or 0) + 1, int(now.timestamp() * 1_000_000))
        text = _encode(condition).decode() if condition is not None else None
        values = {
            "name": name,
            "description": description,
            "kind": kind,
            "condition": text,
            "version": version,
            "status": status,
            "revision": revision,
            "updated_at": now,
        }
        if existing is None:
            conn.execute(segment_definitions.insert().values(key=key, created_at=now, **values))
        else:
            changed = conn.execute(
                segment_definitions.update()
                .where(
                    segment_definitions.c.key == key,
                    segment_definitions.c.version == existing.version,
                )
                .values(**values)
            ).rowcount
            if changed != 1:
                raise Conflict(
                    f"segment {key!r} changed meanwhile; read it again", code="segment_changed"
                )
        if status == ACTIVE and backfill:
            # every stored profile is evaluated again, in the background (``backfill``)
            conn.execute(
                segment_backfills.insert().values(
                    segment_key=key,
                    segment_version=version,
                    status="pending",
                    total=0,
                    done=0,
                    requested_at=now,
                )
            )
        conn.execute(
            segment_versions.insert().values(
                key=key,
                version=version,
                name=name,
                description=description,
                condition=text,
                status=status,
                saved_at=now,
            )
        )
        return _definition(self._row(conn, key), self._newest_backfill(conn, key))


def _live_clusterings(conn: sa.Connection) -> tuple[tuple[LiveClustering, ...], dict[str, int]]:
    """The current run of every active clustering, and the version of each active segment
    of a cluster."""
    d = segment_definitions.c
    versions = {
        str(key): int(version)
        for key, version in conn.execute(
            sa.select(d.key, d.version).where(d.kind == CLUSTER, d.status == ACTIVE)
        )
    }
    live = []
    rows = conn.execute(
        sa.select(clusterings.c.key, clustering_runs.c.spec, clustering_runs.c.model)
        .join(
            clustering_runs,
            sa.and_(
                clustering_runs.c.clustering_key == clusterings.c.key,
                clustering_runs.c.number == clusterings.c.current_run,
            ),
        )
        .where(clusterings.c.status == ACTIVE, clustering_runs.c.model.is_not(None))
        .order_by(clusterings.c.key)
    )
    for key, spec_text, model_text in rows:
        spec = spec_from_dict(_decode(spec_text))
        run = ClusterRun.from_model(spec, _decode(model_text))
        segment_keys = tuple(f"{key}/{cluster}" for cluster in run.keys)
        if not all(k in versions for k in segment_keys):
            continue
        live.append(
            LiveClustering(
                key=key,
                paths=tuple(tuple(p.split(".")) for p in spec.features),
                run=run,
                segment_keys=segment_keys,
            )
        )
    return tuple(live), versions
