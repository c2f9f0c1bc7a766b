"""Experiment metrics computed from the lake by SQL, as summable sufficient statistics.

An experiment is analysed from the exposures and events in the warehouse's ``fact_events``,
whatever produced them:

* **Exposures.** Personify's own decisions (``Content Exposed``, one entry of
  ``properties.placements`` carrying ``"experiment": {"key", "variant", "phase"}``) and any
  other tool's or imported ``Experiment Viewed`` events (``properties.experiment_id`` or
  ``experimentKey``, ``variation_id`` or ``variant``, optional ``phase``). The unit is the
  canonical ``user_key`` (identity-resolved: an anonymous exposure and a later logged-in
  purchase are one unit). Only exposures of the scope's phase count: an exposure naming a
  phase counts when it names this one; one without a phase counts when it happened in
  ``[phase_start, phase_end)``. Exposures to a variant the scope does not list are ignored.
  A unit's first exposure is its earliest; a unit exposed to two variants is excluded from
  every metric from the moment of its second variant and counted in ``multipleExposures``.
* **Metrics.** Per unit, the events of the metric in ``(first exposure, first exposure +
  windowDays]``: ``conversion`` (1 when there is one, else 0), ``count``, ``sum`` of a
  property, ``mean`` of a property (a ratio: the per-unit sum over the per-unit number of
  events with a numeric value) and ``ratio`` (a numerator over a denominator, each a count
  or a property sum). Units without events are in ``n`` with 0; a mean's units without
  events have 0 over 0, which the delta method handles at the variant level (the ratio of
  the variant's sums). A property value is numeric when it is a JSON number or a numeric
  string, finite and within ±1e15 (beyond that it is taken for corrupt data: the sums of
  squares stay finite); anything else is ignored.
* **Analysis time.** Nothing after ``as_of`` counts, exposures included; a window still
  open at ``as_of`` counts what happened so far.
* **Caps.** ``{"value": c}`` caps each unit's value at ``c``; ``{"percentile": p}`` caps it at
  the ``p`` quantile (linear interpolation) of the nonzero per-unit values of every unit in
  the analysis, all variants together (as GrowthBook's percentile capping with zeros
  ignored). A ratio caps its numerator and denominator each by its own ``cap``. The CUPED
  covariate is capped at the same threshold as the metric, so a unit is measured by one
  rule before and after exposure.
* **CUPED.** For conversion, count and sum (on by default) the covariate is the same metric
  over ``[first exposure - cupedDays, first exposure)`` (Deng et al. 2013).

Every statistic is a sum over units (``n``, ``sum``, ``sum_squares``, cross-products), so
statistics over disjoint sets of units add up, except under a percentile cap, whose
threshold depends on all units. The exposures and every metric are one SQL statement with
bound parameters, reading ``fact_events`` once: DuckDB does every aggregation, Python only
shapes the result. Events at the very instant of the first exposure count on neither side.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import duckdb

from personify.clock import format_timestamp
from personify.errors import InvalidDefinition, ValidationError
from personify.lake.warehouse import Warehouse
from personify.segments.conditions import json_pointer
from personify.segments.operators import OPERATORS, check_operand, kind_of

__all__ = [
    "EXPOSURE_EVENT",
    "METRIC_TYPES",
    "VIEWED_EVENT",
    "ExperimentScope",
    "daily_statistics",
    "decision_log",
    "metric_statistics",
    "validate_metrics",
]

EXPOSURE_EVENT: Final = "Content Exposed"
VIEWED_EVENT: Final = "Experiment Viewed"
METRIC_TYPES: Final = ("conversion", "count", "sum", "mean", "ratio")
GOALS: Final = ("increase", "decrease")
DEFAULT_WINDOW_DAYS: Final = 14
DEFAULT_CUPED_DAYS: Final = 14
MAX_DAYS: Final = 3650
MAX_METRICS: Final = 100
MAX_CONDITIONS: Final = 20
# a property value beyond this is taken for corrupt data (its square still sums finitely)
MAX_VALUE: Final = 1e15
_CUPED_TYPES: Final = ("conversion", "count", "sum")
_KEY: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_MAX_TEXT: Final = 200
_FIELDS: Final = (
    "key",
    "name",
    "description",
    "type",
    "event",
    "where",
    "property",
    "numerator",
    "denominator",
    "windowDays",
    "cap",
    "cuped",
    "cupedDays",
    "goal",
    "guardrail",
)
_PART_FIELDS: Final = ("event", "where", "property", "cap")
_CONDITION_FIELDS: Final = ("property", "op", "value")
_NUMBER_TYPES: Final = "('BIGINT', 'UBIGINT', 'HUGEINT', 'DOUBLE')"
# a property summed may be a JSON number or a numeric string (as the warehouse's revenue)
_NUMERIC_TYPES: Final = "('BIGINT', 'UBIGINT', 'HUGEINT', 'DOUBLE', 'VARCHAR')"
_ONE_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ExperimentScope:
    """What is analysed: one phase of one experiment and its variants, control first."""

    key: str
    phase: int
    phase_start: datetime
    phase_end: datetime | None
    variants: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.key:
            raise ValidationError("an experiment scope needs a key")
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValidationError(f"{self.key}: variants must be a non-empty list of distinct keys")
        # SQLite hands back naive datetimes: the state database keeps UTC
        object.__setattr__(self, "phase_start", _utc(self.phase_start))
        if self.phase_end is not None:
            object.__setattr__(self, "phase_end", _utc(self.phase_end))


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# -- validation ------------------------------------------------------------------------------


class _Problems:
    """Every problem found, each with its RFC 6901 pointer under a prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.found: list[dict[str, Any]] = []

    def add(self, at: tuple[str | int, ...], code: str, message: str) -> None:
        self.found.append(
            {"pointer": self.prefix + json_pointer(at), "code": code, "message": message}
        )

    def raise_if_any(self) -> None:
        if not self.found:
            return
        first = self.found[0]
        more = len(self.found) - 1
        message = f"invalid metrics at {first['pointer'] or '/'}: {first['message']}"
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise InvalidDefinition(message, code="invalid_metric", details={"errors": self.found})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(problems: _Problems, at: tuple[str | int, ...], value: Any) -> str | None:
    if not isinstance(value, str) or not value or "\x00" in value:
        problems.add(at, "invalid_type", "must be non-empty text")
        return None
    if len(value) > _MAX_TEXT:
        problems.add(at, "too_long", f"must be at most {_MAX_TEXT} characters")
        return None
    return value


