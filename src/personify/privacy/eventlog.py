"""Erasure in the event log: every retained entry that names the subject, on every backend.

An entry names the subject when its ordering key is one of their ids or its payload holds a
needle (by the lake's rule: a long needle anywhere, a short one as a whole JSON string). The
log's ``erase`` port method does the work: the SQLite log rewrites the chunks that hold such
entries (zeroing the freed pages and emptying the WAL), the Redis log ``XDEL``\\s them, and a
Kafka topic, which cannot delete a single record, reports them under ``"remains"`` with the
topic's retention (``retention.ms``), after which the broker drops their segments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from personify.eventlog.base import EraseReport, EventLog, LogEntry
from personify.privacy.erasure import JOB_LOOP
from personify.privacy.lake import text_patterns

if TYPE_CHECKING:
    from personify.privacy.erasure import Subject

__all__ = ["EventLogEraser", "names_subject"]

T = TypeVar("T")
_LISTED_OFFSETS = 20


def names_subject(subject: Subject) -> Callable[[LogEntry], bool]:
    """The predicate true for the log entries of ``subject``."""
    keys = frozenset(subject.ids)
    forms: set[bytes] = set()
    for pattern in text_patterns(subject.needles):
        forms.add(pattern.encode())
        # inside a JSON payload the needle's quotes and backslashes are escaped
        forms.add(msgspec.json.encode(pattern)[1:-1])
    ordered = sorted(forms)

    def match(entry: LogEntry) -> bool:
        return entry.key in keys or any(form in entry.payload for form in ordered)

    return match


class EventLogEraser:
    """Removes the subject's entries from the event log, or says which stay and how long.

    ``loop``: the event loop the log was started on, running in another thread (the server's);
    the eraser's calls run there. Without it, the eraser starts the log on a loop of its own
    for each call and closes it afterwards. ``retention_s``: how long the log keeps entries
    when the engine does not say (the truncation retention, ``eventlog_retention_hours``).
    """

    name = "event_log"

    def __init__(
        self,
        log: EventLog,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        retention_s: float | None = None,
    ) -> None:
        self._log = log
        self._loop = loop
        self._retention_s = retention_s

    def _call(self, work: Callable[[EventLog], Awaitable[T]]) -> T:
        # the loop the log runs on: the one given, else the erasure job's (``JOB_LOOP``)
        loop = self._loop or JOB_LOOP.get()
        if loop is not None:
            return asyncio.run_coroutine_threadsafe(_awaited(work(self._log)), loop).result()
        return asyncio.run(self._owned(work))

    async def _owned(self, work: Callable[[EventLog], Awaitable[T]]) -> T:
        await self._log.start()
        try:
            return await work(self._log)
        finally:
            await self._log.close()

    def erase(self, subject: Subject) -> dict[str, Any]:
        """Remove every retained entry naming the subject; what went and what remains."""
        match = names_subject(subject)
        report: EraseReport = self._call(lambda log: log.erase(match))
        result: dict[str, Any] = {"entries_removed": report.removed}
        if report.remaining or report.reason:
            retention_s = report.retention_s
            if retention_s is None:
                retention_s = self._retention_s
            result["remains"] = {
                "entries": len(report.remaining),
                "offsets": list(report.remaining[:_LISTED_OFFSETS]),
                "retention_s": retention_s,
                "reason": report.reason,
            }
        return result

    def find(self, subject: Subject) -> list[str]:
        """The entries naming the subject that the log still holds ([] when none)."""
        match = names_subject(subject)
        report: EraseReport = self._call(lambda log: log.erase(match, dry_run=True))
        if not report.remaining:
            return []
        shown = ", ".join(report.remaining[:_LISTED_OFFSETS])
        more = len(report.remaining) - _LISTED_OFFSETS
        suffix = f" and {more} more" if more > 0 else ""
        return [f"event_log: {len(report.remaining)} entries at {shown}{suffix}"]


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
