"""An experiment as saved: its document, checked with every problem's JSON pointer, and the
compiled form the decision engine runs (docs/experiments.md).

An experiment varies what one or more placements show. Each variant says, per placement,
what changes: ``items`` (show these published items, in order), ``strategy`` (rank with
another strategy and parameters), ``fields`` (override fields of the items shown, for copy
and colour tests), or nothing (the control: the placement as configured). A multivariate
test lists ``factors`` instead, each with levels; its variants are the full factorial, each
combination merging its levels' changes. A bandit lists arms as variants and lets Thompson
sampling move traffic to the best (``bandit``).

Fields that decide who sees what (type, seed, variants, factors, weights, placements,
namespace) never change while an experiment runs: such a change is refused unless it opens
a new phase, explicitly. Coverage and targeting may change in place: they add or remove
units but never move one between variants (``personify.experiments.assignment``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from personify.content.validation import (
    Problems,
    check_fields,
    check_id,
    check_targeting,
    is_number,
)
from personify.errors import InvalidDefinition
from personify.experiments.assignment import Allocation
from personify.experiments.metrics import validate_metrics
from personify.segments.predicates import Predicate, compile_condition

__all__ = [
    "ALLOCATION_FIELDS",
    "TYPES",
    "Override",
    "RunningExperiment",
    "check_experiment",
    "compile_experiment",
    "variant_keys",
]

TYPES: Final = ("ab", "multivariate", "bandit")
# no ":" in keys: it separates the key and the unit in a sticky store (experiments.assignment)
_KEY: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_VARIANT_KEY: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_METHODS: Final = ("frequentist", "bayesian", "sequential")
_CORRECTIONS: Final = ("holm", "bh", "none")
_MAX_VARIANTS: Final = 32
_MAX_FACTORS: Final = 4
_MAX_TEXT: Final = 4_000
_STRATEGIES: Final = ("priority", "affinity", "recommendations", "prediction", "random")
# what a running experiment may not change without a new phase: each one moves users
ALLOCATION_FIELDS: Final = ("type", "seed", "variants", "factors", "placements", "namespace")
_FIELDS: Final = (
    "key",
    "name",
    "hypothesis",
    "type",
    "placements",
    "variants",
    "factors",
    "coverage",
    "targeting",
    "namespace",
    "seed",
    "metrics",
    "bandit",
    "analysis",
)

Location = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Override:
    """What a variant changes in one placement (all empty: the control's placement)."""

    items: tuple[str, ...] = ()
    strategy: str | None = None
    params: Mapping[str, Any] | None = None
    fields: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RunningExperiment:
    """A running experiment as the decision engine applies it."""

    key: str
    type: str
    phase: int
    placements: tuple[str, ...]
    allocation: Allocation
    overrides: Mapping[str, Mapping[str, Override]]
    segments: tuple[str, ...]
    condition: Predicate | None
    # bandits: context -> arm -> share, and the segments that are contexts
    bandit_allocations: Mapping[str, Mapping[str, float]]
    bandit_contexts: tuple[str, ...]


def _text(problems: Problems, at: Location, value: Any, limit: int = _MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > limit:
        problems.add(at, "invalid_type", f"text of at most {limit} characters")
        return None
    return value


def _override(
    problems: Problems, at: Location, value: Any, placements: Sequence[str]
) -> dict[str, Any]:
    """One variant's (or level's) changes: placement id -> {items, strategy, fields}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", "an object: placement id -> {items, strategy, fields}")
        return {}
    checked: dict[str, Any] = {}
    for placement, change in value.items():
        where = (*at, placement)
        if placement not in placements:
            problems.add(where, "unknown_placement", "not one of the experiment's placements")
            continue
        if not isinstance(change, dict):
            problems.add(where, "invalid_type", "an object with items, strategy and/or fields")
            continue
        check_fields(problems, where, change, ("items", "strategy", "fields"))
        entry: dict[str, Any] = {}
        items = change.get("items")
        if items is not None:
            if not isinstance(items, list) or not items or len(items) > 50:
                problems.add((*where, "items"), "invalid_type", "a list of 1 to 50 item ids")
            else:
                for index, item in enumerate(items):
                    if check_id(item) is None:
                        problems.add((*where, "items", index), "invalid_id", "an item id")
                entry["items"] = list(items)
        strategy = change.get("strategy")
        if strategy is not None:
            name = strategy.get("name") if isinstance(strategy, dict) else None
            params = strategy.get("params", {}) if isinstance(strategy, dict) else None
            if name not in _STRATEGIES or not isinstance(params, dict):
                problems.add(
                    (*where, "strategy"),
                    "invalid_strategy",
                    f"{{'name': one of {', '.join(_STRATEGIES)}, 'params': {{...}}}}",
                )
            else:
                entry["strategy"] = {"name": name, "params": params}
        fields = change.get("fields")
        if fields is not None:
            if not isinstance(fields, dict):
                problems.add((*where, "fields"), "invalid_type", "an object of item fields")
            else:
                entry["fields"] = fields
        if "items" in entry and "strategy" in entry:
            problems.add(where, "conflict", "give items or a strategy, not both")
        checked[placement] = entry
    return checked


def _weight(problems: Problems, at: Location, value: Any) -> float:
    if value is None:
        return 1.0
    if not is_number(value) or not 0 <= value <= 1_000_000:
        problems.add(at, "invalid_weight", "a number from 0 to 1,000,000")
        return 0.0
    return float(value)


def _variants(problems: Problems, value: Any, placements: Sequence[str]) -> list[dict[str, Any]]:
    at: Location = ("variants",)
    if not isinstance(value, list) or not 2 <= len(value) <= _MAX_VARIANTS:
        problems.add(at, "invalid_type", f"a list of 2 to {_MAX_VARIANTS} variants")
        return []
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, variant in enumerate(value):
        where = (*at, index)
        if not isinstance(variant, dict):
            problems.add(where, "invalid_type", "a variant: {key, weight, placements}")
            continue
        check_fields(problems, where, variant, ("key", "name", "weight", "placements"))
        key = variant.get("key")
        if not isinstance(key, str) or not _VARIANT_KEY.fullmatch(key):
            problems.add((*where, "key"), "invalid_key", "letters, digits, '_', '.', '-'")
            key = None
        elif key in seen:
            problems.add((*where, "key"), "duplicate", f"variant {key!r} is listed twice")
        seen.add(key or "")
        checked.append(
            {
                "key": key,
                "name": _text(problems, (*where, "name"), variant.get("name"), 200),
                "weight": _weight(problems, (*where, "weight"), variant.get("weight")),
                "placements": _override(
                    problems, (*where, "placements"), variant.get("placements"), placements
                ),
            }
        )
    if checked and not any(v["weight"] > 0 for v in checked):
        problems.add(at, "invalid_weight", "at least one variant needs a weight above 0")
    return checked


def _merge_changes(
    problems: Problems, at: Location, levels: Sequence[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """One combination's changes: each factor's level merged, conflicts reported."""
    merged: dict[str, Any] = {}
    for factor, changes in levels:
        for placement, change in changes.items():
            into = merged.setdefault(placement, {})
            for kind in ("items", "strategy"):
                if kind in change:
                    if kind in into or ("items" if kind == "strategy" else "strategy") in into:
                        problems.add(
                            (*at, factor),
                            "factor_conflict",
                            f"two factors change the {kind} of placement {placement!r}",
                        )
                    into[kind] = change[kind]
            for name, field_value in (change.get("fields") or {}).items():
                fields = into.setdefault("fields", {})
                if name in fields:
                    problems.add(
                        (*at, factor),
                        "factor_conflict",
                        f"two factors set field {name!r} of placement {placement!r}",
                    )
                fields[name] = field_value
    return merged


def _factors(
    problems: Problems, value: Any, placements: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A multivariate test's factors, and its variants: the full factorial."""
    at: Location = ("factors",)
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_FACTORS:
        problems.add(at, "invalid_type", f"a list of 1 to {_MAX_FACTORS} factors")
        return [], []
    factors: list[dict[str, Any]] = []
    for index, factor in enumerate(value):
        where = (*at, index)
        if not isinstance(factor, dict):
            problems.add(where, "invalid_type", "a factor: {key, levels}")
            continue
        check_fields(problems, where, factor, ("key", "levels"))
        key = factor.get("key")
        if not isinstance(key, str) or not _VARIANT_KEY.fullmatch(key):
            problems.add((*where, "key"), "invalid_key", "letters, digits, '_', '.', '-'")
            continue
        levels = factor.get("levels")
        if not isinstance(levels, list) or not 2 <= len(levels) <= 8:
            problems.add((*where, "levels"), "invalid_type", "a list of 2 to 8 levels")
            continue
        checked_levels = []
        for number, level in enumerate(levels):
            there = (*where, "levels", number)
            if not isinstance(level, dict):
                problems.add(there, "invalid_type", "a level: {key, weight, placements}")
                continue
            check_fields(problems, there, level, ("key", "weight", "placements"))
            level_key = level.get("key")
            if not isinstance(level_key, str) or not _VARIANT_KEY.fullmatch(level_key):
                problems.add((*there, "key"), "invalid_key", "letters, digits, '_', '.', '-'")
                continue
            checked_levels.append(
                {
                    "key": level_key,
                    "weight": _weight(problems, (*there, "weight"), level.get("weight")),
                    "placements": _override(
                        problems, (*there, "placements"), level.get("placements"), placements
                    ),
                }
            )
        factors.append({"key": key, "levels": checked_levels})
    if len({f["key"] for f in factors}) != len(factors):
        problems.add(at, "duplicate", "factor keys must differ")
    combinations = 1
    for factor in factors:
        combinations *= max(1, len(factor["levels"]))
    if combinations > _MAX_VARIANTS:
        problems.add(
            at, "too_many", f"the factorial has {combinations} cells (at most {_MAX_VARIANTS})"
        )
        return factors, []
    variants = []
    for combination in itertools.product(*(f["levels"] for f in factors)):
        weight = 1.0
        for level in combination:
            weight *= level["weight"]
        variants.append(
            {
                "key": ",".join(
                    f"{factor['key']}={level['key']}"
                    for factor, level in zip(factors, combination, strict=True)
                ),
                "name": None,
                "weight": weight,
                "placements": _merge_changes(
                    problems,
                    at,
                    [
                        (factor["key"], level["placements"])
                        for factor, level in zip(factors, combination, strict=True)
                    ],
                ),
            }
        )
    return factors, variants


def _namespace(problems: Problems, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    at: Location = ("namespace",)
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", "{id, start, end}: a range of the namespace [0, 1)")
        return None
    check_fields(problems, at, value, ("id", "start", "end"))
    name = value.get("id")
    start, end = value.get("start", 0.0), value.get("end", 1.0)
    if not isinstance(name, str) or not _KEY.fullmatch(name):
        problems.add((*at, "id"), "invalid_key", "a namespace id")
    if not (is_number(start) and is_number(end) and 0 <= start < end <= 1):
        problems.add(at, "invalid_range", "0 <= start < end <= 1")
        return None
    return {"id": name, "start": float(start), "end": float(end)}


def _bandit(
    problems: Problems, value: Any, kind: str, placements: Sequence[str]
) -> dict[str, Any] | None:
    at: Location = ("bandit",)
    if kind != "bandit":
        if value is not None:
            problems.add(
                at, "not_a_bandit", "only an experiment of type 'bandit' has bandit settings"
            )
        return None
    if not isinstance(value, dict):
        problems.add(at, "required", "a bandit needs {reward, minShare, contexts, ...}")
        return None
    check_fields(
        problems,
        at,
        value,
        ("reward", "rewardType", "minShare", "contexts", "windowHours", "updateMinutes"),
    )
    reward = value.get("reward")
    checked_reward: dict[str, Any] | None = None
    try:
        if not isinstance(reward, dict):
            raise InvalidDefinition(
                "a bandit needs a reward",
                details={
                    "errors": [
                        {
                            "pointer": "/bandit/reward/0",
                            "code": "required",
                            "message": "a reward metric: {key, type, event, …}",
                        }
                    ]
                },
            )
        checked_reward = validate_metrics([reward], pointer="/bandit/reward")[0]
    except InvalidDefinition as exc:
        for problem in exc.details.get("errors", []):
            problem = dict(problem)
            problem["pointer"] = str(problem.get("pointer", "")).replace(
                "/bandit/reward/0", "/bandit/reward"
            )
            problems.found.append(problem)
    if checked_reward is not None and checked_reward["type"] not in ("conversion", "count", "sum"):
        problems.add(
            (*at, "reward", "type"),
            "invalid_type",
            "a bandit's reward is a conversion, count or sum",
        )
    reward_type = value.get("rewardType") or (
        "binary"
        if checked_reward is not None and checked_reward["type"] == "conversion"
        else "continuous"
    )
    if reward_type not in ("binary", "continuous"):
        problems.add((*at, "rewardType"), "invalid_type", "'binary' or 'continuous'")
    min_share = value.get("minShare", 0.05)
    if not is_number(min_share) or not 0 <= min_share < 0.5:
        problems.add((*at, "minShare"), "invalid_range", "a share from 0 to below 0.5")
        min_share = 0.05
    contexts = value.get("contexts", [])
    if (
        not isinstance(contexts, list)
        or len(contexts) > 50
        or not all(isinstance(c, str) and _KEY.fullmatch(c) for c in contexts)
    ):
        problems.add((*at, "contexts"), "invalid_type", "a list of at most 50 segment keys")
        contexts = []
    window = value.get("windowHours", 24)
    if not is_number(window) or not 0 < window <= 24 * 90:
        problems.add((*at, "windowHours"), "invalid_range", "hours from above 0 to 2,160")
        window = 24
    update = value.get("updateMinutes", 60)
    if not is_number(update) or not 1 <= update <= 24 * 60:
        problems.add((*at, "updateMinutes"), "invalid_range", "minutes from 1 to 1,440")
        update = 60
    return {
        "reward": checked_reward,
        "rewardType": reward_type,
        "minShare": float(min_share),
        "contexts": list(dict.fromkeys(contexts)),
        "windowHours": float(window),
        "updateMinutes": float(update),
    }


def _metric_lists(problems: Problems, value: Any) -> dict[str, list[dict[str, Any]]]:
    at: Location = ("metrics",)
    if value is None:
        return {"primary": [], "guardrails": []}
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", "{primary: [metric, …], guardrails: [metric, …]}")
        return {"primary": [], "guardrails": []}
    check_fields(problems, at, value, ("primary", "guardrails"))
    checked: dict[str, list[dict[str, Any]]] = {}
    for part in ("primary", "guardrails"):
        listed = value.get(part, [])
        try:
            checked[part] = validate_metrics(listed, pointer=f"/metrics/{part}")
        except InvalidDefinition as exc:
            problems.found.extend(exc.details.get("errors", []))
            checked[part] = []
    keys = [m["key"] for part in ("primary", "guardrails") for m in checked[part]]
    if len(set(keys)) != len(keys):
        problems.add(at, "duplicate", "metric keys must differ across primary and guardrails")
    return checked


def _analysis(problems: Problems, value: Any) -> dict[str, Any]:
    at: Location = ("analysis",)
    settings = {
        "method": "sequential",
        "alpha": 0.05,
        "sequentialTuning": 5000,
        "correction": "holm",
    }
    if value is None:
        return settings
    if not isinstance(value, dict):
        problems.add(at, "invalid_type", "{method, alpha, sequentialTuning, correction}")
        return settings
    check_fields(problems, at, value, tuple(settings))
    method = value.get("method", settings["method"])
    if method not in _METHODS:
        problems.add((*at, "method"), "invalid_method", f"one of {', '.join(_METHODS)}")
    alpha = value.get("alpha", settings["alpha"])
    if not is_number(alpha) or not 0 < alpha <= 0.5:
        problems.add((*at, "alpha"), "invalid_range", "from above 0 to 0.5")
    tuning = value.get("sequentialTuning", settings["sequentialTuning"])
    if not is_number(tuning) or tuning <= 0:
        problems.add((*at, "sequentialTuning"), "invalid_range", "a number above 0")
    correction = value.get("correction", settings["correction"])
    if correction not in _CORRECTIONS:
        problems.add((*at, "correction"), "invalid_method", f"one of {', '.join(_CORRECTIONS)}")
    return {"method": method, "alpha": alpha, "sequentialTuning": tuning, "correction": correction}


def check_experiment(
    body: Any, *, segments: Mapping[str, Mapping[str, Any] | None] | None = None
) -> dict[str, Any]:
    """The experiment's document in canonical form (defaults filled, a multivariate test's
    variants generated); raises one ``InvalidDefinition`` listing every problem."""
    problems = Problems()
    if not isinstance(body, dict):
        problems.add((), "invalid_type", "an experiment is a JSON object")
        problems.raise_if_any("experiment", "invalid_experiment")
        raise AssertionError  # unreachable: raise_if_any raised
    check_fields(problems, (), body, _FIELDS)
    key = body.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        problems.add(("key",), "invalid_key", "1-200 letters, digits, '_', '.', '-'")
    kind = body.get("type", "ab")
    if kind not in TYPES:
        problems.add(("type",), "invalid_type", f"one of {', '.join(TYPES)}")
    listed = body.get("placements")
    placements: list[str] = []
    if listed is None:
        # no placement: an experiment assigned in-process (Client.assign) or run elsewhere
        listed = []
    if not isinstance(listed, list) or len(listed) > 20:
        problems.add(("placements",), "invalid_type", "a list of at most 20 placement ids")
    else:
        for index, placement in enumerate(listed):
            if check_id(placement) is None:
                problems.add(("placements", index), "invalid_id", "a placement id")
            elif placement not in placements:
                placements.append(placement)
    factors: list[dict[str, Any]] = []
    if kind == "multivariate":
        if body.get("variants") is not None:
            problems.add(
                ("variants",),
                "generated",
                "a multivariate test lists factors; its variants are their factorial",
            )
        factors, variants = _factors(problems, body.get("factors"), placements)
    else:
        if body.get("factors") is not None:
            problems.add(("factors",), "not_multivariate", "only a multivariate test has factors")
        variants = _variants(problems, body.get("variants"), placements)
    coverage = body.get("coverage", 1.0)
    if not is_number(coverage) or not 0 <= coverage <= 1:
        problems.add(("coverage",), "invalid_range", "a share from 0 to 1")
        coverage = 1.0
    seed = body.get("seed", key)
    if not isinstance(seed, str) or not seed or len(seed) > 200:
        problems.add(("seed",), "invalid_type", "text of 1 to 200 characters")
    document = {
        "key": key,
        "name": _text(problems, ("name",), body.get("name"), 200),
        "hypothesis": _text(problems, ("hypothesis",), body.get("hypothesis")),
        "type": kind,
        "placements": placements,
        "variants": variants,
        "factors": factors or None,
        "coverage": float(coverage),
        "targeting": check_targeting(problems, body.get("targeting"), segments),
        "namespace": _namespace(problems, body.get("namespace")),
        "seed": seed,
        "metrics": _metric_lists(problems, body.get("metrics")),
        "bandit": _bandit(problems, body.get("bandit"), kind, placements),
        "analysis": _analysis(problems, body.get("analysis")),
    }
    problems.raise_if_any("experiment", "invalid_experiment")
    return document


def variant_keys(document: Mapping[str, Any]) -> list[str]:
    """The variants' keys in order (the first is the control)."""
    return [str(v["key"]) for v in document["variants"]]


def _compiled_override(change: Mapping[str, Any]) -> Override:
    strategy = change.get("strategy")
    return Override(
        items=tuple(change.get("items") or ()),
        strategy=strategy["name"] if strategy else None,
        params=strategy["params"] if strategy else None,
        fields=change.get("fields") or None,
    )


def compile_experiment(
    document: Mapping[str, Any],
    phase: int,
    allocations: Mapping[str, Mapping[str, float]] | None = None,
) -> RunningExperiment:
    """The running form of a checked document (and a bandit's allocations, if any)."""
    namespace = document.get("namespace")
    targeting = document.get("targeting") or {}
    condition = targeting.get("condition")
    bandit = document.get("bandit") or {}
    return RunningExperiment(
        key=document["key"],
        type=document["type"],
        phase=phase,
        placements=tuple(document["placements"]),
        allocation=Allocation(
            seed=document["seed"],
            variants=tuple((v["key"], float(v["weight"])) for v in document["variants"]),
            coverage=float(document["coverage"]),
            namespace=(namespace["id"], namespace["start"], namespace["end"])
            if namespace
            else None,
        ),
        overrides={
            v["key"]: {p: _compiled_override(c) for p, c in v["placements"].items()}
            for v in document["variants"]
        },
        segments=tuple(targeting.get("segments") or ()),
        condition=compile_condition(condition) if condition is not None else None,
        bandit_allocations=dict(allocations or {}),
        bandit_contexts=tuple(bandit.get("contexts") or ()),
    )
