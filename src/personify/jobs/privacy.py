"""The privacy job ``personify serve`` schedules: the erasure requests that are due, run
through every eraser (``personify.privacy.erasure``)."""

from __future__ import annotations

from typing import Any, Final

from personify.jobs.schedule import PeriodicJob
from personify.privacy.erasure import ErasureJob

__all__ = ["PRIVACY_JOB", "privacy_jobs"]

# the job that runs erasure requests (DELETE /v1/profiles/{id} triggers it, so a request
# starts at once in the process that took it)
PRIVACY_JOB: Final = "privacy-requests"
_INTERVAL_S: Final = 5.0


def privacy_jobs(job: ErasureJob, *, interval_s: float = _INTERVAL_S) -> list[PeriodicJob]:
    """The due erasure requests run every ``interval_s`` (the erasers in a thread)."""

    async def run_requests() -> dict[str, Any]:
        return dict(await job.run_async())

    return [PeriodicJob(PRIVACY_JOB, run_requests, interval_s, first_delay_s=interval_s)]
