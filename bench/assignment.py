"""Experiment assignment benchmark: µs per call in-process, next to the GrowthBook Python SDK.

Run it with ``.venv/bin/python bench/assignment.py [--units N] [--rounds R]`` (default 200,000
distinct unit ids, 5 rounds). It prints ONE JSON object on stdout (progress goes to stderr)
with, all measured on this machine in this run, the median over the rounds of the µs per
call (and the fastest round) of:

* ``assign_variant`` — ``personify.experiments.assignment.assign_variant`` on a 2-variant
  50/50 experiment with full coverage and no namespace (one encoding, one xxh3, one bisect);
* ``assign_variant_namespace_coverage`` — the same with a namespace range and 50 % coverage
  (the most work one call does: three hashes);
* ``assigner`` — ``Assigner.assign`` (the Python client's ``assign()``) on that experiment
  built from its definition, without a sticky mapping;
* ``assigner_sticky_new`` / ``assigner_sticky_known`` — ``Assigner.assign`` with a sticky
  dict, first for units it does not hold yet (the assignment is written) and then for the
  same units again (read back);
* ``baseline`` — the ``growthbook`` SDK evaluating the equivalent experiment
  (``Experiment(key=…, variations=[0, 1])``: 2 variants, equal weights, full coverage) with
  ``GrowthBook.run``: ``reused`` keeps one ``GrowthBook`` and calls ``set_attributes`` per
  unit; ``per_unit`` creates one ``GrowthBook(attributes={"id": …})`` per unit, as its
  docs recommend per request.

``ratio`` is ``assign_variant``'s µs per call over the baseline's (reused; lower is better),
``ratio_per_unit`` the same over the per-unit baseline. ``share_in_variant_1`` shows that
both engines put about half of the units in each variant (their hashes
differ, so not the same units; with the namespace range and 50 % coverage a quarter of
the units are in, an eighth in variant 1). Target: ``assign_variant`` under 5 µs per call.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from growthbook import Experiment, GrowthBook

from personify.experiments.assignment import Allocation, Assigner, assign_variant

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import cpu_model, log, to_json  # bench/ingest.py, the shared helpers

TARGET_US = 5.0
KEY = "bench-hero"
VARIANTS = (("control", 0.5), ("b", 0.5))
DEFINITION: dict[str, Any] = {
    "key": KEY,
    "seed": KEY,
    "status": "running",
    "phase": 1,
    "coverage": 1.0,
    "namespace": None,
    "variants": [{"key": key, "weight": weight} for key, weight in VARIANTS],
}

# one case: given the units, does its untimed set-up and returns the timed pass, which assigns
# every unit and returns how many were in variant index 1 (so the work cannot be skipped, and
# the split can be checked)
Case = Callable[[Sequence[str]], Callable[[], int]]


def ours_plain() -> Case:
    """``assign_variant`` on the 50/50 experiment."""
    allocation = Allocation(KEY, VARIANTS)

    def prepare(units: Sequence[str]) -> Callable[[], int]:
        return lambda: run(units)

    def run(units: Sequence[str]) -> int:
        second = 0
        for unit in units:
            assignment = assign_variant(allocation, unit)
            if assignment is not None and assignment.index == 1:
                second += 1
        return second

    return prepare


def ours_namespace_coverage() -> Case:
    """``assign_variant`` with a namespace range of half the layer and 50 % coverage."""
    allocation = Allocation(KEY, VARIANTS, coverage=0.5, namespace=("home", 0.25, 0.75))

    def prepare(units: Sequence[str]) -> Callable[[], int]:
        return lambda: run(units)

    def run(units: Sequence[str]) -> int:
        second = 0
        for unit in units:
            assignment = assign_variant(allocation, unit)
            if assignment is not None and assignment.index == 1:
                second += 1
        return second

    return prepare


def ours_assigner() -> Case:
    """``Assigner.assign`` without a sticky mapping."""
    assigner = Assigner.from_definitions([DEFINITION])

    def prepare(units: Sequence[str]) -> Callable[[], int]:
        return lambda: run(units)

    def run(units: Sequence[str]) -> int:
        second = 0
        for unit in units:
            assignment = assigner.assign(KEY, unit)
            if assignment is not None and assignment.index == 1:
                second += 1
        return second

    return prepare


def ours_sticky(*, known: bool) -> Case:
    """``Assigner.assign`` with a sticky dict: empty (writes) or already filled (reads)."""
    assigner = Assigner.from_definitions([DEFINITION])

    def prepare(units: Sequence[str]) -> Callable[[], int]:
        sticky: dict[str, str] = {}
        if known:
            for unit in units:
                assigner.assign(KEY, unit, sticky=sticky)
        return lambda: run(units, sticky)

    def run(units: Sequence[str], sticky: dict[str, str]) -> int:
        second = 0
        for unit in units:
            assignment = assigner.assign(KEY, unit, sticky=sticky)
            if assignment is not None and assignment.index == 1:
                second += 1
        return second

    return prepare


def growthbook_reused() -> Case:
    """One ``GrowthBook``, ``set_attributes`` then ``run`` per unit."""
    experiment = Experiment(key=KEY, variations=[0, 1])
    growthbook = GrowthBook()

    def prepare(units: Sequence[str]) -> Callable[[], int]:
        return lambda: run(units)

    def run(units: Sequence[str]) -> int:
        second = 0
        for unit in units:
            growthbook.set_attributes({"id": unit})
            result = growthbook.run(experiment)
            if result.inExperiment and result.variationId == 1:
                second += 1
        return second

    return prepare


def growthbook_per_unit() -> Case:
    """A new ``GrowthBook(attributes={"id": unit})`` per unit, then ``run``."""
    experiment = Experiment(key=KEY, variations=[0, 1])

    def prepare(units: Sequence[str]) -> Callable[[], int]:
        return lambda: run(units)

    def run(units: Sequence[str]) -> int:
        second = 0
        for unit in units:
            result = GrowthBook(attributes={"id": unit}).run(experiment)
            if result.inExperiment and result.variationId == 1:
                second += 1
        return second

    return prepare


def measure(name: str, case: Case, units: Sequence[str], rounds: int) -> dict[str, Any]:
    """Median and fastest µs per call over ``rounds`` passes over ``units``."""
    per_call: list[float] = []
    second = 0
    for round_ in range(rounds):
        timed = case(units)
        gc.collect()
        started = time.perf_counter_ns()
        second = timed()
        per_call.append((time.perf_counter_ns() - started) / len(units) / 1000)
        log(f"{name}: round {round_ + 1}/{rounds}: {per_call[-1]:.3f} µs per call")
    return {
        "us_per_call": round(statistics.median(per_call), 3),
        "fastest_us_per_call": round(min(per_call), 3),
        "rounds_us": [round(value, 3) for value in per_call],
        "share_in_variant_1": round(second / len(units), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    units = [f"bench-unit-{i:07d}" for i in range(args.units)]
    # interleave ours and theirs, so a slow phase of the machine hits both
    figures = {
        "assign_variant": measure("assign_variant", ours_plain(), units, args.rounds),
        "growthbook_reused": measure("growthbook reused", growthbook_reused(), units, args.rounds),
        "assign_variant_namespace_coverage": measure(
            "assign_variant (namespace, coverage)", ours_namespace_coverage(), units, args.rounds
        ),
        "assigner": measure("Assigner.assign", ours_assigner(), units, args.rounds),
        "growthbook_per_unit": measure(
            "growthbook per unit", growthbook_per_unit(), units, args.rounds
        ),
        "assigner_sticky_new": measure(
            "Assigner.assign sticky (new)", ours_sticky(known=False), units, args.rounds
        ),
        "assigner_sticky_known": measure(
            "Assigner.assign sticky (known)", ours_sticky(known=True), units, args.rounds
        ),
    }
    ours = figures["assign_variant"]["us_per_call"]
    reused = figures["growthbook_reused"]["us_per_call"]
    per_unit = figures["growthbook_per_unit"]["us_per_call"]
    result = {
        "benchmark": "experiment assignment",
        "assign_variant": figures["assign_variant"],
        "assign_variant_namespace_coverage": figures["assign_variant_namespace_coverage"],
        "assigner": figures["assigner"],
        "assigner_sticky_new": figures["assigner_sticky_new"],
        "assigner_sticky_known": figures["assigner_sticky_known"],
        "baseline": {
            "what": "growthbook SDK, GrowthBook.run on a 2-variant 50/50 experiment",
            "reused": figures["growthbook_reused"],
            "per_unit": figures["growthbook_per_unit"],
        },
        "ratio": round(ours / reused, 3),
        "ratio_per_unit": round(ours / per_unit, 3),
        "target_us": TARGET_US,
        "meets_target": ours < TARGET_US,
        "setup": {
            "units": args.units,
            "rounds": args.rounds,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "xxhash": metadata.version("xxhash"),
            "growthbook": metadata.version("growthbook"),
        },
    }
    print(to_json(result))


if __name__ == "__main__":
    main()
