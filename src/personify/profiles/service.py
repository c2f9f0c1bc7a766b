"""Profile reads for the API and the decision path: cache-aside over the state database.

Keys are ``profile:<id>`` for every id of a profile. A reader that misses loads the row
and fills the cache with ``add`` (set-if-absent). After committing, the worker overwrites
the keys of every profile it touched with a short-lived invalidation marker. The marker
makes a reader that loaded the row *before* the commit fail its ``add``, so a stale row can
never be cached after an invalidation; while the marker lives, reads go to the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from personify.cache.base import Cache
from personify.clock import Clock, SystemClock
from personify.errors import NotFound, ValidationError
from personify.profiles.document import present_profile
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.profiles.processor import TouchedProfile
from personify.profiles.repository import (
    ProfileRepository,
    StoredProfile,
    TimelineArchive,
    TimelineEvent,
    parse_cursor,
)
from personify.profiles.state import ProfileState, decode_state

INVALIDATED = b"\x00invalidated"


def cache_key(identity: str) -> str:
    """The cache key of a profile under one of its ids."""
    return "profile:" + identity


def facts_key(profile_id: str) -> str:
    """The cache key of what the decision engine reads beside a profile (its segments,
    predictions, bought items): invalidated with the profile, after every batch."""
    return "facts:" + profile_id


class _CachedProfile(msgspec.Struct, array_like=True):
    profile_id: str
    version: int
    created_at: datetime
    updated_at: datetime
    state: msgspec.Raw


_encode = msgspec.json.encode
_decode_cached = msgspec.json.Decoder(_CachedProfile).decode


@dataclass(frozen=True, slots=True)
class LoadedProfile:
    """A profile's state with its row metadata, as the cache or the database gave it."""

    profile_id: str
    version: int
    created_at: datetime
    updated_at: datetime
    state: ProfileState


@dataclass(slots=True)
class CacheStats:
    """How reads were served."""

    hits: int = 0
    misses: int = 0
    fills: int = 0
    invalidations: int = 0


