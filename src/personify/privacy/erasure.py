"""Erasure: the person behind any of their ids, and the durable job that erases them everywhere.

``resolve_subject`` turns one id into the ``Subject``: every profile the id belongs or belonged
to (through the identity graph and the merge records), every userId, anonymousId and
previousId linked to those profiles, and the PII hashes in their traits. Each store's part of
an erasure is an ``Eraser``; ``ErasureJob`` runs them for each request:

* ``submit`` records the request (``privacy_requests``) and suppresses the id at once;
  submitting an id that has a pending or running request returns that request (a failed one
  is opened again), so a repeated call never starts a second erasure;
* ``run_pending`` claims requests that are pending and due, or running but not touched for
  ``stale_after_s`` (the process running them died), with one conditional UPDATE each, so
  processes never run the same request at once. For each it resolves the subject again,
  stores it with the request, suppresses every id, then runs each eraser whose step is not
  done yet and records the step's result. A failed step keeps the request pending with its
  error, to be tried again after ``retry_s`` (the steps done stay done); after
  ``max_attempts`` the request is failed.
* A request that is done keeps only the keyed hash of its id: the id as given and the
  subject's ids are cleared with the last step.

Erasers are synchronous and idempotent; the job runs them in a thread (``run_async``), where
``JOB_LOOP`` names the event loop of the process's async ports (the cache).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, runtime_checkable

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.errors import NotFound
from personify.events.hashing import PiiHasher, is_pii_digest
from personify.privacy.suppression import Suppressions, id_hash, id_hashes
from personify.privacy.tables import privacy_requests
from personify.profiles.state import state_json
from personify.profiles.tables import (
    applied_events,
    identities,
    profile_merges,
    profile_versions,
    profiles,
)
from personify.store.database import Database, aware

__all__ = [
    "JOB_LOOP",
    "Eraser",
    "ErasureJob",
    "ErasureRequest",
    "ErasureRequests",
    "Subject",
    "resolve_subject",
]

logger = logging.getLogger(__name__)

_decode = msgspec.json.decode
_encode = msgspec.json.encode

JOB_LOOP: Final[contextvars.ContextVar[asyncio.AbstractEventLoop | None]] = contextvars.ContextVar(
    "personify_privacy_job_loop", default=None
)
"""The event loop that runs the process's async ports, while the job's thread runs erasers."""

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
# a step that did what it could and must run again after a time (``remains.rerun_after``)
WAITING = "waiting"
ERASE, EXPORT = "erase", "export"
# merges can chain (a merged into b merged into c); a graph deeper than this is not followed
_MAX_ROUNDS = 64
_CHUNK = 500
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Subject:
    """The person behind an erasure: every id of theirs and every hashed identifier."""

    profile_ids: frozenset[str]
    ids: frozenset[str]
    hashed: frozenset[str] = field(default_factory=frozenset)

    @property
    def needles(self) -> frozenset[str]:
        """``ids | profile_ids | hashed``: what a search of any store must not find."""
        return self.ids | self.profile_ids | self.hashed

    @classmethod
    def of(cls, identity: str) -> Subject:
        """A subject known only by one id (nothing in the state database links it)."""
        return cls(frozenset(), frozenset({identity}))

    def union(self, other: Subject) -> Subject:
        """Both subjects' ids together."""
        return Subject(
            self.profile_ids | other.profile_ids, self.ids | other.ids, self.hashed | other.hashed
        )

    def to_dict(self) -> dict[str, list[str]]:
        """The JSON shape kept with a running request."""
        return {
            "profileIds": sorted(self.profile_ids),
            "ids": sorted(self.ids),
            "hashed": sorted(self.hashed),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subject:
        """The subject ``to_dict`` gave."""
        return cls(
            frozenset(data.get("profileIds", ())),
            frozenset(data.get("ids", ())),
            frozenset(data.get("hashed", ())),
        )


@runtime_checkable
class Eraser(Protocol):
    """One store's part of an erasure. Both methods are idempotent and safe to re-run after a crash."""

    name: str

    def erase(self, subject: Subject) -> dict[str, Any]:
        """Remove everything of ``subject`` from the store; returns what went (JSON-able)."""
        ...

    def find(self, subject: Subject) -> list[str]:
        """Where anything of ``subject`` remains in the store (``[]``: nothing)."""
        ...


# -- resolving a subject ---------------------------------------------------------------------


def _chunks(values: Iterable[str]) -> list[list[str]]:
    items = sorted(values)
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _collect_digests(value: Any, found: set[str]) -> None:
    """Every PII digest (``hmac-sha256:…``) anywhere in a decoded JSON value."""
    if isinstance(value, str):
        if is_pii_digest(value):
            found.add(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect_digests(key, found)
            _collect_digests(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_digests(item, found)


def _decoded(text: Any) -> Any:
    if text is None:
        return None
    try:
        return _decode(state_json(text))
    except msgspec.DecodeError:
        return None


def _state_ids(document: Any) -> set[str]:
    """The ids a profile state lists (``ProfileState.user_ids`` and its kind)."""
    if not isinstance(document, dict):
        return set()
    found: set[str] = set()
    for key in ("user_ids", "anonymous_ids", "previous_ids"):
        values = document.get(key)
        if isinstance(values, list):
            found.update(str(v) for v in values if isinstance(v, str))
    return found


def resolve_subject(db: Database, hasher: PiiHasher, identity: str) -> Subject | None:
    """The person ``identity`` (a userId, anonymousId, previousId or profile id) belongs or
    belonged to; ``None`` when the state database links it to no profile.

    Follows the identity graph and the merge records both ways until nothing new turns up:
    profiles merged into the person's profile, and the profile a merged-away id went into.
    ``hashed`` holds the PII digests found in the profiles' states, versions and events, and
    the hash of ``identity`` itself as an e-mail address when it looks like one.
    """
    ids: set[str] = {identity}
    profile_ids: set[str] = set()
    hashed: set[str] = set()
    if "@" in identity:
        # under every key of the PII keyring: traits stored before a rotation too
        hashed.update(hasher.candidates("email", identity))
    frontier = {identity}
    with db.connect() as conn:
        for _ in range(_MAX_ROUNDS):
            if not frontier:
                break
            found_profiles: set[str] = set()
            for chunk in _chunks(frontier):
                found_profiles.update(
                    str(p)
                    for p in conn.execute(
                        sa.select(identities.c.profile_id).where(identities.c.identity.in_(chunk))
                    ).scalars()
                )
                found_profiles.update(
                    str(p)
                    for p in conn.execute(
                        sa.select(profiles.c.profile_id).where(profiles.c.profile_id.in_(chunk))
                    ).scalars()
                )
                # an id merged away went into another profile: the person is that one too
                found_profiles.update(
                    str(p)
                    for p in conn.execute(
                        sa.select(profile_merges.c.into_profile_id).where(
                            profile_merges.c.from_profile_id.in_(chunk)
                        )
                    ).scalars()
                )
            new_profiles = found_profiles - profile_ids
            profile_ids |= new_profiles
            found_ids: set[str] = set(new_profiles)
            for chunk in _chunks(new_profiles):
                found_ids.update(
                    str(i)
                    for i in conn.execute(
                        sa.select(identities.c.identity).where(identities.c.profile_id.in_(chunk))
                    ).scalars()
                )
                for from_id, merged_ids in conn.execute(
                    sa.select(profile_merges.c.from_profile_id, profile_merges.c.ids).where(
                        profile_merges.c.into_profile_id.in_(chunk)
                    )
                ):
                    found_ids.add(str(from_id))
                    listed = _decoded(merged_ids)
                    if isinstance(listed, list):
                        found_ids.update(str(i) for i in listed if isinstance(i, str))
                for (state,) in conn.execute(
                    sa.select(profiles.c.state).where(profiles.c.profile_id.in_(chunk))
                ):
                    document = _decoded(state)
                    found_ids |= _state_ids(document)
                    _collect_digests(document, hashed)
                for snapshot, diff in conn.execute(
                    sa.select(profile_versions.c.snapshot, profile_versions.c.diff).where(
                        profile_versions.c.profile_id.in_(chunk)
                    )
                ):
                    document = _decoded(snapshot)
                    found_ids |= _state_ids(document)
                    _collect_digests(document, hashed)
                    _collect_digests(_decoded(diff), hashed)
                for (payload,) in conn.execute(
                    sa.select(applied_events.c.payload).where(
                        applied_events.c.profile_id.in_(chunk)
                    )
                ):
                    _collect_digests(_decoded(payload), hashed)
            frontier = found_ids - ids
            ids |= found_ids
    if not profile_ids:
        return None
    return Subject(frozenset(profile_ids), frozenset(ids), frozenset(hashed))


# -- the requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """One data subject request (erase or export) and how far it got."""

    id: str
    kind: str
    status: str
    steps: dict[str, Any]
    attempts: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    next_attempt_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        """Pending or running: not finished yet."""
        return self.status in (PENDING, RUNNING)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the API and the CLI show (never the id in clear)."""
        return {
            "requestId": self.id,
            "kind": self.kind,
            "status": self.status,
            "steps": self.steps,
            "attempts": self.attempts,
            "error": self.error,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
            "nextAttemptAt": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
        }


def _request(row: Any) -> ErasureRequest:
    return ErasureRequest(
        id=row.id,
        kind=row.kind,
        status=row.status,
        steps=_decode(row.steps),
        attempts=int(row.attempts),
        error=row.error,
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        updated_at=aware(row.updated_at),  # type: ignore[arg-type]
        finished_at=aware(row.finished_at),
        next_attempt_at=aware(row.next_attempt_at),
    )


@dataclass(frozen=True, slots=True)
class _Claimed:
    """A request this process claimed to run: its row as claimed."""

    request: ErasureRequest
    identity: str | None
    subject: Subject | None


class ErasureRequests:
    """The durable requests (``privacy_requests``)."""

    def __init__(self, db: Database, hasher: PiiHasher, *, clock: Clock | None = None) -> None:
        self._db = db
        self._hasher = hasher
        self._clock = clock or SystemClock()

    def get(self, request_id: str) -> ErasureRequest:
        """The request ``request_id``; ``NotFound`` (``privacy_request_not_found``) if none."""
        with self._db.connect() as conn:
            row = conn.execute(
                sa.select(privacy_requests).where(privacy_requests.c.id == request_id)
            ).first()
        if row is None:
            raise NotFound(
                f"no privacy request has the id {request_id!r}", code="privacy_request_not_found"
            )
        return _request(row)

    def for_identity(self, identity: str, kind: str = ERASE) -> list[ErasureRequest]:
        """The requests made for ``identity`` (by its keyed hash), newest first."""
        with self._db.connect() as conn:
            rows = conn.execute(
                sa.select(privacy_requests)
                .where(
                    privacy_requests.c.identity_hash.in_(id_hashes(self._hasher, identity)),
                    privacy_requests.c.kind == kind,
                )
                .order_by(privacy_requests.c.created_at.desc(), privacy_requests.c.id)
            )
            return [_request(row) for row in rows]

    def open_or_create(self, identity: str) -> tuple[ErasureRequest, bool]:
        """The erasure request of ``identity`` that is pending or running (a failed one is
        opened again), or a new pending one; and whether it is new."""
        hashed = id_hash(self._hasher, identity)
        now = self._clock.now()
        with self._db.begin() as conn:
            row = conn.execute(
                sa.select(privacy_requests)
                .where(
                    privacy_requests.c.identity_hash.in_(id_hashes(self._hasher, identity)),
                    privacy_requests.c.kind == ERASE,
                    privacy_requests.c.status.in_((PENDING, RUNNING, FAILED)),
                )
                .order_by(privacy_requests.c.created_at.desc())
                .limit(1)
            ).first()
            if row is not None:
                if row.status == FAILED:
                    conn.execute(
                        privacy_requests.update()
                        .where(privacy_requests.c.id == row.id)
                        .values(
                            status=PENDING,
                            attempts=0,
                            next_attempt_at=None,
                            finished_at=None,
                            updated_at=now,
                            # a failed request may have lost its id in clear: it gets it back
                            identity=identity,
                        )
                    )
                request_id = str(row.id)
                created = False
            else:
                request_id = uuid.uuid4().hex
                conn.execute(
                    privacy_requests.insert().values(
                        id=request_id,
                        kind=ERASE,
                        identity=identity,
                        identity_hash=hashed,
                        subject=None,
                        status=PENDING,
                        steps="{}",
                        attempts=0,
                        error=None,
                        next_attempt_at=None,
                        created_at=now,
                        updated_at=now,
                        finished_at=None,
                    )
                )
                created = True
        return self.get(request_id), created

    def record_export(self, identity: str) -> ErasureRequest:
        """Record that everything held about ``identity`` was exported (done at once)."""
        now = self._clock.now()
        request_id = uuid.uuid4().hex
        with self._db.begin() as conn:
            conn.execute(
                privacy_requests.insert().values(
                    id=request_id,
                    kind=EXPORT,
                    identity=None,
                    identity_hash=id_hash(self._hasher, identity),
                    subject=None,
                    status=DONE,
                    steps="{}",
                    attempts=1,
                    error=None,
                    next_attempt_at=None,
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                )
            )
        return self.get(request_id)

    def due(self, *, stale_after_s: float, limit: int = 100) -> list[str]:
        """Requests to run now: pending and due, or running but untouched for too long."""
        now = self._clock.now()
        with self._db.connect() as conn:
            return [
                str(i)
                for i in conn.execute(
                    sa.select(privacy_requests.c.id)
                    .where(privacy_requests.c.kind == ERASE, self._claimable(now, stale_after_s))
                    .order_by(privacy_requests.c.created_at, privacy_requests.c.id)
                    .limit(limit)
                ).scalars()
            ]

    @staticmethod
    def _claimable(now: datetime, stale_after_s: float) -> sa.ColumnElement[bool]:
        c = privacy_requests.c
        return sa.or_(
            sa.and_(
                c.status == PENDING, sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)
            ),
            sa.and_(c.status == RUNNING, c.updated_at < now - timedelta(seconds=stale_after_s)),
        )

    def claim(self, request_id: str, *, stale_after_s: float) -> _Claimed | None:
        """Mark the request running for this process; ``None`` when another process has it
        (or it is no longer due). One conditional UPDATE: two claimers never both win."""
        now = self._clock.now()
        c = privacy_requests.c
        with self._db.begin() as conn:
            claimed = conn.execute(
                privacy_requests.update()
                .where(c.id == request_id, self._claimable(now, stale_after_s))
                .values(status=RUNNING, attempts=c.attempts + 1, updated_at=now)
            ).rowcount
            if not claimed:
                return None
            row = conn.execute(sa.select(privacy_requests).where(c.id == request_id)).one()
        subject = Subject.from_dict(_decode(row.subject)) if row.subject else None
        return _Claimed(_request(row), row.identity, subject)

    def keep_subject(self, request_id: str, subject: Subject) -> None:
        """Store the resolved subject with the running request (needed after a restart)."""
        with self._db.begin() as conn:
            conn.execute(
                privacy_requests.update()
                .where(privacy_requests.c.id == request_id)
                .values(subject=_encode(subject.to_dict()).decode(), updated_at=self._clock.now())
            )

    def record_steps(self, request_id: str, steps: dict[str, Any]) -> None:
        """Store the steps' results so far (and show the request is alive)."""
        with self._db.begin() as conn:
            conn.execute(
                privacy_requests.update()
                .where(privacy_requests.c.id == request_id)
                .values(steps=_encode(steps).decode(), updated_at=self._clock.now())
            )

    def finish(self, request_id: str, steps: dict[str, Any]) -> None:
        """Done: the steps' results stay, the id in clear and the subject go."""
        now = self._clock.now()
        with self._db.begin() as conn:
            conn.execute(
                privacy_requests.update()
                .where(privacy_requests.c.id == request_id)
                .values(
                    status=DONE,
                    steps=_encode(steps).decode(),
                    identity=None,
                    subject=None,
                    error=None,
                    next_attempt_at=None,
                    updated_at=now,
                    finished_at=now,
                )
            )

    def postpone(
        self, request_id: str, steps: dict[str, Any], error: str, *, retry_at: datetime | None
    ) -> None:
        """A step failed: pending again until ``retry_at``, or failed for good when ``None``."""
        now = self._clock.now()
        with self._db.begin() as conn:
            conn.execute(
                privacy_requests.update()
                .where(privacy_requests.c.id == request_id)
                .values(
                    status=PENDING if retry_at is not None else FAILED,
                    steps=_encode(steps).decode(),
                    error=error[:_MAX_ERROR_CHARS],
                    next_attempt_at=retry_at,
                    updated_at=now,
                    finished_at=None if retry_at is not None else now,
                )
            )


# -- the job ---------------------------------------------------------------------------------


def _rerun_after(result: Any) -> datetime | None:
    """When a step's result asks to be run again (``remains.rerun_after``), if it does."""
    remains = result.get("remains") if isinstance(result, dict) else None
    text = remains.get("rerun_after") if isinstance(remains, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class ErasureJob:
    """Submits erasure requests and runs them through every eraser (module docstring)."""

    def __init__(
        self,
        requests: ErasureRequests,
        erasers: Sequence[Eraser],
        *,
        db: Database,
        hasher: PiiHasher,
        suppressions: Suppressions,
        clock: Clock | None = None,
        max_attempts: int = 5,
        retry_s: float = 60.0,
        stale_after_s: float = 600.0,
    ) -> None:
        names = [eraser.name for eraser in erasers]
        if len(set(names)) != len(names):
            raise ValueError(f"eraser names must differ: {names}")
        self.requests = requests
        self.erasers = list(erasers)
        self.suppressions = suppressions
        self._db = db
        self._hasher = hasher
        self._clock = clock or SystemClock()
        self.max_attempts = max(1, max_attempts)
        self.retry_s = retry_s
        self.stale_after_s = stale_after_s

    def resolve(self, identity: str) -> Subject:
        """Everything known of the person behind ``identity`` (at least the id itself)."""
        resolved = resolve_subject(self._db, self._hasher, identity)
        found = Subject.of(identity)
        return found.union(resolved) if resolved is not None else found

    def submit(self, identity: str) -> ErasureRequest:
        """Record an erasure of the person behind ``identity`` and suppress their ids now;
        the same id with an open request gets that request back."""
        request, _ = self.requests.open_or_create(identity)
        subject = self.resolve(identity)
        self.suppressions.suppress(subject.ids | subject.profile_ids, request_id=request.id)
        return request

    def run_pending(self) -> dict[str, int]:
        """Run every request that is due (module docstring); returns how many ended how."""
        outcome = {DONE: 0, PENDING: 0, FAILED: 0}
        for request_id in self.requests.due(stale_after_s=self.stale_after_s):
            claimed = self.requests.claim(request_id, stale_after_s=self.stale_after_s)
            if claimed is None:
                continue
            outcome[self._run(claimed)] += 1
        return outcome

    async def run_async(self) -> dict[str, int]:
        """``run_pending`` in a thread, with ``JOB_LOOP`` naming the calling event loop."""
        JOB_LOOP.set(asyncio.get_running_loop())
        # the thread gets a copy of this context, JOB_LOOP included
        return await asyncio.to_thread(self.run_pending)

    def find(self, subject: Subject) -> dict[str, list[str]]:
        """Each eraser's ``find``: where anything of ``subject`` remains, by eraser."""
        return {eraser.name: eraser.find(subject) for eraser in self.erasers}

    async def find_async(self, subject: Subject) -> dict[str, list[str]]:
        """``find`` in a thread, with ``JOB_LOOP`` naming the calling event loop."""
        JOB_LOOP.set(asyncio.get_running_loop())
        return await asyncio.to_thread(self.find, subject)

    def run_now(self, request_id: str) -> ErasureRequest:
        """Run one request now if it is due (the CLI's ``erase --wait``); returns it after."""
        claimed = self.requests.claim(request_id, stale_after_s=self.stale_after_s)
        if claimed is not None:
            self._run(claimed)
        return self.requests.get(request_id)

    def _run(self, claimed: _Claimed) -> str:
        request = claimed.request
        subject = claimed.subject or Subject(frozenset(), frozenset())
        if claimed.identity is not None:
            subject = subject.union(self.resolve(claimed.identity))
        steps: dict[str, Any] = dict(request.steps)
        # the subject is kept before anything is erased: after the state step, only this
        # copy still knows which ids were the person's
        self.requests.keep_subject(request.id, subject)
        self.suppressions.suppress(subject.ids | subject.profile_ids, request_id=request.id)
        for eraser in self.erasers:
            if steps.get(eraser.name, {}).get("status") == DONE:
                continue
            try:
                result = eraser.erase(subject)
            # whatever broke one store's step (an engine down, a bug), the request stays
            # recorded with the error and is tried again; the job itself goes on
            except Exception as exc:
                message = f"{eraser.name}: {type(exc).__name__}: {exc}"
                logger.exception("erasure %s: step %s failed", request.id, eraser.name)
                steps[eraser.name] = {
                    "status": FAILED,
                    "error": message[:_MAX_ERROR_CHARS],
                    "at": self._clock.now().isoformat(),
                }
                retry_at = (
                    self._clock.now() + timedelta(seconds=self.retry_s)
                    if request.attempts < self.max_attempts
                    else None
                )
                self.requests.postpone(request.id, steps, message, retry_at=retry_at)
                return PENDING if retry_at is not None else FAILED
            rerun_after = _rerun_after(result)
            steps[eraser.name] = {
                # a store that can only finish later (the lake's vacuum retention) is run
                # again then; the request stays open until it has
                "status": WAITING if rerun_after is not None else DONE,
                "result": result,
                "at": self._clock.now().isoformat(),
            }
            self.requests.record_steps(request.id, steps)
        waits = [
            when
            for step in steps.values()
            if step.get("status") == WAITING
            and (when := _rerun_after(step.get("result") or {})) is not None
        ]
        if waits:
            self.requests.postpone(
                request.id,
                steps,
                "waiting: a store removes what is left only after its retention",
                retry_at=max(waits),
            )
            return PENDING
        self.requests.finish(request.id, steps)
        return DONE
