"""Liveness and readiness, for Kubernetes probes and load balancers.

``/healthz`` answers as long as the process serves HTTP: a dead engine or a stage that is
restarting is no reason to kill the process (it recovers in place), so liveness never
looks at them. ``/readyz`` answers 200 only when this process can do its work now: every
background stage runs, and the three engines every request path needs answer a cheap
probe (the event log, the state database, the cache). A node that is not ready is taken
out of the load balancer until it is again.

The probes run concurrently, each bounded by ``CHECK_TIMEOUT_S`` (a blackholed host must
not hold the probe past the orchestrator's own timeout). The public answer names what
failed and its error code only; the driver's text (hosts, ports) goes to the server log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from personify.api.documents import ErrorDocument, Health, Readiness
from personify.errors import BackendUnavailable
from personify.runtime import Runtime

__all__ = ["CHECK_TIMEOUT_S", "check_dependencies", "health", "ready"]

logger = logging.getLogger(__name__)

# well under a Kubernetes probe's default timeoutSeconds of 1 s would be too tight for a
# PostgreSQL connect after an idle pool was dropped; well under a typical 5 s period
CHECK_TIMEOUT_S = 2.0

_MESSAGES = {
    "eventlog": "the event log is unreachable",
    "state": "the state database is unreachable",
    "cache": "the cache is unreachable",
}


async def _probe(name: str, check: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """One engine's probe: its name, whether it answered, how long it took, and the error
    code when it did not."""
    started = time.perf_counter()
    code: str | None = None
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except BackendUnavailable as exc:
        code = exc.code
        logger.warning("readiness: %s: %s", name, exc.message)
    except TimeoutError:
        code = "timeout"
        logger.warning("readiness: %s did not answer in %.1f s", name, CHECK_TIMEOUT_S)
    result: dict[str, Any] = {
        "name": name,
        "ok": code is None,
        "durationMs": round((time.perf_counter() - started) * 1000.0, 2),
    }
    if code is not None:
        result["code"] = code
    return result


async def check_dependencies(runtime: Runtime) -> list[dict[str, Any]]:
    """Probe the event log, the state database and the cache at once; one result each."""
    checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("eventlog", runtime.log.ping),
        # SQLAlchemy is synchronous: its probe runs in a thread, which a timeout abandons
        ("state", lambda: asyncio.to_thread(runtime.db.ping)),
        ("cache", runtime.cache.ping),
    ]
    return list(await asyncio.gather(*(_probe(name, check) for name, check in checks)))


@get("/healthz", tags=["health"], sync_to_thread=False)
def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@get(
    "/readyz",
    tags=["health"],
    responses={
        503: ResponseSpec(
            ErrorDocument,
            description="dependency_down: the event log, the state database or the cache "
            "does not answer (details.checks says which); stage_down: a background stage "
            "is restarting",
        )
    },
)
async def ready(runtime: NamedDependency[Runtime]) -> Readiness:
    """Readiness: the event log, the state database and the cache answer, and every
    background stage of this process (worker, lake writer) is running."""
    # liveness stays /healthz: a stage that died is restarted in-process, and an engine
    # that went away is reconnected to, so the process is alive, but not ready meanwhile
    checks = await check_dependencies(runtime)
    stages = runtime.stages()
    failed = [check for check in checks if not check["ok"]]
    down = [stage for stage in stages if stage.is_down]
    if failed:
        raise BackendUnavailable(
            "; ".join(_MESSAGES[check["name"]] for check in failed),
            code="dependency_down",
            details={"checks": checks, "stages": [stage.summary() for stage in down]},
        )
    if down:
        names = ", ".join(stage.name for stage in down)
        raise BackendUnavailable(
            f"stage {names} is down and restarting; see GET /v1/worker/status",
            code="stage_down",
            details={"stages": [stage.summary() for stage in down]},
        )
    return Readiness(status="ready", stages=[s.summary() for s in stages], checks=checks)
