"""Experiment assignment: which variant of an experiment a unit (a user, a device) sees.

Buckets. ``bucket(*parts)`` maps strings to a number in [0, 1): the 64-bit xxh3 hash of the
parts joined by the unit separator (``"\\x1f"``, UTF-8), divided by 2**64. It is the same
construction as the decision strategies' ``bucket()``: the same on every machine, every
process and every run, so any server (or an analysis job) recomputes the same assignment.

Three independent hashes per unit decide its fate in one experiment:

1. the namespace bucket ``bucket(namespace, unit)``, only when the experiment is in a
   namespace (a layer). Experiments in one namespace claim disjoint ranges
   ``[start, end)`` of it, and a unit is eligible only when its namespace bucket falls in
   the experiment's range: two experiments with disjoint ranges never share a unit. The
   namespace bucket does not depend on the experiment, only on the namespace.
2. the coverage bucket ``bucket(seed, "coverage", unit)``: the unit is in the experiment
   iff it is ``< coverage``. Growing the coverage from c to c' only adds the units whose
   bucket lies in [c, c'); nobody leaves, and because the variant comes from another hash
   nobody moves between variants.
3. the variant bucket ``bucket(seed, "variant", unit)``, mapped to the variants by their
   cumulative weights: with weights w_1..w_k and total W, variant i owns
   ``[(w_1 + … + w_{i-1}) / W, (w_1 + … + w_i) / W)``. A variant of weight 0 owns nothing.

Each experiment's seed defaults to its key, so experiments are independent of each other:
knowing a unit's variant in one tells nothing about its variant in another. An empty unit
id is assigned to nothing (it would put every unidentified caller in one variant).

Weights. With plain cumulative ranges a change of weights moves some units from one variant
to another (the boundaries move), which is why a running experiment's weights are never
changed in place. Servers that must keep what a unit already saw pass a sticky mapping to
``Assigner.assign``: its entry ``"<experiment key>:<unit>"`` holds the variant key once
given, and that variant is returned again, whatever the weights, coverage or namespace
range say now, as long as the variant still exists in the experiment.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from personify.errors import ValidationError

__all__ = [
    "Allocation",
    "Assigner",
    "Assignment",
    "assign_variant",
    "bucket",
    "sticky_key",
]

_SEPARATOR = "\x1f"
_SCALE = 1.0 / 2.0**64
_RUNNING = "running"
_digest = xxhash.xxh3_64_intdigest


def bucket(*parts: str) -> float:
    """A stable number in [0, 1) from ``parts`` (xxh3: the same everywhere, every run)."""
    return _digest(_SEPARATOR.join(parts).encode()) * _SCALE


def sticky_key(experiment: str, unit: str) -> str:
    """The sticky mapping's key for ``unit`` in ``experiment``: ``"<experiment>:<unit>"``."""
    return f"{experiment}:{unit}"


