"""Settings, read from the environment (prefix ``PERSONIFY_``) and ``.env`` once, then passed down.

Domain code never reads ``os.environ``: the CLI or the app factory builds one ``Settings``
and hands it to the constructors that need it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

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

    # Event log (SQLite adapter)
    eventlog_durability: Durability = "full"
    eventlog_linger_ms: float = 2.0
    eventlog_max_batch_events: int = 5000
    eventlog_max_pending_events: int = 50_000

    # Ingest
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    dedupe_window_hours: float = 24.0
    future_tolerance_hours: float = 24.0
    auth_cache_ttl_s: float = 5.0
    pii_hash_key: str = ""
    pii_paths: list[str] = Field(
        default_factory=lambda: ["traits.email", "traits.phone", "context.traits.email"]
    )

    # Server
    host: str = "127.0.0.1"
    port: int = 8000
    run_worker: bool = True

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

    def resolved_pii_hash_key(self) -> bytes:
        """The PII HMAC key. Outside production a random key is created once in ``data_dir``.

        Raises ``ConfigurationError`` in production when no key is set.
        """
        if self.pii_hash_key:
            return self.pii_hash_key.encode()
        if self.environment == "production":
            raise ConfigurationError("PERSONIFY_PII_HASH_KEY is required in production")
        path = self.data_dir / "pii_hash.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()
