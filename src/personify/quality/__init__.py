"""Data quality (declarative pandera checks per stage) and lineage of derived datasets."""

from __future__ import annotations

from personify.quality.runner import CheckResult, QualityCheckFailed, QualityRun, run_checks

__all__ = ["CheckResult", "QualityCheckFailed", "QualityRun", "run_checks"]