def _days(problems: _Problems, at: tuple[str | int, ...], value: Any, default: int) -> float:
    if value is None:
        return default
    if not _is_number(value) or not 0 < value <= MAX_DAYS:
        problems.add(at, "out_of_range", f"must be a number of days in (0, {MAX_DAYS}]")
        return default
    return float(value) if isinstance(value, float) and not value.is_integer() else int(value)


def _event(problems: _Problems, at: tuple[str | int, ...], value: Any) -> str | dict[str, Any]:
    if isinstance(value, Mapping):
        if set(value) != {"page"}:
            problems.add(
                at, "invalid_event", 'a page is written {"page": "Name"} or {"page": true}'
            )
            return {"page": True}
        page = value["page"]
        if page is True:
            return {"page": True}
        name = _text(problems, (*at, "page"), page)
        return {"page": name or True}
    if value is None:
        problems.add(at, "required", 'the event (a name, or {"page": ...}) is required')
        return ""
    return _text(problems, at, value) or ""


def _conditions(problems: _Problems, at: tuple[str | int, ...], value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(at, "invalid_type", "must be a list of property conditions")
        return []
    if len(value) > MAX_CONDITIONS:
        problems.add(at, "too_many", f"at most {MAX_CONDITIONS} conditions")
        return []
    conditions: list[dict[str, Any]] = []
    for index, condition in enumerate(value):
        here = (*at, index)
        if not isinstance(condition, Mapping):
            problems.add(here, "invalid_type", 'must be {"property", "op", "value"}')
            continue
        for key in condition:
            if key not in _CONDITION_FIELDS:
                problems.add(
                    (*here, key), "unknown_field", "unknown field (known: property, op, value)"
                )
        prop = _text(problems, (*here, "property"), condition.get("property"))
        op = condition.get("op")
        if op not in OPERATORS:
            problems.add(
                (*here, "op"), "unknown_operator", f"op must be one of {', '.join(OPERATORS)}"
            )
            continue
        if op == "exists":
            if "value" in condition:
                problems.add((*here, "value"), "unexpected_value", "exists takes no value")
                continue
            if prop is not None:
                conditions.append({"property": prop, "op": op})
            continue
        problem = check_operand(op, condition.get("value"))
        if problem:
            problems.add((*here, "value"), "invalid_operand", problem)
            continue
        if prop is not None:
            conditions.append({"property": prop, "op": op, "value": condition["value"]})
    return conditions


def _cap(problems: _Problems, at: tuple[str | int, ...], value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if isinstance(value, Mapping) and set(value) == {"value"}:
        if _is_number(value["value"]) and value["value"] > 0:
            return {"value": float(value["value"])}
        problems.add((*at, "value"), "out_of_range", "a cap value is a number above 0")
        return None
    if isinstance(value, Mapping) and set(value) == {"percentile"}:
        if _is_number(value["percentile"]) and 0 < value["percentile"] <= 1:
            return {"percentile": float(value["percentile"])}
        problems.add((*at, "percentile"), "out_of_range", "a cap percentile is in (0, 1]")
        return None
    problems.add(at, "invalid_cap", 'a cap is {"value": number} or {"percentile": p}')
    return None


def _part(problems: _Problems, at: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        problems.add(at, "invalid_type", 'must be {"event", "property"?, "where"?, "cap"?}')
        return {"event": "", "where": [], "property": None, "cap": None}
    for key in value:
        if key not in _PART_FIELDS:
            problems.add(
                (*at, key), "unknown_field", f"unknown field (known: {', '.join(_PART_FIELDS)})"
            )
    prop = value.get("property")
    return {
        "event": _event(problems, (*at, "event"), value.get("event")),
        "where": _conditions(problems, (*at, "where"), value.get("where")),
        "property": None if prop is None else _text(problems, (*at, "property"), prop),
        "cap": _cap(problems, (*at, "cap"), value.get("cap")),
    }


def _metric(problems: _Problems, at: tuple[str | int, ...], value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        problems.add(at, "invalid_type", "a metric is a JSON object")
        return None
    for key in value:
        if key not in _FIELDS:
            problems.add(
                (*at, key), "unknown_field", f"unknown field (known: {', '.join(_FIELDS)})"
            )
    key = value.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        problems.add(
            (*at, "key"), "invalid_key", "a key is 1-100 letters, digits, '_', '.', ':' or '-'"
        )
    kind = value.get("type")
    if kind not in METRIC_TYPES:
        problems.add(
            (*at, "type"), "unknown_type", f"type must be one of {', '.join(METRIC_TYPES)}"
        )
        return None
    metric: dict[str, Any] = {"key": key, "type": kind}
    for field in ("name", "description"):
        if value.get(field) is not None:
            metric[field] = _text(problems, (*at, field), value[field])
    if kind == "ratio":
        for field in ("event", "where", "property", "cap"):
            if value.get(field) is not None:
                problems.add(
                    (*at, field),
                    "misplaced_field",
                    f"a ratio's {field} belongs in its numerator and denominator",
                )
        metric["numerator"] = _part(problems, (*at, "numerator"), value.get("numerator"))
        metric["denominator"] = _part(problems, (*at, "denominator"), value.get("denominator"))
    else:
        for field in ("numerator", "denominator"):
            if value.get(field) is not None:
                problems.add((*at, field), "misplaced_field", f"only a ratio has a {field}")
        metric["event"] = _event(problems, (*at, "event"), value.get("event"))
        metric["where"] = _conditions(problems, (*at, "where"), value.get("where"))
        prop = value.get("property")
        if kind in ("sum", "mean"):
            metric["property"] = _text(problems, (*at, "property"), prop)
        elif prop is not None:
            problems.add(
                (*at, "property"), "misplaced_field", f"a {kind} metric counts events: no property"
            )
        if kind == "conversion" and value.get("cap") is not None:
            problems.add((*at, "cap"), "misplaced_field", "a conversion is 0 or 1: nothing to cap")
        else:
            metric["cap"] = _cap(problems, (*at, "cap"), value.get("cap"))
    metric["windowDays"] = _days(
        problems, (*at, "windowDays"), value.get("windowDays"), DEFAULT_WINDOW_DAYS
    )
    cuped = value.get("cuped", True)
    if not isinstance(cuped, bool):
        problems.add((*at, "cuped"), "invalid_type", "must be true or false")
        cuped = False
    # CUPED needs a per-unit value before exposure; a ratio's covariate would be a ratio too
    metric["cuped"] = cuped and kind in _CUPED_TYPES
    metric["cupedDays"] = _days(
        problems, (*at, "cupedDays"), value.get("cupedDays"), DEFAULT_CUPED_DAYS
    )
    goal = value.get("goal", "increase")
    if goal not in GOALS:
        problems.add((*at, "goal"), "invalid_goal", "goal must be increase or decrease")
    metric["goal"] = goal
    guardrail = value.get("guardrail", False)
    if not isinstance(guardrail, bool):
        problems.add((*at, "guardrail"), "invalid_type", "must be true or false")
    metric["guardrail"] = guardrail is True
    return metric


def validate_metrics(
    metrics: Sequence[Mapping[str, Any]], *, pointer: str = "/metrics"
) -> list[dict[str, Any]]:
    """The metric definitions in canonical form (defaults filled in); raises one
    ``InvalidDefinition`` listing every problem with its JSON pointer under ``pointer``.

    The canonical form validates to itself.
    """
    problems = _Problems(pointer)
    if not isinstance(metrics, Sequence) or isinstance(metrics, str | bytes):
        problems.add((), "invalid_type", "metrics are a list of metric definitions")
        problems.raise_if_any()
    if len(metrics) > MAX_METRICS:
        problems.add((), "too_many", f"at most {MAX_METRICS} metrics")
        problems.raise_if_any()
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, value in enumerate(metrics):
        metric = _metric(problems, (index,), value)
        if metric is None:
            continue
        if isinstance(metric["key"], str) and metric["key"] in seen:
            problems.add(
                (index, "key"), "duplicate_key", f"the key {metric['key']!r} is used twice"
            )
        seen.add(str(metric["key"]))
        result.append(metric)
    problems.raise_if_any()
    return result


# -- SQL -------------------------------------------------------------------------------------


class _Params:
    """Named parameters of one statement: values are bound, never formatted into SQL."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"${name}"


def _decisions_sql(key: str, until: str, source: str = "fact_events") -> str:
    """A subquery of the experiment's entries in decisions' exposure events: one row per
    (event, placement naming the experiment), with the entry as JSON in ``experiment``."""
    return f"""(
        SELECT message_id, user_key, timestamp, experiment
        FROM (
            SELECT message_id, user_key, timestamp,
                json_extract(placement, '$.experiment') AS experiment
            FROM (
                SELECT message_id, user_key, timestamp,
                    unnest(json_extract(properties, '$.placements[*]')) AS placement
                FROM {source}
                WHERE type = 'track' AND event = '{EXPOSURE_EVENT}' AND timestamp <= {until}
                    AND json_type(properties, '$.placements') = 'ARRAY'
            )
        )
        WHERE json_extract_string(experiment, '$.key') = {key}
    )"""


def _in_phase_sql(params: _Params, scope: ExperimentScope, phase_column: str) -> str:
    """Whether an exposure belongs to the scope's phase: it names that phase, or names none
    and happened while the phase ran."""
    phase = params.bind(float(scope.phase))
    window = f"timestamp >= {params.bind(scope.phase_start)}"
    if scope.phase_end is not None:
        window += f" AND timestamp < {params.bind(scope.phase_end)}"
    return (
        f"CASE WHEN {phase_column} IS NULL THEN {window} "
        f"ELSE coalesce(TRY_CAST({phase_column} AS DOUBLE) = {phase}, false) END"
    )


def _exposure_sql(
    params: _Params,
    scope: ExperimentScope,
    cutoffs: Sequence[datetime],
    source: str = "fact_events",
) -> str:
    """The CTEs ``exposures``, ``units``, ``cutoffs`` and ``unit_cutoffs`` (one row per unit
    exposed by each cutoff, ``single`` when it had seen one variant only by then), reading
    the events of ``source``."""
    key = params.bind(scope.key)
    until = params.bind(max(cutoffs))
    variants = params.bind(list(scope.variants))
    in_phase = _in_phase_sql(params, scope, "phase")
    return f"""
exposure_events AS (
    SELECT user_key, timestamp,
        json_extract_string(experiment, '$.variant') AS variant,
        json_extract_string(experiment, '$.phase') AS phase
    FROM {_decisions_sql(key, until, source)}
    UNION ALL
    SELECT user_key, timestamp,
        coalesce(json_extract_string(properties, '$.variation_id'),
                 json_extract_string(properties, '$.variant')),
        json_extract_string(properties, '$.phase')
    FROM {source}
    WHERE type = 'track' AND event = '{VIEWED_EVENT}' AND timestamp <= {until}
        AND coalesce(json_extract_string(properties, '$.experiment_id'),
                     json_extract_string(properties, '$.experimentKey')) = {key}
),
exposures AS (
    SELECT user_key, timestamp, variant
    FROM exposure_events
    WHERE user_key IS NOT NULL AND list_contains({variants}, variant) AND {in_phase}
),
first_exposures AS (
    SELECT user_key, arg_min(variant, timestamp) AS variant, min(timestamp) AS exposed_at
    FROM exposures
    GROUP BY user_key
),
units AS (
    -- when the unit first saw a second variant: from then on it belongs to no variant
    SELECT f.user_key, f.variant, f.exposed_at,
        min(e.timestamp) FILTER (WHERE e.variant <> f.variant) AS conflict_at
    FROM first_exposures AS f JOIN exposures AS e USING (user_key)
    GROUP BY f.user_key, f.variant, f.exposed_at
),
cutoffs AS (
    SELECT unnest(CAST({params.bind(list(cutoffs))} AS TIMESTAMPTZ[])) AS cutoff
),
unit_cutoffs AS MATERIALIZED (
    SELECT c.cutoff, u.user_key, u.variant, u.exposed_at,
        u.conflict_at IS NULL OR u.conflict_at > c.cutoff AS single
    FROM units AS u JOIN cutoffs AS c ON u.exposed_at <= c.cutoff
)"""


def _kind_sql(kind: str, json_type: str, text: str) -> tuple[str, str]:
    """(is the value of this kind, the value as that kind) in SQL."""
    if kind == "string":
        return f"{json_type} = 'VARCHAR'", text
    if kind == "number":
        return f"{json_type} IN {_NUMBER_TYPES}", f"TRY_CAST({text} AS DOUBLE)"
    return f"{json_type} = 'BOOLEAN'", f"({text} = 'true')"


def _operand(kind: str, value: Any) -> Any:
    return float(value) if kind == "number" else value


def _condition_sql(params: _Params, condition: Mapping[str, Any]) -> str:
    """One property condition, with the segments' operator semantics (``operators.py``)."""
    pointer = params.bind(json_pointer((condition["property"],)))
    json_type = f"json_type(properties, {pointer})"
    text = f"json_extract_string(properties, {pointer})"
    op = condition["op"]
    if op == "exists":
        return f"coalesce({json_type} <> 'NULL', false)"
    value = condition["value"]
    if op == "contains":
        kind = kind_of(value)
        is_kind, typed = _kind_sql(kind, "json_type(x)", "json_extract_string(x, '$')")
        needle = params.bind(_operand(kind, value))
        listed = (
            # CASE, not AND: the cast may only see arrays
            f"(CASE WHEN {json_type} = 'ARRAY' THEN list_bool_or(list_transform("
            f"CAST(json_extract(properties, {pointer}) AS JSON[]), "
            f"lambda x: coalesce({is_kind} AND {typed} = {needle}, false))) END)"
        )
        if kind == "string":
            inside = f"({json_type} = 'VARCHAR' AND contains({text}, {needle}))"
            return f"coalesce({inside} OR {listed}, false)"
        return f"coalesce({listed}, false)"
    first = value[0] if op in ("in", "not_in", "between") else value
    kind = kind_of(first)
    is_kind, typed = _kind_sql(kind, json_type, text)
    if op in ("in", "not_in"):
        listed_values = params.bind([_operand(kind, v) for v in value])
        test = f"list_contains({listed_values}, {typed})"
        return f"coalesce({is_kind} AND {'NOT ' if op == 'not_in' else ''}{test}, false)"
    if op == "between":
        low, high = (params.bind(_operand(kind, v)) for v in value)
        return f"coalesce({is_kind} AND {typed} BETWEEN {low} AND {high}, false)"
    symbol = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[op]
    return f"coalesce({is_kind} AND {typed} {symbol} {params.bind(_operand(kind, value))}, false)"


def _selection_sql(params: _Params, part: Mapping[str, Any]) -> str:
    """Whether an event is one of a metric part's events (its name or page, its filters)."""
    event = part["event"]
    if isinstance(event, Mapping):
        selection = "type = 'page'"
        if event["page"] is not True:
            selection += f" AND name = {params.bind(event['page'])}"
    else:
        selection = f"type = 'track' AND event = {params.bind(event)}"
    for condition in part.get("where") or ():
        selection += f" AND {_condition_sql(params, condition)}"
    return selection


def _events_sql(
    params: _Params, part: Mapping[str, Any], index: int, selection: str, source: str
) -> str:
    """The events of one part of a metric: (user_key, timestamp, part, value)."""
    prop = part.get("property")
    if prop is None:
        value = "CAST(NULL AS DOUBLE)"
    else:
        pointer = params.bind(json_pointer((prop,)))
        value = (
            f"CASE WHEN json_type(properties, {pointer}) IN {_NUMERIC_TYPES} "
            f"THEN TRY_CAST(json_extract_string(properties, {pointer}) AS DOUBLE) END"
        )
    bound = params.bind(MAX_VALUE)
    return f"""
    SELECT user_key, timestamp, {index} AS part,
        CASE WHEN isfinite(raw) AND abs(raw) <= {bound} THEN raw END AS value
    FROM (SELECT user_key, timestamp, {value} AS raw FROM {source} WHERE {selection})"""


def _aggregate(kind: str, part: int, when: str) -> str:
    """A unit's value over its events of ``part`` that satisfy ``when``."""
    where = f"FILTER (WHERE m.part = {part} AND {when})"
    if kind == "conversion":
        return f"CAST(count(m.timestamp) {where} > 0 AS DOUBLE)"
    if kind == "count":
        return f"CAST(count(m.timestamp) {where} AS DOUBLE)"
    if kind == "count_values":
        return f"CAST(count(m.value) {where} AS DOUBLE)"
    return f"coalesce(sum(m.value) {where}, 0.0)"


def _capped(params: _Params, column: str, cap: Mapping[str, float] | None) -> tuple[str, str]:
    """(the threshold's aggregate over all units, or '', the capped column expression)."""
    if cap is None:
        return "", f"v.{column}"
    if "value" in cap:
        return "", f"least(v.{column}, {params.bind(cap['value'])})"
    # GrowthBook-style percentile capping over the nonzero per-unit values of all variants
    share = params.bind(cap["percentile"])
    threshold = f"quantile_cont(v.{column}, {share}) FILTER (WHERE v.{column} <> 0) AS {column}_cap"
    return threshold, f"least(v.{column}, t.{column}_cap)"


def _parts(metric: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The event sets a metric reads: a ratio's numerator and denominator, else itself."""
    if metric["type"] == "ratio":
        return [metric["numerator"], metric["denominator"]]
    return [metric]


def _metric_ctes(
    params: _Params, metric: Mapping[str, Any], index: int, selections: Sequence[str]
) -> str:
    """The CTEs of one metric, ending in ``stats_<index>``: per cutoff and variant its
    sufficient statistics."""
    kind = metric["type"]
    parts = _parts(metric)
    post = "m.timestamp > uc.exposed_at"
    pre = "m.timestamp < uc.exposed_at"
    if kind == "ratio":
        main = _aggregate("sum" if parts[0]["property"] else "count", 0, post)
        denominator = _aggregate("sum" if parts[1]["property"] else "count", 1, post)
        caps = [parts[0]["cap"], parts[1]["cap"]]
    elif kind == "mean":
        main = _aggregate("sum", 0, post)
        denominator = _aggregate("count_values", 0, post)
        caps = [metric["cap"], None]
    else:
        main = _aggregate(kind, 0, post)
        denominator = "0.0"
        caps = [metric.get("cap"), None]
    covariate = _aggregate(kind, 0, pre) if metric["cuped"] else "0.0"
    events = " UNION ALL ".join(
        _events_sql(params, part, i, selection, "source")
        for i, (part, selection) in enumerate(zip(parts, selections, strict=True))
    )
    window = params.bind(round(metric["windowDays"] * 86_400_000_000))
    if metric["cuped"]:
        lookback = params.bind(round(metric["cupedDays"] * 86_400_000_000))
        since = f"m.timestamp >= uc.exposed_at - to_microseconds(CAST({lookback} AS BIGINT))"
    else:
        since = post
    main_cap, main_capped = _capped(params, "main", caps[0])
    den_cap, den_capped = _capped(params, "den", caps[1])
    # the covariate is capped at the metric's own threshold (one rule before and after)
    cov_capped = main_capped.replace("v.main", "v.cov")
    thresholds = ", ".join(t for t in (main_cap, den_cap) if t) or "NULL AS no_cap"
    return f"""
events_{index} AS ({events}
),
values_{index} AS (
    SELECT uc.cutoff, uc.user_key, uc.variant,
        {main} AS main, {denominator} AS den, {covariate} AS cov
    FROM unit_cutoffs AS uc
    LEFT JOIN events_{index} AS m ON m.user_key = uc.user_key AND {since}
        AND m.timestamp <= least(
            uc.exposed_at + to_microseconds(CAST({window} AS BIGINT)), uc.cutoff)
    WHERE uc.single
    GROUP BY uc.cutoff, uc.user_key, uc.variant
),
thresholds_{index} AS (
    SELECT v.cutoff, {thresholds} FROM values_{index} AS v GROUP BY v.cutoff
),
capped_{index} AS (
    SELECT v.cutoff, v.variant, {main_capped} AS main, {den_capped} AS den, {cov_capped} AS cov
    FROM values_{index} AS v JOIN thresholds_{index} AS t USING (cutoff)
),
stats_{index} AS (
    SELECT {index} AS metric, cutoff, variant, count(*) AS n,
        sum(main) AS sum, sum(main * main) AS sum_squares,
        sum(den) AS denominator_sum, sum(den * den) AS denominator_sum_squares,
        sum(main * den) AS main_denominator_sum_product,
        sum(cov) AS covariate_sum, sum(cov * cov) AS covariate_sum_squares,
        sum(main * cov) AS main_covariate_sum_product
    FROM capped_{index}
    GROUP BY cutoff, variant
)"""


def _statement(
    scope: ExperimentScope,
    metrics: Sequence[Mapping[str, Any]],
    cutoffs: Sequence[datetime],
) -> tuple[str, dict[str, Any]]:
    """One statement for the exposures and every metric at every cutoff.

    ``fact_events`` (which deduplicates the whole lake) is read once, into ``source``: the
    exposure events and every metric's events, up to the last cutoff. Rows with ``metric``
    -1 are the exposure summary per cutoff and variant; the others a metric's statistics.
    """
    params = _Params()
    until = params.bind(max(cutoffs))
    selections = [[_selection_sql(params, part) for part in _parts(m)] for m in metrics]
    wanted = " OR ".join(
        [f"(type = 'track' AND event IN ('{EXPOSURE_EVENT}', '{VIEWED_EVENT}'))"]
        + [f"({selection})" for listed in selections for selection in listed]
    )
    ctes = [
        f"""source AS MATERIALIZED (
    SELECT user_key, timestamp, type, event, name, message_id, properties
    FROM fact_events
    WHERE timestamp <= {until} AND user_key IS NOT NULL AND ({wanted})
)""",
        _exposure_sql(params, scope, cutoffs, "source"),
        """
summary AS (
    SELECT -1 AS metric, cutoff, variant, count(*) FILTER (WHERE single) AS n,
        count(*) FILTER (WHERE NOT single) AS multiple, min(exposed_at) AS first_exposure
    FROM unit_cutoffs
    GROUP BY cutoff, variant
),
latest AS (
    SELECT c.cutoff, max(e.timestamp) AS last_exposure
    FROM cutoffs AS c JOIN exposures AS e ON e.timestamp <= c.cutoff
    GROUP BY c.cutoff
)""",
    ]
    ctes += [_metric_ctes(params, m, i, selections[i]) for i, m in enumerate(metrics)]
    selects = ["SELECT * FROM summary JOIN latest USING (cutoff)"]
    selects += [f"SELECT * FROM stats_{i}" for i in range(len(metrics))]
    union = "\nUNION ALL BY NAME\n".join(selects)
    return f"WITH {', '.join(ctes)}\n{union}", params.values


def _run(warehouse: Warehouse, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    connection = warehouse.connection
    try:
        rows = connection.execute(sql, dict(params)).fetchall()
    except duckdb.Error as exc:
        raise ValidationError(f"the experiment query failed: {exc}", code="query_failed") from exc
    names = [column[0] for column in connection.description or ()]
    return [dict(zip(names, row, strict=True)) for row in rows]


# -- documents -------------------------------------------------------------------------------


def _statistics(metric: Mapping[str, Any], row: Mapping[str, Any] | None) -> dict[str, Any]:
    def number(field: str) -> float:
        value = None if row is None else row.get(field)
        return float(value) if value is not None else 0.0

    stats: dict[str, Any] = {
        "n": int(row["n"]) if row is not None else 0,
        "sum": number("sum"),
        "sum_squares": number("sum_squares"),
    }
    if metric["type"] in ("mean", "ratio"):
        for field in ("denominator_sum", "denominator_sum_squares", "main_denominator_sum_product"):
            stats[field] = number(field)
    elif metric["cuped"]:
        for field in ("covariate_sum", "covariate_sum_squares", "main_covariate_sum_product"):
            stats[field] = number(field)
    return stats


def _documents(
    warehouse: Warehouse,
    scope: ExperimentScope,
    metrics: Sequence[Mapping[str, Any]],
    cutoffs: Sequence[datetime],
) -> list[dict[str, Any]]:
    """One analysis document per cutoff (every statement covers every cutoff at once)."""
    definitions = validate_metrics(metrics)
    # (metric, cutoff) -> rows by variant; metric -1 is the exposure summary
    found: dict[tuple[int, datetime], dict[str, dict[str, Any]]] = {}
    for row in _run(warehouse, *_statement(scope, definitions, cutoffs)):
        found.setdefault((row["metric"], row["cutoff"]), {})[row["variant"]] = row
    documents: list[dict[str, Any]] = []
    for cutoff in cutoffs:
        rows = list(found.get((-1, cutoff), {}).values())
        counts = {row["variant"]: int(row["n"]) for row in rows}
        firsts = [row["first_exposure"] for row in rows]
        lasts = [row["last_exposure"] for row in rows]
        document: dict[str, Any] = {
            "units": {variant: counts.get(variant, 0) for variant in scope.variants},
            "multipleExposures": sum(int(row["multiple"]) for row in rows),
            "firstExposure": format_timestamp(min(firsts)) if firsts else None,
            "lastExposure": format_timestamp(max(lasts)) if lasts else None,
            "metrics": [],
        }
        for index, metric in enumerate(definitions):
            stats = found.get((index, cutoff), {})
            document["metrics"].append(
                {
                    "key": metric["key"],
                    "type": "ratio" if metric["type"] in ("mean", "ratio") else "mean",
                    "goal": metric["goal"],
                    "guardrail": metric["guardrail"],
                    "cuped": metric["cuped"],
                    "variants": {v: _statistics(metric, stats.get(v)) for v in scope.variants},
                }
            )
        documents.append(document)
    return documents


def metric_statistics(
    warehouse: Warehouse,
    scope: ExperimentScope,
    metrics: Sequence[Mapping[str, Any]],
    *,
    as_of: datetime,
) -> dict[str, Any]:
    """The analysis document of ``scope`` as of ``as_of``: units per variant, the units
    excluded for multiple exposures, the first and last exposure, and per metric the
    per-variant sufficient statistics (conversion, count, sum -> ``mean``; mean, ratio ->
    ``ratio``). Variants without units have ``n`` 0."""
    return _documents(warehouse, scope, metrics, [_utc(as_of)])[0]


def _exposure_span(
    warehouse: Warehouse, scope: ExperimentScope, as_of: datetime
) -> datetime | None:
    params = _Params()
    exposures = _exposure_sql(params, scope, [as_of])
    sql = f"WITH {exposures} SELECT min(timestamp) AS first FROM exposures"
    rows = _run(warehouse, sql, params.values)
    first: datetime | None = rows[0]["first"] if rows else None
    return first


def daily_statistics(
    warehouse: Warehouse,
    scope: ExperimentScope,
    metrics: Sequence[Mapping[str, Any]],
    *,
    as_of: datetime,
    days: int | None = None,
) -> list[tuple[date, dict[str, Any]]]:
    """The analysis document as it stood at the end of each UTC day from the first exposure
    to ``as_of`` (the last day ends at ``as_of``): what a daily peek would have seen, for the
    uplift-over-time chart. ``days`` keeps only the last ``days`` days. No exposure: ``[]``.

    Every day is computed in the same statement as the rest: each unit is joined to the day
    ends after its first exposure (plus one small query for the first exposure's day).
    """
    as_of = _utc(as_of)
    if days is not None and days < 1:
        raise ValidationError("days must be at least 1")
    validate_metrics(metrics)
    first = _exposure_span(warehouse, scope, as_of)
    if first is None:
        return []
    day = first.astimezone(UTC).date()
    ends: list[tuple[date, datetime]] = []
    while day <= as_of.date():
        end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        # timestamps are whole microseconds: the day's last one is its end
        ends.append((day, min(end - _ONE_MICROSECOND, as_of)))
        day += timedelta(days=1)
    if days is not None:
        ends = ends[-days:]
    documents = _documents(warehouse, scope, metrics, [cutoff for _, cutoff in ends])
    return [(day, document) for (day, _), document in zip(ends, documents, strict=True)]


def decision_log(
    warehouse: Warehouse,
    scope: ExperimentScope,
    reward: Mapping[str, Any],
    *,
    window_hours: float,
    as_of: datetime,
    closed_only: bool = False,
) -> list[dict[str, Any]]:
    """Every logged decision of ``scope`` up to ``as_of`` with its reward, for bandits and
    off-policy evaluation: ``{"decision", "unit", "at", "context", "action", "propensity",
    "reward"}``, oldest first.

    A decision is one ``Content Exposed`` event naming the experiment (in this phase, for one
    of its variants, with a ``probability`` in (0, 1]); ``context`` is the bandit context it
    was drawn in (``"*"`` when none). The reward is the metric ``reward`` (a conversion,
    count or sum) over the unit's events in ``(decision, decision + window_hours]``, capped
    as the metric says (a percentile over every decision's nonzero reward); every decision
    whose window holds an event earns it. A window still open at ``as_of`` counts what
    happened so far; ``closed_only`` keeps only decisions whose window has closed.
    """
    metric = validate_metrics([reward], pointer="/reward")[0]
    if metric["type"] not in _CUPED_TYPES:
        raise ValidationError(
            "a reward is a conversion, count or sum metric", code="invalid_metric"
        )
    if not (_is_number(window_hours) and 0 < window_hours <= MAX_DAYS * 24):
        raise ValidationError(f"window_hours must be in (0, {MAX_DAYS * 24}]")
    as_of = _utc(as_of)
    window = timedelta(hours=window_hours)
    params = _Params()
    key = params.bind(scope.key)
    until = params.bind(as_of)
    variants = params.bind(list(scope.variants))
    in_phase = _in_phase_sql(params, scope, "phase")
    latest = params.bind(as_of - window if closed_only else as_of)
    span = params.bind(round(window / _ONE_MICROSECOND))
    selection = f"{_selection_sql(params, metric)} AND timestamp <= {until}"
    events = _events_sql(params, metric, 0, f"{selection} AND user_key IS NOT NULL", "fact_events")
    threshold, capped = _capped(params, "main", metric.get("cap"))
    # one row: the percentile over every decision's reward, or nothing to cap at
    thresholds = f"SELECT {threshold} FROM rewards AS v" if threshold else "SELECT NULL AS no_cap"
    sql = f"""
WITH decisions AS (
    SELECT message_id AS decision, user_key, timestamp,
        json_extract_string(experiment, '$.variant') AS variant,
        json_extract_string(experiment, '$.phase') AS phase,
        TRY_CAST(json_extract_string(experiment, '$.probability') AS DOUBLE) AS propensity,
        coalesce(json_extract_string(experiment, '$.context'), '*') AS context
    FROM {_decisions_sql(key, until)}
    WHERE user_key IS NOT NULL AND timestamp <= {latest}
    -- a decision naming the experiment in two placements is one decision
    QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY variant) = 1
),
kept AS (
    SELECT * FROM decisions
    WHERE list_contains({variants}, variant) AND propensity > 0 AND propensity <= 1
        AND {in_phase}
),
metric_events AS ({events}
),
rewards AS (
    SELECT d.decision, d.user_key, d.timestamp, d.context, d.variant, d.propensity,
        {_aggregate(metric["type"], 0, "m.timestamp > d.timestamp")} AS main
    FROM kept AS d
    LEFT JOIN metric_events AS m ON m.user_key = d.user_key AND m.timestamp > d.timestamp
        AND m.timestamp <= least(d.timestamp + to_microseconds(CAST({span} AS BIGINT)), {until})
    GROUP BY d.decision, d.user_key, d.timestamp, d.context, d.variant, d.propensity
),
thresholds AS ({thresholds}
)
SELECT v.decision, v.user_key AS unit, v.timestamp AS at, v.context, v.variant AS action,
    v.propensity, {capped} AS reward
FROM rewards AS v, thresholds AS t
ORDER BY v.timestamp, v.decision
"""
    rows = _run(warehouse, sql, params.values)
    for row in rows:
        row["at"] = _utc(row["at"])
    return rows
