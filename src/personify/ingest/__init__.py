"""The collector: Segment-compatible HTTP routes, write keys, dead letters, the browser tracker."""

from __future__ import annotations

from personify.ingest.collector import Collector, IngestOutcome
from personify.ingest.sources import Source, SourceRepository

__all__ = ["Collector", "IngestOutcome", "Source", "SourceRepository"]
