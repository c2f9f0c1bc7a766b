"""The erasers of the state database, the online cache and the dead letters.

``StateEraser`` is driven by ``ERASED_COLUMNS``: every table of the state database that holds
per-user rows, with the columns that hold ids. ``per_user_tables`` walks the whole schema
(every module of ``personify.store.migrations.TABLE_MODULES``) for columns named like ids of
people, and ``coverage_gaps`` names each such column that is neither erased here nor listed in
``NOT_PER_USER`` with the reason: a store added without erasure fails its test
(``tests/privacy/test_state.py``).

Every column is matched against every needle of the subject (ids, profile ids and PII
hashes), so a row keyed by any id of the person goes, whichever kind of id the column holds.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import msgspec
import sqlalchemy as sa

from personify.cache.base import Cache
from personify.privacy.erasure import JOB_LOOP, Subject
from personify.profiles.service import INVALIDATED, cache_key, facts_key
from personify.store.database import Database
from personify.store.migrations import target_metadata
from personify.store.tables import failed_events

__all__ = [
    "ERASED_COLUMNS",
    "NOT_PER_USER",
    "PER_USER_COLUMN",
    "CacheEraser",
    "DeadLetterEraser",
    "StateEraser",
    "coverage_gaps",
    "per_user_tables",
]

_T = TypeVar("_T")
_CHUNK = 500
# needles per LIKE pre-filter of the dead letters (each needle is one LIKE)
_LIKE_CHUNK = 50
_PAGE_ROWS = 1000

# the column names that hold the id of a person (a userId, anonymousId or profile id)
PER_USER_COLUMN: Final = re.compile(
    r"(^|_)(profile_id|user_id|anonymous_id|previous_id|identity|unit|user_key|partition_key)$"
)

# every table with per-user rows, and the columns whose value is one of the person's ids;
# the order deletes dependants before what they depend on
ERASED_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    # profiles: the timeline and exactly-once keys, history, merges, predictions, the row
    "applied_events": ("profile_id",),
    "profile_versions": ("profile_id",),
    "profile_merges": ("into_profile_id", "from_profile_id"),
    "profile_predictions": ("profile_id",),
    "profiles": ("profile_id",),
    "identities": ("identity", "profile_id"),
    # segments: memberships with their history, their pending events, window due times,
    # clustering assignments
    "segment_members": ("profile_id",),
    "segment_outbox": ("partition_key",),
    "segment_due": ("profile_id",),
    "clustering_assignments": ("profile_id",),
    # decisions: what each decision showed the person
    "content_exposures": ("profile_id",),
    # experiments: the sticky variant of each of their ids
    "experiment_assignments": ("unit",),
    # recommendations: their recent items, their row of the learned index
    "recommend_profiles": ("profile_id",),
    "recommend_user_index": ("profile_id",),
}

# tables with a column named like a person's id that are not per-user rows, and why
# (``suppressions`` holds keyed hashes only, in ``id_hash``, which names no id)
NOT_PER_USER: Final[dict[str, str]] = {
    "privacy_requests": (
        "the request itself: the id in clear and the subject are cleared when it is done, "
        "only the keyed hash of the id stays (docs/privacy.md)"
    ),
}


def per_user_tables(metadata: sa.MetaData | None = None) -> dict[str, tuple[str, ...]]:
    """Every table of the state database with columns named like a person's id, and those
    columns (``PER_USER_COLUMN``)."""
    metadata = metadata if metadata is not None else target_metadata()
    found: dict[str, tuple[str, ...]] = {}
    for name, table in sorted(metadata.tables.items()):
        columns = tuple(c.name for c in table.columns if PER_USER_COLUMN.search(c.name))
        if columns:
            found[name] = columns
    return found


def coverage_gaps(metadata: sa.MetaData | None = None) -> list[str]:
    """``table.column`` for each per-user column that ``StateEraser`` does not erase and no
    entry of ``NOT_PER_USER`` explains (``[]``: every store is covered)."""
    gaps: list[str] = []
    for name, columns in per_user_tables(metadata).items():
        if name in NOT_PER_USER:
            continue
        erased = ERASED_COLUMNS.get(name, ())
        gaps.extend(f"{name}.{column}" for column in columns if column not in erased)
    return gaps


def _chunks(values: Iterable[str], size: int = _CHUNK) -> list[list[str]]:
    items = sorted(values)
    return [items[i : i + size] for i in range(0, len(items), size)]


class StateEraser:
    """Deletes every per-user row of the subject from the state database, in one transaction."""

    name = "state"

    def __init__(self, db: Database) -> None:
        self._db = db
        metadata = target_metadata()
        missing = sorted(set(ERASED_COLUMNS) - set(metadata.tables))
        if missing:
            raise ValueError(f"ERASED_COLUMNS names tables the schema lacks: {missing}")
        self._tables = [(metadata.tables[name], cols) for name, cols in ERASED_COLUMNS.items()]

    def _matches(self, table: sa.Table, columns: tuple[str, ...], chunk: list[str]) -> Any:
        return sa.or_(*(table.c[column].in_(chunk) for column in columns))

    def erase(self, subject: Subject) -> dict[str, Any]:
        """Delete the rows; returns the rows deleted per table (only tables with any)."""
        needles = subject.needles
        deleted: dict[str, int] = {}
        # one transaction: a crash leaves all of the person's rows or none
        with self._db.begin() as conn:
            for table, columns in self._tables:
                for chunk in _chunks(needles):
                    count = conn.execute(
                        table.delete().where(self._matches(table, columns, chunk))
                    ).rowcount
                    if count:
                        deleted[table.name] = deleted.get(table.name, 0) + count
        return {"deleted": deleted}

    def find(self, subject: Subject) -> list[str]:
        """``"state: table (n rows)"`` for each table that still holds rows of the subject."""
        found = []
        with self._db.connect() as conn:
            for table, columns in self._tables:
                count = 0
                for chunk in _chunks(subject.needles):
                    count += int(
                        conn.execute(
                            sa.select(sa.func.count())
                            .select_from(table)
                            .where(self._matches(table, columns, chunk))
                        ).scalar_one()
                    )
                if count:
                    found.append(f"state: {table.name} ({count} rows)")
        return found


def _run_async(factory: Callable[[], Awaitable[_T]], timeout_s: float = 30.0) -> _T:
    """Run an async port's call from the job's thread: on the loop that runs the port
    (``JOB_LOOP``), or on a loop of its own when there is none (a command line run)."""
    loop = JOB_LOOP.get()
    if loop is not None and loop.is_running():

        async def call() -> _T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout_s)
    return asyncio.run(_awaited(factory))


async def _awaited(factory: Callable[[], Awaitable[_T]]) -> _T:
    return await factory()


class CacheEraser:
    """Removes the subject's profile and decision-facts keys from the online cache.

    The keys are first overwritten with the profile service's invalidation marker, which
    makes a reader that loaded the profile before the state step fail its fill; once the
    marker's time has passed (``invalidation_ttl_s``), the keys are deleted, so no key naming
    any of the person's ids is left.
    """

    name = "cache"

    def __init__(self, cache: Cache, *, invalidation_ttl_s: float = 2.0) -> None:
        self._cache = cache
        self._invalidation_ttl_s = invalidation_ttl_s

    @staticmethod
    def keys(subject: Subject) -> list[str]:
        """Every cache key that can hold something of the subject."""
        ids = subject.ids | subject.profile_ids
        return sorted({cache_key(i) for i in ids} | {facts_key(i) for i in ids})

    def erase(self, subject: Subject) -> dict[str, Any]:
        """Mark, wait out the marker, delete; returns how many keys held a value."""
        keys = self.keys(subject)
        if not keys:
            return {"keysDeleted": 0}
        held = len(_run_async(lambda: self._cache.get_many(keys)))
        # with no profile there is nothing a reader could put back: no marker to wait out
        if self._invalidation_ttl_s > 0 and subject.profile_ids:
            _run_async(
                lambda: self._cache.set_many(
                    dict.fromkeys(keys, INVALIDATED), ttl_s=self._invalidation_ttl_s
                )
            )
            time.sleep(self._invalidation_ttl_s)
        _run_async(lambda: self._cache.delete(keys))
        return {"keysDeleted": held}

    def find(self, subject: Subject) -> list[str]:
        """``"cache: key"`` for each key of the subject that holds a value."""
        keys = self.keys(subject)
        if not keys:
            return []
        values = _run_async(lambda: self._cache.get_many(keys))
        return [f"cache: {key}" for key in sorted(values)]


def _names(value: Any, needles: frozenset[str]) -> bool:
    """Whether a decoded JSON value holds any needle as a whole string (value or key)."""
    if isinstance(value, str):
        return value in needles
    if isinstance(value, dict):
        return any(k in needles or _names(v, needles) for k, v in value.items())
    if isinstance(value, list):
        return any(_names(item, needles) for item in value)
    return False


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class DeadLetterEraser:
    """Deletes the dead letters whose payload names any needle of the subject.

    A JSON payload names a needle when one of its strings is exactly that needle (so
    ``u1`` never takes ``u10``'s events); a payload kept as text because it was no JSON
    names it when it contains it. A ``LIKE`` on each needle picks the candidates first.
    """

    name = "dead_letters"

    def __init__(self, db: Database) -> None:
        self._db = db

    def matching(self, subject: Subject) -> list[int]:
        """The ids of the dead letters that name the subject, ascending."""
        needles = subject.needles
        found: list[int] = []
        for chunk in _chunks(needles, _LIKE_CHUNK):
            # a needle as JSON writes it (quotes and backslashes escaped), inside a payload
            patterns = [
                "%" + _escape_like(msgspec.json.encode(n).decode()[1:-1]) + "%" for n in chunk
            ]
            likes = sa.or_(*(failed_events.c.payload.like(p, escape="\\") for p in patterns))
            after = 0
            while True:
                with self._db.connect() as conn:
                    rows = list(
                        conn.execute(
                            sa.select(failed_events.c.id, failed_events.c.payload)
                            .where(failed_events.c.id > after, likes)
                            .order_by(failed_events.c.id)
                            .limit(_PAGE_ROWS)
                        )
                    )
                for row_id, payload in rows:
                    try:
                        names = _names(msgspec.json.decode(payload), needles)
                    except msgspec.DecodeError:
                        names = any(n in payload for n in needles)
                    if names:
                        found.append(int(row_id))
                if len(rows) < _PAGE_ROWS:
                    break
                after = int(rows[-1][0])
        return sorted(set(found))

    def erase(self, subject: Subject) -> dict[str, Any]:
        """Delete the matching dead letters; returns how many went."""
        ids = self.matching(subject)
        deleted = 0
        with self._db.begin() as conn:
            for start in range(0, len(ids), _CHUNK):
                deleted += conn.execute(
                    failed_events.delete().where(
                        failed_events.c.id.in_(ids[start : start + _CHUNK])
                    )
                ).rowcount
        return {"deleted": deleted}

    def find(self, subject: Subject) -> list[str]:
        """``"dead_letters: id N"`` for each dead letter that names the subject."""
        return [f"dead_letters: id {row_id}" for row_id in self.matching(subject)]
