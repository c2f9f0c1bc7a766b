"""The composition root: builds every adapter of one process from ``Settings``.

The app factory (``personify.api.app``), the CLI and the demo all wire through here, so an
adapter is chosen and constructed in exactly one place; the faces receive a ``Runtime`` and
take what they need from it (the API through dependency injection).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import timedelta

from personify.auth.audit import AuditLog
from personify.auth.keys import ApiKeyRepository
from personify.auth.ratelimit import RateLimiter, open_rate_limiter
from personify.auth.revocations import RevocationListener
from personify.auth.sessions import ConsoleSessionRepository
from personify.cache.base import Cache, open_cache
from personify.clock import Clock, SystemClock
from personify.content.catalog import ContentCatalog
from personify.content.learning import ProductStage
from personify.content.webhooks import WebhookDeliverer, WebhookRepository
from personify.decide.engine import DecisionEngine
from personify.decide.snapshot import CatalogCache
from personify.eventlog.base import EventLog, open_eventlog
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer
from personify.experiments.exposures import ExperimentStage, record_decisions
from personify.experiments.repository import ExperimentRepository
from personify.experiments.service import ExperimentService
from personify.ingest.collector import Collector
from personify.ingest.sources import SourceRepository
from personify.ingest.webhooks import InboundWebhookRepository, WebhookReceiver
from personify.jobs.content import content_jobs
from personify.jobs.experiments import experiment_jobs
from personify.jobs.predictions import prediction_jobs
from personify.jobs.privacy import privacy_jobs
from personify.jobs.recommend import recommend_jobs
from personify.jobs.retention import retention_jobs
from personify.jobs.schedule import Scheduler
from personify.jobs.segments import clustering_jobs, rfm_jobs, segment_jobs
from personify.lake.sink import LakeSink
from personify.lake.table import Lake
from personify.lake.timeline import LakeTimeline
from personify.lake.warehouse import StateProfiles, Warehouse
from personify.predict.monitor import ModelMonitor, MonitorThresholds
from personify.predict.registry import ModelRegistry
from personify.predict.rescore import PredictionRescore
from personify.predict.stage import PredictionStage
from personify.predict.trainer import ModelTrainer
from personify.predict.training import FeatureJob
from personify.predict.vectors import lake_feature_source
from personify.privacy.derived import DerivedFilesEraser
from personify.privacy.erasure import ErasureJob, ErasureRequests
from personify.privacy.eventlog import EventLogEraser
from personify.privacy.export import Exporter
from personify.privacy.lake import LakeEraser
from personify.privacy.state import CacheEraser, DeadLetterEraser, StateEraser
from personify.privacy.suppression import Suppressions
from personify.profiles.features import FeatureSet, load_profile_config
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.profiles.service import ProfileService
from personify.quality.checks import QualityContext
from personify.recommend.index import RecommendationIndexer
from personify.recommend.service import RecommendationService
from personify.recommend.stage import RecommendationStage
from personify.segments.backfill import SegmentBackfill
from personify.segments.clusterings import ClusteringRepository, ClusteringRunner
from personify.segments.relay import MembershipRelay
from personify.segments.repository import SegmentRepository
from personify.segments.rfm_runner import RfmRunner, RfmRunResult
from personify.segments.stage import SegmentStage
from personify.segments.sweep import SegmentSweep
from personify.settings import Settings
from personify.store.database import Database, open_database
from personify.store.failed_events import FailedEventRepository
from personify.tracing import TracerSource, open_tracer_provider
from personify.worker.heartbeats import HeartbeatRepository
from personify.worker.supervisor import StageStatus, StageSupervisor
from personify.worker.worker import StreamWorker


@dataclass
class Runtime:
    """The wired-up ports and repositories of one process (nothing runs until ``start``)."""

    settings: Settings
    clock: Clock
    db: Database
    log: EventLog
    sources: SourceRepository
    api_keys: ApiKeyRepository
    # the console's sign-ins (personify.auth.sessions)
    console_sessions: ConsoleSessionRepository
    failed_events: FailedEventRepository
    hasher: PiiHasher
    collector: Collector
    cache: Cache
    features: FeatureSet
    profiles: ProfileService
    heartbeats: HeartbeatRepository
    worker: StreamWorker
    segments: SegmentRepository
    segment_sweep: SegmentSweep
    segment_relay: MembershipRelay
    segment_backfill: SegmentBackfill
    rfm: RfmRunner
    clusterings: ClusteringRepository
    clustering_runner: ClusteringRunner
    models: ModelRegistry
    prediction_rescore: PredictionRescore
    model_trainer: ModelTrainer
    model_monitor: ModelMonitor
    content: ContentCatalog
    decisions: DecisionEngine
    recommendations: RecommendationService
    experiments: ExperimentService
    webhooks: WebhookRepository
    webhook_deliverer: WebhookDeliverer
    # the signed webhooks in (POST /v1/webhooks/{source}), with their repository (.webhooks)
    webhooks_in: WebhookReceiver
    # trains the learned recommendation index on the lake
    recommend_indexer: RecommendationIndexer
    # the hash-chained audit log (personify.auth.audit)
    audit: AuditLog
    # erased ids, whose events the collector drops (personify.privacy.suppression)
    suppressions: Suppressions
    # erasure requests and their erasers (personify.privacy.erasure), and exports
    privacy: ErasureJob
    exporter: Exporter
    lake_sink: LakeSink | None = None
    lake_stage: StageSupervisor | None = None
    revocations: RevocationListener | None = None
    # profile pruning and log trimming, run beside the stream worker (``run_worker``)
    scheduler: Scheduler | None = None
    # token buckets per write key and API key (None when PERSONIFY_RATE_LIMIT_ENABLED=false)
    rate_limiter: RateLimiter | None = None
    # the spans' exporter built from PERSONIFY_OTLP_ENDPOINT (personify.tracing), shut down
    # (flushed) by ``close``
    tracer_provider: TracerSource | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        tracer_provider: TracerSource | None = None,
    ) -> Runtime:
        """Wire every service from settings (nothing is started yet). ``tracer_provider``
        (a test's, an embedder's) is used instead of one built from the settings, and left
        to its owner to shut down."""
        clock = clock or SystemClock()
        owned_tracing = None if tracer_provider is not None else open_tracer_provider(settings)
        tracing = tracer_provider or owned_tracing
        db = open_database(settings)
        # revocations by other processes clear the key caches at once (PostgreSQL state only)
        revocations = RevocationListener(db)
        log = open_eventlog(settings)
        hasher = PiiHasher.from_settings(settings)
        normalizer = Normalizer(
            hasher,
            max_event_bytes=settings.max_event_bytes,
            future_tolerance_s=settings.future_tolerance_hours * 3600.0,
        )
        failed = FailedEventRepository(db, clock=clock)
        features = FeatureSet(load_profile_config(settings.features_file))
        cache = open_cache(settings)
        profiles = profile_service(settings, db, cache, features, clock=clock)
        heartbeats = HeartbeatRepository(db)
        segments = SegmentRepository(db, clock=clock)
        content = ContentCatalog(
            db, clock=clock, product_refresh_s=settings.content_product_refresh_s
        )
        recommendations = RecommendationService(db, clock=clock)
        segment_stage = SegmentStage(segments, features, clock=clock)
        models = ModelRegistry(db, settings.resolved_models_dir, clock=clock)
        # predictions first: segment rules read the scores of the same batch
        prediction_stage = PredictionStage(models, features, clock=clock)
        relay = MembershipRelay(db, log)
        processor = ProfileProcessor(
            db,
            features,
            clock=clock,
            max_identities=settings.profile_max_identities,
            snapshot_every=settings.profile_snapshot_every,
            state_cache_mb=settings.worker_state_cache_mb,
            # products learned from e-commerce events join the catalog in the same transaction
            stages=[
                prediction_stage,
                segment_stage,
                ProductStage(content),
                ExperimentStage(),
                # after the segments: popularity per segment reads the memberships just written
                *([RecommendationStage(features, clock=clock)] if settings.recommend_live else []),
            ],
        )
        worker = StreamWorker.from_settings(
            settings,
            log,
            processor,
            failed,
            profiles=profiles,
            heartbeats=heartbeats,
            after_batch=[relay.flush],
            record_exposures=functools.partial(record_decisions, db),
            clock=clock,
            tracer=tracing.get_tracer("personify.worker") if tracing else None,
        )
        sweep = SegmentSweep(db, segment_stage, clock=clock)
        backfill = SegmentBackfill(db, segment_stage, clock=clock)
        rfm = RfmRunner(db, segments, clock=clock)
        lake = Lake.from_settings(settings)
        trainer = ModelTrainer(
            FeatureJob(
                lake,
                features,
                db=db,
                quality=QualityContext(
                    now=clock.now(), max_zscore=settings.quality_volume_max_zscore
                ),
                clock=clock,
            ),
            models,
            clock=clock,
        )
        monitor = ModelMonitor(
            db,
            models,
            features,
            settings.resolved_models_dir,
            lake=lake,
            clock=clock,
            thresholds=MonitorThresholds(
                psi_threshold=settings.predict_drift_psi_threshold,
                auc_drop=settings.predict_alert_auc_drop,
                mae_rise=settings.predict_alert_mae_rise,
            ),
        )
        rescore = PredictionRescore(
            db,
            models,
            prediction_stage,
            clock=clock,
            stale_after_s=settings.predict_stale_after_s,
            after_scoring=lambda conn, rows: segment_stage.evaluate_stored(
                conn, rows, clock.now(), reason="prediction"
            ),
        )
        clusterings = ClusteringRepository(db, segments, features, clock=clock)
        clustering_runner = ClusteringRunner(
            db,
            clusterings,
            segments,
            lake_feature_source(Lake.from_settings(settings), features),
            clock=clock,
        )
        webhook_deliverer = WebhookDeliverer(
            db,
            clock=clock,
            timeout_s=settings.content_webhook_timeout_s,
            max_attempts=settings.content_webhook_max_attempts,
        )
        recommend_indexer = RecommendationIndexer(
            db,
            Lake.from_settings(settings),
            clock=clock,
            model=settings.recommend_model,
            size=settings.recommend_index_size,
        )
        experiments = ExperimentService(
            ExperimentRepository(db, clock=clock),
            functools.partial(open_warehouse, settings, db),
            clock=clock,
        )
        lake_sink = (
            LakeSink.from_settings(settings, log, db=db, clock=clock)
            if settings.run_lake_sink
            else None
        )
        suppressions = Suppressions(db, hasher, clock=clock)
        collector = Collector(
            log,
            normalizer,
            hasher,
            failed,
            clock=clock,
            native=settings.ingest_native,
            suppressions=suppressions,
            tracer=tracing.get_tracer("personify.ingest") if tracing else None,
        )
        privacy = ErasureJob(
            ErasureRequests(db, hasher, clock=clock),
            # every store that holds per-user data has its eraser here (docs/privacy.md)
            erasers=[
                # the log first: an entry naming the person cannot be applied again after
                # the state is erased (new ones are suppressed at the collector)
                EventLogEraser(log, retention_s=settings.eventlog_retention_hours * 3600.0),
                StateEraser(db),
                CacheEraser(cache, invalidation_ttl_s=settings.cache_invalidation_ttl_s),
                DeadLetterEraser(db),
                # file ages on storage are wall-clock facts: the lake eraser reads its own
                LakeEraser(
                    Lake.from_settings(settings),
                    retention_hours=settings.lake_vacuum_retention_hours,
                ),
                DerivedFilesEraser(db, models_dir=settings.resolved_models_dir, clock=clock),
            ],
            db=db,
            hasher=hasher,
            suppressions=suppressions,
            clock=clock,
        )
        return cls(
            settings=settings,
            clock=clock,
            db=db,
            log=log,
            sources=SourceRepository(
                db, cache_ttl_s=settings.auth_cache_ttl_s, clock=clock, revocations=revocations
            ),
            api_keys=ApiKeyRepository(
                db, cache_ttl_s=settings.auth_cache_ttl_s, clock=clock, revocations=revocations
            ),
            console_sessions=ConsoleSessionRepository(
                db, ttl=timedelta(seconds=settings.console_session_ttl_s), clock=clock
            ),
            revocations=revocations,
            failed_events=failed,
            hasher=hasher,
            collector=collector,
            cache=cache,
            features=features,
            profiles=profiles,
            heartbeats=heartbeats,
            worker=worker,
            segments=segments,
            lake_sink=lake_sink,
            lake_stage=StageSupervisor("lake", lake_sink.run, clock=clock)
            if lake_sink is not None
            else None,
            segment_sweep=sweep,
            segment_relay=relay,
            segment_backfill=backfill,
            rfm=rfm,
            clusterings=clusterings,
            clustering_runner=clustering_runner,
            models=models,
            prediction_rescore=rescore,
            model_trainer=trainer,
            model_monitor=monitor,
            content=content,
            decisions=DecisionEngine(
                CatalogCache(db, cache, ttl_s=settings.decide_catalog_ttl_s),
                profiles,
                db,
                log,
                features,
                recommendations=recommendations,
                facts_ttl_s=settings.decide_facts_ttl_s,
                clock=clock,
                tracer=tracing.get_tracer("personify.decide") if tracing else None,
            ),
            recommendations=recommendations,
            experiments=experiments,
            webhooks=WebhookRepository(db, clock=clock),
            webhook_deliverer=webhook_deliverer,
            webhooks_in=WebhookReceiver(
                InboundWebhookRepository(
                    db,
                    clock=clock,
                    tolerance_s=settings.webhooks_in_tolerance_s,
                    cache_ttl_s=settings.auth_cache_ttl_s,
                    revocations=revocations,
                ),
                collector,
                max_body_bytes=settings.max_batch_bytes,
                clock=clock,
            ),
            recommend_indexer=recommend_indexer,
            audit=AuditLog(db, clock=clock),
            suppressions=suppressions,
            privacy=privacy,
            exporter=Exporter(
                db, hasher, warehouse=functools.partial(open_warehouse, settings, db)
            ),
            rate_limiter=open_rate_limiter(settings, clock=clock),
            tracer_provider=owned_tracing,
            scheduler=Scheduler(
                [
                    *retention_jobs(settings, db, log, clock=clock),
                    *segment_jobs(settings, sweep, relay, backfill),
                    *rfm_jobs(settings, functools.partial(run_rfm, settings, db, rfm)),
                    *clustering_jobs(settings, clustering_runner, relay),
                    *prediction_jobs(settings, rescore, relay, monitor, trainer, clock),
                    *content_jobs(settings, webhook_deliverer, db, clock),
                    *recommend_jobs(settings, recommend_indexer, db, clock),
                    *experiment_jobs(settings, experiments),
                    *privacy_jobs(privacy),
                ],
                clock=clock,
            ),
        )

    def run_rfm(self) -> RfmRunResult:
        """An RFM run over the lake now (``personify.segments.rfm``)."""
        return run_rfm(self.settings, self.db, self.rfm)

    async def start(self) -> None:
        """Start the ports that run background work (and the stream worker, unless turned off)."""
        await self.log.start()
        # the ids erased before this process started are dropped from its first event on
        await asyncio.to_thread(self.suppressions.refresh)
        if self.revocations is not None:
            await self.revocations.start()
        await self.cache.start()
        if self.rate_limiter is not None:
            await self.rate_limiter.start()
        if self.settings.run_worker:
            self.worker.start()
            self.start_lake_sink()
            if self.scheduler is not None:
                self.scheduler.start()

    def start_lake_sink(self) -> None:
        """Run the lake writer in the background of the current event loop, if configured.

        Whatever ends it (a failed critical quality check, an engine down for good, a bug)
        stops the lake only, never the API or the profiles: the failure is logged and
        reported (``stages``), and the writer is started again with backoff.
        """
        if self.lake_stage is not None:
            self.lake_stage.start()

    async def stop_lake_sink(self) -> None:
        """Finish the micro-batch in hand and stop the lake writer."""
        if self.lake_stage is not None:
            await self.lake_stage.stop()

    def stages(self) -> list[StageStatus]:
        """The background stages of this process (the stream worker, the lake writer)."""
        found = [self.worker.stage]
        if self.lake_stage is not None:
            found.append(self.lake_stage.status)
        return found

    async def close(self) -> None:
        """Stop and release everything."""
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.stop_lake_sink()
        await self.worker.stop()
        await self.cache.close()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        await self.log.close()
        if self.revocations is not None:
            await self.revocations.close()
        self.db.dispose()
        if self.tracer_provider is not None:
            # exports the spans still batched
            await asyncio.to_thread(self.tracer_provider.shutdown)


def open_warehouse(settings: Settings, db: Database) -> Warehouse:
    """The warehouse over the lake at its newest version (users as the state's profiles)."""
    return Warehouse(Lake.from_settings(settings), profiles=StateProfiles(db))


def run_rfm(settings: Settings, db: Database, runner: RfmRunner) -> RfmRunResult:
    """An RFM run over the lake at its newest version (users as the state's profiles)."""
    with open_warehouse(settings, db) as warehouse:
        return runner.run(warehouse)


def profile_service(
    settings: Settings,
    db: Database,
    cache: Cache,
    features: FeatureSet,
    *,
    clock: Clock | None = None,
) -> ProfileService:
    """Profile reads over the state database, with the timeline older than the state
    database keeps read from the lake."""
    # an event applied before the prune cutoff can carry a time up to the future tolerance
    # later than when it was applied: only events older than that may be missing
    archive_after_s = (
        settings.profile_timeline_retention_days * 86_400.0
        - settings.future_tolerance_hours * 3_600.0
    )
    return ProfileService(
        ProfileRepository(db, features),
        cache,
        features,
        clock=clock,
        invalidation_ttl_s=settings.cache_invalidation_ttl_s,
        archive=LakeTimeline(Lake.from_settings(settings)),
        archive_after_s=archive_after_s,
    )
