"""Background stages kept alive: a stage whose task dies is reported and started again.

The stream worker and the lake writer each run as one task of the server. Neither dies on an
event (one that cannot be applied is dead-lettered), but a task can still end: a database
down for longer than the stage waits, a failed critical quality check, a bug. Then
``StageSupervisor``:

* logs the failure once, with its traceback;
* records it in ``StageStatus`` (state, last error code and message, time of the failure,
  restart count), which ``GET /v1/worker/status`` shows and ``GET /readyz`` answers 503 on;
* starts the stage again after a backoff that doubles from ``min_backoff_s`` up to
  ``max_backoff_s``, and falls back to ``min_backoff_s`` once the stage has run for
  ``healthy_after_s`` before failing again.

A restarted stage carries on from what it holds: the worker retries the batch it had in
hand, the lake writer the micro-batch it had read, so nothing read before the failure is
skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from personify.clock import Clock, SystemClock
from personify.errors import PersonifyError

logger = logging.getLogger("personify.stages")

StageState = Literal["running", "restarting", "stopped"]
StageRun = Callable[[asyncio.Event], Awaitable[None]]

_MAX_MESSAGE_CHARS = 500


@dataclass(slots=True)
class StageStatus:
    """What a supervised stage is doing, and how it last failed."""

    name: str
    state: StageState = "stopped"
    restarts: int = 0
    started_at: datetime | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    last_failure_at: datetime | None = None
    next_restart_at: datetime | None = None

    @property
    def is_down(self) -> bool:
        """Whether the stage should run but does not (it died and waits to restart)."""
        return self.state == "restarting"

    def summary(self) -> dict[str, Any]:
        """What ``GET /readyz`` shows without a key: no error text, which may name internals."""
        return {
            "stage": self.name,
            "state": self.state,
            "restarts": self.restarts,
            "lastFailureAt": _iso(self.last_failure_at),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of one stage in ``GET /v1/worker/status`` (admin key)."""
        error = None
        if self.last_error_code is not None:
            error = {"code": self.last_error_code, "message": self.last_error_message}
        return {
            "stage": self.name,
            "state": self.state,
            "restarts": self.restarts,
            "startedAt": _iso(self.started_at),
            "lastError": error,
            "lastFailureAt": _iso(self.last_failure_at),
            "nextRestartAt": _iso(self.next_restart_at),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def describe_failure(exc: BaseException | None) -> tuple[str, str]:
    """The code and message a failure is reported with (``stage_exited`` for a clean return)."""
    if exc is None:
        return "stage_exited", "the stage returned without being asked to stop"
    if isinstance(exc, PersonifyError):
        return exc.code, exc.message[:_MAX_MESSAGE_CHARS]
    return "stage_failed", f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE_CHARS]


class StageSupervisor:
    """Runs ``run(stop)`` as a task of the current event loop and restarts it when it ends."""

    def __init__(
        self,
        name: str,
        run: StageRun,
        *,
        clock: Clock | None = None,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.name = name
        self._run = run
        self._clock = clock or SystemClock()
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max(max_backoff_s, min_backoff_s)
        self._healthy_after_s = healthy_after_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.status = StageStatus(name)

    @property
    def running(self) -> bool:
        """Whether the supervising task is alive (the stage runs or waits to restart)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the stage in the background (nothing if it is already supervised)."""
        if self.running:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._supervise(self._stop), name=f"stage-{self.name}")

    def request_stop(self) -> None:
        """Ask the stage to finish what it holds and not to restart (safe from a signal handler)."""
        self._stop.set()

    async def stop(self) -> None:
        """Stop the stage and wait for it; a wait for a restart ends at once."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait([task])
        self.status.state = "stopped"
        self.status.next_restart_at = None

    async def _supervise(self, stop: asyncio.Event) -> None:
        backoff = self._min_backoff_s
        while not stop.is_set():
            self.status.state = "running"
            self.status.started_at = self._clock.now()
            self.status.next_restart_at = None
            began = time.monotonic()
            failure: BaseException | None = None
            try:
                await self._run(stop)
            # the stage must never end silently, whatever ended it: it is logged with its
            # traceback, reported, and started again (CancelledError is not caught)
            except Exception as exc:  # noqa: BLE001
                failure = exc
            if stop.is_set() and failure is None:
                break
            if time.monotonic() - began >= self._healthy_after_s:
                backoff = self._min_backoff_s
            self._record(failure, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
            if stop.is_set():
                break
            self.status.restarts += 1
        self.status.state = "stopped"
        self.status.next_restart_at = None

    def _record(self, failure: BaseException | None, backoff_s: float) -> None:
        code, message = describe_failure(failure)
        now = self._clock.now()
        self.status.state = "restarting"
        self.status.last_error_code = code
        self.status.last_error_message = message
        self.status.last_failure_at = now
        self.status.next_restart_at = now + timedelta(seconds=backoff_s)
        logger.error(
            "stage %s stopped: [%s] %s; restarting in %.1f s",
            self.name,
            code,
            message,
            backoff_s,
            exc_info=failure,
        )
