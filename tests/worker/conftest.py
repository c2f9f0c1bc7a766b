"""A started set of services over a temporary data folder; the tests drive the worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from personify.eventlog.base import LogRecord
from personify.events.normalize import partition_key
from personify.profiles.tables import identities, profiles
from personify.runtime import Runtime
from tests.conftest import make_settings
from tests.profiles.factory import encode


def worker_settings(data_dir: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "run_worker": False,
        "worker_poll_timeout_ms": 50,
        "worker_retry_backoff_ms": 5,
        "worker_heartbeat_s": 0.1,
        "cache_invalidation_ttl_s": 0.05,
    }
    values.update(overrides)
    return make_settings(data_dir, **values)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Runtime]:
    """Runtime whose worker is not running: tests call ``worker.run(until_idle=True)``."""
    built = Runtime.build(worker_settings(tmp_path / "data"))
    await built.start()
    yield built
    await built.close()


async def append(services: Runtime, events: Sequence[dict[str, Any]]) -> None:
    """Put events straight into the log, as the collector would."""
    await services.log.append([LogRecord(encode(e), partition_key(e)) for e in events])


async def append_raw(services: Runtime, payloads: Sequence[bytes]) -> None:
    """Put arbitrary bytes into the log (a broken producer)."""
    await services.log.append([LogRecord(p, "raw") for p in payloads])


def stored_profiles(services: Runtime) -> dict[str, str]:
    """Every profile's stored state, by profile id."""
    with services.db.engine.connect() as conn:
        return dict(conn.execute(sa.select(profiles.c.profile_id, profiles.c.state)).all())


def identity_graph(services: Runtime) -> dict[str, str]:
    """Every identity's profile id."""
    with services.db.engine.connect() as conn:
        return dict(conn.execute(sa.select(identities.c.identity, identities.c.profile_id)).all())
