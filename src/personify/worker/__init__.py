"""The stream worker: consumes the event log and applies each event to profiles, exactly once."""

from __future__ import annotations

from personify.worker.worker import StreamWorker, WorkerStats

__all__ = ["StreamWorker", "WorkerStats"]
