"""Declarative mappings from a third party's webhook payload to Segment events.

A mapping is a JSON document. Paths into the payload are JSON Pointers (RFC 6901: ``/data/
object/id``; ``~1`` stands for ``/`` and ``~0`` for ``~`` in a key)::

    {
      "name": "shop",                        a label (optional)
      "eventType": "/type",                  where the sender's event type is
      "eventId": "/id",                      where its event id is: the messageId, so a
                                             resent event is a duplicate
      "timestamp": {"path": "/created", "as": "timestamp"},   (optional) when it happened
      "events": {
        "order.paid": {                      one rule per sender event type
          "type": "track",                   track (the default) or identify
          "event": "Order Completed",        the track event's name (track only)
          "userId": ["/user/id", "/customer"],   the first of these present wins
          "anonymousId": "/session",
          "properties": {"revenue": {"path": "/total", "scale": 0.01}, "order_id": "/id"},
          "traits": {…}, "context": {"traits.email": "/email"}
        }
      }
    }

A value is a pointer, a list of pointers (the first present wins), or an object: ``path``
(a pointer or a list) or ``value`` (a constant), and optionally ``as`` (``string``,
``number``, ``timestamp``: Unix seconds become ISO-8601), ``scale`` (a factor), ``case``
(``upper``, ``lower``), ``minorUnits`` (pointers to an ISO 4217 currency code: the amount is
in that currency's minor units, cents for USD, yen for JPY). A value that is absent, or
that cannot be read as its ``as`` says, is left out of the event. Names under
``properties``, ``traits`` and ``context`` may be dotted (``traits.email``) to nest.

``parse_mapping`` checks a document and says every problem at once, each at its JSON
Pointer in the document (``validate_mapping`` lists them without raising). The built-in
``stripe`` mapping turns Stripe's payment events into ``Order Completed`` and
``Order Refunded``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from personify.clock import format_timestamp
from personify.errors import InvalidDefinition

__all__ = [
    "BUILTIN_MAPPINGS",
    "MISSING",
    "MappedEvent",
    "MappingProblem",
    "ValueSpec",
    "WebhookMapping",
    "builtin_mapping",
    "escape_pointer",
    "parse_mapping",
    "resolve_pointer",
    "validate_mapping",
]

MISSING: Final = object()
_EVENT_TYPES = ("track", "identify")
_CONVERSIONS = ("string", "number", "timestamp")
_CASES = ("upper", "lower")
_VALUE_KEYS = frozenset({"path", "value", "as", "scale", "case", "minorUnits"})
_RULE_KEYS = frozenset(
    {"type", "event", "messageId", "userId", "anonymousId", "timestamp"}
    | {"properties", "traits", "context"}
)
_TOP_KEYS = frozenset({"name", "eventType", "eventId", "timestamp", "events"})
_OBJECT_FIELDS = ("properties", "traits", "context")
_MAX_POINTER_CHARS = 512
_MAX_ALTERNATIVES = 16
_MAX_RULES = 500
_MAX_FIELDS = 200
_MAX_NAME_CHARS = 200
# a number read from a string: longer text is no amount anyone sends
_MAX_NUMBER_CHARS = 40
# Unix seconds a timestamp may have (0 to the year 5138): beyond is not a time
_MAX_EPOCH_S = 1e11
# ISO 4217 currencies whose minor unit is not the hundredth (the rest: 2 digits)
_MINOR_DIGITS = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI"),
        0,
    ),
    **dict.fromkeys(("VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


@dataclass(frozen=True, slots=True)
class MappingProblem:
    """One thing wrong with a mapping document, at its JSON Pointer."""

    pointer: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """The JSON shape errors carry."""
        return {"pointer": self.pointer, "message": self.message}


def escape_pointer(token: str) -> str:
    """``token`` as one reference token of a JSON Pointer (RFC 6901, section 3)."""
    return token.replace("~", "~0").replace("/", "~1")


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at ``pointer`` in ``document``, or ``MISSING``. An array index is digits
    without a leading zero (RFC 6901, section 4); ``""`` is the whole document."""
    if pointer == "":
        return document
    value = document
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict):
            if token not in value:
                return MISSING
            value = value[token]
        elif isinstance(value, list):
            if not token.isdigit() or (token != "0" and token.startswith("0")):
                return MISSING
            index = int(token)
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """Where one event field comes from and how it is converted."""

    paths: tuple[str, ...] = ()
    constant: Any = MISSING
    conversion: str | None = None
    scale: Decimal | None = None
    case: str | None = None
    currency_paths: tuple[str, ...] = ()

    def read(self, payload: Any) -> Any:
        """The field's value for ``payload``, or ``MISSING``."""
        value = self.constant if self.constant is not MISSING else _first(payload, self.paths)
        if value is MISSING or value is None:
            return MISSING
        if self.currency_paths:
            value = _from_minor_units(value, _first(payload, self.currency_paths))
        if self.scale is not None and value is not MISSING:
            value = _scaled(value, self.scale)
        if self.conversion is not None and value is not MISSING:
            value = _CONVERTERS[self.conversion](value)
        if self.case is not None and isinstance(value, str):
            value = value.upper() if self.case == "upper" else value.lower()
        return value


