"""The acceptance rule for JSON: what ingest takes is exactly what every later stage can read.

Every stage after the collector (the stream worker, the lake writer, replays) reads a stored
event with msgspec's generic JSON decoder. So the collector holds every request body to that
same decoder, and to a nesting limit, before it answers: a body that passes can be read
downstream, a body that fails is refused with a code and never acknowledged.

The codes, each a 400:

* ``invalid_json``: not JSON (syntax, invalid UTF-8, a lone UTF-16 surrogate in an escape);
* ``number_out_of_range``: a number no stage can hold (``1e400``, an integer of more than
  4,300 digits). Integers of any smaller size are kept as sent;
* ``too_deep``: an event nests objects and arrays more than ``MAX_DEPTH`` levels (the event
  itself is level 1; a batch body may be two levels deeper, for itself and its array).

In a batch, a number or nesting problem is the event's own: that event is dead-lettered and
the others are kept (``decode_batch_events``). A body that is not JSON at all has no events to
tell apart, so the whole request is refused.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Raw

from personify.errors import ValidationError

# Deep enough for any real payload; shallow enough that every stage, whatever its own stack
# depth, decodes, encodes and walks an accepted event far inside Python's recursion limit.
MAX_DEPTH = 64

_decode = msgspec.json.Decoder().decode
_decode_envelope = msgspec.json.Decoder(dict[str, Raw]).decode
_decode_raw_list = msgspec.json.Decoder(list[Raw]).decode
_OPENERS = (b"{", b"[")


class Refused:
    """An event of a batch that broke the acceptance rule on its own; the rest go on.
    ``message_id`` is its messageId when that much of it could be read."""

    __slots__ = ("error", "message_id")

    def __init__(self, error: ValidationError, message_id: str | None = None) -> None:
        self.error = error
        self.message_id = message_id


class _MessageIdOnly(msgspec.Struct):
    # every other field is skipped unread, so a bad number elsewhere does not stop this
    messageId: Any = None


_decode_message_id = msgspec.json.Decoder(_MessageIdOnly).decode


def _message_id(raw: Raw) -> str | None:
    try:
        value = _decode_message_id(raw).messageId
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return value[:512] if isinstance(value, str) else None


def _decode_error(exc: Exception) -> ValidationError:
    if isinstance(exc, RecursionError):
        return _too_deep()
    text = str(exc)
    # msgspec says "Number out of range" for 1e400 and "Integer value out of range" past
    # Python's 4,300-digit limit; both are a msgspec.ValidationError, never a DecodeError
    if isinstance(exc, msgspec.ValidationError) and "out of range" in text:
        return ValidationError(
            "a number is out of range: it must be a finite double or an integer of at most "
            "4,300 digits",
            code="number_out_of_range",
        )
    # msgspec's messages name the problem and a byte offset, never the input's text
    return ValidationError(f"the body is not valid JSON: {text}", code="invalid_json")


def _too_deep() -> ValidationError:
    return ValidationError(
        f"objects and arrays are nested more than {MAX_DEPTH} levels deep",
        code="too_deep",
        details={"maxDepth": MAX_DEPTH},
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels (itself is 1)."""
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            values = node.values() if type(node) is dict else node
            below += [v for v in values if type(v) is dict or type(v) is list]
        level = below
    return False


def _check_depth(body: bytes | Raw, value: Any, limit: int) -> None:
    # nesting past the limit needs at least that many opening brackets: most bodies have
    # far fewer, and the count is much cheaper than the walk
    data = body if type(body) is bytes else bytes(body)
    if data.count(_OPENERS[0]) + data.count(_OPENERS[1]) <= limit:
        return
    if (type(value) is dict or type(value) is list) and _deeper_than(value, limit):
        raise _too_deep()


def decode_document(body: bytes | Raw, *, max_depth: int = MAX_DEPTH) -> Any:
    """``body`` decoded as every later stage will decode it; raises ``ValidationError``
    (``invalid_json``, ``number_out_of_range``, ``too_deep``)."""
    try:
        value = _decode(body)
    except (
        msgspec.DecodeError,
        msgspec.ValidationError,
        UnicodeDecodeError,
        RecursionError,
    ) as exc:
        raise _decode_error(exc) from None
    _check_depth(body, value, max_depth)
    return value


def check_document(body: bytes, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``ValidationError`` unless ``body`` meets the acceptance rule (see the module)."""
    decode_document(body, max_depth=max_depth)


def decode_batch_events(body: bytes) -> tuple[dict[str, Any], list[Any]]:
    """A batch body whose events may break the rule one by one: the envelope (every field
    but ``batch``, decoded) and each event decoded, or ``Refused`` with its error.

    For a body that ``check_document`` refused with ``number_out_of_range`` or ``too_deep``:
    it raises ``ValidationError`` when the problem is not inside one event (the envelope is
    bad, or ``batch`` is not an array), so that the request is refused as a whole.
    """
    not_a_batch = ValidationError(
        'a batch body is a JSON object with a "batch" array', code="invalid_batch"
    )
    try:
        fields = _decode_envelope(body)
        batch = fields.pop("batch", None)
        if batch is None:
            raise not_a_batch
        raws = _decode_raw_list(batch)
    except msgspec.ValidationError as exc:  # valid JSON of the wrong shape
        raise not_a_batch from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _decode_error(exc) from None
    # the envelope's fields sit one level down in a body that may be MAX_DEPTH + 2 deep
    envelope = {name: decode_document(raw, max_depth=MAX_DEPTH + 1) for name, raw in fields.items()}
    events: list[Any] = []
    for raw in raws:
        try:
            events.append(decode_document(raw))
        except ValidationError as error:
            events.append(Refused(error, _message_id(raw)))
    return envelope, events
