"""Shared fixtures: settings on a temporary data folder, and the rule for absent services."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# LightGBM's OpenMP threads sleep while they wait, as in `personify serve` (cli/tuning.py):
# spinning threads of a test process starve the servers and workers other tests start
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from personify.settings import Settings

REQUIRE_SERVICES = os.environ.get("PERSONIFY_REQUIRE_SERVICES") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", help="run the long variants (ten times the fuzz bodies)"
    )


def service_missing(reason: str, *, module: bool = False) -> None:
    """Skip when a service is absent, or fail when ``PERSONIFY_REQUIRE_SERVICES=1`` (CI).
    ``module=True`` skips the whole module (called at its top level)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings isolated from the environment and any .env file."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "environment": "test",
        "pii_hash_key": "test-pii-key",
        "eventlog_durability": "normal",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Test settings on a fresh data folder."""
    yield make_settings(tmp_path / "data")