def _first(payload: Any, paths: Sequence[str]) -> Any:
    for path in paths:
        value = resolve_pointer(payload, path)
        if value is not MISSING and value is not None and value != "":
            return value
    return MISSING


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_CHARS:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _plain(number: Decimal) -> int | float:
    """An int when whole and exact, else the nearest float."""
    if number == number.to_integral_value() and abs(number) < 2**53:
        return int(number)
    return float(number)


def _scaled(value: Any, scale: Decimal) -> Any:
    number = _number(value)
    return MISSING if number is None else _plain(number * scale)


def _from_minor_units(value: Any, currency: Any) -> Any:
    number = _number(value)
    if number is None:
        return MISSING
    code = currency.upper() if isinstance(currency, str) else ""
    digits = _MINOR_DIGITS.get(code, 2)
    return _plain(number.scaleb(-digits))


def _to_string(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return MISSING


def _to_number(value: Any) -> Any:
    number = _number(value)
    return MISSING if number is None else _plain(number)


def _to_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        return value  # ISO-8601 already, checked by the collector like any timestamp
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    if not (math.isfinite(value) and 0 <= value <= _MAX_EPOCH_S):
        return MISSING
    return format_timestamp(datetime.fromtimestamp(value, UTC))


_CONVERTERS = {"string": _to_string, "number": _to_number, "timestamp": _to_timestamp}


@dataclass(frozen=True, slots=True)
class EventRule:
    """How one sender event type becomes one Segment event."""

    type: str
    event: str | None
    fields: dict[str, ValueSpec]
    objects: dict[str, dict[str, ValueSpec]]


@dataclass(frozen=True, slots=True)
class MappedEvent:
    """A payload mapped: the sender's event type, and the Segment event (raw, not yet
    normalised: the collector takes it like any event of a batch)."""

    source_type: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookMapping:
    """A checked mapping: ``map`` turns a payload into a Segment event, or ``None`` when the
    payload's event type has no rule."""

    name: str
    event_type: ValueSpec
    event_id: ValueSpec
    timestamp: ValueSpec | None
    rules: dict[str, EventRule]
    document: dict[str, Any] = field(compare=False)

    def type_of(self, payload: Any) -> str | None:
        """The sender's event type of ``payload``, when it has one."""
        value = self.event_type.read(payload)
        return value if isinstance(value, str) else None

    def map(self, payload: Any) -> MappedEvent | None:
        """The Segment event ``payload`` maps to; ``None`` when its type has no rule."""
        source_type = self.type_of(payload)
        rule = self.rules.get(source_type) if source_type is not None else None
        if source_type is None or rule is None:
            return None
        event: dict[str, Any] = {"type": rule.type}
        if rule.event is not None:
            event["event"] = rule.event
        event_id = self.event_id.read(payload)
        if isinstance(event_id, str | int) and not isinstance(event_id, bool):
            event["messageId"] = str(event_id)
        if self.timestamp is not None:
            _put(event, "timestamp", self.timestamp.read(payload))
        for name, spec in rule.fields.items():
            _put(event, name, spec.read(payload))
        for kind, specs in rule.objects.items():
            target: dict[str, Any] = {}
            for dotted, spec in specs.items():
                value = spec.read(payload)
                if value is not MISSING:
                    _nest(target, dotted.split("."), value)
            if target:
                event[kind] = target
        return MappedEvent(source_type, event)


def _put(event: dict[str, Any], name: str, value: Any) -> None:
    if value is not MISSING:
        event[name] = value


def _nest(target: dict[str, Any], names: list[str], value: Any) -> None:
    for name in names[:-1]:
        inner = target.get(name)
        if not isinstance(inner, dict):
            inner = target[name] = {}
        target = inner
    target[names[-1]] = value


# -- checking ------------------------------------------------------------------------------


class _Checker:
    """Walks a mapping document, building the mapping and noting every problem."""

    def __init__(self) -> None:
        self.problems: list[MappingProblem] = []

    def problem(self, pointer: str, message: str) -> None:
        self.problems.append(MappingProblem(pointer or "/", message))

    def pointers(self, value: Any, at: str) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items or len(items) > _MAX_ALTERNATIVES:
            self.problem(at, f"give 1 to {_MAX_ALTERNATIVES} paths")
            return ()
        paths: list[str] = []
        for index, item in enumerate(items):
            where = f"{at}/{index}" if isinstance(value, list) else at
            if not isinstance(item, str) or not item.startswith("/"):
                self.problem(where, "a path is a JSON Pointer, starting with /")
            elif len(item) > _MAX_POINTER_CHARS:
                self.problem(where, f"a path has at most {_MAX_POINTER_CHARS} characters")
            elif _bad_escape(item):
                self.problem(where, "~ in a path is written ~0 (and / in a key ~1)")
            else:
                paths.append(item)
        return tuple(paths)

    def value(self, value: Any, at: str) -> ValueSpec | None:
        if isinstance(value, str | list):
            found = self.pointers(value, at)
            return ValueSpec(paths=found) if found else None
        if not isinstance(value, dict):
            self.problem(at, "a value is a path, a list of paths or an object")
            return None
        for key in sorted(set(value) - _VALUE_KEYS):
            self.problem(f"{at}/{escape_pointer(key)}", f"unknown key (use {_keys(_VALUE_KEYS)})")
        if ("path" in value) == ("value" in value):
            self.problem(at, "give either path or value")
            return None
        paths: tuple[str, ...] = ()
        constant: Any = MISSING
        if "path" in value:
            paths = self.pointers(value["path"], f"{at}/path")
        else:
            constant = value["value"]
            if isinstance(constant, dict | list):
                self.problem(f"{at}/value", "a constant is a string, number or boolean")
        conversion = value.get("as")
        if conversion is not None and conversion not in _CONVERSIONS:
            self.problem(f"{at}/as", f"use one of {', '.join(_CONVERSIONS)}")
        case = value.get("case")
        if case is not None and case not in _CASES:
            self.problem(f"{at}/case", f"use one of {', '.join(_CASES)}")
        scale: Decimal | None = None
        if "scale" in value:
            scale = _number(value["scale"]) if not isinstance(value["scale"], str) else None
            if scale is None or scale == 0:
                self.problem(f"{at}/scale", "a scale is a non-zero number")
        currency: tuple[str, ...] = ()
        if "minorUnits" in value:
            currency = self.pointers(value["minorUnits"], f"{at}/minorUnits")
        return ValueSpec(paths, constant, conversion, scale, case, currency)

    def names(self, value: Any, at: str) -> dict[str, ValueSpec]:
        if not isinstance(value, dict):
            self.problem(at, "an object of names to values")
            return {}
        if len(value) > _MAX_FIELDS:
            self.problem(at, f"at most {_MAX_FIELDS} names")
        specs: dict[str, ValueSpec] = {}
        for name, spec in value.items():
            where = f"{at}/{escape_pointer(name)}"
            if not name or len(name) > _MAX_NAME_CHARS or "" in name.split("."):
                self.problem(where, "a name is dotted words (traits.email), not empty")
                continue
            checked = self.value(spec, where)
            if checked is not None:
                specs[name] = checked
        return specs

    def rule(self, value: Any, at: str) -> EventRule | None:
        if not isinstance(value, dict):
            self.problem(at, "a rule is an object")
            return None
        for key in sorted(set(value) - _RULE_KEYS):
            self.problem(f"{at}/{escape_pointer(key)}", f"unknown key (use {_keys(_RULE_KEYS)})")
        kind = value.get("type", "track")
        if kind not in _EVENT_TYPES:
            self.problem(f"{at}/type", f"use one of {', '.join(_EVENT_TYPES)}")
        name = value.get("event")
        if kind == "track" and (not isinstance(name, str) or not name.strip()):
            self.problem(f"{at}/event", "a track rule names its event (Order Completed)")
        elif kind != "track" and name is not None:
            self.problem(f"{at}/event", "only a track rule names an event")
        fields: dict[str, ValueSpec] = {}
        for key in ("messageId", "userId", "anonymousId", "timestamp"):
            if key in value:
                spec = self.value(value[key], f"{at}/{key}")
                if spec is not None:
                    fields[key] = spec
        objects = {
            key: self.names(value[key], f"{at}/{key}") for key in _OBJECT_FIELDS if key in value
        }
        if "userId" not in value and "anonymousId" not in value:
            self.problem(at, "a rule needs userId or anonymousId (an event needs an identity)")
        return EventRule(kind, name if isinstance(name, str) else None, fields, objects)

    def mapping(self, document: Any, default_name: str) -> WebhookMapping | None:
        if not isinstance(document, dict):
            self.problem("", "a mapping is a JSON object")
            return None
        for key in sorted(set(document) - _TOP_KEYS):
            self.problem(f"/{escape_pointer(key)}", f"unknown key (use {_keys(_TOP_KEYS)})")
        name = document.get("name", default_name)
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME_CHARS:
            self.problem("/name", f"a name of 1 to {_MAX_NAME_CHARS} characters")
            name = default_name
        event_type = self.required(document, "eventType")
        event_id = self.required(document, "eventId")
        timestamp = (
            self.value(document["timestamp"], "/timestamp") if "timestamp" in document else None
        )
        events = document.get("events")
        rules: dict[str, EventRule] = {}
        if not isinstance(events, dict) or not events:
            self.problem("/events", "an object of sender event types to rules, not empty")
        elif len(events) > _MAX_RULES:
            self.problem("/events", f"at most {_MAX_RULES} rules")
        else:
            for source_type, rule in events.items():
                checked = self.rule(rule, f"/events/{escape_pointer(source_type)}")
                if checked is not None:
                    rules[source_type] = checked
        if self.problems or event_type is None or event_id is None:
            return None
        return WebhookMapping(name, event_type, event_id, timestamp, rules, document)

    def required(self, document: dict[str, Any], key: str) -> ValueSpec | None:
        if key not in document:
            self.problem(f"/{key}", "required: where the sender puts it, as a JSON Pointer")
            return None
        return self.value(document[key], f"/{key}")


def _bad_escape(pointer: str) -> bool:
    # RFC 6901: "~" is followed by 0 or 1
    return any(part[:1] not in ("0", "1") for part in pointer.split("~")[1:])


def _keys(keys: frozenset[str]) -> str:
    return ", ".join(sorted(keys))


def validate_mapping(document: Any) -> list[MappingProblem]:
    """Every problem of a mapping document, each at its JSON Pointer; empty when it is good."""
    checker = _Checker()
    checker.mapping(document, "custom")
    return checker.problems


def parse_mapping(document: Any, *, default_name: str = "custom") -> WebhookMapping:
    """A checked mapping; ``InvalidDefinition`` (``invalid_mapping``) listing every problem
    (``details.problems``: ``[{"pointer", "message"}]``) otherwise."""
    checker = _Checker()
    mapping = checker.mapping(document, default_name)
    if mapping is None:
        problems = checker.problems
        first = problems[0]
        raise InvalidDefinition(
            f"the mapping is invalid at {first.pointer}: {first.message}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            code="invalid_mapping",
            details={"problems": [p.to_dict() for p in problems]},
        )
    return mapping


# -- built-in mappings -------------------------------------------------------------------------

_OBJECT = "/data/object"
_STRIPE_USER = [f"{_OBJECT}/metadata/user_id", f"{_OBJECT}/metadata/userId"]
_STRIPE_CUSTOMER = [f"{_OBJECT}/customer/id", f"{_OBJECT}/customer"]
_STRIPE_EMAIL = [
    f"{_OBJECT}/receipt_email",
    f"{_OBJECT}/billing_details/email",
    f"{_OBJECT}/customer_details/email",
    f"{_OBJECT}/customer_email",
]
_STRIPE_CURRENCY = f"{_OBJECT}/currency"


def _stripe_amount(field_name: str) -> dict[str, Any]:
    # Stripe sends amounts in the currency's minor unit (cents; yen for JPY)
    return {"path": f"{_OBJECT}/{field_name}", "minorUnits": _STRIPE_CURRENCY}


def _stripe_rule(event: str, amount: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": _STRIPE_USER,
        "anonymousId": _STRIPE_CUSTOMER,
        "properties": {
            "order_id": [
                f"{_OBJECT}/metadata/order_id",
                f"{_OBJECT}/metadata/orderId",
                _OBJECT + "/id",
            ],
            "total": _stripe_amount(amount),
            "revenue": _stripe_amount(amount),
            "currency": {"path": _STRIPE_CURRENCY, "case": "upper"},
            "stripe_customer_id": _STRIPE_CUSTOMER,
            **extra,
        },
        "context": {
            "traits.email": _STRIPE_EMAIL,
            "library.name": {"value": "personify-webhooks/stripe"},
        },
    }


STRIPE: dict[str, Any] = {
    "name": "stripe",
    "eventType": "/type",
    "eventId": "/id",
    "timestamp": {"path": "/created", "as": "timestamp"},
    # one Order Completed per payment: a Checkout session and an invoice pay through a
    # payment intent, which sends payment_intent.succeeded too, so they are not mapped
    "events": {
        "payment_intent.succeeded": _stripe_rule(
            "Order Completed",
            "amount_received",
            {"payment_id": f"{_OBJECT}/id", "description": f"{_OBJECT}/description"},
        ),
        "charge.refunded": _stripe_rule(
            "Order Refunded",
            "amount_refunded",
            {
                "order_id": [
                    f"{_OBJECT}/metadata/order_id",
                    f"{_OBJECT}/metadata/orderId",
                    f"{_OBJECT}/payment_intent",
                    f"{_OBJECT}/id",
                ],
                "payment_id": [f"{_OBJECT}/payment_intent", f"{_OBJECT}/id"],
            },
        ),
    },
}

BUILTIN_MAPPINGS: dict[str, dict[str, Any]] = {"stripe": STRIPE}


def builtin_mapping(name: str) -> WebhookMapping:
    """A built-in mapping by name (``stripe``); ``InvalidDefinition`` (``unknown_mapping``)."""
    document = BUILTIN_MAPPINGS.get(name)
    if document is None:
        raise InvalidDefinition(
            f"no built-in mapping {name!r}: use {', '.join(BUILTIN_MAPPINGS)} or a JSON mapping",
            code="unknown_mapping",
            details={"builtin": sorted(BUILTIN_MAPPINGS)},
        )
    return parse_mapping(document, default_name=name)
