"""The raw-events Delta table: open, append exactly once, compact and vacuum.

Exactly once: every append made for a consumer group carries, in the same Delta commit, one
Delta *transaction identifier* per log partition (``SetTransaction``: app id
``personify-lake/<group>/<partition>``, version = the highest log offset in the batch) and
the same offsets in the commit's ``custom_metadata``. Data and offsets become visible
atomically, so after a crash the writer reads the offsets back from the table and skips
every log entry at or below them. Transaction identifiers live in the table's snapshot and
checkpoints, so reading them back does not depend on how long the commit history is kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    SchemaMismatchError,
    TableNotFoundError,
)

from personify.errors import BackendUnavailable, ConfigurationError, Conflict, NotFound
from personify.lake.schema import PARTITION_COLUMN

if TYPE_CHECKING:
    from personify.settings import Settings

logger = logging.getLogger("personify.lake")

METADATA_GROUP = "personify.lake.group"
METADATA_OFFSETS = "personify.lake.offsets"
_COMMIT_ATTEMPTS = 5
_REDIS_SEQ_BITS = 20


def offset_version(offset: str) -> int:
    """A log offset as an order-preserving integer (the Delta transaction version).

    Integer offsets (SQLite, Kafka) are themselves; a Redis stream id ``<ms>-<seq>`` becomes
    ``ms * 2**20 + seq``.
    """
    text = offset.strip()
    if text.isdigit():
        return int(text)
    head, sep, tail = text.partition("-")
    if sep and head.isdigit() and tail.isdigit() and int(tail) < 2**_REDIS_SEQ_BITS:
        return (int(head) << _REDIS_SEQ_BITS) + int(tail)
    raise ConfigurationError(
        f"log offset {offset!r} is neither an integer nor a stream id <ms>-<seq>",
        code="unsupported_offset",
    )


def transaction_app_id(group: str, partition: int) -> str:
    """The Delta transaction identifier that holds ``group``'s offset in ``partition``."""
    return f"personify-lake/{group}/{partition}"


@dataclass(frozen=True, slots=True)
class OptimizeResult:
    """What ``Lake.optimize`` did."""

    version_before: int
    version_after: int
    files_removed: int
    files_added: int
    files_vacuumed: int

    def to_dict(self) -> dict[str, int]:
        """The figures as a JSON-friendly dict."""
        return {
            "versionBefore": self.version_before,
            "versionAfter": self.version_after,
            "filesRemoved": self.files_removed,
            "filesAdded": self.files_added,
            "filesVacuumed": self.files_vacuumed,
        }


