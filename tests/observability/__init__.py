"""Metrics, dashboards, alert rules and traces (docs/observability.md)."""
