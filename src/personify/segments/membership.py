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

from collections.abc import Iterable
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

__all__ = ["MEMBERSHIP_SOURCE", "MembershipChanges"]

# the sourceId of the events Personify writes about memberships
MEMBERSHIP_SOURCE = "personify-segments"
_encode = msgspec.json.encode


def _message_id(name: str, key: str, version: int, profile_id: str, when: str) -> str:
    # 128 bits of a fast non-cryptographic hash: an id, not a secret
    text = f"{name}\x1f{key}\x1f{version}\x1f{profile_id}\x1f{when}"
    return "seg-" + xxhash.xxh3_128_hexdigest(text.encode())


@dataclass
class MembershipChanges:
    """The entries, exits and events of one transaction, written with ``flush``."""

    at: datetime
    entries: list[dict[str, Any]] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    _when: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        # every event of a transaction happens at its one time: formatted once
        self._when = format_timestamp(self.at)

    def enter(self, profile_id: str, is_user: bool, key: str, version: int, reason: str) -> None:
        """``profile_id`` enters segment ``key``."""
        self.entries.append(
            {
                "segment_key": key,
                "profile_id": profile_id,
                "segment_version": version,
                "entered_at": self.at,
                "entry_reason": reason,
                "exited_at": None,
                "exit_reason": None,
            }
        )
        self._event(SEGMENT_ENTERED, profile_id, is_user, key, version, reason)

    def exit(
        self, row_id: int, profile_id: str, is_user: bool, key: str, version: int, reason: str
    ) -> None:
        """The open membership ``row_id`` of ``profile_id`` in ``key`` ends."""
        self.exits.append({"b_id": row_id, "b_exited": self.at, "b_reason": reason})
        self._event(SEGMENT_EXITED, profile_id, is_user, key, version, reason)

    def close_quietly(self, row_ids: Iterable[int], reason: str) -> None:
        """End memberships without an event (a merge left a profile in a segment twice)."""
        for row_id in row_ids:
            self.exits.append({"b_id": row_id, "b_exited": self.at, "b_reason": reason})

    def _event(
        self, name: str, profile_id: str, is_user: bool, key: str, version: int, reason: str
    ) -> None:
        when = self._when
        message_id = _message_id(name, key, version, profile_id, when)
        payload: dict[str, Any] = {
            "type": "track",
            "event": name,
            "messageId": message_id,
            # a profile named by an anonymousId gets it back as one: sent as a userId it would
            # become one, and change which id names the profile when the user identifies
            ("userId" if is_user else "anonymousId"): profile_id,
            "properties": {"segment": key, "version": version, "reason": reason},
            "context": {"library": {"name": "personify", "version": "segments"}},
            "timestamp": when,
            "originalTimestamp": when,
            "receivedAt": when,
            "sentAt": when,
            "sourceId": MEMBERSHIP_SOURCE,
        }
        self.events.append(
            {
                "partition_key": profile_id,
                "message_id": message_id,
                "payload": _encode(payload).decode(),
            }
        )

    def flush(self, conn: sa.Connection) -> None:
        """Write the rows and the outbox with ``conn`` (in the caller's transaction)."""
        _STATEMENTS.run(conn, "exit", _exit, self.exits)
        _STATEMENTS.run(conn, "enter", _enter, self.entries)
        _STATEMENTS.run(conn, "outbox", _outbox, self.events)


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
