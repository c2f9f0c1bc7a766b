"""Raw events in Delta Lake, the DuckDB warehouse over them, and point-in-time features."""

from __future__ import annotations

from personify.lake.sink import LAKE_GROUP, LakeSink, SinkBatch
from personify.lake.table import Lake, OptimizeResult

__all__ = ["LAKE_GROUP", "Lake", "LakeSink", "OptimizeResult", "SinkBatch"]
