"""``personify import FILE``: historical events from JSON lines, CSV or Parquet into the log.

The batch/backfill path runs each row through the collector's own steps — ``Normalizer``
(validation, clock correction, ``PiiHasher``), ``partition_key`` and a ``LogRecord`` whose
dedupe key is ``<source id>:<messageId>`` like the HTTP collector's — then appends each chunk
durably to the event log, from where the worker and the lake sink take it. Every chunk is
checked by the ``ingest`` quality stage first: a critical failure stops the import before
that chunk is appended. A rejected row goes to the rejected-rows file with its row number,
reason and payload (PII hashed like a dead letter).

CSV cells are strings; columns may be dotted paths (``properties.price``) and cells under
``properties``/``traits``/``context`` that read as JSON numbers, booleans or objects are
taken as such. Parquet structs become objects, timestamps ISO-8601 strings.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import ValidationError
from personify.eventlog.base import EventLog, LogRecord, count_duplicates
from personify.events.decoding import decode_document
from personify.events.hashing import PiiHasher
from personify.events.normalize import Normalizer, parse_timestamp
from personify.ingest.collector import (
    SuppressionList,
    log_record,
    names_suppressed,
    storable_rejection,
)
from personify.ingest.sources import Source
from personify.quality.checks import QualityContext, ingest_checks
from personify.quality.runner import QualityRun, enforce, merge_runs, run_checks

FileFormat = Literal["jsonl", "csv", "parquet"]
# timestamps as the lake types them, so both read a parquet file's times alike
TIMESTAMP = pa.timestamp("us", tz="UTC")
_encode = msgspec.json.Encoder().encode
_TYPED_ROOTS = ("properties", "traits", "context", "integrations")
_SUFFIXES: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def detect_format(path: Path) -> FileFormat:
    """The file's format from its suffix (``.jsonl``/``.ndjson``/``.json``, ``.csv``, ``.parquet``)."""
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValidationError(
            f"cannot tell the format of {path.name}: name it .jsonl, .csv or .parquet "
            "or pass --format",
            code="unknown_format",
        )
    return fmt


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row of the input: its 1-based number, the decoded value (or the error), its size."""

    number: int
    raw: Any
    size: int
    error: ValidationError | None = None


@dataclass(slots=True)
class ImportSummary:
    """What an import did."""

    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    # rows naming an erased (suppressed) id: dropped, never appended
    suppressed: int = 0
    rejected_file: Path | None = None
    quality: QualityRun | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the summary."""
        return {
            "rows": self.rows,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "suppressed": self.suppressed,
            "rejectedFile": str(self.rejected_file) if self.rejected_file else None,
            "rejectedReasons": self.reasons,
            "quality": self.quality.status if self.quality else None,
        }


# -- readers ---------------------------------------------------------------------------------


