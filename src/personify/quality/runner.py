"""Running a stage's checks: pandera validates, we turn its failure cases into a report.

A stage has two pandera schemas: ``critical`` (a failure stops the job that would consume
the data) and ``warning`` (a failure is recorded, the job goes on). Both are validated
lazily, so one run reports every failing check, not just the first.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from personify.errors import PersonifyError

Severity = Literal["critical", "warning"]
Status = Literal["passed", "warned", "failed"]
_SAMPLE_CASES = 5


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one declared check: which column, which check, how many rows failed."""

    column: str | None
    check: str
    severity: Severity
    passed: bool
    failures: int = 0
    observed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape stored and shown by ``personify quality report``."""
        return {
            "column": self.column,
            "check": self.check,
            "severity": self.severity,
            "passed": self.passed,
            "failures": self.failures,
            "observed": self.observed,
        }


@dataclass(slots=True)
class QualityRun:
    """Every check of one stage over one piece of data, and the verdict."""

    stage: str
    dataset: str
    row_count: int
    created_at: datetime
    results: list[CheckResult]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    lineage_id: str | None = None

    @property
    def status(self) -> Status:
        """``failed`` when a critical check failed, ``warned`` when only warnings did."""
        if any(not r.passed and r.severity == "critical" for r in self.results):
            return "failed"
        if any(not r.passed for r in self.results):
            return "warned"
        return "passed"

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that did not pass, critical first."""
        failing = [r for r in self.results if not r.passed]
        return sorted(failing, key=lambda r: r.severity != "critical")

    def merge(self, other: QualityRun) -> QualityRun:
        """One run out of two runs of the same checks over consecutive chunks of a dataset."""
        by_key: dict[tuple[str | None, str, str], CheckResult] = {
            (r.column, r.check, r.severity): r for r in self.results
        }
        for result in other.results:
            key = (result.column, result.check, result.severity)
            mine = by_key.get(key)
            if mine is None:
                by_key[key] = result
                continue
            by_key[key] = replace(
                mine,
                passed=mine.passed and result.passed,
                failures=mine.failures + result.failures,
                observed=mine.observed if not mine.passed else result.observed,
            )
        return replace(
            self, row_count=self.row_count + other.row_count, results=list(by_key.values())
        )

    def report(self) -> str:
        """A human-readable report: the verdict, then each failing check."""
        lines = [
            f"quality {self.status.upper()}: stage {self.stage}, {self.dataset}, "
            f"{self.row_count} rows, {len(self.results)} checks (run {self.run_id})"
        ]
        for result in self.failed:
            where = f"{result.column}." if result.column else ""
            seen = f" — {result.observed}" if result.observed else ""
            lines.append(
                f"  {result.severity:<8} {where}{result.check}: {result.failures} failure(s){seen}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the run."""
        return {
            "runId": self.run_id,
            "stage": self.stage,
            "dataset": self.dataset,
            "status": self.status,
            "rowCount": self.row_count,
            "createdAt": self.created_at.isoformat(),
            "lineageId": self.lineage_id,
            "results": [r.to_dict() for r in self.results],
        }


class QualityCheckFailed(PersonifyError):
    """A critical data-quality check failed, so the job that would use the data stopped.

    The message is the full report; ``run`` holds the results. Fix the data (or the check)
    and run the job again.
    """

    default_code = "quality_check_failed"

    def __init__(self, run: QualityRun) -> None:
        super().__init__(run.report(), details=run.to_dict())
        self.run = run


Observations = dict[tuple[str | None, str], str]


@dataclass(frozen=True, slots=True)
class StageChecks:
    """The declared checks of one stage; ``observations`` collects measured values for the report."""

    stage: str
    critical: pa.DataFrameSchema
    warning: pa.DataFrameSchema
    observations: Observations = field(default_factory=dict)


def _check_key(check: pa.Check) -> str:
    return str(check.error or check.name)


def _declared(schema: pa.DataFrameSchema) -> list[tuple[str | None, str]]:
    declared: list[tuple[str | None, str]] = []
    for name, column in schema.columns.items():
        if column.required:
            declared.append((name, "column_in_dataframe"))
        if column.dtype is not None:
            declared.append((name, "dtype"))
        if not column.nullable:
            declared.append((name, "not_nullable"))
        if column.unique:
            declared.append((name, "field_uniqueness"))
        declared.extend((name, _check_key(c)) for c in column.checks)
    declared.extend((None, _check_key(c)) for c in schema.checks)
    return declared


def _failure_key(row: dict[str, Any]) -> tuple[str | None, str]:
    check = str(row["check"])
    column = row["column"]
    if check == "column_in_dataframe":
        return str(row["failure_case"]), check
    if check.startswith("dtype("):
        check = "dtype"
    if row.get("schema_context") == "DataFrameSchema":
        # a row-wise frame check lists each failing row once per column; it names no column
        return None, check
    return (None if column is None or pd.isna(column) else str(column)), check


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _failures(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        return exc.failure_cases
    except SchemaError as exc:
        # a failure pandera cannot collect lazily (e.g. an unhashable frame)
        return pd.DataFrame(
            [
                {
                    "column": None,
                    "check": str(exc.check) if exc.check is not None else "schema",
                    "failure_case": str(exc)[:200],
                }
            ]
        )
    return pd.DataFrame(columns=["column", "check", "failure_case"])


def _results(
    schema: pa.DataFrameSchema,
    frame: pd.DataFrame,
    severity: Severity,
    observations: Observations,
) -> list[CheckResult]:
    cases = _failures(schema, frame)
    grouped: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    for row in cases.to_dict("records"):
        grouped.setdefault(_failure_key(row), []).append(row)
    missing = {column for column, check in grouped if check == "column_in_dataframe"}
    results: list[CheckResult] = []
    seen: set[tuple[str | None, str]] = set()
    for key in [*_declared(schema), *grouped]:
        if key in seen:
            continue
        seen.add(key)
        column, check = key
        if column in missing and check != "column_in_dataframe":
            continue  # not evaluated: the column is absent, which is reported once
        failing = grouped.get(key, [])
        rows = sorted({r["index"] for r in failing if _present(r.get("index"))}, key=str)
        count = len(rows) if rows else len(failing)
        observed = observations.get(key)
        if failing and observed is None:
            if column is None and rows:
                observed = "rows " + ", ".join(str(i) for i in rows[:_SAMPLE_CASES])
            else:
                cases_seen = [r.get("failure_case") for r in failing[:_SAMPLE_CASES]]
                observed = "e.g. " + ", ".join(repr(c) for c in cases_seen)
        results.append(CheckResult(column, check, severity, not failing, count, observed))
    return results


def run_checks(
    checks: StageChecks, frame: pd.DataFrame, *, dataset: str, now: datetime
) -> QualityRun:
    """Validate ``frame`` against the stage's critical and warning schemas."""
    results = _results(checks.critical, frame, "critical", checks.observations)
    results += _results(checks.warning, frame, "warning", checks.observations)
    return QualityRun(
        stage=checks.stage, dataset=dataset, row_count=len(frame), created_at=now, results=results
    )


def enforce(run: QualityRun, record: Callable[[QualityRun], None] | None = None) -> QualityRun:
    """Record ``run`` (when a recorder is given), then raise ``QualityCheckFailed`` if it failed."""
    if record is not None:
        record(run)
    if run.status == "failed":
        raise QualityCheckFailed(run)
    return run


def merge_runs(runs: Iterable[QualityRun]) -> QualityRun | None:
    """One run out of the runs over consecutive chunks of one dataset (None for no runs)."""
    merged: QualityRun | None = None
    for run in runs:
        merged = run if merged is None else merged.merge(run)
    return merged
