"""Erasure in derived files: the feature tables and training frames lineage records.

``personify lake features`` and ``personify lake training-frame`` write Parquet files and
record each in lineage (``quality.lineage``: the record's ``output``). Every recorded file
that still exists is rewritten without the subject's rows: a row goes when a text column
equals one of their ids (``user_id`` is the key) or holds a needle by the lake's rule. The
rewrite replaces the file atomically and is itself recorded in lineage (kind
``erasure_rewrite``, naming the original record, never the subject). Other folders of files
(``folders``: CSV or JSON-lines exports, rejected-import files) are treated the same way.

Model files hold no user ids: a LightGBM model is trees of feature thresholds, plus a
calibration curve and aggregate figures (``predict.learning.dump_model``). The eraser still
searches the models folder, so a model that did hold one would be reported under
``"remains"`` (it cannot be edited, only retrained without the subject).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.privacy.lake import text_patterns

if TYPE_CHECKING:
    from personify.privacy.erasure import Subject
from personify.quality.lineage import LineageRepository
from personify.quality.tables import lineage
from personify.store.database import Database

__all__ = ["DerivedFilesEraser"]

_TABLE_SUFFIXES = (".parquet", ".csv")
_LINE_SUFFIXES = (".jsonl", ".ndjson")


class _Unreadable(Exception):
    """A derived file this eraser cannot read or write."""


def _subject_rows(table: pa.Table, subject: Subject) -> pa.ChunkedArray | None:
    """A boolean mask of the subject's rows (None when no column can hold a needle)."""
    values = pa.array(sorted(subject.needles), pa.string())
    patterns = text_patterns(subject.needles)
    mask: Any = None
    for column in table.columns:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        hit = pc.fill_null(pc.is_in(column, value_set=values), False)
        for pattern in patterns:
            hit = pc.or_(hit, pc.fill_null(pc.match_substring(column, pattern), False))
        mask = hit if mask is None else pc.or_(mask, hit)
    return mask


def _line_names(line: bytes, forms: Sequence[bytes]) -> bool:
    return any(form in line for form in forms)


def _forms(subject: Subject) -> list[bytes]:
    forms: set[bytes] = set()
    for pattern in text_patterns(subject.needles):
        forms.add(pattern.encode())
        forms.add(msgspec.json.encode(pattern)[1:-1])
    return sorted(forms)


