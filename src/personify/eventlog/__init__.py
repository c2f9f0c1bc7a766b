"""The durable, ordered, offset-addressed event log: the ``EventLog`` port and its adapters."""

from __future__ import annotations

from personify.eventlog.base import (
    AppendResult,
    EventLog,
    LogEntry,
    LogRecord,
    count_duplicates,
    open_eventlog,
)

__all__ = [
    "AppendResult",
    "EventLog",
    "LogEntry",
    "LogRecord",
    "count_duplicates",
    "open_eventlog",
]
