"""The common shape of a Segment event, decoded without building its nested objects.

Nearly every event a collector sees has only the spec's own top-level fields, string ids
and timestamps, and no PII under the configured paths. For those, ``properties``,
``context``, ``traits`` and ``integrations`` never need to become Python dicts: they are
checked to be JSON objects and written back byte for byte (``msgspec.Raw``). That halves
the Python work per event on the ingest path.

Anything else — an unknown top-level field, a numeric id, batch-level ``context``, a
configured PII path that may be present — does not decode as ``WireEvent`` (or is sent back
by ``WireNormalizer.normalize``) and takes the general path, ``Normalizer.normalize`` on a
dict, which is the reference: both give the same event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from personify.errors import ValidationError
from personify.eventlog.base import LogRecord
from personify.events.decoding import decode_document
from personify.events.hashing import (
    ANY_PII_KEY,
    KEY_FOLD_BYTES,
    KEY_SEPARATORS,
    PII_KEYS,
    key_name_stems,
    pii_key_name,
)
from personify.events.normalize import Normalizer, event_kind, identifier_value, identity_ids

_MICROSECOND = timedelta(microseconds=1)

_encode = msgspec.json.Encoder().encode


class WireEvent(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A Segment event in its common shape; ``UNSET`` fields were not sent."""

    type: str | UnsetType = UNSET
    event: str | UnsetType | None = UNSET
    name: str | UnsetType | None = UNSET
    category: str | UnsetType | None = UNSET
    userId: str | UnsetType | None = UNSET
    anonymousId: str | UnsetType | None = UNSET
    previousId: str | UnsetType | None = UNSET
    groupId: str | UnsetType | None = UNSET
    messageId: str | UnsetType | None = UNSET
    timestamp: str | UnsetType | None = UNSET
    originalTimestamp: str | UnsetType | None = UNSET
    sentAt: str | UnsetType | None = UNSET
    properties: Raw | UnsetType = UNSET
    traits: Raw | UnsetType = UNSET
    context: Raw | UnsetType = UNSET
    integrations: Raw | UnsetType = UNSET
    channel: str | UnsetType | None = UNSET
    version: int | str | UnsetType | None = UNSET
    writeKey: str | UnsetType | None = UNSET
    # set by the server only: what a client sends here is dropped or overwritten
    receivedAt: str | UnsetType | None = UNSET
    sourceId: str | UnsetType | None = UNSET
    flags: list[str] | UnsetType | None = UNSET


class WireBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A batch request whose envelope carries nothing the events must inherit but ``sentAt``."""

    batch: list[WireEvent]
    sentAt: str | UnsetType | None = UNSET
    writeKey: str | UnsetType | None = UNSET


_wire_record: Callable[..., LogRecord | None] | None
_wire_records: Callable[..., tuple[list[LogRecord | None], int]] | None
try:
    from personify.ingest import _wire_native
except ImportError:  # built without a C compiler: the Python path does everything
    _wire_record = _wire_records = None
else:
    # the fields are read through msgspec's public astuple, never by the struct's layout
    _wire_native.setup(UNSET, Raw, LogRecord, WireEvent, msgspec.structs.astuple)
    _wire_record = _wire_native.wire_record
    _wire_records = _wire_native.wire_records

NATIVE_AVAILABLE = _wire_record is not None

decode_wire_event = msgspec.json.Decoder(WireEvent).decode
decode_wire_batch = msgspec.json.Decoder(WireBatch).decode

_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_NULL = b"null"
_ESCAPE = b"\\u"


# bytes JSON may write as an escape other than \u (``\/`` for ``/``): a key name holding
# one of them is not found for sure by a search of the raw bytes
_UNSEARCHABLE = frozenset(b'"\\/') | frozenset(range(0x20))


def _probes(names: AbstractSet[str] | None) -> tuple[bytes, ...] | None:
    """What to look for in raw JSON, folded (``_folded``), so that every key whose key name
    is one of ``names`` is found: the fewest names the others contain. None when a byte
    search cannot tell (no names, or a name JSON may write escaped)."""
    if not names:
        return None
    probes = tuple(stem.encode() for stem in key_name_stems(names))
    if any(not probe or not _UNSEARCHABLE.isdisjoint(probe) for probe in probes):
        return None
    return probes


def _folded(text: bytes) -> bytes:
    """``text`` as key names are compared: ASCII lower-cased, ``-``, ``_``, ``.``, spaces
    dropped. A key in it, unless written with escapes, reads as its key name."""
    return text.translate(KEY_FOLD_BYTES, KEY_SEPARATORS)


def wire_to_dict(event: WireEvent) -> dict[str, Any]:
    """The event as the general path sees it: a dict, nested objects decoded.

    Raises ``ValidationError`` when a nested object breaks the acceptance rule (see
    ``personify.events.decoding``); the collector's routes have refused such bodies before."""
    decoded: dict[str, Any] = decode_document(_encode(event))
    return decoded


