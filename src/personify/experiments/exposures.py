"""Exposures as experiments read them: the variant each unit was first exposed to, kept by
the stream worker so that a later decision gives the same one (sticky assignment).

Two kinds of events expose a unit:

* the decision engine's ``Content Exposed`` events, whose placements carry
  ``experiment: {key, variant, phase, probability}``; the worker hands them to
  ``record_decisions`` with the content exposures the frequency caps read;
* ``Experiment Viewed`` events (the Segment spec's name), sent by the Python client's
  ``assign()`` callers, by any other tool, or imported: ``properties.experiment_id`` (or
  ``experimentKey``), ``properties.variation_id`` (or ``variant``), optionally ``phase``.
  They are the user's activity too, so they go through the profile batch, and
  ``ExperimentStage`` records them there.

Both ids of an event (userId and anonymousId) are recorded, so an anonymous visitor who logs
in keeps their variant: the decision looks assignments up by every id of the profile. A
bandit's exposures are not recorded: a bandit draws per decision and is never sticky.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from personify.content.exposures import exposure_rows, record_exposures
from personify.experiments.repository import record_assignments
from personify.store.database import Database

if TYPE_CHECKING:
    import sqlalchemy as sa

    from personify.profiles.batch import ProfileBatch, StagedProfile
    from personify.profiles.counters import CounterSpec

__all__ = [
    "VIEWED_EVENT",
    "ExperimentStage",
    "assignment_rows",
    "record_decisions",
    "viewed_rows",
]

VIEWED_EVENT: Final = "Experiment Viewed"
_MAX_KEY: Final = 200
_MAX_UNIT: Final = 512


def _units(event: Mapping[str, Any]) -> list[str]:
    return [
        unit
        for unit in (event.get("userId"), event.get("anonymousId"))
        if isinstance(unit, str) and 0 < len(unit) <= _MAX_UNIT
    ]


def _row(key: Any, variant: Any, phase: Any, unit: str, at: datetime) -> dict[str, Any] | None:
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY:
        return None
    if isinstance(variant, int | float) and not isinstance(variant, bool):
        variant = str(variant)
    if not isinstance(variant, str) or not 0 < len(variant) <= _MAX_KEY:
        return None
    number = phase if isinstance(phase, int) and not isinstance(phase, bool) else 0
    return {
        "experiment_key": key,
        "unit": unit,
        "variant": variant,
        "phase": max(0, min(number, 1_000_000)),
        "first_exposed_at": at,
    }


def assignment_rows(event: Mapping[str, Any], at: datetime) -> list[dict[str, Any]]:
    """The assignments one decision exposure event holds (none when not well formed)."""
    properties = event.get("properties")
    placements = properties.get("placements") if isinstance(properties, Mapping) else None
    if not isinstance(placements, list):
        return []
    units = _units(event)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for placement in placements:
        found = placement.get("experiment") if isinstance(placement, Mapping) else None
        if not isinstance(found, Mapping) or "context" in found or found.get("key") in seen:
            continue
        seen.add(str(found.get("key")))
        for unit in units:
            row = _row(found.get("key"), found.get("variant"), found.get("phase"), unit, at)
            if row is not None:
                rows.append(row)
    return rows


def viewed_rows(event: Mapping[str, Any], at: datetime) -> list[dict[str, Any]]:
    """The assignments of one ``Experiment Viewed`` event."""
    properties = event.get("properties")
    if not isinstance(properties, Mapping):
        return []
    key = properties.get("experiment_id", properties.get("experimentKey"))
    variant = properties.get("variation_id", properties.get("variant"))
    rows = [_row(key, variant, properties.get("phase"), unit, at) for unit in _units(event)]
    return [row for row in rows if row is not None]


def record_decisions(db: Database, exposures: Sequence[tuple[Mapping[str, Any], datetime]]) -> int:
    """Keep what decisions showed: the content exposures (frequency caps) and the
    experiments' first exposures (sticky assignments). How many content rows were new."""
    content = [row for event, at in exposures for row in exposure_rows(event, at)]
    assignments = [row for event, at in exposures for row in assignment_rows(event, at)]
    added = record_exposures(db, content)
    if assignments:
        with db.begin() as conn:
            record_assignments(conn, assignments)
    return added


class ExperimentStage:
    """A batch stage that records the first exposures ``Experiment Viewed`` events tell."""

    name = "experiments"

    def counters(self, conn: sa.Connection) -> Sequence[CounterSpec]:
        """No event counters."""
        return ()

    def apply(
        self, conn: sa.Connection, batch: ProfileBatch, profiles: Sequence[StagedProfile]
    ) -> None:
        """Record the batch's ``Experiment Viewed`` events (only those rows are read)."""
        if VIEWED_EVENT not in batch.names:
            return
        rows: list[dict[str, Any]] = []
        for index in batch.rows_named(frozenset({VIEWED_EVENT})).tolist():
            event = batch.events[index]
            at = datetime.fromtimestamp(int(event.ts) / 1000, tz=UTC)
            rows.extend(viewed_rows(event.data, at))
        if rows:
            record_assignments(conn, rows)
