"""Apply a batch of events to profiles in one transaction: exactly once, merging identities.

One call of ``ProfileProcessor.apply``:

1. drops events whose key (``sourceId:messageId``) is already in ``applied_events``, or is
   repeated in the batch;
2. groups the rest with the existing identities into connected sets of ids (union-find);
3. loads every touched profile in bulk (one ``IN`` query per 512 ids; a state this process
   wrote last comes from ``StateCache`` instead of being decoded again) and merges the
   profiles a set now links;
4. applies the whole batch as columns (``ProfileBatch``, ``apply_batch``: group-bys over
   numpy columns, see ``personify.profiles.features.plan``), then picks each profile's
   canonical id (``identity.canonical_id``);
5. writes, with one ``executemany`` per table (``COPY`` on PostgreSQL for the rows it
   inserts: profiles, identities, ``applied_events``, versions): the profile rows
   (optimistic version check), the new identities, the re-pointed identities and timeline
   rows of merged profiles, the ``applied_events`` rows, one version row per profile and
   one row per merge;
6. runs the batch stages (``BatchStage``) over the same batch, in the same transaction.

All of it commits together, so a crash at any point leaves either everything or nothing;
a redelivered event then finds its key and is skipped. A concurrent writer that changed a
profile meanwhile makes the version check fail: ``Conflict`` is raised and the caller
retries the batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.errors import BackendUnavailable, Conflict, ValidationError
from personify.profiles.batch import BatchStage, ProfileBatch, StagedProfile
from personify.profiles.counters import CounterPlan, fill_counters
from personify.profiles.document import personalization_allowed
from personify.profiles.events import ProfileEvent, datetime_ms
from personify.profiles.features import FeatureSet
from personify.profiles.features.plan import FeaturePlan
from personify.profiles.history import diff_documents
from personify.profiles.identity import UnionFind, canonical_id
from personify.profiles.state import (
    ProfileState,
    apply_batch,
    compact_state,
    decode_state,
    encode_state,
    merge_states,
    needs_compaction,
    state_json,
    state_text,
)
from personify.profiles.tables import (
    applied_events,
    identities,
    profile_merges,
    profile_versions,
    profiles,
)
from personify.store.database import Database, copy_rows, lost_a_race
from personify.store.statements import Statements, insert_without_id

EVENT_COLUMNS = (
    "event_key",
    "profile_id",
    "event_time_ms",
    "message_id",
    "type",
    "name",
    "applied_at_ms",
    "payload",
)
PROFILE_COLUMNS = (
    "profile_id",
    "version",
    "state",
    "first_seen_ms",
    "last_seen_ms",
    "personalization_allowed",
    "history_in_row",
    "created_at",
    "updated_at",
)
IDENTITY_COLUMNS = ("identity", "profile_id", "linked_at")
VERSION_COLUMNS = (
    "profile_id",
    "version",
    "changed_at",
    "kind",
    "event_time_ms",
    "message_ids",
    "diff",
    "snapshot",
)
_CHUNK = 512  # ids per IN (...) query, well under every engine's bound on parameters
_MAX_NAME_CHARS = 512
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_decode_parts = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


@dataclass(frozen=True, slots=True)
class TouchedProfile:
    """A profile a batch changed: its id, new version, every id of it, and what merged in."""

    profile_id: str
    version: int
    ids: tuple[str, ...]
    merged_from: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one batch did."""

    applied: int
    duplicates: int
    touched: list[TouchedProfile]


@dataclass(slots=True)
class _Loaded:
    version: int
    blob: bytes | str
    history_in_row: bool


