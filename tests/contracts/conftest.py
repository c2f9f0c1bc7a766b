"""Backends for the contract suites. Each backend appears once; absent engines skip (or fail in CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from personify.eventlog.base import EventLog
from personify.eventlog.sqlite import SQLiteEventLog
from tests.conftest import make_settings

LogFactory = Callable[[], Awaitable[EventLog]]

EVENTLOG_BACKENDS = ["sqlite"]


@pytest.fixture(params=EVENTLOG_BACKENDS)
async def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogFactory]:
    """Opens started logs that all share one backing store (to test restarts and groups)."""
    opened: list[EventLog] = []
    settings = make_settings(tmp_path / "data", dedupe_window_hours=1.0)

    async def open_sqlite() -> EventLog:
        log = SQLiteEventLog.from_url(f"sqlite:///{tmp_path / 'events.db'}", settings)
        await log.start()
        opened.append(log)
        return log

    factories: dict[str, LogFactory] = {"sqlite": open_sqlite}
    yield factories[request.param]
    for log in opened:
        await log.close()
