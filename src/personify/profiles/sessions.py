"""Sessions as a set of merged time intervals: ``session_gap_minutes`` of inactivity ends one.

An interval is a maximal run of event times whose gaps are at most the session gap, so the
set of intervals depends only on the set of event times: adding an event extends, creates
or bridges intervals, and two profiles merge by sweeping their intervals together. Either
way the result is the same whatever the arrival order.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import msgspec

from personify.profiles.events import MS_PER_DAY, MS_PER_HOUR, format_ms


# gc=False: numbers only, so never in a reference cycle; a state holds many of them
class Session(msgspec.Struct, array_like=True, gc=False):
    """One session's end (epoch ms) and how many page/screen views and events it holds."""

    end: int
    pages: int = 0
    events: int = 0


Sessions = dict[str, Session]  # start (epoch ms, zero-padded text) -> session


def session_key(start_ms: int) -> str:
    """The key of a session starting at ``start_ms`` (zero-padded, so keys sort by time)."""
    # zero-padded, so the stored JSON's sorted keys are in time order for any date
    return f"{start_ms:015d}"


def add_to_sessions(sessions: Sessions, ts: int, *, is_page: bool, gap_ms: int) -> None:
    """Put an event at ``ts`` into the interval set (in place).

    Keys are kept in ascending order of start (the stored JSON sorts them, and they are
    zero-padded), so the common case, an event at or after the latest session's start,
    needs only the last key.
    """
    pages = 1 if is_page else 0
    if sessions:
        last_key = next(reversed(sessions))
        if ts >= int(last_key):
            last = sessions[last_key]
            if ts <= last.end + gap_ms:
                last.end = max(last.end, ts)
                last.pages += pages
                last.events += 1
            else:
                sessions[session_key(ts)] = Session(ts, pages, 1)
            return
    _add_anywhere(sessions, ts, pages, gap_ms)
    ordered = sorted(sessions.items(), key=lambda item: int(item[0]))
    sessions.clear()
    sessions.update(ordered)


def _add_anywhere(sessions: Sessions, ts: int, pages: int, gap_ms: int) -> None:
    starts = sorted(int(k) for k in sessions)
    index = bisect_right(starts, ts) - 1
    before = starts[index] if index >= 0 else None
    after = starts[index + 1] if index + 1 < len(starts) else None
    previous = sessions[session_key(before)] if before is not None else None
    joins_previous = previous is not None and ts <= previous.end + gap_ms
    joins_next = after is not None and after - ts <= gap_ms
    if joins_previous and previous is not None:
        previous.end = max(previous.end, ts)
        previous.pages += pages
        previous.events += 1
        if joins_next and after is not None:
            following = sessions.pop(session_key(after))
            previous.end = max(previous.end, following.end)
            previous.pages += following.pages
            previous.events += following.events
    elif joins_next and after is not None:
        following = sessions.pop(session_key(after))
        sessions[session_key(ts)] = Session(
            following.end, following.pages + pages, following.events + 1
        )
    else:
        sessions[session_key(ts)] = Session(ts, pages, 1)


def merge_sessions(into: Sessions, other: Sessions, *, gap_ms: int) -> None:
    """Sweep both interval sets together into ``into`` (the merge of two profiles)."""
    spans = sorted(
        [(int(k), s.end, s.pages, s.events) for k, s in into.items()]
        + [(int(k), s.end, s.pages, s.events) for k, s in other.items()]
    )
    into.clear()
    current: list[int] | None = None
    for start, end, pages, events in spans:
        if current is not None and start - current[1] <= gap_ms:
            current[1] = max(current[1], end)
            current[2] += pages
            current[3] += events
            continue
        if current is not None:
            into[session_key(current[0])] = Session(current[1], current[2], current[3])
        current = [start, end, pages, events]
    if current is not None:
        into[session_key(current[0])] = Session(current[1], current[2], current[3])


def retention_floor(latest_ms: int, retention_ms: int) -> int:
    """Sessions ending before this are forgotten; whole hours, so it moves only hour by hour."""
    return (latest_ms // MS_PER_HOUR) * MS_PER_HOUR - retention_ms


def prune_sessions(sessions: Sessions, *, latest_ms: int, retention_ms: int) -> None:
    """Forget sessions that ended more than the retention before the profile's latest event."""
    oldest = retention_floor(latest_ms, retention_ms)
    for start in [k for k, s in sessions.items() if s.end < oldest]:
        del sessions[start]


def summarize_sessions(
    sessions: Sessions, as_of_ms: int, *, floor_ms: int, retention_days: int
) -> dict[str, Any]:
    """Count, average duration and pages per session at ``as_of_ms``.

    Sessions that ended before ``floor_ms`` (the retention behind the latest event) are left
    out whether or not they were compacted away yet.
    """
    started = [(int(k), s) for k, s in sessions.items() if int(k) <= as_of_ms and s.end >= floor_ms]
    count = len(started)
    durations = [min(s.end, as_of_ms) - start for start, s in started]
    pages = sum(s.pages for _, s in started)
    events = sum(s.events for _, s in started)
    last_start = max((start for start, _ in started), default=None)

    def within(days: int) -> int:
        since = as_of_ms - days * MS_PER_DAY
        return sum(1 for _, s in started if s.end > since)

    return {
        "count": count,
        "count_7d": within(7),
        "count_30d": within(30),
        "average_duration_s": round(sum(durations) / count / 1000, 3) if count else None,
        "pages_per_session": round(pages / count, 3) if count else None,
        "events_per_session": round(events / count, 3) if count else None,
        "last_started_at": format_ms(last_start) if last_start is not None else None,
        "window_days": retention_days,
    }