def _padded_size(count: int) -> int:
    size = 8
    while size < count:
        size *= 2
    return min(size, _CHUNK)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class ProfileProcessor:
    """Turns batches of events into profile changes in the state database."""

    def __init__(
        self,
        db: Database,
        features: FeatureSet,
        *,
        clock: Clock | None = None,
        max_identities: int = 1000,
        snapshot_every: int = 50,
        stages: Sequence[BatchStage] = (),
        state_cache_mb: float = 128.0,
    ) -> None:
        self._db = db
        self.features = features
        self._clock = clock or SystemClock()
        self._max_identities = max_identities
        self._snapshot_every = max(1, snapshot_every)
        self._sql = _Statements()
        self._plan = FeaturePlan(features)
        self.stages = tuple(stages)
        self._cache = StateCache(round(state_cache_mb * 1024 * 1024))
        self._counters: CounterPlan | None = None

    def apply(
        self, events: Sequence[ProfileEvent], payloads: Sequence[str] | None = None
    ) -> ApplyResult:
        """Apply ``events`` (with their log JSON for the timeline) in one transaction.

        Raises ``Conflict`` when a concurrent writer got there first (retry the batch),
        ``BackendUnavailable`` when the database is unreachable or locked, and
        ``ValidationError`` when an event would link a profile beyond the identity limit or
        holds a value the database cannot store.
        """
        if payloads is None:
            payloads = [_encode(e.data).decode() for e in events]
        try:
            with self._db.engine.begin() as conn:
                result = self._apply(conn, events, payloads)
            self._cache.commit()
            return result
        except sa.exc.IntegrityError as exc:
            raise Conflict(
                f"another writer changed these profiles ({exc.orig}); retry the batch",
                code="profile_conflict",
            ) from exc
        except sa.exc.DataError as exc:
            # e.g. a NUL character in an id: SQLite stores it, PostgreSQL's text cannot
            raise ValidationError(
                f"these events hold a value the state database cannot store: {exc.orig}",
                code="unstorable_value",
            ) from exc
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if lost_a_race(exc):
                raise Conflict(
                    "a concurrent batch locked these profiles first; retry the batch",
                    code="profile_conflict",
                ) from exc
            raise BackendUnavailable(
                f"the state database is unavailable: {exc.orig}", code="state_unavailable"
            ) from exc
        finally:
            # states the cache lent to a batch that did not commit were changed in place:
            # they match no stored version any more
            self._cache.discard_pending()

    def _apply(
        self, conn: sa.Connection, events: Sequence[ProfileEvent], payloads: Sequence[str]
    ) -> ApplyResult:
        now = self._clock.now()
        now_ms = datetime_ms(now)
        keys = list(dict.fromkeys(e.key for e in events))
        seen: set[str] = {
            row[0] for row in self._sql.select_in(conn, applied_events.c.event_key, (), keys)
        }
        fresh: list[tuple[ProfileEvent, str]] = []
        for event, payload in zip(events, payloads, strict=True):
            if event.key in seen:
                continue
            seen.add(event.key)
            fresh.append((event, payload))
        duplicates = len(events) - len(fresh)
        if not fresh:
            return ApplyResult(0, duplicates, [])

        all_ids = list(dict.fromkeys(i for event, _ in fresh for i in event.ids))
        owner: dict[str, str] = {
            str(i): str(p)
            for i, p in self._sql.select_in(
                conn, identities.c.identity, (identities.c.profile_id,), all_ids
            )
        }

        # a profile id is itself one of the profile's ids, so ids alone are the nodes
        links: UnionFind[str] = UnionFind()
        for event, _ in fresh:
            ids = event.ids
            if len(ids) == 1:
                links.find(ids[0])
            else:
                for other in ids[1:]:
                    links.union(ids[0], other)
        for identity, profile_id in owner.items():
            links.union(identity, profile_id)

        components: dict[str, tuple[list[tuple[ProfileEvent, str]], set[str]]] = {}
        for item in fresh:
            root = links.find(item[0].ids[0])
            # not setdefault: its default would be built (and collected) for every event
            component = components.get(root)
            if component is None:
                component = components[root] = ([], set())
            component[0].append(item)
        for profile_id in set(owner.values()):
            components[links.find(profile_id)][1].add(profile_id)

        loaded = self._load(conn, sorted({p for _, pids in components.values() for p in pids}))
        stored = {
            pid: self._cache.state(pid, found.version, found.blob) for pid, found in loaded.items()
        }
        counters = self._counter_plan(conn)
        if counters is not None:
            # a rule saved since a profile was written counts its past events first
            fill_counters(conn, stored, counters)
        parts = [self._gather(items, sorted(pids), stored) for items, pids in components.values()]
        if counters is not None:
            # every stored state holds every counter now, and a new profile has no past
            for part in parts:
                part.state.counted = set(counters.ids)
        # one columnar batch of every fresh event, each resolved to its component's index
        batch_events: list[ProfileEvent] = []
        batch_profiles: list[int] = []
        for index, part in enumerate(parts):
            batch_events.extend(event for event, _ in part.items)
            batch_profiles.extend([index] * len(part.items))
        batch = ProfileBatch(batch_events, batch_profiles, len(parts))
        for index, part in enumerate(parts):
            batch.raise_latest(index, part.latest_before)
        apply_batch([part.state for part in parts], batch, self._plan, counters)
        for part in parts:
            state = part.state
            part.profile_id = canonical_id(state.user_ids, state.anonymous_ids | state.previous_ids)
        earlier = self._earlier_versions(
            conn, sorted({p.profile_id for p in parts if p.profile_id not in p.ids_before})
        )
        writer = _BatchWriter(now, now_ms)
        staged = [
            self._store(index, part, loaded, owner, earlier, writer)
            for index, part in enumerate(parts)
        ]
        writer.flush(conn, self._sql)
        for stage in self.stages:
            stage.apply(conn, batch, staged)
        touched = [
            TouchedProfile(s.profile_id, s.version, tuple(sorted(s.state.all_ids())), s.merged_from)
            for s in staged
        ]
        return ApplyResult(len(fresh), duplicates, touched)

    def _counter_plan(self, conn: sa.Connection) -> CounterPlan | None:
        """The event counters the stages read, compiled again only when they change."""
        if not self.stages:
            return None
        specs = [spec for stage in self.stages for spec in stage.counters(conn)]
        ids = frozenset(spec.id for spec in specs)
        if self._counters is None or self._counters.ids != ids:
            self._counters = CounterPlan(specs)
        return self._counters

    def _load(self, conn: sa.Connection, profile_ids: Sequence[str]) -> dict[str, _Loaded]:
        loaded = {
            # the state is text, or bytes when SQLite holds it compressed at rest
            str(profile_id): _Loaded(int(version), blob, bool(in_row))
            for profile_id, version, blob, in_row in self._sql.select_in(
                conn,
                profiles.c.profile_id,
                (profiles.c.version, profiles.c.state, profiles.c.history_in_row),
                profile_ids,
            )
        }
        missing = set(profile_ids) - set(loaded)
        if missing:
            # an identity points at a profile another writer is merging away right now
            raise Conflict(
                f"profiles {sorted(missing)[:3]} changed meanwhile; retry the batch",
                code="profile_conflict",
            )
        return loaded

    def _earlier_versions(self, conn: sa.Connection, profile_ids: Sequence[str]) -> dict[str, int]:
        """The newest history version of each of ``profile_ids`` that has no profile row.

        A profile id is the smallest userId, else the smallest other id, so it can come back
        after its profile was merged away: an anonymousId "c" merged into userId "u1" is the
        id again once "c" arrives as a userId too. Its versions go on after the earlier ones.
        """
        if not profile_ids:
            return {}
        found: dict[str, int] = {}
        for chunk in _chunks(profile_ids):
            query = (
                sa.select(profile_versions.c.profile_id, sa.func.max(profile_versions.c.version))
                .where(profile_versions.c.profile_id.in_(chunk))
                .group_by(profile_versions.c.profile_id)
            )
            found.update((str(pid), int(version)) for pid, version in conn.execute(query))
        return found

    def _gather(
        self,
        items: list[tuple[ProfileEvent, str]],
        profile_ids: list[str],
        stored: dict[str, ProfileState],
    ) -> _Component:
        """A component's stored profiles, merged into one state for the batch to apply to."""
        states = {pid: stored[pid] for pid in profile_ids}
        ids_before = {pid: s.all_ids() for pid, s in states.items()}
        # stored states are compacted, and merge_states compacts
        if len(profile_ids) == 1:
            state = states[profile_ids[0]]
        else:
            state = ProfileState()
            for pid in profile_ids:
                merge_states(state, states[pid], self.features)
        return _Component(
            items=items,
            profile_ids=profile_ids,
            state=state,
            ids_before=ids_before,
            latest_before=state.last_seen,
        )

    def _store(
        self,
        index: int,
        part: _Component,
        loaded: dict[str, _Loaded],
        owner: dict[str, str],
        earlier: dict[str, int],
        writer: _BatchWriter,
    ) -> StagedProfile:
        """Check, compact and encode a component's applied state; queue its rows."""
        features = self.features
        state, items = part.state, part.items
        largest_before = max((len(ids) for ids in part.ids_before.values()), default=0)
        ids = state.all_ids()
        if len(ids) > self._max_identities and len(ids) > largest_before:
            raise ValidationError(
                f"linking these events would give one profile {len(ids)} ids, over the limit "
                f"of {self._max_identities} (PERSONIFY_PROFILE_MAX_IDENTITIES); a shared or "
                "hard-coded anonymousId/userId is the usual cause",
                code="identity_limit",
                details={"ids": sorted(ids)[:20]},
            )
        profile_id = part.profile_id
        earliest_event = min(event.ts for event, _ in items)
        if needs_compaction(state, features, part.latest_before, earliest_event):
            compact_state(state, features)
        blob = encode_state(state).decode()
        message_ids = [event.message_id for event, _ in items]
        merged_from = tuple(pid for pid in part.profile_ids if pid != profile_id)
        existing = loaded.get(profile_id) if profile_id in part.ids_before else None
        version = existing.version + 1 if existing else earlier.get(profile_id, 0) + 1
        allowed = personalization_allowed(state, features)
        for pid in part.profile_ids:
            # a profile at rest kept its version's state only in its row, which this batch
            # replaces (or deletes): the version row gets it back first
            stored = loaded[pid]
            if stored.history_in_row:
                writer.restore_snapshot(pid, stored.version, state_text(stored.blob))
        writer.profile(
            profile_id,
            existing.version if existing else None,
            existing.history_in_row if existing else False,
            version,
            blob,
            state,
            allowed,
        )
        for pid in merged_from:
            writer.merge(
                pid,
                loaded[pid].version,
                loaded[pid].history_in_row,
                profile_id,
                part.ids_before[pid],
                message_ids,
            )
        # ids of merged profiles are already rows (re-pointed); only first-seen ids are new
        for identity in sorted({i for event, _ in items for i in event.ids}):
            if identity not in owner:
                writer.identity(identity, profile_id)
        for event, payload in items:
            writer.event(event, payload, profile_id)
        kind = "merge" if merged_from else ("update" if existing else "create")
        diff = _diff_blobs(state_json(existing.blob) if existing else None, blob)
        # a profile id (re)created starts its replay here, whatever history it had before
        snapshot = blob if existing is None or version % self._snapshot_every == 0 else None
        event_time = max(event.ts for event, _ in items)
        writer.version(profile_id, version, kind, event_time, message_ids, diff, snapshot)
        self._cache.stage(profile_id, version, blob, state, gone=merged_from)
        return StagedProfile(index, profile_id, version, state, merged_from)


