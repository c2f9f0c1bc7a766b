"""Lineage: what every derived dataset was made from, so it can be made again.

A record names the Delta version(s) read, the event-time range, the parameters, the code
version and the parent datasets. Feature tables and training frames record one here;
segment runs and models record theirs through the same ``LineageRepository.record``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.errors import NotFound
from personify.quality.tables import lineage
from personify.store.database import Database, aware


@functools.cache
def code_version() -> str:
    """``personify <version>``, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("personify")
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git_commit(Path(__file__).resolve())
    return f"personify {version}" + (f" (git {commit[:12]})" if commit else "")


def _git_commit(start: Path) -> str | None:
    for folder in start.parents:
        head_file = folder / ".git" / "HEAD"
        if not head_file.is_file():
            continue
        try:
            head = head_file.read_text().strip()
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            ref_file = folder / ".git" / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = folder / ".git" / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
        except OSError:
            return None
        return None
    return None


@dataclass(frozen=True, slots=True)
class LineageRecord:
    """Where one derived dataset came from."""

    id: str
    kind: str
    created_at: datetime
    lake_uri: str | None
    lake_versions: dict[str, int]
    time_start: datetime | None
    time_end: datetime | None
    parameters: dict[str, Any]
    code_version: str
    inputs: list[str] = field(default_factory=list)
    output: str | None = None
    row_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape shown by ``personify lineage show``."""
        return {
            "id": self.id,
            "kind": self.kind,
            "createdAt": self.created_at.isoformat(),
            "lakeUri": self.lake_uri,
            "lakeVersions": self.lake_versions,
            "timeStart": self.time_start.isoformat() if self.time_start else None,
            "timeEnd": self.time_end.isoformat() if self.time_end else None,
            "parameters": self.parameters,
            "codeVersion": self.code_version,
            "inputs": self.inputs,
            "output": self.output,
            "rowCount": self.row_count,
        }


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class LineageRepository:
    """Record and look up lineage in the state database."""

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()

    def record(
        self,
        kind: str,
        *,
        lake_uri: str | None,
        lake_versions: Mapping[str, int],
        time_start: datetime | None,
        time_end: datetime | None,
        parameters: Mapping[str, Any],
        inputs: Sequence[str] = (),
        output: str | None = None,
        row_count: int | None = None,
    ) -> LineageRecord:
        """Store and return a new record (its id is what ``personify lineage show`` takes)."""
        entry = LineageRecord(
            id=uuid.uuid4().hex,
            kind=kind,
            created_at=self._clock.now(),
            lake_uri=lake_uri,
            lake_versions=dict(lake_versions),
            time_start=time_start,
            time_end=time_end,
            parameters=dict(parameters),
            code_version=code_version(),
            inputs=list(inputs),
            output=output,
            row_count=row_count,
        )
        with self._db.begin() as conn:
            conn.execute(
                lineage.insert().values(
                    id=entry.id,
                    kind=entry.kind,
                    created_at=entry.created_at,
                    lake_uri=entry.lake_uri,
                    lake_versions=_json(entry.lake_versions),
                    time_start=entry.time_start,
                    time_end=entry.time_end,
                    parameters=_json(entry.parameters),
                    code_version=entry.code_version,
                    inputs=_json(entry.inputs),
                    output=entry.output,
                    row_count=entry.row_count,
                )
            )
        return entry

    def get(self, lineage_id: str) -> LineageRecord:
        """A record by id (or a unique prefix of it); raises ``NotFound``."""
        with self._db.connect() as conn:
            rows = list(
                conn.execute(
                    sa.select(lineage)
                    .where(lineage.c.id.startswith(lineage_id, autoescape=True))
                    .limit(2)
                )
            )
        if len(rows) != 1 or not lineage_id:
            raise NotFound(f"no lineage record {lineage_id!r}", code="lineage_not_found")
        return _row_to_record(rows[0])

    def list(self, kind: str | None = None, *, limit: int = 20) -> list[LineageRecord]:
        """The newest records (of ``kind``), newest first."""
        query = sa.select(lineage).order_by(lineage.c.created_at.desc()).limit(limit)
        if kind is not None:
            query = query.where(lineage.c.kind == kind)
        with self._db.connect() as conn:
            return [_row_to_record(r) for r in conn.execute(query)]


def _row_to_record(row: sa.Row[tuple[object, ...]]) -> LineageRecord:
    m = row._mapping
    created_at = aware(m["created_at"])
    assert created_at is not None
    return LineageRecord(
        id=m["id"],
        kind=m["kind"],
        created_at=created_at,
        lake_uri=m["lake_uri"],
        lake_versions=msgspec.json.decode(m["lake_versions"]),
        time_start=aware(m["time_start"]),
        time_end=aware(m["time_end"]),
        parameters=msgspec.json.decode(m["parameters"]),
        code_version=m["code_version"],
        inputs=msgspec.json.decode(m["inputs"]),
        output=m["output"],
        row_count=m["row_count"],
    )
