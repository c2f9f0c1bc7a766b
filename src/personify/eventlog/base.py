"""The ``EventLog`` port: what every event-log backend guarantees.

Contract (checked for every adapter by ``tests/contracts/test_eventlog.py``):

* ``append`` is durable when it returns: the records survive a crash of this process
  (and, per the adapter's durability setting, of the machine). Records with the same
  ``key`` keep their order. A record whose ``dedupe_key`` was appended within the dedupe
  window is not appended again; its result says ``duplicate=True`` and carries the
  original offset.
* ``read`` delivers each record to a consumer group at least once. A consumer that
  stops before ``commit`` gets the uncommitted records again after a restart.
* ``commit`` acknowledges, per partition, every entry up to the highest given offset.
* ``lag`` counts the records a group has not committed.
* ``truncate`` removes records that every known group has committed, and only those
  appended more than ``retention_s`` before ``now``; it never removes a record some known
  group has not committed, nor one younger than the retention.
* ``erase`` removes every retained entry a predicate matches, so no read, tail or restart
  delivers it again, or reports (``EraseReport.remaining``) the matching entries the engine
  cannot remove and how long it keeps them (a Kafka topic deletes no single record).
* ``ping`` answers cheaply whether the engine is reachable now (``GET /readyz``): it
  returns, or raises ``BackendUnavailable``; it reads and writes no records.
* Any driver failure, a full disk or a full queue raises ``BackendUnavailable``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from personify.registry import EVENTLOG_ADAPTERS, eventlog_config, load_adapter

if TYPE_CHECKING:
    from personify.settings import Settings


# NamedTuples, not frozen dataclasses: ingest builds one per event on its hot path, and a
# frozen dataclass's __init__ costs several times a tuple's.


class LogRecord(NamedTuple):
    """One record to append: an opaque payload, its ordering key, and an optional dedupe key."""

    payload: bytes
    key: str
    dedupe_key: str | None = None


class AppendResult(NamedTuple):
    """Where a record landed; ``duplicate`` means it was already in the log at ``offset``."""

    offset: str
    duplicate: bool = False


class LogEntry(NamedTuple):
    """A record as read back: its partition, its offset there, and how often it was delivered."""

    partition: int
    offset: str
    key: str
    payload: bytes
    appended_at: float
    delivery_count: int = 1


class EraseReport(NamedTuple):
    """What ``EventLog.erase`` did: how many matching entries went, and where the matching
    entries the engine keeps are (``"<partition>:<offset>"``), for at most ``retention_s``
    seconds (None: no bound is known), and why."""

    removed: int
    remaining: tuple[str, ...] = ()
    retention_s: float | None = None
    reason: str = ""


@runtime_checkable
class EventLog(Protocol):
    """A durable, ordered, offset-addressed log read by consumer groups."""

    async def start(self) -> None:
        """Connect and create what the backend needs (tables, topics, streams)."""
        ...

    def append(self, records: Sequence[LogRecord]) -> Awaitable[Sequence[AppendResult]]:
        """Append durably; one result per record, in order. Adapters may implement it as a
        coroutine or as a function returning a future; callers only await it. How an
        adapter groups concurrent appends (the SQLite log commits every append of a turn of
        the event loop in one transaction) is its own business. The results may be a lazy
        sequence (see ``count_duplicates``)."""
        ...

    async def read(
        self, group: str, consumer: str, *, max_count: int = 500, timeout_ms: int = 1000
    ) -> list[LogEntry]:
        """Up to ``max_count`` entries not yet delivered to ``consumer``; waits up to ``timeout_ms``."""
        ...

    async def commit(self, group: str, consumer: str, entries: Sequence[LogEntry]) -> None:
        """Acknowledge ``entries`` (and everything before them in their partitions)."""
        ...

    async def lag(self, group: str) -> int:
        """How many records ``group`` has not committed yet."""
        ...

    async def truncate(self, *, retention_s: float = 0.0, now: float | None = None) -> int:
        """Remove records every known group has committed that were appended more than
        ``retention_s`` seconds before ``now`` (epoch seconds, the current time by default);
        returns how many went. A backend may remove fewer (Kafka without DeleteRecords)."""
        ...

    async def tail(self, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` entries, oldest first (for ``personify events tail``)."""
        ...

    async def erase(
        self, match: Callable[[LogEntry], bool], *, dry_run: bool = False
    ) -> EraseReport:
        """Remove every retained entry ``match`` is true for (a data subject's erasure), for
        every consumer group, committed or not; with ``dry_run`` remove nothing and report
        every match under ``remaining``. Entries appended while it runs may be missed: run
        it again (it is idempotent)."""
        ...

    async def ping(self) -> None:
        """Return when the engine answers now; raise ``BackendUnavailable`` when it does not."""
        ...

    async def close(self) -> None:
        """Flush pending appends and release connections."""
        ...


def count_duplicates(results: Sequence[AppendResult]) -> int:
    """How many of ``results`` are duplicates. A result sequence that knows (an ``int``
    attribute ``duplicates``, as the SQLite log's all-new results have) answers without
    building each result; any other is counted."""
    known = getattr(results, "duplicates", None)
    if isinstance(known, int):
        return known
    return sum(1 for result in results if result.duplicate)


def open_eventlog(settings: Settings, url: str | None = None) -> EventLog:
    """Build (but not start) the event log adapter that ``url`` (or the settings) names."""
    url = url or settings.resolved_eventlog_url
    adapter = load_adapter(EVENTLOG_ADAPTERS, url, "event log")
    log: EventLog = adapter(eventlog_config(url, settings))
    return log
