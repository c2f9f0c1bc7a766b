"""Erasure in the lake: a Delta delete of the subject's rows, then vacuum and log cleanup.

What a row of the subject is: its ``user_id``, ``anonymous_id`` or ``previous_id`` is one of
their ids, or one of its text columns (``properties``, ``traits``, ``context``, ``extra`` and
every string ``prop_*`` column) holds a needle (an id, a profile id or a hashed identifier).
A needle of ``MIN_SUBSTRING_CHARS`` or more is searched as a substring; a shorter one only as
a whole JSON string (``"u7"``), so that erasing user ``u7`` does not delete the events of
everyone whose URL happens to contain ``u7``.

The delete is one Delta commit (optimistic concurrency, retried when the lake writer commits
first), so the current version no longer holds the rows at once. The files that held them
stay on storage until vacuum deletes them, and the Delta log's older commits keep per-file
column statistics (min/max values, which can be the subject's ids) until the log is cleaned
up. Both are removed only once they are older than ``retention_hours`` (the lake's vacuum
retention, ``PERSONIFY_LAKE_VACUUM_RETENTION_HOURS``, 168 by default), so that readers of
recent versions keep working: ``erase`` says what is left under ``"remains"`` and when a
re-run removes it; ``find`` lists every file still holding a needle.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.fs import DeltaStorageHandler

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import BackendUnavailable
from personify.lake.schema import PARTITION_COLUMN, PROMOTED_PREFIX
from personify.lake.table import Lake

if TYPE_CHECKING:
    from pyarrow import Schema

    from personify.privacy.erasure import Subject

__all__ = [
    "ID_COLUMNS",
    "MIN_SUBSTRING_CHARS",
    "LakeEraser",
    "match_predicate",
    "text_patterns",
]

ID_COLUMNS = ("user_id", "anonymous_id", "previous_id")
_TEXT_COLUMNS = ("properties", "traits", "context", "extra")
MIN_SUBSTRING_CHARS = 8
_COMMIT_ATTEMPTS = 5
_RETRY_MAX_S = 2.0
_LOG_FOLDER = "_delta_log"
_LOG_VERSION = re.compile(r"^(\d{20})\.")


def text_patterns(needles: Iterable[str]) -> list[str]:
    """What to search text for: long needles as they are, short ones as whole JSON strings."""
    patterns: set[str] = set()
    for needle in needles:
        if not needle:
            continue
        if len(needle) >= MIN_SUBSTRING_CHARS:
            patterns.add(needle)
        else:
            patterns.add(msgspec.json.encode(needle).decode())
    return sorted(patterns)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_text(field: pa.Field) -> bool:
    return bool(pa.types.is_string(field.type) or pa.types.is_large_string(field.type))


def match_predicate(schema: Schema, ids: Iterable[str], needles: Iterable[str]) -> str | None:
    """A SQL condition (DataFusion's and DuckDB's dialect alike) true for the subject's rows
    of a table with ``schema``; None when nothing could match."""
    names = {f.name: f for f in schema}
    terms: list[str] = []
    id_list = sorted({i for i in ids if i})
    if id_list:
        values = ", ".join(_literal(i) for i in id_list)
        terms.extend(
            f"{_identifier(c)} IN ({values})"
            for c in ID_COLUMNS
            if c in names and _is_text(names[c])
        )
    patterns = text_patterns(needles)
    columns = [c for c in _TEXT_COLUMNS if c in names and _is_text(names[c])]
    columns += sorted(f.name for f in schema if f.name.startswith(PROMOTED_PREFIX) and _is_text(f))
    for column in columns:
        terms.extend(f"strpos({_identifier(column)}, {_literal(p)}) > 0" for p in patterns)
    return " OR ".join(terms) if terms else None


def _escaped_forms(needles: Iterable[str]) -> list[bytes]:
    """Each needle as raw UTF-8 and as it appears inside a JSON string (the Delta log's
    statistics are JSON within JSON, so quotes and backslashes may be escaped twice)."""
    forms: set[bytes] = set()
    for needle in needles:
        if not needle:
            continue
        once = msgspec.json.encode(needle)[1:-1]
        twice = msgspec.json.encode(once.decode())[1:-1]
        forms.update({needle.encode(), once, twice})
    return sorted(forms)


class LakeEraser:
    """Deletes the subject's rows from the lake's Delta table, then vacuums the files (and
    cleans up the log commits) that held them once they are older than ``retention_hours``."""

    name = "lake"

    def __init__(
        self,
        lake: Lake,
        *,
        retention_hours: float,
        commit_timeout_s: float = 300.0,
        clock: Clock | None = None,
    ) -> None:
        if not math.isfinite(retention_hours) or retention_hours < 0:
            raise ValueError(f"retention_hours must be a finite number >= 0, not {retention_hours}")
        self._lake = lake
        self.retention_hours = retention_hours
        self._commit_timeout_s = commit_timeout_s
        self._clock = clock or SystemClock()

    # -- erase -------------------------------------------------------------------------------

    def erase(self, subject: Subject) -> dict[str, Any]:
        """Delete, vacuum, clean up the log; what went and what remains (idempotent)."""
        if not self._lake.exists():
            return {"rows_deleted": 0, "files_vacuumed": 0, "log_files_removed": 0}
        deleted, version = self._delete(subject)
        table = self._lake.open()
        try:
            vacuumed = table.vacuum(
                # Delta counts whole hours; rounding up never removes a file too early
                retention_hours=math.ceil(self.retention_hours),
                dry_run=False,
                enforce_retention_duration=False,
            )
            table.update_incremental()
            # a checkpoint of the newest version, without the deleted files' statistics:
            # the older commits (the delete's own included, which has them) can then be
            # cleaned up once they are older than the retention
            table.create_checkpoint()
        except (DeltaError, OSError) as exc:
            raise BackendUnavailable(
                f"vacuuming the lake at {self._lake.uri} failed: {exc}", code="lake_unavailable"
            ) from exc
        removed_logs = self._clean_log(subject.needles)
        result: dict[str, Any] = {
            "rows_deleted": deleted,
            "version": version,
            "files_vacuumed": len(vacuumed),
            "log_files_removed": removed_logs,
        }
        left = self.find(subject)
        if left:
            result["remains"] = {
                "files": left,
                "retention_hours": self.retention_hours,
                "rerun_after": format_timestamp(
                    self._clock.now() + timedelta(hours=self.retention_hours)
                ),
                "reason": (
                    "files a Delta commit removed, and older log commits, are deleted only "
                    "once older than the vacuum retention; erase again after rerun_after"
                ),
            }
        return result

    def _delete(self, subject: Subject) -> tuple[int, int | None]:
        """Delete the subject's rows in one commit, retried while another writer wins.

        The delete is limited to the partitions (event dates) that hold the subject's rows,
        found by a scan that commits nothing: Delta refuses a delete when a concurrent commit
        added files it might have had to read, and with the limit only files added to those
        dates count, and the delete itself reads and rewrites only them, so a retry is short.
        """
        deadline = time.monotonic() + self._commit_timeout_s
        attempt = 0
        while True:
            attempt += 1
            table = self._lake.open()
            schema = pa.schema(table.schema().to_arrow())
            predicate = match_predicate(schema, subject.ids, subject.needles)
            if predicate is None:
                return 0, int(table.version())
            dates = _distinct_dates(self._lake.dataset(int(table.version())), predicate)
            if not dates:
                return 0, int(table.version())
            try:
                metrics = table.delete(
                    f"({_date_condition(dates)}) AND ({predicate})",
                    commit_properties=CommitProperties(max_commit_retries=_COMMIT_ATTEMPTS),
                )
            except CommitFailedError as exc:
                # the lake writer (or compaction) committed files to these dates first
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(
                        f"the lake at {self._lake.uri} kept changing under the delete for "
                        f"{self._commit_timeout_s:g} s: {exc}",
                        code="lake_unavailable",
                    ) from exc
                time.sleep(min(_RETRY_MAX_S, 0.05 * 2 ** min(attempt, 6)))
                continue
            except (DeltaError, OSError) as exc:
                raise BackendUnavailable(
                    f"deleting from the lake at {self._lake.uri} failed: {exc}",
                    code="lake_unavailable",
                ) from exc
            return int(metrics.get("num_deleted_rows", 0)), int(table.version())

    # -- the files on storage ----------------------------------------------------------------

    def _storage(self) -> pafs.FileSystem:
        return pafs.PyFileSystem(DeltaStorageHandler(self._lake.uri, self._lake.storage_options))

    def _files(self, folder: str, *, recursive: bool) -> list[pafs.FileInfo]:
        try:
            infos = self._storage().get_file_info(
                pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
            )
        except (OSError, DeltaError) as exc:
            raise BackendUnavailable(
                f"listing the lake at {self._lake.uri} failed: {exc}", code="lake_unavailable"
            ) from exc
        return [i for i in infos if i.type == pafs.FileType.File]

    def _read(self, path: str) -> bytes:
        try:
            with self._storage().open_input_file(path) as stream:
                return bytes(stream.read())
        except (OSError, DeltaError) as exc:
            raise BackendUnavailable(
                f"reading {path} in the lake at {self._lake.uri} failed: {exc}",
                code="lake_unavailable",
            ) from exc

    def _log_holds(self, path: str, forms: Sequence[bytes]) -> bool:
        data = self._read(path)
        if path.endswith(".parquet"):
            # a checkpoint: its statistics are compressed, so search its rows as JSON
            rows = pq.read_table(pa.BufferReader(data)).to_pylist()
            data = msgspec.json.encode(rows, enc_hook=str)
        return any(form in data for form in forms)

    def _clean_log(self, needles: frozenset[str]) -> int:
        """Remove the log files below the newest checkpoint that are older than the
        retention, when one of them holds a needle; how many went.

        A contiguous oldest-first prefix, as Delta's own log cleanup removes: versions before
        the newest checkpoint are only needed to time-travel to them, and vacuum has already
        removed the data files of the versions that held the subject's rows.
        """
        infos = self._files(_LOG_FOLDER, recursive=False)
        by_version: dict[int, list[pafs.FileInfo]] = {}
        for info in infos:
            match = _LOG_VERSION.match(info.base_name)
            if match:
                by_version.setdefault(int(match.group(1)), []).append(info)
        checkpoints = [
            v
            for v, files in by_version.items()
            if any(".checkpoint." in f.base_name for f in files)
        ]
        if not checkpoints:
            return 0
        newest = max(checkpoints)
        cutoff = self._clock.time() - self.retention_hours * 3600.0
        prefix: list[pafs.FileInfo] = []
        for version in sorted(v for v in by_version if v < newest):
            files = by_version[version]
            if any(f.mtime is None or f.mtime.timestamp() > cutoff for f in files):
                break
            prefix.extend(files)
        forms = _escaped_forms(needles)
        if not any(self._log_holds(f.path, forms) for f in prefix):
            return 0
        storage = self._storage()
        for info in prefix:
            try:
                storage.delete_file(info.path)
            except FileNotFoundError:
                continue  # a concurrent cleanup removed it first
            except (OSError, DeltaError) as exc:
                raise BackendUnavailable(
                    f"removing {info.path} from the lake at {self._lake.uri} failed: {exc}",
                    code="lake_unavailable",
                ) from exc
        return len(prefix)

    # -- find --------------------------------------------------------------------------------

    def find(self, subject: Subject) -> list[str]:
        """Where the subject remains: rows of the current version, then every other data file
        and every log file on storage that holds a needle ([] when the lake is clean)."""
        if not self._lake.exists():
            return []
        table = self._lake.open()
        found: list[str] = []
        current = self._count_current(table, subject)
        if current:
            found.append(f"lake: {current} rows in version {table.version()} of {self._lake.uri}")
        root = self._lake.uri.rstrip("/") + "/"
        referenced = {uri.removeprefix(root) for uri in table.file_uris()}
        for info in self._files("", recursive=True):
            if (
                info.path.startswith(_LOG_FOLDER + "/")
                or not info.path.endswith(".parquet")
                or info.path in referenced
            ):
                continue
            # a file no longer in the current version, waiting for vacuum
            rows = self._count_file(info.path, subject)
            if rows:
                found.append(f"lake: {rows} rows in the removed file {info.path}")
        forms = _escaped_forms(subject.needles)
        for info in self._files(_LOG_FOLDER, recursive=False):
            if _LOG_VERSION.match(info.base_name) and self._log_holds(info.path, forms):
                found.append(f"lake: the log file {info.path} names the subject")
        return found

    def _count_current(self, table: DeltaTable, subject: Subject) -> int:
        schema = pa.schema(table.schema().to_arrow())
        predicate = match_predicate(schema, subject.ids, subject.needles)
        if predicate is None:
            return 0
        return _count(self._lake.dataset(), predicate)

    def _count_file(self, path: str, subject: Subject) -> int:
        rows = pq.read_table(pa.BufferReader(self._read(path)))
        predicate = match_predicate(rows.schema, subject.ids, subject.needles)
        return 0 if predicate is None else _count(rows, predicate)


def _distinct_dates(rows: object, predicate: str) -> list[date | None]:
    """The partitions (event dates) of ``rows`` that hold a row satisfying ``predicate``."""
    conn = duckdb.connect()
    try:
        conn.register("rows", rows)
        found = conn.execute(
            f"SELECT DISTINCT {_identifier(PARTITION_COLUMN)} FROM rows WHERE {predicate}"
        ).fetchall()
    finally:
        conn.close()
    return [row[0] for row in found]


def _date_condition(dates: Sequence[date | None]) -> str:
    column = _identifier(PARTITION_COLUMN)
    known = sorted(d for d in dates if d is not None)
    terms = []
    if known:
        values = ", ".join(f"CAST('{d.isoformat()}' AS DATE)" for d in known)
        terms.append(f"{column} IN ({values})")
    if len(known) < len(dates):
        terms.append(f"{column} IS NULL")
    return " OR ".join(terms)


def _count(rows: object, predicate: str) -> int:
    """How many of ``rows`` (an Arrow table or dataset) satisfy ``predicate``."""
    conn = duckdb.connect()
    try:
        conn.register("rows", rows)
        found = conn.execute(f"SELECT count(*) FROM rows WHERE {predicate}").fetchone()
    finally:
        conn.close()
    return int(found[0]) if found else 0
