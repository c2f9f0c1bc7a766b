"""Everything the app needs, built once from ``Settings`` and handed to the routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from personify.auth.keys import ApiKeyRepository
from personify.cache.base import Cache, open_cache
from personify.clock import Clock, SystemClock
from personify.errors import PersonifyError
from personify.eventlog.base import EventLog, open_eventlog
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer
from personify.ingest.collector import Collector
from personify.ingest.sources import SourceRepository
from personify.lake.sink import LakeSink
from personify.profiles.features import FeatureSet, load_profile_config
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.profiles.service import ProfileService
from personify.settings import Settings
from personify.store.database import Database, open_database
from personify.store.failed_events import FailedEventRepository
from personify.worker.heartbeats import HeartbeatRepository
from personify.worker.worker import StreamWorker

logger = logging.getLogger("personify.services")


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
    lake_sink: LakeSink | None = None
    _lake_stop: asyncio.Event = field(default_factory=asyncio.Event)
    _lake_task: asyncio.Task[None] | None = None

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
            collector=Collector(
                log, normalizer, hasher, failed, clock=clock, native=settings.ingest_native
            ),
            cache=cache,
            features=features,
            profiles=profiles,
            heartbeats=heartbeats,
            worker=worker,
            lake_sink=LakeSink.from_settings(settings, log, db=db, clock=clock)
            if settings.run_lake_sink
            else None,
        )

    async def start(self) -> None:
        """Start the ports that run background work (and the stream worker, unless turned off)."""
        await self.log.start()
        await self.cache.start()
        if self.settings.run_worker:
            self.worker.start()
            self.start_lake_sink()

    def start_lake_sink(self) -> None:
        """Run the lake writer in the background of the current event loop, if configured."""
        if self.lake_sink is None or self._lake_task is not None:
            return
        self._lake_stop = asyncio.Event()
        self._lake_task = asyncio.create_task(self._run_lake_sink(), name="lake-sink")

    async def _run_lake_sink(self) -> None:
        assert self.lake_sink is not None
        try:
            await self.lake_sink.run(self._lake_stop)
        except PersonifyError as error:
            # a failed critical quality check stops the lake, never the API or the profiles
            logger.error("lake writer stopped: [%s] %s", error.code, error.message)

    async def stop_lake_sink(self) -> None:
        """Finish the micro-batch in hand and stop the lake writer."""
        task, self._lake_task = self._lake_task, None
        if task is None:
            return
        self._lake_stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        """Stop and release everything."""
        await self.stop_lake_sink()
        await self.worker.stop()
        await self.cache.close()
        await self.log.close()
        self.db.dispose()