def _diff_blobs(old: bytes | str | None, new: str) -> dict[str, Any]:
    """``diff_documents`` of two stored states, decoding only the top-level parts that differ.

    Unchanged parts have equal bytes (the encoding is canonical), so they are compared as raw
    JSON and never decoded; the diff is the same as that of the whole documents.
    """
    new_parts = _decode_parts(new)
    if not old:
        # from nothing, every part is set whole: its stored JSON is the value, as it is
        return {"set": [[[key], raw] for key, raw in new_parts.items()], "unset": []}
    old_parts = _decode_parts(old)
    before = {k: _decode(v) for k, v in old_parts.items() if new_parts.get(k) != v}
    after = {k: _decode(v) for k, v in new_parts.items() if old_parts.get(k) != v}
    return diff_documents(before, after)


class StateCache:
    """Decoded states of recently written profiles, each valid for one stored version.

    The worker reads every touched profile's version and stored JSON in one query per
    batch; when the version is the one this process wrote last, the state it kept is used
    and the JSON is not decoded again. Any other writer (another worker, a merge elsewhere)
    changes the version, so a stale entry is never used. States a batch gets from the cache
    are changed in place: entries are replaced only when the batch commits, and every entry
    a failed batch took is dropped. Bounded by ``max_bytes`` (least recently written go first;
    a decoded state takes about eight times its JSON).
    """

    _BYTES_PER_JSON_BYTE = 8

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[int, ProfileState, int]] = OrderedDict()
        self._bytes = 0
        self._lent: set[str] = set()
        self._pending: list[tuple[str, int, str, ProfileState, tuple[str, ...]]] = []
        self.hits = 0
        self.misses = 0

    def state(self, profile_id: str, version: int, blob: bytes | str) -> ProfileState:
        """The state of ``profile_id`` at ``version`` (kept, or decoded from ``blob``)."""
        entry = self._entries.get(profile_id)
        if entry is not None and entry[0] == version:
            self.hits += 1
            self._lent.add(profile_id)
            return entry[1]
        self.misses += 1
        return decode_state(blob)

    def stage(
        self, profile_id: str, version: int, blob: str, state: ProfileState, gone: tuple[str, ...]
    ) -> None:
        """Remember ``state`` as ``profile_id``'s ``version`` once the batch commits."""
        if self._max_bytes:
            self._pending.append((profile_id, version, blob, state, gone))

    def commit(self) -> None:
        """The batch committed: its states are the stored versions now."""
        for profile_id, version, blob, state, gone in self._pending:
            for other in gone:
                self._drop(other)
            self._drop(profile_id)
            size = len(blob) * self._BYTES_PER_JSON_BYTE
            self._entries[profile_id] = (version, state, size)
            self._bytes += size
        self._pending.clear()
        self._lent.clear()
        while self._bytes > self._max_bytes and self._entries:
            _, (_, _, size) = self._entries.popitem(last=False)
            self._bytes -= size

    def discard_pending(self) -> None:
        """Forget what a batch that did not commit staged, and what it borrowed."""
        for profile_id in self._lent:
            self._drop(profile_id)
        self._lent.clear()
        self._pending.clear()

    def _drop(self, profile_id: str) -> None:
        entry = self._entries.pop(profile_id, None)
        if entry is not None:
            self._bytes -= entry[2]


