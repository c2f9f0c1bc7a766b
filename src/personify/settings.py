"""Settings, read from the environment (prefix ``PERSONIFY_``) and ``.env`` once, then passed down.

Domain code never reads ``os.environ``: the CLI or the app factory builds one ``Settings``
and hands it to the constructors that need it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from personify.errors import ConfigurationError

Durability = Literal["full", "normal", "off"]


class Settings(BaseSettings):
    """Every knob of Personify. See the configuration table in README.md."""

    model_config = SettingsConfigDict(
        env_prefix="PERSONIFY_", env_file=".env", extra="ignore", frozen=False
    )

    environment: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("data")

    # Backends, chosen by URL (see ARCHITECTURE.md). Empty means "embedded, under data_dir".
    eventlog_url: str = ""
    state_url: str = ""
    cache_url: str = "memory://"
    lake_url: str = ""
    # where model files are kept (docs/predict.md); empty means ``models`` in data_dir
    models_dir: Path | None = None

    # Event log (SQLite adapter)
    eventlog_durability: Durability = "full"
    eventlog_linger_ms: float = 0.0
    eventlog_max_batch_events: int = 5000
    eventlog_max_pending_events: int = 50_000
    # memory the SQLite log's dedupe index may hold; beyond it, it reads from files on disk
    eventlog_dedupe_memory_mb: float = Field(default=64.0, ge=1.0, le=1024.0 * 1024.0)

    # Event log (Redis Streams / Kafka)
    # an entry pending this long on a consumer is taken over by another one (Redis XAUTOCLAIM)
    eventlog_claim_idle_ms: int = 60_000
    # the worker dead-letters an entry delivered this many times without a commit
    eventlog_max_deliveries: int = 5
    # approximate bound on a Redis stream's length; unacknowledged entries are never trimmed
    eventlog_stream_max_entries: int = 1_000_000
    # where the Kafka log keeps its dedupe index (a Redis URL); required for kafka://
    eventlog_dedupe_url: str = ""
    # partitions of a topic the Kafka log creates (``?partitions=N`` in the URL wins)
    eventlog_kafka_partitions: int = 12
    # -1 takes the broker's default.replication.factor
    eventlog_kafka_replication_factor: int = -1
    eventlog_kafka_linger_ms: float = 5.0
    # a consumer silent this long leaves its group and its partitions move to the others
    eventlog_kafka_session_timeout_ms: int = 45_000
    eventlog_kafka_fetch_wait_ms: int = 100
    eventlog_kafka_delivery_timeout_ms: int = 30_000
    # false for brokers without DeleteRecords (tansu's memory engine): truncate then removes nothing
    eventlog_kafka_delete_records: bool = True
    # the SQLite and Redis Streams logs drop an entry once every consumer group has committed
    # past it and it is older than this; `personify events trim` or the scheduled job does it
    eventlog_retention_hours: float = Field(default=24.0, ge=0.0)
    eventlog_trim_interval_s: float = Field(default=300.0, gt=0.0)

    # Ingest
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    dedupe_window_hours: float = 24.0
    future_tolerance_hours: float = 24.0
    auth_cache_ttl_s: float = 5.0
    pii_hash_key: str = ""
    # keys PII was hashed with before a rotation, comma-separated: lookups (suppression,
    # erasure, privacy requests) still match hashes made with them; only pii_hash_key hashes
    pii_hash_retired_keys: str = ""
    # where PII is hashed at ingest: a top-level field, then key names (case and "-", "_",
    # ".", " " do not matter); a path ending in "*" covers every e-mail and phone key name
    # docs/ingest.md lists. These two are where the Segment spec puts traits, for every
    # event type; a list set here replaces them, so keep them in it.
    pii_paths: list[str] = Field(default_factory=lambda: ["traits.*", "context.traits.*"])

    # the compiled common case of ingest normalisation, when it was built; off: Python only
    ingest_native: bool = True

    # Server
    host: str = "127.0.0.1"
    port: int = 8000
    # where browsers reach the collector (https://collect.example.com[/prefix]); it goes into
    # the analytics.js settings document. Unset, the request's Host header stands in, outside
    # production only (a client chooses its Host header)
    public_url: str = ""
    run_worker: bool = True
    # `personify serve` and `personify worker` retune the garbage collector and glibc's
    # allocator at start-up (personify.cli.tuning); an embedded app or a test never does
    process_tuning: bool = True
    # the stream worker (in `serve` or `personify worker`) also runs the lake writer
    run_lake_sink: bool = True
    # how `personify serve` and `personify worker` write their logs to standard error: one
    # JSON object per line (for a log collector) or text (for a terminal), and from which level
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    # Observability (docs/observability.md). prometheus_client's multiprocess mode: the folder
    # where every process of `personify serve --workers N` writes its metrics (serve makes
    # one); the library itself reads the same variable, so it has no PERSONIFY_ name
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )
    # OpenTelemetry traces go to this OTLP/HTTP endpoint (http://collector:4318); unset, no
    # spans are made at all
    otlp_endpoint: str = ""
    # `personify worker` (which serves no API) serves its metrics on this port; 0: it does not
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # Lake (raw events in Delta Lake, the DuckDB warehouse, data quality)
    lake_storage_options: dict[str, str] = Field(default_factory=dict)
    lake_batch_max_events: int = 10_000
    lake_batch_max_bytes: int = 16 * 1024 * 1024
    lake_linger_ms: float = 1000.0
    lake_max_promoted_properties: int = 200
    lake_target_file_mb: int = 128
    lake_vacuum_retention_hours: int = 168
    lake_quality_checks: bool = True
    quality_freshness_hours: float = 24.0
    quality_volume_history_days: int = 14
    quality_volume_max_zscore: float = 4.0

    # Worker and profiles
    worker_group: str = "worker"
    worker_batch_size: int = 10_000
    worker_poll_timeout_ms: int = 500
    worker_max_attempts: int = 3
    worker_retry_backoff_ms: float = 100.0
    worker_heartbeat_s: float = 2.0
    features_file: Path | None = None
    profile_max_identities: int = 1000
    profile_snapshot_every: int = 50
    # decoded states of recently written profiles the worker keeps, so that a profile it
    # wrote last is not decoded again (each entry is valid for one stored version only)
    worker_state_cache_mb: float = Field(default=128.0, ge=0.0)
    # applied_events rows (dedupe keys and timeline payloads) are kept this long after they
    # were applied; older timeline is read from the lake, and a resend older than this is
    # applied again (docs/profiles.md, "Retention")
    profile_timeline_retention_days: float = Field(default=30.0, ge=0.0)
    # profile versions older than this are compacted into one snapshot version per profile
    profile_history_retention_days: float = Field(default=30.0, ge=0.0)
    profile_prune_interval_s: float = Field(default=3600.0, gt=0.0)
    # how often profiles whose segment windows slid are evaluated again (docs/segments.md)
    segment_sweep_interval_s: float = Field(default=60.0, gt=0.0)
    # how often membership events left in the outbox are appended to the log (the worker
    # also appends them after every batch)
    segment_relay_interval_s: float = Field(default=10.0, gt=0.0)
    # how often serve looks for a backfill to run (a rule saved since the last pass)
    segment_backfill_interval_s: float = Field(default=5.0, gt=0.0)
    # how often serve scores every buyer over the lake again (RFM cut points, docs/segments.md)
    segment_rfm_interval_s: float = Field(default=86400.0, gt=0.0)
    # how often serve looks for clustering runs to carry out: queued, or due by schedule
    segment_recluster_interval_s: float = Field(default=60.0, gt=0.0)
    # how often serve scores the profiles whose predictions are missing, from another model
    # version, or older than predict_stale_after_s (docs/predict.md, "Serving")
    predict_rescore_interval_s: float = Field(default=60.0, gt=0.0)
    predict_stale_after_s: float = Field(default=86_400.0, gt=0.0)
    # how often serve checks the served models for drift and realised performance, and
    # retrains a target whose check alerts on drift (docs/predict.md, "Monitoring")
    predict_monitor_interval_s: float = Field(default=86_400.0, gt=0.0)
    # a served version this old is retrained (weekly), through the promotion gate
    predict_retrain_interval_s: float = Field(default=604_800.0, gt=0.0)
    # a feature or the score whose population stability index passes this alerts
    predict_drift_psi_threshold: float = Field(default=0.25, gt=0.0)
    # alerts when realised churn AUC falls this far below validation, or realised revenue MAE
    # rises this much (relative) above it
    predict_alert_auc_drop: float = Field(default=0.05, ge=0.0)
    predict_alert_mae_rise: float = Field(default=0.2, ge=0.0)
    # how often serve sends the content webhook deliveries that are due (docs/webhooks.md);
    # each try waits at most content_webhook_timeout_s per phase (connect, write, read), and
    # a delivery is failed after content_webhook_max_attempts tries
    content_webhook_interval_s: float = Field(default=2.0, gt=0.0)
    content_webhook_timeout_s: float = Field(default=5.0, gt=0.0, le=300.0)
    content_webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    # recommendations (docs/recommend.md): the worker keeps the live counters unless
    # recommend_live is off; serve trains the learned index every recommend_train_interval_s
    # where the lake is written, with recommend_model ("auto": the one the evaluation chooses)
    # and each user's and item's top recommend_index_size items
    recommend_live: bool = True
    recommend_train_interval_s: float = Field(default=86_400.0, gt=0.0)
    recommend_model: Literal["auto", "ease", "als", "bpr"] = "auto"
    recommend_index_size: int = Field(default=100, ge=1, le=1000)
    # serve recomputes every running bandit's traffic allocation from the lake this often
    experiments_bandit_interval_s: float = Field(default=600.0, gt=0.0)
    # token-bucket rate limits per write key (collector requests) and per API key (every other
    # route): a sustained rate and a burst; in memory when embedded, in Redis when the cache
    # is Redis ("auto"), so that every API node shares one bucket per key
    rate_limit_enabled: bool = True
    rate_limit_backend: Literal["auto", "memory", "redis"] = "auto"
    rate_limit_write_key_per_s: float = Field(default=20_000.0, gt=0.0)
    rate_limit_write_key_burst: int = Field(default=40_000, ge=1)
    rate_limit_api_key_per_s: float = Field(default=1_000.0, gt=0.0)
    rate_limit_api_key_burst: int = Field(default=2_000, ge=1)
    # bearer JWTs from an OpenID Connect issuer (people, and the console once it exists): the
    # issuer and its JWKS URL (discovered from the issuer when absent), the audience the
    # tokens must name, and the claim whose value maps to a role (oidc_role_map: claim value
    # -> role; a value that is a role's own name maps to it)
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str | None = None
    oidc_role_claim: str = "personify_role"
    oidc_role_map: dict[str, str] = Field(default_factory=dict)
    oidc_jwks_ttl_s: float = Field(default=3600.0, gt=0.0)
    oidc_leeway_s: float = Field(default=30.0, ge=0.0, le=300.0)
    # the console's sign-in through the same issuer (authorization code with PKCE,
    # personify.ui.oidc): the client registered there, and the callback URL registered with
    # it (unset: public_url, else the request's own URL, + /console/login/oidc/callback)
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_redirect_url: str | None = None
    # the console (/console): how long a sign-in lasts, and how long a SQL query may run
    console_session_ttl_s: float = Field(default=8 * 3600.0, gt=0.0)
    console_sql_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    # signed webhooks in: how old a signature's timestamp may be (replays within it are
    # refused by signature id)
    webhooks_in_tolerance_s: float = Field(default=300.0, gt=0.0, le=3600.0)
    # audit records for reads of per-user data too (every change is always recorded)
    audit_reads: bool = True
    # the in-memory cache's bounds: its bytes (keys, values and an estimate of each entry's
    # overhead) and its entries; the least recently used go first past either
    cache_max_mb: float = Field(default=128.0, gt=0.0)
    cache_max_entries: int = Field(default=1_000_000, ge=1)
    cache_ttl_s: float = 60.0
    cache_invalidation_ttl_s: float = 2.0
    # how long a process serves decisions from the catalog revision it read, when the change
    # did not come through the API (which invalidates at once): the CLI, another deployment
    decide_catalog_ttl_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    # how long the cache keeps what a decision reads beside a profile (its segments,
    # predictions, bought items); the worker invalidates it with the profile after every
    # batch, so this bounds only changes made elsewhere (the segment sweep, a backfill)
    decide_facts_ttl_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    # a product learned from e-commerce events takes new facts (a price, a name) at most this
    # often, so facts that move with every event write a version an hour, not one a batch
    content_product_refresh_s: float = Field(default=3600.0, ge=0.0)
    # how long a CDN or browser may keep an edge answer (GET /v1/content/{placement})
    decide_edge_max_age_s: int = Field(default=60, ge=0, le=86_400)

    @model_validator(mode="after")
    def _require_secrets_in_production(self) -> Settings:
        if self.environment == "production" and not self.pii_hash_key:
            raise ConfigurationError(
                "PERSONIFY_PII_HASH_KEY is required when PERSONIFY_ENVIRONMENT=production: "
                "set it to a long random secret (e.g. `python -c 'import secrets; "
                "print(secrets.token_hex(32))'`) and keep it stable, or hashed PII stops matching.",
                code="missing_pii_hash_key",
            )
        return self

    @model_validator(mode="after")
    def _check_public_url(self) -> Settings:
        self.public_url = self.public_url.strip().rstrip("/")
        if not self.public_url:
            return self
        try:
            parts = urlsplit(self.public_url)
            valid = (
                parts.scheme in ("http", "https")
                and bool(parts.hostname)
                and parts.port != 0
                and "@" not in parts.netloc
                and not parts.query
                and not parts.fragment
            )
        except ValueError:  # a malformed IPv6 address or port
            valid = False
        if not valid:
            raise ConfigurationError(
                "PERSONIFY_PUBLIC_URL must be an http:// or https:// URL with a host and no "
                "credentials, query or fragment, such as https://collect.example.com",
                code="invalid_public_url",
            )
        return self

    @property
    def resolved_eventlog_url(self) -> str:
        """The event log URL, defaulting to a SQLite file in ``data_dir``."""
        return self.eventlog_url or f"sqlite:///{self.data_dir / 'events.db'}"

    @property
    def resolved_state_url(self) -> str:
        """The state database URL, defaulting to a SQLite file in ``data_dir``."""
        return self.state_url or f"sqlite:///{self.data_dir / 'personify.db'}"

    @property
    def resolved_lake_url(self) -> str:
        """The lake location, defaulting to a folder in ``data_dir``."""
        return self.lake_url or str(self.data_dir / "lake")

    @property
    def resolved_models_dir(self) -> Path:
        """The model files' folder, defaulting to ``models`` in ``data_dir``."""
        return self.models_dir or self.data_dir / "models"

    @property
    def pii_hash_key_file(self) -> Path:
        """Where the embedded default keeps its PII key (when PERSONIFY_PII_HASH_KEY is not
        set); ``personify privacy rotate-pii-key`` replaces it."""
        return self.data_dir / "pii_hash.key"

    @property
    def pii_hash_retired_file(self) -> Path:
        """The embedded default's retired PII keys, one per line, newest first."""
        return self.data_dir / "pii_hash.retired"

    def resolved_pii_hash_retired_keys(self) -> tuple[bytes, ...]:
        """The retired PII keys: ``PERSONIFY_PII_HASH_RETIRED_KEYS`` and, for the embedded
        default key file, the keys ``rotate-pii-key`` retired (``pii_hash.retired``)."""
        keys = [k.strip() for k in self.pii_hash_retired_keys.split(",") if k.strip()]
        if not self.pii_hash_key and self.pii_hash_retired_file.exists():
            keys.extend(
                line.strip()
                for line in self.pii_hash_retired_file.read_text().splitlines()
                if line.strip()
            )
        return tuple(dict.fromkeys(k.encode() for k in keys))

    def resolved_pii_hash_key(self) -> bytes:
        """The PII HMAC key. Outside production a random key is created once in ``data_dir``.

        Raises ``ConfigurationError`` in production when no key is set.
        """
        if self.pii_hash_key:
            return self.pii_hash_key.encode()
        if self.environment == "production":
            raise ConfigurationError("PERSONIFY_PII_HASH_KEY is required in production")
        path = self.pii_hash_key_file
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()
