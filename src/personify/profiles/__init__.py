"""Profiles: identity graph, traits, incremental behavioural features, versioned history."""

from __future__ import annotations
