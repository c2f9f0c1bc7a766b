"""What the collector's routes answered in this process, counted in plain dicts.

The collector's POST routes are the hottest code of the product, so they count with the
cheapest operations Python has (a tuple key, a dict update, a bisect into a tally), never
through a metrics library. ``GET /metrics`` (``personify.api.metrics``) reads these counts
and moves what changed into Prometheus counters and histograms.

Labels stay bounded: a route is a path's name (``track``, ``batch``, ``import``…), a source
is a source's id (sources are created by an admin, a few per site), and an outcome is ``ok``
or one of Personify's own error codes for a request, and ``accepted``, ``duplicate``,
``rejected`` or ``suppressed`` for an event. A request refused before its write key named a
source (no key, an unknown key, a malformed body) counts under the source ``""``.
"""

from __future__ import annotations

from collections.abc import Iterable

from personify.tally import DurationTally

__all__ = ["EVENT_OUTCOMES", "IngestCounts"]

EVENT_OUTCOMES = ("accepted", "duplicate", "rejected", "suppressed")
OK = "ok"


class IngestCounts:
    """Requests and events by (route, source, outcome), and request latency by route."""

    __slots__ = ("events", "latency", "requests", "singles")

    def __init__(self, routes: Iterable[str]) -> None:
        # (route, source id) -> single-event requests answered 200 whose event was new: each
        # is one request ``ok`` and one event ``accepted``, counted with one dict update
        self.singles: dict[tuple[str, str], int] = {}
        # (route, source id, outcome) -> every other request / event
        self.requests: dict[tuple[str, ...], int] = {}
        self.events: dict[tuple[str, ...], int] = {}
        # route -> how long requests took, from the first body byte read to the answer ready
        self.latency = {route: DurationTally() for route in routes}

    def answered(self, route: str, source_id: str, outcome: str, seconds: float) -> None:
        """Count one request of ``route`` and how long it took."""
        key = (route, source_id, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency[route].observe(seconds)

    def took(self, route: str, source_id: str, outcome: str, events: int) -> None:
        """Count ``events`` events of a request with ``outcome``."""
        if events:
            key = (route, source_id, outcome)
            self.events[key] = self.events.get(key, 0) + events

    def request_totals(self) -> dict[tuple[str, ...], int]:
        """Requests by (route, source id, outcome), since this process started."""
        totals = dict(self.requests)
        for (route, source_id), count in list(self.singles.items()):
            key = (route, source_id, OK)
            totals[key] = totals.get(key, 0) + count
        return totals

    def event_totals(self) -> dict[tuple[str, ...], int]:
        """Events by (route, source id, outcome), since this process started."""
        totals = dict(self.events)
        for (route, source_id), count in list(self.singles.items()):
            key = (route, source_id, "accepted")
            totals[key] = totals.get(key, 0) + count
        return totals
