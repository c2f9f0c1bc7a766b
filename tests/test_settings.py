"""Settings from the environment, the PII key rule, and backend selection by URL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from personify.errors import ConfigurationError
from personify.eventlog.base import open_eventlog
from personify.eventlog.sqlite import SQLiteEventLog
from personify.registry import EVENTLOG_ADAPTERS, load_adapter, scheme_of
from personify.settings import Settings
from personify.store.database import Database
from tests.conftest import make_settings


def test_production_without_a_pii_key_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_settings(tmp_path, environment="production", pii_hash_key="")
    assert caught.value.code == "missing_pii_hash_key"
    assert "PERSONIFY_PII_HASH_KEY" in caught.value.message


def test_production_from_the_environment_without_a_key_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONIFY_ENVIRONMENT", "production")
    monkeypatch.delenv("PERSONIFY_PII_HASH_KEY", raising=False)
    monkeypatch.setenv("PERSONIFY_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert not (tmp_path / "pii_hash.key").exists()


def test_production_with_a_key_uses_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, environment="production", pii_hash_key="s3cret")
    assert settings.resolved_pii_hash_key() == b"s3cret"
    assert not (tmp_path / "pii_hash.key").exists()


def test_development_without_a_key_creates_one_file_and_reuses_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = make_settings(data_dir, environment="development", pii_hash_key="")
    key = first.resolved_pii_hash_key()
    path = data_dir / "pii_hash.key"
    assert path.exists()
    assert len(key) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.resolved_pii_hash_key() == key
    again = make_settings(data_dir, environment="development", pii_hash_key="")
    assert again.resolved_pii_hash_key() == key
    other = make_settings(tmp_path / "other", environment="development", pii_hash_key="")
    assert other.resolved_pii_hash_key() != key


def test_settings_come_from_prefixed_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONIFY_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("PERSONIFY_MAX_EVENT_BYTES", "1000")
    monkeypatch.setenv("PERSONIFY_PII_PATHS", '["traits.email"]')
    monkeypatch.setenv("PERSONIFY_RUN_WORKER", "false")
    monkeypatch.setenv("MAX_BATCH_BYTES", "1")  # unprefixed: ignored
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.data_dir == tmp_path / "d"
    assert settings.max_event_bytes == 1000
    assert settings.max_batch_bytes == 500 * 1024
    assert settings.pii_paths == ["traits.email"]
    assert settings.run_worker is False


def test_a_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONIFY_DEDUPE_WINDOW_HOURS", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("PERSONIFY_DEDUPE_WINDOW_HOURS=2.5\nPERSONIFY_EVENTLOG_DURABILITY=off\n")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.dedupe_window_hours == 2.5
    assert settings.eventlog_durability == "off"


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.max_event_bytes == 32 * 1024
    assert settings.max_batch_bytes == 500 * 1024
    assert settings.dedupe_window_hours == 24.0
    assert settings.future_tolerance_hours == 24.0
    assert settings.pii_paths == ["traits.*", "context.traits.*"]
    assert settings.resolved_eventlog_url == f"sqlite:///{tmp_path / 'events.db'}"
    assert settings.resolved_state_url == f"sqlite:///{tmp_path / 'personify.db'}"
    assert settings.resolved_lake_url == str(tmp_path / "lake")
    explicit = make_settings(tmp_path, eventlog_url="redis://h:6379/0?stream=e")
    assert explicit.resolved_eventlog_url == "redis://h:6379/0?stream=e"


def test_scheme_of_strips_the_driver() -> None:
    assert scheme_of("postgresql+psycopg://u@h/db") == "postgresql"
    assert scheme_of("sqlite:///x.db") == "sqlite"
    assert scheme_of("kafka://h:9092/events") == "kafka"


@pytest.mark.parametrize("url", ["mysql://h/db", "file:///tmp/x", "/just/a/path", ""])
def test_an_unknown_eventlog_scheme_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_adapter(EVENTLOG_ADAPTERS, url, "event log")
    assert caught.value.code == "unknown_backend"
    assert "sqlite://" in caught.value.message


def test_open_eventlog_picks_the_adapter_by_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    log = open_eventlog(settings)
    assert isinstance(log, SQLiteEventLog)
    assert log.path == tmp_path / "events.db"
    with pytest.raises(ConfigurationError):
        open_eventlog(settings, "cassandra://h/events")


def test_a_missing_driver_names_the_extra_to_install() -> None:
    table = {"redis": "personify.no_such_adapter_module:Adapter"}
    with pytest.raises(ConfigurationError) as caught:
        load_adapter(table, "redis://h:6379/0", "event log")
    assert caught.value.code == "missing_extra"
    assert "personify[redis]" in caught.value.message


def test_an_unknown_state_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Database("mongodb://h/db")
    assert caught.value.code == "unknown_backend"
