"""A small in-process scheduler: each job runs every ``interval_s`` in the server's event loop.

A job is an ``async`` callable returning a JSON-able summary of what it did; blocking work
inside it runs in a thread (``asyncio.to_thread``), so the API and the stream worker keep
the loop. A job that fails is logged with its traceback and counted (``JobStatus``), and runs
again at its next turn: the scheduler never dies of a job. Runs of one job never overlap;
``trigger`` brings a job's next run forward to now (an API that queued work for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from personify.clock import Clock, SystemClock
from personify.worker.supervisor import describe_failure

logger = logging.getLogger("personify.jobs")

JobRun = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """A named job and how often it runs; ``first_delay_s`` is the wait before its first run."""

    name: str
    run: JobRun
    interval_s: float
    first_delay_s: float = 0.0


@dataclass(slots=True)
class JobStatus:
    """How a scheduled job has fared."""

    name: str
    interval_s: float
    runs: int = 0
    failures: int = 0
    last_started_at: datetime | None = None
    last_duration_s: float | None = None
    last_result: dict[str, Any] | None = None
    last_error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of one job's status."""
        return {
            "job": self.name,
            "intervalSeconds": self.interval_s,
            "runs": self.runs,
            "failures": self.failures,
            "lastStartedAt": self.last_started_at.isoformat() if self.last_started_at else None,
            "lastDurationSeconds": self.last_duration_s,
            "lastResult": self.last_result,
            "lastError": self.last_error,
        }


class Scheduler:
    """Runs ``PeriodicJob``s in the background of the current event loop until ``stop``."""

    def __init__(self, jobs: Sequence[PeriodicJob], *, clock: Clock | None = None) -> None:
        self.jobs = list(jobs)
        self._clock = clock or SystemClock()
        self._stop = asyncio.Event()
        # set to run a job now rather than at its next turn (and by ``stop``, to end its wait)
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.statuses = {job.name: JobStatus(job.name, job.interval_s) for job in self.jobs}

    @property
    def running(self) -> bool:
        """Whether the job tasks are alive."""
        return any(not task.done() for task in self._tasks)

    def start(self) -> None:
        """Start one background task per job (nothing if already running)."""
        if self.running:
            return
        self._stop = asyncio.Event()
        self._wake = {job.name: asyncio.Event() for job in self.jobs}
        self._tasks = [
            asyncio.create_task(
                self._loop(job, self._stop, self._wake[job.name]), name=f"job-{job.name}"
            )
            for job in self.jobs
        ]

    def trigger(self, name: str) -> bool:
        """Run the job ``name`` now instead of at its next turn, or right after the run in
        progress (runs still never overlap); then its turns go on from there. ``False``
        when this scheduler is not running such a job. Call it from the scheduler's loop."""
        wake = self._wake.get(name)
        if wake is None or self._stop.is_set():
            return False
        wake.set()
        return True

    async def stop(self) -> None:
        """Stop scheduling and wait for runs in progress to finish."""
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        self._wake = {}
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.wait(tasks)

    def status(self) -> list[JobStatus]:
        """Every job's status, in the order the jobs were given."""
        return [self.statuses[job.name] for job in self.jobs]

    async def run_once(self, job: PeriodicJob) -> dict[str, Any] | None:
        """Run ``job`` now and record the outcome; a failure is logged and counted, not raised."""
        status = self.statuses[job.name]
        status.last_started_at = self._clock.now()
        began = time.monotonic()
        try:
            result = await job.run()
        # a job must never take the scheduler (or the server) down, whatever ended it: it is
        # logged with its traceback, counted, and run again at its next turn
        except Exception as exc:
            code, message = describe_failure(exc)
            status.failures += 1
            status.last_error = {"code": code, "message": message}
            logger.error("job %s failed: [%s] %s", job.name, code, message, exc_info=exc)
            return None
        finally:
            status.runs += 1
            status.last_duration_s = round(time.monotonic() - began, 3)
        status.last_result = result
        status.last_error = None
        logger.info("job %s: %s", job.name, result)
        return result

    async def _loop(self, job: PeriodicJob, stop: asyncio.Event, wake: asyncio.Event) -> None:
        delay = job.first_delay_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(0.0, delay))
            if stop.is_set():
                return
            # a trigger during the run below wakes the next wait at once
            wake.clear()
            await self.run_once(job)
            delay = job.interval_s