@dataclass(slots=True)
class _Component:
    """One connected set of ids in a batch: its events and its merged stored state."""

    items: list[tuple[ProfileEvent, str]]
    profile_ids: list[str]
    state: ProfileState
    ids_before: dict[str, set[str]]
    latest_before: int | None
    # the component's profile id once the batch is applied (``canonical_id`` of its state)
    profile_id: str = ""


class _BatchWriter:
    """Collects one batch's rows, then writes each table with one ``executemany``."""

    def __init__(self, now: datetime, now_ms: int) -> None:
        self.now = now
        self.now_ms = now_ms
        self.inserts: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.deletes: list[dict[str, Any]] = []
        self.repoints: list[dict[str, Any]] = []
        self.merges: list[dict[str, Any]] = []
        self.identities: list[dict[str, Any]] = []
        self.events: list[tuple[Any, ...]] = []
        self.versions: list[dict[str, Any]] = []
        self.snapshots: list[dict[str, Any]] = []

    def profile(
        self,
        profile_id: str,
        old_version: int | None,
        old_in_row: bool,
        version: int,
        blob: str,
        state: ProfileState,
        allowed: bool,
    ) -> None:
        if old_version is None:
            self.inserts.append(
                {
                    "profile_id": profile_id,
                    "version": version,
                    "state": blob,
                    "first_seen_ms": state.first_seen,
                    "last_seen_ms": state.last_seen,
                    "personalization_allowed": allowed,
                    "history_in_row": False,
                    "created_at": self.now,
                    "updated_at": self.now,
                }
            )
        else:
            self.updates.append(
                {
                    "b_profile_id": profile_id,
                    "b_version": old_version,
                    "b_in_row": old_in_row,
                    "new_version": version,
                    "new_state": blob,
                    "new_first_seen_ms": state.first_seen,
                    "new_last_seen_ms": state.last_seen,
                    "new_allowed": allowed,
                    "new_updated_at": self.now,
                }
            )

    def merge(
        self,
        from_id: str,
        from_version: int,
        from_in_row: bool,
        into_id: str,
        from_ids: set[str],
        message_ids: list[str],
    ) -> None:
        self.deletes.append(
            {"b_profile_id": from_id, "b_version": from_version, "b_in_row": from_in_row}
        )
        self.repoints.append({"b_from": from_id, "b_into": into_id})
        self.merges.append(
            {
                "into_profile_id": into_id,
                "from_profile_id": from_id,
                "ids": _encode(sorted(from_ids)).decode(),
                "message_ids": _encode(message_ids).decode(),
                "merged_at": self.now,
            }
        )

    def restore_snapshot(self, profile_id: str, version: int, snapshot: str) -> None:
        self.snapshots.append({"b_profile_id": profile_id, "b_version": version, "s": snapshot})

    def identity(self, identity: str, profile_id: str) -> None:
        self.identities.append(
            {"identity": identity, "profile_id": profile_id, "linked_at": self.now}
        )

    def event(self, event: ProfileEvent, payload: str, profile_id: str) -> None:
        # a tuple in EVENT_COLUMNS order: one row per event, the hottest insert
        self.events.append(
            (
                event.key,
                profile_id,
                event.ts,
                event.message_id,
                event.type,
                event.name[:_MAX_NAME_CHARS],
                self.now_ms,
                payload,
            )
        )

    def version(
        self,
        profile_id: str,
        version: int,
        kind: str,
        event_time_ms: int,
        message_ids: list[str],
        diff: dict[str, Any],
        snapshot: str | None,
    ) -> None:
        self.versions.append(
            {
                "profile_id": profile_id,
                "version": version,
                "changed_at": self.now,
                "kind": kind,
                "event_time_ms": event_time_ms,
                "message_ids": _encode(message_ids).decode(),
                "diff": _encode(diff).decode(),
                "snapshot": snapshot,
            }
        )

    def flush(self, conn: sa.Connection, sql: _Statements) -> None:
        # every writer locks profile rows in one order, so concurrent batches do not deadlock
        self.updates.sort(key=lambda row: str(row["b_profile_id"]))
        self.deletes.sort(key=lambda row: str(row["b_profile_id"]))
        sql.run(conn, "restore snapshots", _restore_snapshot, self.snapshots)
        sql.checked(conn, "update", _update_profile, self.updates)
        sql.checked(conn, "delete", _delete_profile, self.deletes)
        sql.run(conn, "repoint identities", _repoint_identities, self.repoints)
        sql.run(conn, "repoint events", _repoint_events, self.repoints)
        if conn.dialect.name == "postgresql":
            # COPY: the tables that take a row per event, per profile and per new id
            if self.inserts:
                copy_rows(conn, profiles, PROFILE_COLUMNS, _in_order(self.inserts, PROFILE_COLUMNS))
            if self.identities:
                copy_rows(
                    conn,
                    identities,
                    IDENTITY_COLUMNS,
                    _in_order(self.identities, IDENTITY_COLUMNS),
                )
            if self.events:
                copy_rows(conn, applied_events, EVENT_COLUMNS, self.events)
            copy_rows(
                conn, profile_versions, VERSION_COLUMNS, _in_order(self.versions, VERSION_COLUMNS)
            )
        else:
            sql.run(conn, "insert profiles", profiles.insert, self.inserts)
            sql.run(conn, "insert identities", identities.insert, self.identities)
            sql.run_tuples(conn, "insert events", applied_events.insert, EVENT_COLUMNS, self.events)
            sql.run(conn, "insert versions", profile_versions.insert, self.versions)
        sql.run(conn, "insert merges", _insert_merge, self.merges)