@dataclass(frozen=True, slots=True)
class Assignment:
    """A unit's variant: its key, its share of the weights and its index in the variants."""

    variant: str
    probability: float
    index: int


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Allocation:
    """How one experiment splits units: seed, weighted variants, coverage and namespace range.

    ``variants`` are ``(key, weight)`` pairs (weights >= 0, positive total; they need not sum
    to 1), ``coverage`` is the share of eligible units in the experiment, ``namespace`` is
    ``(id, start, end)`` with ``0 <= start < end <= 1``. Raises ``ValidationError``.
    """

    seed: str
    variants: tuple[tuple[str, float], ...]
    coverage: float = 1.0
    namespace: tuple[str, float, float] | None = None
    # precomputed in __post_init__ so that assign_variant only hashes and bisects
    _namespace_prefix: bytes | None = field(init=False, repr=False, compare=False)
    _namespace_range: tuple[float, float] = field(init=False, repr=False, compare=False)
    _coverage_prefix: bytes = field(init=False, repr=False, compare=False)
    _variant_prefix: bytes = field(init=False, repr=False, compare=False)
    _bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _assignments: tuple[Assignment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, str) or not self.seed:
            raise ValidationError("the seed must be a non-empty string")
        if not self.variants:
            raise ValidationError("an experiment needs at least one variant")
        keys = [key for key, _ in self.variants]
        for key in keys:
            if not isinstance(key, str) or not key:
                raise ValidationError(f"variant key {key!r} must be a non-empty string")
        if len(set(keys)) != len(keys):
            raise ValidationError(f"variant keys must be unique, got {keys}")
        weights = [weight for _, weight in self.variants]
        for key, weight in self.variants:
            if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
                raise ValidationError(
                    f"variant {key!r}: the weight must be a finite number >= 0, got {weight!r}"
                )
        total = sum(weights)
        if not 0 < total < math.inf:
            raise ValidationError("the variants' weights must have a positive, finite total")
        coverage = self.coverage
        if not _is_number(coverage) or not 0.0 <= coverage <= 1.0:
            raise ValidationError(f"the coverage must be in [0, 1], got {coverage!r}")
        if self.namespace is not None:
            self._check_namespace(self.namespace)

        # cumulative upper bounds of the variants' ranges; from the last variant with a
        # positive weight on they are exactly 1.0, so rounding never sends a bucket past
        # the end nor into a trailing zero-weight variant
        last = max(i for i, weight in enumerate(weights) if weight > 0)
        bounds: list[float] = []
        running = 0.0
        for i, weight in enumerate(weights):
            running += weight
            bounds.append(1.0 if i >= last else min(running / total, 1.0))
        setattr_ = object.__setattr__
        setattr_(self, "_bounds", tuple(bounds))
        setattr_(
            self,
            "_assignments",
            tuple(
                Assignment(key, weight / total, i) for i, (key, weight) in enumerate(self.variants)
            ),
        )
        setattr_(self, "_coverage_prefix", f"{self.seed}{_SEPARATOR}coverage{_SEPARATOR}".encode())
        setattr_(self, "_variant_prefix", f"{self.seed}{_SEPARATOR}variant{_SEPARATOR}".encode())
        setattr_(
            self,
            "_namespace_prefix",
            None if self.namespace is None else f"{self.namespace[0]}{_SEPARATOR}".encode(),
        )
        setattr_(
            self,
            "_namespace_range",
            (0.0, 1.0) if self.namespace is None else (self.namespace[1], self.namespace[2]),
        )

    @staticmethod
    def _check_namespace(namespace: tuple[str, float, float]) -> None:
        if not isinstance(namespace, tuple) or len(namespace) != 3:
            raise ValidationError(f"the namespace must be (id, start, end), got {namespace!r}")
        ident, start, end = namespace
        if not isinstance(ident, str) or not ident:
            raise ValidationError("the namespace id must be a non-empty string")
        if not (_is_number(start) and _is_number(end) and 0.0 <= start < end <= 1.0):
            raise ValidationError(
                f"namespace {ident!r}: the range must satisfy 0 <= start < end <= 1, "
                f"got [{start!r}, {end!r})"
            )

    def index_of(self, variant: str) -> int | None:
        """The index of the variant keyed ``variant``, or None when there is none."""
        for assignment in self._assignments:
            if assignment.variant == variant:
                return assignment.index
        return None

    def assignment_for(self, index: int) -> Assignment:
        """The assignment to the variant at ``index`` (with its share of the weights)."""
        return self._assignments[index]


def assign_variant(allocation: Allocation, unit: str) -> Assignment | None:
    """The variant of ``unit`` in ``allocation``; None when outside its namespace range or
    coverage (or when ``unit`` is empty). Deterministic: the same on every call and machine."""
    if not unit:
        return None
    data = unit.encode()
    prefix = allocation._namespace_prefix
    if prefix is not None:
        start, end = allocation._namespace_range
        position = _digest(prefix + data) * _SCALE
        if position < start or position >= end:
            return None
    coverage = allocation.coverage
    # every bucket is < 1.0, so full coverage needs no hash
    if coverage < 1.0 and _digest(allocation._coverage_prefix + data) * _SCALE >= coverage:
        return None
    position = _digest(allocation._variant_prefix + data) * _SCALE
    return allocation._assignments[bisect_right(allocation._bounds, position)]


@dataclass(frozen=True, slots=True)
class _Experiment:
    allocation: Allocation
    phase: int
    # variant key -> its assignment, for the sticky mapping's look-ups
    variants: Mapping[str, Assignment]


