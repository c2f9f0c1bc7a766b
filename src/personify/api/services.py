"""Everything the app needs, built once from ``Settings`` and handed to the routers."""

from __future__ import annotations

from dataclasses import dataclass

from personify.auth.keys import ApiKeyRepository
from personify.cache.base import Cache, open_cache
from personify.clock import Clock, SystemClock
from personify.eventlog.base import EventLog, open_eventlog
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer
from personify.ingest.collector import Collector
from personify.ingest.sources import SourceRepository
from personify.profiles.features import FeatureSet, load_profile_config
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.profiles.service import ProfileService
from personify.settings import Settings
from personify.store.database import Database, open_database
from personify.store.failed_events import FailedEventRepository
from personify.worker.heartbeats import HeartbeatRepository
from personify.worker.worker import StreamWorker


@dataclass
class Services:
    """The wired-up ports and repositories of one process."""

    settings: Settings
    clock: Clock
    db: Database
    log: EventLog
    sources: SourceRepository
    api_keys: ApiKeyRepository
    failed_events: FailedEventRepository
    hasher: PiiHasher
    collector: Collector
    cache: Cache
    features: FeatureSet
    profiles: ProfileService
    heartbeats: HeartbeatRepository
    worker: StreamWorker

    @classmethod
    def build(cls, settings: Settings, *, clock: Clock | None = None) -> Services:
        """Wire every service from settings (nothing is started yet)."""
        clock = clock or SystemClock()
        db = open_database(settings)
        log = open_eventlog(settings)
        hasher = PiiHasher(settings.resolved_pii_hash_key(), settings.pii_paths)
        normalizer = Normalizer(
            hasher,
            max_event_bytes=settings.max_event_bytes,
            future_tolerance_s=settings.future_tolerance_hours * 3600.0,
        )
        failed = FailedEventRepository(db, clock=clock)
        features = FeatureSet(load_profile_config(settings.features_file))
        cache = open_cache(settings)
        profiles = ProfileService(
            ProfileRepository(db, features),
            cache,
            features,
            clock=clock,
            invalidation_ttl_s=settings.cache_invalidation_ttl_s,
        )
        heartbeats = HeartbeatRepository(db)
        processor = ProfileProcessor(
            db,
            features,
            clock=clock,
            max_identities=settings.profile_max_identities,
            snapshot_every=settings.profile_snapshot_every,
        )
        worker = StreamWorker.from_settings(
            settings, log, processor, failed, profiles=profiles, heartbeats=heartbeats, clock=clock
        )
        return cls(
            settings=settings,
            clock=clock,
            db=db,
            log=log,
            sources=SourceRepository(db, cache_ttl_s=settings.auth_cache_ttl_s, clock=clock),
            api_keys=ApiKeyRepository(db, cache_ttl_s=settings.auth_cache_ttl_s, clock=clock),
            failed_events=failed,
            hasher=hasher,
            collector=Collector(log, normalizer, hasher, failed, clock=clock),
            cache=cache,
            features=features,
            profiles=profiles,
            heartbeats=heartbeats,
            worker=worker,
        )

    async def start(self) -> None:
        """Start the ports that run background work (and the stream worker, unless turned off)."""
        await self.log.start()
        await self.cache.start()
        if self.settings.run_worker:
            self.worker.start()

    async def close(self) -> None:
        """Stop and release everything."""
        await self.worker.stop()
        await self.cache.close()
        await self.log.close()
        self.db.dispose()