class ProfileService:
    """Reads profiles through the cache and presents them; invalidates after worker commits."""

    def __init__(
        self,
        repository: ProfileRepository,
        cache: Cache,
        features: FeatureSet,
        *,
        clock: Clock | None = None,
        invalidation_ttl_s: float = 2.0,
        archive: TimelineArchive | None = None,
        archive_after_s: float = 0.0,
    ) -> None:
        self.repository = repository
        self.cache = cache
        self.features = features
        self._clock = clock or SystemClock()
        self._invalidation_ttl_s = invalidation_ttl_s
        # events with an event time older than ``archive_after_s`` before now may have been
        # pruned from the state database; the timeline reads those from ``archive`` too
        self._archive = archive
        self._archive_after_ms = round(archive_after_s * 1000)
        self.stats = CacheStats()

    def predictions(self, profile_id: str) -> dict[str, Any]:
        """The profile's current churn and lifetime-value predictions (the worker's)."""
        return self.repository.predictions(profile_id)

    async def load(self, identity: str) -> LoadedProfile | None:
        """The current profile of ``identity`` (any of its ids), from the cache when warm."""
        key = cache_key(identity)
        cached = await self.cache.get(key)
        if cached is not None and cached != INVALIDATED:
            self.stats.hits += 1
            entry = _decode_cached(cached)
            return LoadedProfile(
                entry.profile_id,
                entry.version,
                entry.created_at,
                entry.updated_at,
                decode_state(entry.state),
            )
        self.stats.misses += 1
        stored = await asyncio.to_thread(self.repository.find, identity)
        if stored is None:
            return None
        if cached is None and await self.cache.add(key, _encode_cached(stored)):
            self.stats.fills += 1
        return LoadedProfile(
            stored.profile_id,
            stored.version,
            stored.created_at,
            stored.updated_at,
            stored.state(),
        )

    async def get(self, identity: str, *, as_of: datetime | None = None) -> dict[str, Any]:
        """The profile document; ``as_of`` reads it as it was then. Raises ``NotFound``."""
        if as_of is None:
            loaded = await self.load(identity)
            if loaded is None:
                raise _not_found(identity)
            return present_profile(
                loaded.profile_id,
                loaded.state,
                self.features,
                as_of_ms=datetime_ms(self._clock.now()),
                version=loaded.version,
                created_at=loaded.created_at,
                updated_at=loaded.updated_at,
            )
        profile_id = await self._resolve(identity)
        state = await asyncio.to_thread(self.repository.state_as_of, profile_id, as_of)
        if state is None:
            raise NotFound(
                f"profile {profile_id!r} did not exist yet at {as_of.isoformat()}",
                code="profile_not_found",
            )
        return present_profile(
            profile_id,
            state,
            self.features,
            as_of_ms=datetime_ms(as_of),
            version=None,
            created_at=None,
            updated_at=None,
        )

    async def _resolve(self, identity: str) -> str:
        profile_id = await asyncio.to_thread(self.repository.resolve, identity)
        if profile_id is None:
            raise _not_found(identity)
        return profile_id

    async def history(
        self, identity: str, *, before: int | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """Versions newest first, plus the merges that formed the profile."""
        profile_id = await self._resolve(identity)
        versions = await asyncio.to_thread(
            self.repository.versions, profile_id, before=before, limit=limit
        )
        merges = await asyncio.to_thread(self.repository.merges, profile_id)
        return {
            "profileId": profile_id,
            "data": [v.to_dict() for v in versions],
            "merges": [m.to_dict() for m in merges],
            "next": versions[-1].version if len(versions) == limit else None,
        }

    async def timeline(
        self, identity: str, *, cursor: str | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """The profile's events, newest first, a page at a time."""
        before = None
        if cursor:
            before = parse_cursor(cursor)
            if before is None:
                raise ValidationError(
                    "cursor is not one this API returned",
                    code="invalid_parameter",
                    details={"parameter": "cursor"},
                )
        profile_id = await self._resolve(identity)
        events = await asyncio.to_thread(self._timeline_page, profile_id, before, limit)
        return {
            "profileId": profile_id,
            "data": [e.payload for e in events],
            "next": events[-1].cursor if len(events) == limit else None,
        }

    def _timeline_page(
        self, profile_id: str, before: tuple[int, str] | None, limit: int
    ) -> list[TimelineEvent]:
        """One page newest first: the state database's events, merged with the archive's
        where the page reaches back past what the state database is sure to hold.

        Both sources are asked for their newest ``limit`` events below the cursor, so the
        merged top ``limit`` is exact (no gap, no duplicate) whichever source holds what.
        """
        kept = self.repository.timeline(profile_id, before=before, limit=limit)
        if self._archive is None:
            return kept
        horizon_ms = datetime_ms(self._clock.now()) - self._archive_after_ms
        if len(kept) == limit and kept[-1].event_time_ms >= horizon_ms:
            # a full page, all newer than anything pruning can have removed
            return kept
        older = self._archive.events(
            self.repository.ids(profile_id), before=before, until_ms=horizon_ms, limit=limit
        )
        if not older:
            return kept
        merged = {event.event_key: event for event in older}
        # the state database's copy wins: it is the payload exactly as it was applied
        merged.update((event.event_key, event) for event in kept)
        page = sorted(merged.values(), key=lambda e: (e.event_time_ms, e.event_key), reverse=True)
        return page[:limit]

    async def invalidate(self, touched: Sequence[TouchedProfile]) -> None:
        """Mark every id of every touched profile as changed (see the module docstring)."""
        keys = {cache_key(i) for t in touched for i in (*t.ids, *t.merged_from, t.profile_id)}
        keys.update(facts_key(i) for t in touched for i in (*t.merged_from, t.profile_id))
        if not keys:
            return
        await self.cache.set_many(dict.fromkeys(keys, INVALIDATED), ttl_s=self._invalidation_ttl_s)
        self.stats.invalidations += len(keys)


def _encode_cached(stored: StoredProfile) -> bytes:
    return _encode(
        _CachedProfile(
            stored.profile_id,
            stored.version,
            stored.created_at,
            stored.updated_at,
            msgspec.Raw(stored.blob.encode()),
        )
    )


def _not_found(identity: str) -> NotFound:
    return NotFound(f"no profile has the id {identity!r}", code="profile_not_found")