class DerivedFilesEraser:
    """Rewrites lineage-recorded feature tables and training frames (and the files of
    ``folders``) without the subject's rows; searches the models folder."""

    name = "derived_files"

    def __init__(
        self,
        db: Database,
        *,
        models_dir: Path | None = None,
        folders: Sequence[Path] = (),
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self._models_dir = models_dir
        self._folders = list(folders)
        self._clock = clock or SystemClock()

    def _recorded(self) -> dict[Path, str | None]:
        """Every derived file lineage names or ``folders`` hold, with its lineage id."""
        with self._db.connect() as conn:
            rows = conn.execute(
                sa.select(lineage.c.id, lineage.c.output)
                .where(lineage.c.output.is_not(None), lineage.c.kind != "erasure_rewrite")
                .order_by(lineage.c.created_at)
            ).all()
        files: dict[Path, str | None] = {}
        for lineage_id, output in rows:
            path = Path(output)
            if path.is_file():
                files[path] = lineage_id
        for folder in self._folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.is_file() and path.suffix in (*_TABLE_SUFFIXES, *_LINE_SUFFIXES):
                        files.setdefault(path, None)
        return files

    # -- reading and writing one file --------------------------------------------------------

    def _read(self, path: Path) -> pa.Table:
        try:
            if path.suffix == ".parquet":
                return pq.read_table(path)
            if path.suffix == ".csv":
                return pacsv.read_csv(path)
        except (OSError, pa.ArrowException) as exc:
            raise _Unreadable(f"{path}: {exc}") from exc
        raise _Unreadable(f"{path}: not a Parquet, CSV or JSON-lines file")

    def _count(self, path: Path, subject: Subject) -> int:
        """How many rows (or lines) of ``path`` are the subject's."""
        if path.suffix in _LINE_SUFFIXES:
            forms = _forms(subject)
            try:
                with path.open("rb") as lines:
                    return sum(1 for line in lines if _line_names(line, forms))
            except OSError as exc:
                raise _Unreadable(f"{path}: {exc}") from exc
        table = self._read(path)
        mask = _subject_rows(table, subject)
        return 0 if mask is None else int(pc.sum(mask).as_py() or 0)

    def _rewrite(self, path: Path, subject: Subject) -> tuple[int, int]:
        """Rewrite ``path`` without the subject's rows; (rows removed, rows kept)."""
        temporary = path.with_name(f".{path.name}.erasing")
        try:
            if path.suffix in _LINE_SUFFIXES:
                forms = _forms(subject)
                removed = kept = 0
                with path.open("rb") as source, temporary.open("wb") as target:
                    for line in source:
                        if _line_names(line, forms):
                            removed += 1
                        else:
                            kept += 1
                            target.write(line)
                if removed:
                    os.replace(temporary, path)
                return removed, kept
            table = self._read(path)
            mask = _subject_rows(table, subject)
            removed = 0 if mask is None else int(pc.sum(mask).as_py() or 0)
            if not removed:
                return 0, table.num_rows
            assert mask is not None
            rest = table.filter(pc.invert(mask))
            if path.suffix == ".parquet":
                pq.write_table(rest, temporary)
            else:
                pacsv.write_csv(rest, temporary)
            # the old file is replaced in one step: a reader sees it whole, before or after
            os.replace(temporary, path)
            return removed, rest.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise _Unreadable(f"{path}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    def _models_naming(self, subject: Subject) -> list[str]:
        if self._models_dir is None or not self._models_dir.is_dir():
            return []
        forms = [n.encode() for n in sorted(subject.needles) if n]
        found: list[str] = []
        for path in sorted(self._models_dir.rglob("*")):
            if path.is_file() and any(form in path.read_bytes() for form in forms):
                found.append(str(path))
        return found

    # -- the eraser --------------------------------------------------------------------------

    def erase(self, subject: Subject) -> dict[str, Any]:
        """Rewrite every derived file holding the subject's rows; record each rewrite."""
        rewritten: list[dict[str, Any]] = []
        unreadable: list[str] = []
        history = LineageRepository(self._db, clock=self._clock)
        for path, lineage_id in self._recorded().items():
            try:
                removed, kept = self._rewrite(path, subject)
            except _Unreadable as exc:
                unreadable.append(str(exc))
                continue
            if not removed:
                continue
            entry = history.record(
                "erasure_rewrite",
                lake_uri=None,
                lake_versions={},
                time_start=None,
                time_end=None,
                parameters={"rows_removed": removed},
                inputs=[lineage_id] if lineage_id else [],
                output=str(path),
                row_count=kept,
            )
            rewritten.append({"file": str(path), "rows_removed": removed, "lineage": entry.id})
        result: dict[str, Any] = {
            "files_rewritten": rewritten,
            "rows_removed": sum(r["rows_removed"] for r in rewritten),
        }
        models = self._models_naming(subject)
        if unreadable or models:
            result["remains"] = {
                "unreadable_files": unreadable,
                "model_files": models,
                "reason": "files this eraser cannot read are left as they are; a model file "
                "cannot be edited, only retrained without the subject",
            }
        return result

    def find(self, subject: Subject) -> list[str]:
        """The derived files still holding the subject's rows, unreadable ones, and model
        files naming them ([] when none)."""
        found: list[str] = []
        for path in self._recorded():
            try:
                rows = self._count(path, subject)
            except _Unreadable as exc:
                found.append(f"derived_files: cannot read {exc}")
                continue
            if rows:
                found.append(f"derived_files: {rows} rows in {path}")
        found.extend(
            f"derived_files: the model file {p} names the subject"
            for p in self._models_naming(subject)
        )
        return found