def _is_local(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    # a one-letter scheme is a Windows drive, not a URL
    return scheme in ("", "file") or len(scheme) == 1


def _unavailable(uri: str, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(f"the lake at {uri} failed: {exc}", code="lake_unavailable")


class Lake:
    """The raw-events Delta table at one location: a local folder or an object-store URL."""

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        target_file_mb: int = 128,
    ) -> None:
        if _is_local(uri):
            path = uri.removeprefix("file://")
            uri = str(Path(path).resolve())
        self.uri = uri
        self.storage_options = dict(storage_options or {}) or None
        self.target_file_bytes = target_file_mb * 1024 * 1024
        self._table: DeltaTable | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake the settings name (``PERSONIFY_LAKE_URL``, default ``data/lake``)."""
        return cls(
            settings.resolved_lake_url,
            storage_options=settings.lake_storage_options,
            target_file_mb=settings.lake_target_file_mb,
        )

    # -- reading -----------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the table has been created (by a first write)."""
        try:
            return bool(DeltaTable.is_deltatable(self.uri, self.storage_options))
        except (DeltaError, OSError) as exc:
            raise _unavailable(self.uri, exc) from exc

    def open(self, version: int | None = None) -> DeltaTable:
        """A fresh handle on the table (at ``version``, else the latest); raises ``NotFound``."""
        try:
            return DeltaTable(self.uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError as exc:
            raise NotFound(
                f"the lake at {self.uri} has no events yet: run `personify lake sink` "
                "(or the worker) or `personify import FILE` first",
                code="lake_empty",
            ) from exc
        except (DeltaError, OSError) as exc:
            raise _unavailable(self.uri, exc) from exc

    def _writer_table(self, *, refresh: bool = True) -> DeltaTable | None:
        """The handle the writer keeps (brought up to date unless ``refresh`` is false)."""
        try:
            if self._table is None:
                if not DeltaTable.is_deltatable(self.uri, self.storage_options):
                    return None
                self._table = DeltaTable(self.uri, storage_options=self.storage_options)
            elif refresh:
                self._table.update_incremental()
        except (DeltaError, OSError) as exc:
            raise _unavailable(self.uri, exc) from exc
        return self._table

    def version(self) -> int | None:
        """The latest table version, or None when there is no table yet."""
        table = self._writer_table()
        return None if table is None else int(table.version())

    def schema(self) -> pa.Schema | None:
        """The schema of the version ``watermarks`` last read (None when there is no table).

        Not refreshed on purpose: an append must be built and committed on the snapshot the
        offsets were checked on, so that Delta rejects it if another writer moved them.
        """
        table = self._writer_table(refresh=False)
        return None if table is None else pa.schema(table.schema().to_arrow())

    def dataset(self, version: int | None = None) -> pads.Dataset:
        """The table (at ``version``) as a pyarrow dataset, for DuckDB and batch jobs."""
        table = self.open(version)
        try:
            return table.to_pyarrow_dataset()
        except (DeltaError, OSError) as exc:
            raise _unavailable(self.uri, exc) from exc

    def watermarks(self, group: str, partitions: set[int]) -> dict[int, int]:
        """The highest log offset version written for each of ``partitions`` by ``group``.

        Reads the latest version, which the next ``append`` then commits on.
        """
        table = self._writer_table()
        found: dict[int, int] = {}
        if table is None:
            return found
        for partition in partitions:
            try:
                version = table.transaction_version(transaction_app_id(group, partition))
            except (DeltaError, OSError) as exc:
                raise _unavailable(self.uri, exc) from exc
            if version is not None:
                found[partition] = int(version)
        return found

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` commits, newest first (empty when there is no table)."""
        table = self._writer_table()
        if table is None:
            return []
        try:
            return list(table.history(limit))
        except (DeltaError, OSError) as exc:
            raise _unavailable(self.uri, exc) from exc

    # -- writing -----------------------------------------------------------------------------

    def append(self, rows: pa.Table, *, group: str, offsets: dict[int, str]) -> int:
        """Append ``rows`` and record ``group``'s ``offsets`` in the same commit; the new version.

        New columns are added (``schema_mode="merge"``). Raises ``Conflict`` when a concurrent
        writer won: it committed one of these partitions' offsets (Delta refuses two
        commits of one transaction id from the same table version), or a column whose type
        clashes. Re-read ``watermarks()`` and ``schema()`` and append what is left.
        """
        properties = CommitProperties(
            custom_metadata={
                METADATA_GROUP: group,
                METADATA_OFFSETS: msgspec.json.encode(
                    {str(p): o for p, o in sorted(offsets.items())}
                ).decode(),
            },
            app_transactions=[
                Transaction(app_id=transaction_app_id(group, p), version=offset_version(o))
                for p, o in sorted(offsets.items())
            ],
            max_commit_retries=_COMMIT_ATTEMPTS,
        )
        return self._write(rows, properties)

    def _write(self, rows: pa.Table, properties: CommitProperties) -> int:
        target: DeltaTable | str = self._writer_table(refresh=False) or self.uri
        try:
            write_deltalake(
                target,
                rows,
                partition_by=[PARTITION_COLUMN],
                mode="append",
                schema_mode="merge",
                storage_options=self.storage_options,
                target_file_size=self.target_file_bytes,
                commit_properties=properties,
            )
        except SchemaMismatchError as exc:
            raise Conflict(
                f"the rows do not fit the lake's schema: {exc}", code="lake_schema_conflict"
            ) from exc
        except CommitFailedError as exc:
            # e.g. another writer committed the same transaction ids (offsets) first
            raise Conflict(f"a concurrent commit won: {exc}", code="lake_commit_conflict") from exc
        except (DeltaError, OSError) as exc:
            if self._table is None and DeltaTable.is_deltatable(self.uri, self.storage_options):
                # two first writers raced to create the table: the other one won
                raise Conflict(
                    f"a concurrent commit won: {exc}", code="lake_commit_conflict"
                ) from exc
            raise _unavailable(self.uri, exc) from exc
        if isinstance(target, DeltaTable):
            # write_deltalake moved the handle to the version it committed
            return int(target.version())
        version = self.version()
        assert version is not None
        return version

    # -- maintenance -------------------------------------------------------------------------

    def optimize(
        self, *, retention_hours: int, vacuum: bool = True, full: bool = False
    ) -> OptimizeResult:
        """Compact small files into large ones, then vacuum files unreferenced for a while.

        Safe while a writer appends: compaction only rewrites files it read, and a commit that
        races an append is retried on the new version. Vacuum deletes only files that a
        commit removed more than ``retention_hours`` ago, so readers of versions younger than
        that keep working. ``full`` also deletes files no commit references (left by a crashed
        write) once they are older than the retention, which a writer's files in flight are
        not as long as the retention is longer than a write takes.
        """
        table = self.open()
        before = int(table.version())
        removed = added = 0
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                metrics = table.optimize.compact(
                    target_size=self.target_file_bytes,
                    commit_properties=CommitProperties(max_commit_retries=_COMMIT_ATTEMPTS),
                )
            except CommitFailedError as exc:
                if attempt == _COMMIT_ATTEMPTS:
                    raise _unavailable(self.uri, exc) from exc
                logger.info("compaction lost a commit race (%s); retrying", exc)
                time.sleep(0.05 * attempt)
                table.update_incremental()
                continue
            except (DeltaError, OSError) as exc:
                raise _unavailable(self.uri, exc) from exc
            removed = int(metrics.get("numFilesRemoved", 0))
            added = int(metrics.get("numFilesAdded", 0))
            break
        vacuumed: list[str] = []
        if vacuum:
            try:
                table.update_incremental()
                vacuumed = table.vacuum(
                    retention_hours=retention_hours,
                    dry_run=False,
                    enforce_retention_duration=False,
                    full=full,
                )
                table.create_checkpoint()
            except (DeltaError, OSError) as exc:
                raise _unavailable(self.uri, exc) from exc
        table.update_incremental()
        return OptimizeResult(
            version_before=before,
            version_after=int(table.version()),
            files_removed=removed,
            files_added=added,
            files_vacuumed=len(vacuumed),
        )

    def file_count(self) -> int:
        """How many data files the latest version references."""
        table = self.open()
        try:
            return len(table.file_uris())
        except (DeltaError, OSError) as exc:
            raise _unavailable(self.uri, exc) from exc