def _in_order(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[list[Any]]:
    """Each row's values in ``columns`` order (for ``copy_rows``)."""
    return ([row[c] for c in columns] for row in rows)


def _update_profile() -> sa.ClauseElement:
    return (
        profiles.update()
        .where(
            profiles.c.profile_id == sa.bindparam("b_profile_id"),
            profiles.c.version == sa.bindparam("b_version"),
            # a prune that moved the version's state into the row since this batch read it
            # makes the batch retry (and put the state back into the version row)
            profiles.c.history_in_row == sa.bindparam("b_in_row"),
        )
        .values(
            history_in_row=sa.false(),
            version=sa.bindparam("new_version"),
            state=sa.bindparam("new_state"),
            first_seen_ms=sa.bindparam("new_first_seen_ms"),
            last_seen_ms=sa.bindparam("new_last_seen_ms"),
            personalization_allowed=sa.bindparam("new_allowed"),
            updated_at=sa.bindparam("new_updated_at"),
        )
    )


def _delete_profile() -> sa.ClauseElement:
    return profiles.delete().where(
        profiles.c.profile_id == sa.bindparam("b_profile_id"),
        profiles.c.version == sa.bindparam("b_version"),
        profiles.c.history_in_row == sa.bindparam("b_in_row"),
    )


def _restore_snapshot() -> sa.ClauseElement:
    return (
        profile_versions.update()
        .where(
            profile_versions.c.profile_id == sa.bindparam("b_profile_id"),
            profile_versions.c.version == sa.bindparam("b_version"),
        )
        .values(snapshot=sa.bindparam("s"))
    )


def _repoint_identities() -> sa.ClauseElement:
    return (
        identities.update()
        .where(identities.c.profile_id == sa.bindparam("b_from"))
        .values(profile_id=sa.bindparam("b_into"))
    )


def _repoint_events() -> sa.ClauseElement:
    return (
        applied_events.update()
        .where(applied_events.c.profile_id == sa.bindparam("b_from"))
        .values(profile_id=sa.bindparam("b_into"))
    )


def _insert_merge() -> sa.ClauseElement:
    return insert_without_id(profile_merges)


class _Statements(Statements):
    """Compiled statements of one processor, by name (and IN-list size for the lookups)."""

    def checked(
        self,
        conn: sa.Connection,
        name: str,
        build: Callable[[], sa.ClauseElement],
        rows: list[dict[str, Any]],
    ) -> None:
        """A version-checked UPDATE/DELETE; any row that matched nothing is a conflict."""
        if not rows:
            return
        if conn.dialect.supports_sane_multi_rowcount:
            matched = self.run(conn, name, build, rows)
        else:
            matched = sum(self.run(conn, name, build, [row]) for row in rows)
        if matched != len(rows):
            raise Conflict(
                "a profile changed since this batch read it; retry the batch",
                code="profile_conflict",
            )

    def select_in(
        self,
        conn: sa.Connection,
        key: sa.Column[Any],
        columns: tuple[sa.Column[Any], ...],
        values: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        """``SELECT key, *columns WHERE key IN (values)``, a chunk at a time."""
        found: list[tuple[Any, ...]] = []
        for chunk in _chunks(values):
            # padded (repeating its last value) to a power of two, so that a few statements
            # compiled once serve every batch instead of one per distinct chunk length
            size = _padded_size(len(chunk))
            padded = [*chunk, *([chunk[-1]] * (size - len(chunk)))]
            names = [f"v{i}" for i in range(size)]

            def build(names: list[str] = names) -> sa.ClauseElement:
                return sa.select(key, *columns).where(key.in_([sa.bindparam(n) for n in names]))

            compiled = self.compiled(conn, (key.table.name, key.name, size), build)
            params = compiled.params(dict(zip(names, padded, strict=True)))
            found.extend(tuple(row) for row in conn.exec_driver_sql(compiled.sql, params))
        return found