def _check_object(name: str, raw: Raw | UnsetType) -> None:
    if raw is UNSET:
        return
    text = bytes(raw)
    if text[:1] == b"{" or text == _NULL:
        return
    raise ValidationError(
        f"{name} must be a JSON object", code="invalid_field", details={"field": name}
    )


class WireNormalizer:
    """``Normalizer.normalize`` for ``WireEvent``: the same checks, the same event out."""

    def __init__(
        self, normalizer: Normalizer, pii_paths: list[tuple[str, ...]], *, native: bool = True
    ) -> None:
        self._normalizer = normalizer
        # the compiled common case, or None: native_call(event, *native_args(...)) ->
        # LogRecord | None (see native_record); it leaves every event needs_general_path
        # would send to the dict path to Python
        self.native_call = _wire_record if native else None
        # the same for a list of events in one call: (records or None each, count of None)
        self.native_many = _wire_records if native else None
        self.tolerance_us = normalizer.future_tolerance // _MICROSECOND
        # per top-level field on a PII path: the key names (of the path's next key, or every
        # PII key for "traits.*") whose presence in that field's raw JSON, folded, means a
        # path may be there (None: the field itself may be PII, or no byte search can tell).
        # Keys match whatever their case and separators ("E-Mail"), so the search is made
        # over folded bytes, and only ever finds more keys than the dict path hashes.
        names: dict[str, set[str] | None] = {}
        for path in pii_paths:
            if not path:
                continue
            if len(path) == 1:
                names[path[0]] = None
                continue
            below = names.setdefault(path[0], set())
            if below is not None:
                below.update(PII_KEYS if path[1] == ANY_PII_KEY else (pii_key_name(path[1]),))
        self._pii_roots = [(field, _probes(below)) for field, below in names.items()]
        # the same for the compiled path, fields by their place in WireEvent (a field that is
        # not one of them cannot be in a WireEvent at all)
        fields = WireEvent.__struct_fields__
        self.native_pii_roots = tuple(
            (fields.index(field), probes) for field, probes in self._pii_roots if field in fields
        )
        # the key names of each path, as probes: a value can sit at a path only where one
        # probe of each name occurs; the leaf first ("mail" is in fewer bodies than
        # "traits"), so a miss comes early. A name no search can tell is left out, which
        # only makes a path match more bodies (none left: every body may carry PII).
        self._pii_key_sets: list[list[tuple[bytes, ...]]] = []
        for path in pii_paths:
            if path:
                probes = (
                    _probes(PII_KEYS if name == ANY_PII_KEY else {pii_key_name(name)})
                    for name in reversed(path)
                )
                self._pii_key_sets.append([group for group in probes if group is not None])
        # native_args' last three, the same for every request
        self.native_constants = (
            self.tolerance_us,
            normalizer.max_event_bytes,
            self.native_pii_roots,
        )

    def may_carry_pii(self, body: bytes) -> bool:
        """Whether any event of ``body`` may have a value at a configured PII path.

        False means no event of the body needs ``needs_general_path``: for every path, one
        of its key names appears nowhere in the body (read case- and separator-blind), and
        no key is written with a \\u escape.
        Always True with the compiled path, which checks each event's own fields instead:
        cheaper than a scan of the whole body.
        """
        if self.native_call is not None:
            return True
        if not self._pii_key_sets:
            return False
        # bytes.find, not ``in``: ``in`` first tries the key as an integer and formats (then
        # drops) a TypeError each time, which costs more than the search itself
        if body.find(_ESCAPE) != -1:
            return True
        folded = _folded(body)
        # plain loops: generator expressions cost more than the searches on small bodies
        for groups in self._pii_key_sets:
            for probes in groups:
                if not _holds_any(folded, probes):
                    break
            else:
                return True
        return False

    def needs_general_path(self, event: WireEvent) -> bool:
        """Whether a configured PII path may be present: then the dict path hashes it."""
        for field, probes in self._pii_roots:
            value = getattr(event, field, UNSET)
            if value is UNSET or value is None:
                continue
            if probes is None or type(value) is not Raw:
                return True
            text = bytes(value)
            # a key may be written with \\u escapes (an escaped "e" in "email"): look closer
            if text.find(_ESCAPE) != -1 or _holds_any(_folded(text), probes):
                return True
        return False

    @property
    def native(self) -> bool:
        """Whether the compiled common case (``_wire_native.c``) is in use."""
        return self.native_call is not None

    def native_args(
        self,
        *,
        received_us: int,
        received_at_text: str,
        source_id: str,
        event_type: str | None = None,
        sent_at_default: str | UnsetType | None = UNSET,
    ) -> tuple[Any, ...]:
        """What ``native_call`` and ``native_many`` take after the event(s), in their order;
        the same for every event of a request. ``received_us`` is ``epoch_us(received_at)``."""
        return (
            event_type,
            received_us,
            received_at_text,
            source_id,
            sent_at_default,
            *self.native_constants,
        )

    def native_record(self, raw: WireEvent, **request: Any) -> LogRecord | None:
        """``wire_log_record(normalize(raw))`` from the compiled code, byte for byte, or None
        when ``raw`` is not the common case (or nothing is compiled): then the caller takes
        the Python path, which also raises every validation error. ``request`` is what
        ``native_args`` takes."""
        if self.native_call is None:
            return None
        return self.native_call(raw, *self.native_args(**request))

    def normalize(
        self,
        raw: WireEvent,
        *,
        received_at: datetime,
        received_at_text: str,
        source_id: str,
        event_type: str | None = None,
        sent_at_default: str | UnsetType | None = UNSET,
    ) -> WireEvent:
        """The normalised event, a new ``WireEvent`` (``raw`` is left as it was)."""
        kind = event_kind(event_type, _value(raw.type))
        for name in _OBJECT_FIELDS:
            _check_object(name, getattr(raw, name))
        user_id, anonymous_id, previous_id, group_id = identity_ids(
            kind,
            _value(raw.userId),
            _value(raw.anonymousId),
            raw.event,
            _value(raw.previousId),
            _value(raw.groupId),
        )
        # ids the kind does not need stay as sent (absent stays absent)
        if kind != "alias":
            previous_id = raw.previousId
        if kind != "group":
            group_id = raw.groupId
        message_id = identifier_value("messageId", _value(raw.messageId))
        sent_raw = raw.sentAt if raw.sentAt is not UNSET else sent_at_default
        original, sent, timestamp, is_future = self._normalizer.corrected_times(
            _value(raw.originalTimestamp),
            _value(raw.timestamp),
            _value(sent_raw),
            received_at,
            received_at_text,
        )
        event = msgspec.structs.replace(raw)
        event.type = kind
        event.userId = user_id if user_id is not None else UNSET
        event.anonymousId = anonymous_id if anonymous_id is not None else UNSET
        event.previousId = previous_id
        event.groupId = group_id
        event.messageId = message_id or f"personify-{uuid.uuid4()}"
        event.sentAt = sent if sent is not None else sent_raw
        if original is not None:
            event.originalTimestamp = original
        event.timestamp = timestamp
        event.writeKey = UNSET
        event.flags = ["future_timestamp"] if is_future else UNSET
        event.receivedAt = received_at_text
        event.sourceId = source_id
        return event


def _holds_any(text: bytes, probes: tuple[bytes, ...]) -> bool:
    return any(text.find(probe) != -1 for probe in probes)


def _value(field: Any) -> Any:
    """A field's value, None when it was not sent."""
    return None if field is UNSET else field