def _field(definition: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in definition:
        raise ValidationError(f"{where}: {name!r} is missing")
    return definition[name]


def _allocation_from(definition: Mapping[str, Any], key: str) -> tuple[Allocation, int]:
    where = f"experiment {key!r}"
    seed = definition.get("seed") or key
    if not isinstance(seed, str):
        raise ValidationError(f"{where}: the seed must be a string, got {seed!r}")
    phase = definition.get("phase", 1)
    if not isinstance(phase, int) or isinstance(phase, bool) or phase < 1:
        raise ValidationError(f"{where}: the phase must be an integer >= 1, got {phase!r}")
    coverage = definition.get("coverage", 1.0)
    if coverage is None:
        coverage = 1.0
    raw_variants = _field(definition, "variants", where)
    if not isinstance(raw_variants, Sequence) or isinstance(raw_variants, str | bytes):
        raise ValidationError(f"{where}: 'variants' must be a list")
    variants: list[tuple[str, float]] = []
    for i, variant in enumerate(raw_variants):
        if not isinstance(variant, Mapping):
            raise ValidationError(f"{where}: variants[{i}] must be an object")
        variants.append(
            (_field(variant, "key", f"{where}, variants[{i}]"), variant.get("weight", 1.0))
        )
    namespace: tuple[str, float, float] | None = None
    raw_namespace = definition.get("namespace")
    if raw_namespace is not None:
        if not isinstance(raw_namespace, Mapping):
            raise ValidationError(f"{where}: 'namespace' must be an object or null")
        namespace = (
            _field(raw_namespace, "id", f"{where}, namespace"),
            _field(raw_namespace, "start", f"{where}, namespace"),
            _field(raw_namespace, "end", f"{where}, namespace"),
        )
    try:
        allocation = Allocation(seed, tuple(variants), coverage, namespace)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc.message}") from exc
    return allocation, phase


class Assigner:
    """Assigns units to the running experiments of a list of definitions (as the API lists
    them), optionally sticky through a mapping the caller keeps (a session, a cookie)."""

    __slots__ = ("_experiments",)

    def __init__(self, experiments: Mapping[str, _Experiment]) -> None:
        self._experiments = dict(experiments)

    @classmethod
    def from_definitions(cls, definitions: Iterable[Mapping[str, Any]]) -> Assigner:
        """An assigner over ``definitions``: ``{"key", "seed", "status", "phase", "coverage",
        "namespace": {"id", "start", "end"} | null, "variants": [{"key", "weight"}]}``.

        Only running experiments are kept (and validated): drafts may be incomplete, stopped
        ones assign nobody. Experiment keys must not contain ``":"``, which separates the
        key from the unit in the sticky mapping. Raises ``ValidationError``.
        """
        experiments: dict[str, _Experiment] = {}
        for definition in definitions:
            key = definition.get("key")
            if not isinstance(key, str) or not key:
                raise ValidationError(f"an experiment's key must be a non-empty string: {key!r}")
            if ":" in key:
                raise ValidationError(f"experiment {key!r}: the key must not contain ':'")
            if key in experiments:
                raise ValidationError(f"experiment {key!r} is defined twice")
            if definition.get("status") != _RUNNING:
                continue
            allocation, phase = _allocation_from(definition, key)
            experiments[key] = _Experiment(
                allocation,
                phase,
                {
                    variant: allocation.assignment_for(i)
                    for i, (variant, _) in enumerate(allocation.variants)
                },
            )
        return cls(experiments)

    def __contains__(self, key: object) -> bool:
        return key in self._experiments

    def __len__(self) -> int:
        return len(self._experiments)

    def phase(self, key: str) -> int | None:
        """The phase of running experiment ``key`` (None when it is not running)."""
        experiment = self._experiments.get(key)
        return None if experiment is None else experiment.phase

    def assign(
        self,
        key: str,
        unit: str,
        *,
        sticky: MutableMapping[str, str] | None = None,
        aliases: Sequence[str] = (),
    ) -> Assignment | None:
        """The variant of ``unit`` in running experiment ``key``; None when the experiment is
        unknown or not running, or the unit is outside its namespace range or coverage.

        With ``sticky``, a variant stored under ``sticky_key(key, unit)`` (or, failing that,
        under the key of one of ``aliases``, the unit's other ids such as the anonymous id
        it had before it identified) is returned while the experiment still has that
        variant, whatever the current weights, coverage and range say; the assignment's
        probability is then the variant's share of the current weights. A new or changed
        assignment is written under ``sticky_key(key, unit)``.
        """
        experiment = self._experiments.get(key)
        if experiment is None or not unit:
            return None
        if sticky is None:
            return assign_variant(experiment.allocation, unit)
        own = f"{key}:{unit}"  # sticky_key(key, unit), without a call on the hot path
        stored = sticky.get(own)
        if stored is not None and (kept := experiment.variants.get(stored)) is not None:
            return kept
        for alias in aliases:
            stored = sticky.get(f"{key}:{alias}")
            if stored is not None and (kept := experiment.variants.get(stored)) is not None:
                sticky[own] = stored
                return kept
        assignment = assign_variant(experiment.allocation, unit)
        if assignment is not None:
            sticky[own] = assignment.variant
        return assignment
