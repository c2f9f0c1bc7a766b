"""Writing membership changes: the rows of ``segment_members`` and their events in the outbox.

Every entry and exit is a track event, ``Segment Entered`` or ``Segment Exited``, with
``properties.segment``, ``properties.version`` and ``properties.reason`` (``rule``: an event
changed it; ``sweep``: a window slid past the profile's events; ``consent``: personalization
was withdrawn; ``archived``: the segment was deleted). The events are written to
``segment_outbox`` in the transaction that changes the membership, and appended to the event
log after it commits (``personify.segments.relay``), so a crash between the two appends them
later and never loses one. Their messageId is a hash of what they say, and the log drops a
second append of the same one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
import xxhash

from personify.clock import format_timestamp
from personify.segments.conditions import SEGMENT_ENTERED, SEGMENT_EXITED
from personify.segments.tables import segment_members, segment_outbox
from personify.store.statements import Statements, insert_without_id

__all__ = ["MEMBERSHIP_SOURCE", "MembershipChanges", "event_payload", "is_membership_payload"]

# the sourceId of the events Personify writes about memberships
MEMBERSHIP_SOURCE = "personify-segments"
_encode = msgspec.json.encode
# how every membership event's JSON ends: ``sourceId`` is the last key ``event_payload`` writes
_TAIL = b'"sourceId":' + _encode(MEMBERSHIP_SOURCE) + b"}"


class _Source(msgspec.Struct):
    """The one field ``is_membership_payload`` reads of an event."""

    source: Any = msgspec.field(default=None, name="sourceId")


_decode_source = msgspec.json.Decoder(_Source).decode


def is_membership_payload(payload: bytes) -> bool:
    """Whether ``payload`` (a log entry's bytes) is a JSON object whose ``sourceId`` is
    ``MEMBERSHIP_SOURCE`` and its last key, as in the events this module writes.

    The stream worker reads back every entry and exit it caused only to skip it (there are
    more of them than of the user's own events); this answers without building the event:
    an entry that does not end as ``event_payload``'s JSON ends is not one (a byte
    comparison), and one that does is read for that one key, the rest parsed (so checked to
    be JSON) but not built. ``False`` for an event of that source written otherwise (its
    ``sourceId`` not last, spaces around it): the caller reads those in full."""
    if not payload.endswith(_TAIL) or payload[-len(_TAIL) - 1 : -len(_TAIL)] not in (b",", b"{"):
        return False
    try:
        return bool(_decode_source(payload).source == MEMBERSHIP_SOURCE)
    except msgspec.DecodeError:
        return False


def _message_id(name: str, key: str, version: int, profile_id: str, when: str) -> str:
    # 128 bits of a fast non-cryptographic hash: an id, not a secret
    text = f"{name}\x1f{key}\x1f{version}\x1f{profile_id}\x1f{when}"
    return "seg-" + xxhash.xxh3_128_hexdigest(text.encode())


# the columns of the rows each list of ``MembershipChanges`` holds, in the order of its tuples
_ENTRY_COLUMNS = (
    "segment_key",
    "profile_id",
    "segment_version",
    "entered_at",
    "entry_reason",
    "exited_at",
    "exit_reason",
)
_EXIT_COLUMNS = ("b_id", "b_exited", "b_reason")
_EVENT_COLUMNS = ("partition_key", "message_id", "payload")
_CONTEXT = {"library": {"name": "personify", "version": "segments"}}


@dataclass
class MembershipChanges:
    """The entries, exits and events of one transaction, written with ``flush``: rows as
    tuples (a batch makes tens of thousands; no dict each), one list per statement."""

    at: datetime
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    exits: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    _when: str = field(default="", repr=False)
    # the JSON around each event's messageId and profile id, by name, segment, version
    # and reason
    _pieces: dict[tuple[str, str, int, str], tuple[str, str]] = field(
        default_factory=dict, repr=False
    )
    # the segments each evaluated profile is in once the changes are written, in the order
    # the profiles were given (None: no active rule, nothing was read)
    members: list[set[str]] | None = None
    # the last profile's id as its key and value of the event JSON: (id, is_user, JSON)
    _named: tuple[str, bool, str] = field(default=("", False, '","anonymousId":""'), repr=False)

    def __post_init__(self) -> None:
        # every event of a transaction happens at its one time: formatted once
        self._when = format_timestamp(self.at)

    def enter(self, profile_id: str, is_user: bool, key: str, version: int, reason: str) -> None:
        """``profile_id`` enters segment ``key``."""
        self.entries.append((key, profile_id, version, self.at, reason, None, None))
        self._event(SEGMENT_ENTERED, profile_id, is_user, key, version, reason)

    def exit(
        self, row_id: int, profile_id: str, is_user: bool, key: str, version: int, reason: str
    ) -> None:
        """The open membership ``row_id`` of ``profile_id`` in ``key`` ends."""
        self.exits.append((row_id, self.at, reason))
        self._event(SEGMENT_EXITED, profile_id, is_user, key, version, reason)

    def close_quietly(self, row_ids: Iterable[int], reason: str) -> None:
        """End memberships without an event (a merge left a profile in a segment twice)."""
        for row_id in row_ids:
            self.exits.append((row_id, self.at, reason))

    def _event(
        self, name: str, profile_id: str, is_user: bool, key: str, version: int, reason: str
    ) -> None:
        when = self._when
        message_id = _message_id(name, key, version, profile_id, when)
        # the JSON of the event as ``event_payload`` encodes it, made from pieces encoded once
        # per segment, version and reason: only the profile's id is encoded per event
        pieces = self._pieces.get((name, key, version, reason))
        if pieces is None:
            whole = _encode(event_payload(name, "", False, key, version, reason, when)).decode()
            head, _, tail = whole.partition('"messageId":"",')
            pieces = self._pieces[(name, key, version, reason)] = (
                head + '"messageId":',
                tail[tail.index(",") :],
            )
        head, tail = pieces
        # a profile named by an anonymousId gets it back as one: sent as a userId it would
        # become one, and change which id names the profile when the user identifies
        named = self._named
        if named[0] != profile_id or named[1] != is_user:
            # a profile's entries and exits come one after the other: its id encoded once
            key_name = '","userId":' if is_user else '","anonymousId":'
            named = self._named = (profile_id, is_user, key_name + _encode(profile_id).decode())
        payload = f'{head}"{message_id}{named[2]}{tail}'
        self.events.append((profile_id, message_id, payload))

    def flush(self, conn: sa.Connection) -> None:
        """Write the rows and the outbox with ``conn`` (in the caller's transaction)."""
        _run(conn, "exit", _exit, _EXIT_COLUMNS, self.exits)
        _run(conn, "enter", _enter, _ENTRY_COLUMNS, self.entries)
        _run(conn, "outbox", _outbox, _EVENT_COLUMNS, self.events)


def event_payload(
    name: str, profile_id: str, is_user: bool, key: str, version: int, reason: str, when: str
) -> dict[str, Any]:
    """The track event of an entry or exit (``name``) of ``profile_id`` in ``key``."""
    return {
        "type": "track",
        "event": name,
        "messageId": _message_id(name, key, version, profile_id, when) if profile_id else "",
        ("userId" if is_user else "anonymousId"): profile_id,
        "properties": {"segment": key, "version": version, "reason": reason},
        "context": _CONTEXT,
        "timestamp": when,
        "originalTimestamp": when,
        "receivedAt": when,
        "sentAt": when,
        "sourceId": MEMBERSHIP_SOURCE,
    }


def _run(
    conn: sa.Connection,
    name: str,
    build: Callable[[], sa.ClauseElement],
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> None:
    """One ``executemany`` of ``rows`` (tuples in ``columns`` order), bind processors applied
    a column at a time (the datetimes: one object per transaction, processed once)."""
    if not rows:
        return
    compiled = _STATEMENTS.compiled(conn, name, build)
    processors = compiled.processors
    params: list[Any] = rows
    if processors:
        values = [list(column) for column in zip(*rows, strict=True)]
        for i, column_name in enumerate(columns):
            process = processors.get(column_name)
            if process is not None:
                values[i] = [process(value) for value in values[i]]
        params = list(zip(*values, strict=True))
    order = compiled.order
    if order is None:
        params = [dict(zip(columns, row, strict=True)) for row in params]
    elif order != columns:
        params = list(map(operator.itemgetter(*[columns.index(c) for c in order]), params))
    conn.exec_driver_sql(compiled.sql, params)


def _exit() -> sa.ClauseElement:
    return (
        segment_members.update()
        .where(segment_members.c.id == sa.bindparam("b_id"))
        .values(exited_at=sa.bindparam("b_exited"), exit_reason=sa.bindparam("b_reason"))
    )


def _enter() -> sa.ClauseElement:
    return insert_without_id(segment_members)


def _outbox() -> sa.ClauseElement:
    return insert_without_id(segment_outbox)


# compiled once per dialect: a sweep or a batch writes thousands of these rows
_STATEMENTS = Statements()
