"""Everything the app needs, built once from ``Settings`` and handed to the routers."""

from __future__ import annotations

from dataclasses import dataclass

from personify.auth.keys import ApiKeyRepository
from personify.clock import Clock, SystemClock
from personify.eventlog.base import EventLog, open_eventlog
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer
from personify.ingest.collector import Collector
from personify.ingest.sources import SourceRepository
from personify.settings import Settings
from personify.store.database import Database, open_database
from personify.store.failed_events import FailedEventRepository


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
        )

    async def start(self) -> None:
        """Start the ports that run background work."""
        await self.log.start()

    async def close(self) -> None:
        """Stop and release everything."""
        await self.log.close()
        self.db.dispose()
