"""Validation of content items and placements as saved: every problem found, each with its
JSON pointer.

``check_item`` and ``check_placement`` return the document in its canonical form (every field
present, defaults filled in) or raise one ``InvalidDefinition`` whose ``details["errors"]``
lists **every** problem as ``{"pointer", "code", "message"}``, with an RFC 6901 pointer into
the body (``/targeting/condition/all/0/op``, ``/variants/1/weight``). A targeting condition is
checked by the segments' own validation (``docs/segments.md``), so an item targets with the
same language, predictions included, as a rule segment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from personify.errors import InvalidDefinition
from personify.segments.conditions import json_pointer, parse_window_ms
from personify.segments.validation import parse_condition

__all__ = [
    "ITEM_FIELDS",
    "MAX_DOCUMENT_BYTES",
    "RESERVED_PLACEMENT_IDS",
    "STRATEGIES",
    "Problems",
    "check_fields",
    "check_id",
    "check_item",
    "check_placement",
    "check_targeting",
    "is_number",
    "schedule_bounds",
]

# item and placement ids: what a product id, a slug or a CMS id looks like
_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
_TYPE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# a BCP 47 language tag as people write them: en, en-US, zh-Hant-TW, es-419
_LOCALE: Final = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
# the serialised fields, variants included: a content block, not a file store
MAX_DOCUMENT_BYTES: Final = 64 * 1024
_MAX_TAGS: Final = 100
_MAX_TAG_CHARS: Final = 100
_MAX_PLACEMENTS: Final = 100
_MAX_VARIANTS: Final = 20
_MAX_SEGMENTS: Final = 100
_MAX_DESCRIPTION_CHARS: Final = 2_000
_PRIORITY_BOUND: Final = 1_000_000
_MAX_LIMIT: Final = 50
_MAX_CAP_WINDOW_MS: Final = 90 * 86_400_000
# the literal path segments under /v1/content: a placement with one of these ids could not be
# served at GET /v1/content/{placement}
RESERVED_PLACEMENT_IDS: Final = frozenset({"items", "export", "import"})

# an item's document: what a version holds (status and version numbers are the item's)
ITEM_FIELDS: Final = (
    "type",
    "fields",
    "tags",
    "placements",
    "variants",
    "targeting",
    "priority",
    "schedule",
    "locale",
    "frequencyCap",
)

Location = tuple[str | int, ...]


class Problems:
    """The problems found in one body, each at its location."""

    def __init__(self) -> None:
        self.found: list[dict[str, Any]] = []

    def add(self, at: Location, code: str, message: str) -> None:
        """Record a problem at ``at``."""
        self.found.append({"pointer": json_pointer(at), "code": code, "message": message})

    def extend(self, at: Location, problems: list[dict[str, Any]]) -> None:
        """Record problems found by another validator, their pointers prefixed with ``at``."""
        prefix = json_pointer(at)
        for problem in problems:
            self.found.append({**problem, "pointer": prefix + str(problem.get("pointer", ""))})

    def raise_if_any(self, what: str, code: str) -> None:
        """Raise one ``InvalidDefinition`` listing every problem (none: return)."""
        if not self.found:
            return
        first = self.found[0]
        more = len(self.found) - 1
        message = f"invalid {what} at {first['pointer'] or '/'}: {first['message']}"
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise InvalidDefinition(message, code=code, details={"errors": self.found})


def check_id(value: Any) -> str | None:
    """``value`` when it is a valid item or placement id, else ``None``."""
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    return None


def _text(problems: Problems, at: Location, value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or "\x00" in value:
        problems.add(at, "invalid_type", "must be text")
        return None
    if len(value) > limit:
        problems.add(at, "too_long", f"must be at most {limit} characters")
        return None
    return value


def check_fields(
    problems: Problems, at: Location, body: Mapping[str, Any], known: Sequence[str]
) -> None:
    """Record every field of ``body`` that is not one of ``known`` (``unknown_field``)."""
    for key in body:
        if key not in known:
            problems.add((*at, key), "unknown_field", f"unknown field (known: {', '.join(known)})")


def is_number(value: Any) -> bool:
    """A JSON number (an int or float, never a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tags(problems: Problems, value: Any) -> list[str]:
    if not isinstance(value, list):
        problems.add(("tags",), "invalid_type", "must be a list of text")
        return []
    if len(value) > _MAX_TAGS:
        problems.add(("tags",), "too_many", f"at most {_MAX_TAGS} tags")
        return []
    tags: list[str] = []
    for index, tag in enumerate(value):
        text = _text(problems, ("tags", index), tag, _MAX_TAG_CHARS)
        if text is not None and text not in tags:
            tags.append(text)
    return tags


def _placement_ids(
    problems: Problems, value: Any, known: Callable[[str], bool] | None
) -> list[str]:
    if not isinstance(value, list):
        problems.add(("placements",), "invalid_type", "must be a list of placement ids")
        return []
    if len(value) > _MAX_PLACEMENTS:
        problems.add(("placements",), "too_many", f"at most {_MAX_PLACEMENTS} placements")
        return []
    found: list[str] = []
    for index, placement in enumerate(value):
        if check_id(placement) is None:
            problems.add(("placements", index), "invalid_id", "not a placement id")
        elif known is not None and not known(placement):
            problems.add(("placements", index), "unknown_placement", f"no placement {placement!r}")
        elif placement not in found:
            found.append(placement)
    return found


def _variants(problems: Problems, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        problems.add(("variants",), "invalid_type", "must be a list of variants")
        return []
    if len(value) > _MAX_VARIANTS:
        problems.add(("variants",), "too_many", f"at most {_MAX_VARIANTS} variants")
        return []
    variants: list[dict[str, Any]] = []
    keys: set[str] = set()
    for index, variant in enumerate(value):
        at: Location = ("variants", index)
        if not isinstance(variant, dict):
            problems.add(at, "invalid_type", "a variant is an object with key, fields, weight")
            continue
        check_fields(problems, at, variant, ("key", "fields", "weight"))
        key = check_id(variant.get("key"))
        if key is None:
            problems.add(
                (*at, "key"), "invalid_id", "a variant key is 1-200 letters, digits, . _ : -"
            )
        elif key in keys:
            problems.add((*at, "key"), "duplicate", f"variant {key!r} is given twice")
        else:
            keys.add(key)
        fields = variant.get("fields", {})
        if not isinstance(fields, dict):
            problems.add((*at, "fields"), "invalid_type", "must be an object")
        weight = variant.get("weight", 1)
        if not is_number(weight) or not 0 < weight <= 1_000_000:
            problems.add((*at, "weight"), "out_of_range", "a weight is a number above 0")
        variants.append({"key": key, "fields": fields, "weight": weight})
    return variants


def check_targeting(
    problems: Problems, value: Any, segments: Mapping[str, Mapping[str, Any] | None] | None
) -> dict[str, Any] | None:
    """Targeting as items and experiments write it (segments and/or a condition without
    event leaves), problems recorded under ``/targeting``; ``None`` when there is none."""
    if value is None:
        return None
    at: Location = ("targeting",)
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", "targeting is an object with segments and/or condition")
        return None
    check_fields(problems, at, value, ("segments", "condition"))
    listed = value.get("segments", [])
    keys: list[str] = []
    if not isinstance(listed, list) or len(listed) > _MAX_SEGMENTS:
        problems.add(
            (*at, "segments"), "invalid_type", f"a list of at most {_MAX_SEGMENTS} segment keys"
        )
    else:
        for index, key in enumerate(listed):
            if not isinstance(key, str) or not key or len(key) > 200 or "\x00" in key:
                problems.add((*at, "segments", index), "invalid_type", "a segment key")
            elif segments is not None and key not in segments:
                problems.add((*at, "segments", index), "unknown_segment", f"no segment {key!r}")
            elif key not in keys:
                keys.append(key)
    condition = value.get("condition")
    if condition is not None:
        try:
            parse_condition(condition, segments=segments)
        except InvalidDefinition as exc:
            problems.extend((*at, "condition"), exc.details["errors"])
        for where in _event_leaves(condition, (*at, "condition"), 0):
            # the worker keeps event counters for segments' rules only: a decision never scans
            # a user's events, so an event condition has to live in a segment
            problems.add(
                where,
                "event_condition",
                "event conditions belong in a segment: save one and target it "
                '({"segment": KEY} or targeting.segments)',
            )
    if not keys and condition is None:
        problems.add(at, "empty", "give segments, a condition, or no targeting (null)")
    return {"segments": keys, "condition": condition}


def _event_leaves(node: Any, at: Location, depth: int) -> list[Location]:
    """Where a condition has event leaves (within the depth its validation allows)."""
    if depth > 16:
        return []
    if isinstance(node, dict):
        if "event" in node:
            return [at]
        found: list[Location] = []
        for key in ("all", "any"):
            if isinstance(node.get(key), list):
                for index, child in enumerate(node[key]):
                    found.extend(_event_leaves(child, (*at, key, index), depth + 1))
        if "not" in node:
            found.extend(_event_leaves(node["not"], (*at, "not"), depth + 1))
        return found
    return []


def _moment(problems: Problems, at: Location, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    problems.add(at, "invalid_time", "an ISO 8601 date and time, e.g. 2026-12-24T18:00")
    return None


def _schedule(problems: Problems, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    at: Location = ("schedule",)
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", "a schedule is an object with start, end, timezone")
        return None
    check_fields(problems, at, value, ("start", "end", "timezone"))
    zone_name = value.get("timezone", "UTC")
    zone: ZoneInfo | None = None
    if not isinstance(zone_name, str) or not zone_name or len(zone_name) > 64:
        problems.add((*at, "timezone"), "invalid_timezone", "an IANA time zone, e.g. Europe/Paris")
    else:
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            problems.add((*at, "timezone"), "invalid_timezone", f"no time zone {zone_name!r}")
    start = _moment(problems, (*at, "start"), value.get("start"))
    end = _moment(problems, (*at, "end"), value.get("end"))
    if value.get("start") is None and value.get("end") is None:
        problems.add(at, "empty", "give start, end or both, or no schedule (null)")
    if zone is not None and start is not None and end is not None:
        low = start if start.tzinfo is not None else start.replace(tzinfo=zone)
        high = end if end.tzinfo is not None else end.replace(tzinfo=zone)
        if low >= high:
            problems.add((*at, "end"), "out_of_range", "the end must be after the start")
    return {
        "start": value.get("start"),
        "end": value.get("end"),
        "timezone": zone_name,
    }


def schedule_bounds(schedule: Mapping[str, Any] | None) -> tuple[datetime | None, datetime | None]:
    """The schedule's start and end as aware instants: a time without an offset is read in
    the schedule's time zone (so ``09:00`` in ``Europe/Paris`` is 09:00 there, summer or
    winter)."""
    if not schedule:
        return None, None
    zone = ZoneInfo(schedule.get("timezone") or "UTC")

    def instant(text: Any) -> datetime | None:
        if text is None:
            return None
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)

    return instant(schedule.get("start")), instant(schedule.get("end"))


def _frequency_cap(problems: Problems, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    at: Location = ("frequencyCap",)
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", 'a cap is {"max": 3, "window": "1d"}')
        return None
    check_fields(problems, at, value, ("max", "window"))
    most = value.get("max")
    if not isinstance(most, int) or isinstance(most, bool) or not 1 <= most <= 10_000:
        problems.add((*at, "max"), "out_of_range", "a whole number of exposures from 1")
    window = value.get("window", "1d")
    window_ms = parse_window_ms(window)
    if window_ms is None:
        problems.add((*at, "window"), "invalid_window", "a window such as 30m, 12h, 7d or 2w")
    elif window_ms > _MAX_CAP_WINDOW_MS:
        # exposures are kept that long (personify.content.exposures)
        problems.add((*at, "window"), "out_of_range", "a cap's window is at most 90d")
    return {"max": most, "window": window}


def check_item(
    body: Any,
    *,
    placements: Callable[[str], bool] | None = None,
    segments: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The item's document in canonical form, or ``InvalidDefinition`` (``invalid_content``)
    listing every problem. ``placements`` tells whether a placement id exists and
    ``segments`` holds the segments targeting may name (with their conditions, for the
    loop check); without them neither is checked."""
    problems = Problems()
    if not isinstance(body, dict):
        problems.add((), "invalid_type", "an item is a JSON object")
        problems.raise_if_any("content item", "invalid_content")
    check_fields(problems, (), body, ("id", *ITEM_FIELDS))
    kind = body.get("type")
    if not isinstance(kind, str) or not _TYPE.fullmatch(kind):
        problems.add(
            ("type",),
            "invalid_type" if "type" in body else "missing",
            "a type is 1-64 lower-case letters, digits, _ or - (banner, article, product, offer…)",
        )
    fields = body.get("fields", {})
    if not isinstance(fields, dict):
        problems.add(("fields",), "invalid_type", "fields are a JSON object")
    priority = body.get("priority", 0)
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or abs(priority) > _PRIORITY_BOUND
    ):
        problems.add(("priority",), "out_of_range", f"a whole number within ±{_PRIORITY_BOUND}")
    locale = body.get("locale")
    if locale is not None and (not isinstance(locale, str) or not _LOCALE.fullmatch(locale)):
        problems.add(("locale",), "invalid_locale", "a language tag such as en or en-US, or null")
    document = {
        "type": kind,
        "fields": fields,
        "tags": _tags(problems, body.get("tags", [])),
        "placements": _placement_ids(problems, body.get("placements", []), placements),
        "variants": _variants(problems, body.get("variants", [])),
        "targeting": check_targeting(problems, body.get("targeting"), segments),
        "priority": priority,
        "schedule": _schedule(problems, body.get("schedule")),
        "locale": locale,
        "frequencyCap": _frequency_cap(problems, body.get("frequencyCap")),
    }
    if not problems.found:
        size = len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_DOCUMENT_BYTES:
            problems.add((), "too_large", f"an item is at most {MAX_DOCUMENT_BYTES} bytes of JSON")
    problems.raise_if_any("content item", "invalid_content")
    return document


def _no_params(problems: Problems, at: Location, params: Mapping[str, Any]) -> None:
    check_fields(problems, at, params, ())


def _affinity_params(problems: Problems, at: Location, params: Mapping[str, Any]) -> None:
    check_fields(problems, at, params, ("dimension",))
    dimension = params.get("dimension")
    if dimension is not None:
        _text(problems, (*at, "dimension"), dimension, 200)


_SOURCES: Final = ("auto", "learned", "covisitation", "popular")


def _recommendation_params(problems: Problems, at: Location, params: Mapping[str, Any]) -> None:
    check_fields(problems, at, params, ("source", "excludeSeen"))
    if params.get("source", "auto") not in _SOURCES:
        problems.add((*at, "source"), "invalid_value", f"one of {', '.join(_SOURCES)}")
    if not isinstance(params.get("excludeSeen", True), bool):
        problems.add((*at, "excludeSeen"), "invalid_type", "true or false")


_PREDICTION_OPS: Final = ("gt", "gte", "lt", "lte")


def _prediction_params(problems: Problems, at: Location, params: Mapping[str, Any]) -> None:
    check_fields(problems, at, params, ("prediction", "op", "value", "tag"))
    prediction = params.get("prediction")
    if not isinstance(prediction, str) or "." not in prediction or len(prediction) > 200:
        problems.add(
            (*at, "prediction"), "invalid_path", "a prediction's path, e.g. churn.probability"
        )
    if params.get("op", "gt") not in _PREDICTION_OPS:
        problems.add((*at, "op"), "invalid_operator", f"one of {', '.join(_PREDICTION_OPS)}")
    if not is_number(params.get("value")):
        problems.add((*at, "value"), "invalid_type", "the threshold, a number")
    _text(problems, (*at, "tag"), params.get("tag"), _MAX_TAG_CHARS)


def _random_params(problems: Problems, at: Location, params: Mapping[str, Any]) -> None:
    check_fields(problems, at, params, ("controlPercent",))
    share = params.get("controlPercent", 10)
    if not is_number(share) or not 0 <= share <= 100:
        problems.add((*at, "controlPercent"), "out_of_range", "a percentage from 0 to 100")


# every ranking strategy a placement may name, with the check of its parameters (the decision
# engine implements them: docs/decide.md)
STRATEGIES: Final[dict[str, Callable[[Problems, Location, Mapping[str, Any]], None]]] = {
    "priority": _no_params,
    "affinity": _affinity_params,
    "recommendations": _recommendation_params,
    "prediction": _prediction_params,
    "random": _random_params,
}


def _strategy(problems: Problems, value: Any) -> dict[str, Any]:
    at: Location = ("strategy",)
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", 'a strategy is {"name": …, "params": {…}}')
        return {"name": "priority", "params": {}}
    check_fields(problems, at, value, ("name", "params"))
    name = value.get("name")
    params = value.get("params", {})
    if name not in STRATEGIES:
        problems.add((*at, "name"), "unknown_strategy", f"one of {', '.join(STRATEGIES)}")
    elif not isinstance(params, dict):
        problems.add((*at, "params"), "invalid_type", "the strategy's parameters, an object")
    else:
        STRATEGIES[name](problems, (*at, "params"), params)
    return {"name": name, "params": params}


def check_placement(body: Any, *, items: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The placement's document in canonical form, or ``InvalidDefinition``
    (``invalid_placement``) listing every problem; ``items`` tells whether the default item
    exists (not archived)."""
    problems = Problems()
    if not isinstance(body, dict):
        problems.add((), "invalid_type", "a placement is a JSON object")
        problems.raise_if_any("placement", "invalid_placement")
    check_fields(problems, (), body, ("id", "description", "defaultItem", "strategy", "limit"))
    description = body.get("description", "")
    _text(problems, ("description",), description, _MAX_DESCRIPTION_CHARS)
    default = body.get("defaultItem")
    if default is not None:
        if check_id(default) is None:
            problems.add(("defaultItem",), "invalid_id", "an item id, or null")
        elif items is not None and not items(default):
            problems.add(("defaultItem",), "unknown_item", f"no item {default!r} (or archived)")
    limit = body.get("limit", 1)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= _MAX_LIMIT:
        problems.add(("limit",), "out_of_range", f"a whole number from 1 to {_MAX_LIMIT}")
    document = {
        "description": description,
        "defaultItem": default,
        "strategy": _strategy(problems, body.get("strategy", "priority")),
        "limit": limit,
    }
    problems.raise_if_any("placement", "invalid_placement")
    return document