def _lines(handle: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    for line in handle:
        yield line, len(line)


def read_jsonl(path: Path) -> Iterator[SourceRow]:
    """Rows of a JSON-lines file (blank lines skipped); a line that is not JSON is an error row."""
    number = 0
    with path.open("rb") as handle:
        for line, size in _lines(handle):
            if not line.strip():
                yield SourceRow(0, None, size)
                continue
            number += 1
            try:
                value = decode_document(line)
            except ValidationError as error:
                # an unreadable line cannot have its PII hashed, so none of its text is kept:
                # the line number says where it is
                yield SourceRow(number, None, size, error)
                continue
            yield SourceRow(number, value, size)


def _typed_cell(value: str) -> Any:
    text = value.strip()
    if text[:1] in "{[" or text in ("true", "false", "null") or _looks_numeric(text):
        try:
            return decode_document(text.encode())
        except ValidationError:
            return value
    return value


def _looks_numeric(text: str) -> bool:
    if not text or (text[0] == "0" and len(text) > 1 and text[1] != "."):
        return False  # leading zeros are identifiers (zip codes), not numbers
    return text.lstrip("-").replace(".", "", 1).replace("e", "", 1).isdigit()


def nest(flat: dict[str, Any], *, typed: bool) -> dict[str, Any]:
    """``{"properties.price": "9"}`` -> ``{"properties": {"price": 9}}`` (typed under objects)."""
    event: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or value == "":
            continue
        parts = key.split(".")
        root = parts[0]
        if typed and isinstance(value, str) and (root in _TYPED_ROOTS):
            value = _typed_cell(value)
        target = event
        for part in parts[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {}
                target[part] = child
            target = child
        leaf = parts[-1]
        existing = target.get(leaf)
        if isinstance(existing, dict) and isinstance(value, dict):
            existing.update(value)
        else:
            target[leaf] = value
    return event


def read_csv(path: Path) -> Iterator[SourceRow]:
    """Rows of a CSV file with a header line."""
    sizes: list[int] = []

    def lines() -> Iterator[str]:
        encoding = "utf-8-sig"  # a spreadsheet's byte-order mark must not join the first header
        with path.open("rb") as handle:
            for line, size in _lines(handle):
                sizes.append(size)
                yield line.decode(encoding, "replace")
                encoding = "utf-8"

    reader = csv.DictReader(lines())
    number = 0
    for record in reader:
        number += 1
        consumed = sum(sizes)
        sizes.clear()
        if None in record:
            yield SourceRow(
                number,
                {k: v for k, v in record.items() if k is not None},
                consumed,
                ValidationError("the row has more cells than the header", code="invalid_csv"),
            )
            continue
        yield SourceRow(number, nest(dict(record), typed=True), consumed)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return format_timestamp(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def read_parquet(path: Path, *, batch_rows: int = 5000) -> Iterator[SourceRow]:
    """Rows of a Parquet file; sizes are 1 per row (the progress unit is rows)."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(
            f"{path.name} is not a Parquet file: {exc}", code="invalid_parquet"
        ) from exc
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            number += 1
            flat = {k: _jsonable(v) for k, v in record.items()}
            for name in _TYPED_ROOTS:
                # a JSON string column holding a whole object
                text = flat.get(name)
                if isinstance(text, str) and text.strip().startswith("{"):
                    with contextlib.suppress(ValidationError):
                        flat[name] = decode_document(text.encode())
            yield SourceRow(number, nest(flat, typed=False), 1)


def read_rows(path: Path, fmt: FileFormat) -> Iterator[SourceRow]:
    """The rows of ``path`` in format ``fmt``."""
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "csv":
        return read_csv(path)
    return read_parquet(path)


def progress_total(path: Path, fmt: FileFormat) -> int:
    """The progress bar's length: bytes for text formats, rows for Parquet."""
    if fmt == "parquet":
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (pa.ArrowInvalid, OSError):
            return 0
    return path.stat().st_size


# -- the import ------------------------------------------------------------------------------


def arrival(raw: Any, now: datetime) -> datetime:
    """When a historical row first reached a collector: its ``receivedAt``, else ``sentAt``,
    else its own time; never later than ``now``.

    A backfill keeps its history's arrival times, so point-in-time features see imported
    events as known when they happened, and the clock correction (receivedAt - (sentAt -
    originalTimestamp)) comes out as it did the first time.
    """
    if isinstance(raw, dict):
        for name in ("receivedAt", "sentAt", "timestamp", "originalTimestamp"):
            value = raw.get(name)
            if value is None:
                continue
            try:
                moment = parse_timestamp(name, value)
            except ValidationError:
                return now  # the normaliser rejects the row with the precise reason
            return min(moment, now)
    return now


def _frame_of(events: list[dict[str, Any]]) -> Any:
    table = pa.table(
        {
            "message_id": pa.array([e.get("messageId") for e in events], pa.string()),
            "type": pa.array([e.get("type") for e in events], pa.string()),
            "event": pa.array(
                [e.get("event") if isinstance(e.get("event"), str) else None for e in events],
                pa.string(),
            ),
            "user_id": pa.array([e.get("userId") for e in events], pa.string()),
            "anonymous_id": pa.array([e.get("anonymousId") for e in events], pa.string()),
            "timestamp": pa.array([e.get("timestamp") for e in events], pa.string()).cast(
                TIMESTAMP
            ),
            "received_at": pa.array([e.get("receivedAt") for e in events], pa.string()).cast(
                TIMESTAMP
            ),
        }
    )
    return table.to_pandas()


class EventImporter:
    """Validates, hashes and appends rows from a file, chunk by chunk, like the collector."""

    def __init__(
        self,
        log: EventLog,
        normalizer: Normalizer,
        hasher: PiiHasher,
        source: Source,
        *,
        chunk_rows: int = 2000,
        quality: QualityContext | None = None,
        record_quality: Callable[[QualityRun], None] | None = None,
        suppressions: SuppressionList | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._log = log
        # erased ids: their rows are dropped like the collector drops their events
        self._suppressions = suppressions
        self._normalizer = normalizer
        self._hasher = hasher
        self._source = source
        self._chunk_rows = chunk_rows
        self._quality = quality
        self._record_quality = record_quality
        self._clock = clock or SystemClock()

    def _rejection(self, row: SourceRow, error: ValidationError) -> dict[str, Any]:
        # the rejected-rows file is as careful with PII as the dead letters are
        payload = storable_rejection(self._hasher, row.raw)
        return {"row": row.number, "code": error.code, "reason": error.message, "payload": payload}

    def _chunks(
        self, rows: Iterator[SourceRow], progress: Callable[[int], None] | None
    ) -> Iterator[list[SourceRow]]:
        chunk: list[SourceRow] = []
        for row in rows:
            if progress is not None:
                progress(row.size)
            if row.number == 0:
                continue  # a blank line: counted for progress, not a row
            chunk.append(row)
            if len(chunk) >= self._chunk_rows:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def run(
        self,
        rows: Iterator[SourceRow],
        *,
        dataset: str,
        rejected_path: Path,
        progress: Callable[[int], None] | None = None,
    ) -> ImportSummary:
        """Import every row; rejected rows go to ``rejected_path`` (created only if needed).

        Raises ``QualityCheckFailed`` when a chunk fails a critical ingest check: that chunk
        and the rest of the file are not appended, the chunks before it stay in the log.
        """
        summary = ImportSummary()
        runs: list[QualityRun] = []
        rejected_file: IO[bytes] | None = None
        try:
            for chunk in self._chunks(rows, progress):
                rejected_file = await self._chunk(
                    chunk, summary, runs, dataset, rejected_path, rejected_file
                )
        finally:
            if rejected_file is not None:
                rejected_file.close()
        summary.quality = merge_runs(runs)
        if summary.quality is not None and self._record_quality is not None:
            self._record_quality(summary.quality)
        return summary

    async def _chunk(
        self,
        chunk: list[SourceRow],
        summary: ImportSummary,
        runs: list[QualityRun],
        dataset: str,
        rejected_path: Path,
        rejected_file: IO[bytes] | None,
    ) -> IO[bytes] | None:
        received_at = self._clock.now()
        source_id = self._source.id
        events: list[dict[str, Any]] = []
        records: list[LogRecord] = []
        rejections: list[dict[str, Any]] = []
        for row in chunk:
            summary.rows += 1
            try:
                if row.error is not None:
                    raise row.error
                event = self._normalizer.normalize(
                    row.raw, received_at=arrival(row.raw, received_at), source_id=source_id
                )
                # the same record (and dedupe key) as the HTTP collector's, so a re-sent
                # event is not appended twice
                record = log_record(self._normalizer, event, source_id)
                if self._suppressions is not None and names_suppressed(self._suppressions, record):
                    summary.suppressed += 1
                    continue
            except ValidationError as error:
                rejections.append(self._rejection(row, error))
                summary.reasons[error.code] = summary.reasons.get(error.code, 0) + 1
                continue
            events.append(event)
            records.append(record)
        if rejections:
            if rejected_file is None:
                rejected_path.parent.mkdir(parents=True, exist_ok=True)
                rejected_file = rejected_path.open("wb")
                summary.rejected_file = rejected_path
            for item in rejections:
                rejected_file.write(_encode(item) + b"\n")
            rejected_file.flush()
            summary.rejected += len(rejections)
        if self._quality is not None and events:
            context = QualityContext(
                now=received_at,
                future_tolerance_hours=self._quality.future_tolerance_hours,
                max_rejection_rate=self._quality.max_rejection_rate,
                rejected_rows=len(rejections),
            )
            run = run_checks(
                ingest_checks(context), _frame_of(events), dataset=dataset, now=received_at
            )
            runs.append(run)
            if run.status == "failed":
                merged = merge_runs(runs)
                assert merged is not None
                enforce(merged, self._record_quality)
        if records:
            results = await self._log.append(records)
            duplicates = count_duplicates(results)
            summary.duplicates += duplicates
            summary.accepted += len(records) - duplicates
        return rejected_file
