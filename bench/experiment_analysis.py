"""Experiment analysis benchmark: one experiment, 3 variants x 20 metrics, from sufficient
statistics, with each method, next to a bare scipy loop doing the same comparisons.

Run it with ``.venv/bin/python bench/experiment_analysis.py [--rounds R] [--calls N] [--quick]``.
It prints ONE JSON object on stdout (progress goes to stderr) with, measured in this run:

* ``methods.<frequentist|bayesian|sequential>`` — ``personify.experiments.analysis.analyze`` on
  one request: control and two variants, 20 mean metrics (per-variant ``n``, ``sum``,
  ``sum_squares`` of simulated units), so 40 comparisons, each with its absolute and relative
  effect and interval, the SRM check and Holm's correction over the family; the request is
  validated every call, as the HTTP route does. ``ms_per_analysis`` is the median over
  ``--rounds`` rounds of ``--calls`` calls; ``us_per_comparison`` divides it by 40.
* ``mixed`` — the same with 10 mean, 5 ratio and 5 CUPED metrics (frequentist).
* ``baseline`` — the floor, in the same run: ``scipy.stats.ttest_ind_from_stats`` (Welch,
  ``equal_var=False``) called on the same 40 (control, variant) pairs from the same sums, p-values
  only: what a hand-written script pays for the bare tests. ``ratio`` is ours over it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from personify.experiments.analysis import analyze

VARIANTS = ("control", "b", "c")
METRICS = 20


def sums(values: np.ndarray) -> dict[str, Any]:
    return {"n": len(values), "sum": float(values.sum()), "sum_squares": float((values**2).sum())}


def build_request(mixed: bool, seed: int = 5) -> dict[str, Any]:
    """One experiment: 20 metrics over 3 variants, each from a few thousand simulated units."""
    rng = np.random.default_rng(seed)
    metrics = []
    for index in range(METRICS):
        kind = "mean" if not mixed or index < 10 else ("ratio" if index < 15 else "cuped")
        variants: dict[str, Any] = {}
        for position, name in enumerate(VARIANTS):
            n = 4000 + 37 * position
            post = rng.lognormal(1.0 + 0.02 * position, 0.7, n)
            stat = sums(post)
            if kind == "ratio":
                sessions = 1.0 + rng.poisson(2.0, n)
                stat |= {
                    "denominator_sum": float(sessions.sum()),
                    "denominator_sum_squares": float((sessions**2).sum()),
                    "main_denominator_sum_product": float((post * sessions).sum()),
                }
            elif kind == "cuped":
                pre = post * 0.8 + rng.normal(0.0, 0.5, n)
                stat |= {
                    "covariate_sum": float(pre.sum()),
                    "covariate_sum_squares": float((pre**2).sum()),
                    "main_covariate_sum_product": float((post * pre).sum()),
                }
            variants[name] = stat
        metric: dict[str, Any] = {"key": f"metric_{index}", "variants": variants}
        if kind == "ratio":
            metric["type"] = "ratio"
        if kind == "cuped":
            metric["cuped"] = True
        metrics.append(metric)
    return {"metrics": metrics, "correction": "holm"}


def scipy_loop(request: dict[str, Any]) -> list[float]:
    """The baseline: Welch's test per (control, variant) pair with scipy, p-values only."""
    p_values = []
    for metric in request["metrics"]:
        control = metric["variants"]["control"]
        n_a = control["n"]
        mean_a = control["sum"] / n_a
        sd_a = math.sqrt((control["sum_squares"] - control["sum"] ** 2 / n_a) / (n_a - 1))
        for name in VARIANTS[1:]:
            variant = metric["variants"][name]
            n_b = variant["n"]
            mean_b = variant["sum"] / n_b
            sd_b = math.sqrt((variant["sum_squares"] - variant["sum"] ** 2 / n_b) / (n_b - 1))
            result = scipy_stats.ttest_ind_from_stats(
                mean_b, sd_b, n_b, mean_a, sd_a, n_a, equal_var=False
            )
            p_values.append(float(result.pvalue))
    return p_values


def timed(call: Callable[[], Any], rounds: int, calls: int) -> dict[str, float]:
    """Median and spread of milliseconds per call over interleavable rounds."""
    call()  # warm caches and imports
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        per_round.append((time.perf_counter() - start) / calls * 1000.0)
    median = statistics.median(per_round)
    return {
        "ms_per_analysis": round(median, 4),
        "us_per_comparison": round(median * 1000.0 / (METRICS * (len(VARIANTS) - 1)), 2),
        "spread_pct": round((max(per_round) - min(per_round)) / median * 100.0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 3, 10
    plain = build_request(mixed=False)
    mixed = build_request(mixed=True)

    # sanity: ours and scipy agree on the p-values being timed
    ours = analyze(plain)
    our_p = [v["pValue"] for m in ours["metrics"] for v in m["variants"]]
    assert np.allclose(our_p, scipy_loop(plain), rtol=1e-9, atol=1e-15)

    print("timing the scipy baseline", file=sys.stderr)
    baseline = timed(lambda: scipy_loop(plain), args.rounds, args.calls)
    methods = {}
    for method in ("frequentist", "bayesian", "sequential"):
        print(f"timing analyze({method})", file=sys.stderr)
        request = plain | {"method": method}
        methods[method] = timed(partial(analyze, request), args.rounds, args.calls)
        methods[method]["ratio"] = round(
            methods[method]["ms_per_analysis"] / baseline["ms_per_analysis"], 2
        )
    print("timing the mixed request", file=sys.stderr)
    mixed_figures = timed(lambda: analyze(mixed), args.rounds, args.calls)
    mixed_figures["ratio"] = round(
        mixed_figures["ms_per_analysis"] / baseline["ms_per_analysis"], 2
    )

    print(
        json.dumps(
            {
                "benchmark": "experiment_analysis",
                "shape": {
                    "variants": len(VARIANTS),
                    "metrics": METRICS,
                    "comparisons": METRICS * (len(VARIANTS) - 1),
                },
                "methods": methods,
                "mixed": mixed_figures,
                "baseline": {"scipy_ttest_ind_from_stats": baseline},
                "settings": {"rounds": args.rounds, "calls": args.calls},
                "machine": {"python": platform.python_version(), "processor": platform.machine()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
