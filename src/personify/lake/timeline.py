"""A profile's events as the lake holds them: the timeline older than the state database keeps.

The state database keeps each profile's applied events for ``profile_timeline_retention_days``
(``personify.profiles.retention``); the lake, the system of record for raw events, keeps
them all. ``LakeTimeline`` is the ``TimelineArchive`` the profile service reads the older
part of a timeline from. An event belongs to a profile when its ``userId`` or
``anonymousId`` (or, for an alias, its ``previousId``) is one of the profile's ids, and its
time and key are the ones the worker gives it (``view_event``): ``timestamp``, or
``receivedAt`` for an event flagged ``future_timestamp``; ``"<sourceId>:<messageId>"``. So
its cursor is the one the state database's page would have given it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from personify.errors import BackendUnavailable
from personify.lake.schema import STABLE_COLUMNS, row_to_event
from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.profiles.repository import TimelineEvent

# the columns row_to_event reads, plus the two the timeline orders by
_COLUMNS = ", ".join(f"e.{name}" for name in STABLE_COLUMNS)
_QUERY = """
WITH matched AS (
    SELECT
        {columns},
        coalesce(e.source_id, '') || ':' || e.message_id AS event_key,
        epoch_ms(
            CASE WHEN e.received_at IS NOT NULL
                  AND list_contains(json_extract_string(e.extra, '$.flags[*]'),
                                    'future_timestamp')
                 THEN e.received_at ELSE e.timestamp END
        ) AS event_time_ms
    FROM events_raw AS e
    WHERE e.message_id IS NOT NULL
      AND (e.user_id IN ({ids}) OR e.anonymous_id IN ({ids})
           OR (e.type = 'alias' AND e.previous_id IN ({ids})))
)
SELECT * FROM matched
WHERE event_time_ms < ? AND {cursor}
QUALIFY row_number() OVER (PARTITION BY event_key ORDER BY received_at, log_offset) = 1
ORDER BY event_time_ms DESC, event_key DESC
LIMIT ?
"""


class LakeTimeline:
    """Reads a profile's events from the lake's latest version, newest first, a page at a time."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    def events(
        self,
        ids: Sequence[str],
        *,
        before: tuple[int, str] | None,
        until_ms: int,
        limit: int,
    ) -> list[TimelineEvent]:
        """Up to ``limit`` events of ``ids`` older than ``until_ms`` and than the cursor
        ``before``, newest first by (event time, event key), each once; raises
        ``BackendUnavailable`` when the lake cannot be read."""
        if not ids or limit <= 0 or not self.lake.exists():
            return []
        marks = ", ".join("?" for _ in ids)
        params: list[Any] = [*ids, *ids, *ids, until_ms]
        if before is None:
            cursor = "TRUE"
        else:
            cursor = "(event_time_ms < ? OR (event_time_ms = ? AND event_key < ?))"
            params.extend((before[0], before[0], before[1]))
        params.append(limit)
        sql = _QUERY.format(columns=_COLUMNS, ids=marks, cursor=cursor)
        with Warehouse(self.lake) as warehouse:
            try:
                result = warehouse.connection.execute(sql, params)
                names = [column[0] for column in result.description or ()]
                rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
            except duckdb.Error as exc:
                raise BackendUnavailable(
                    f"the lake timeline could not be read: {exc}", code="lake_unavailable"
                ) from exc
        return [
            TimelineEvent(str(row["event_key"]), int(row["event_time_ms"]), row_to_event(row))
            for row in rows
        ]
