"""Regenerate the gbstats golden cases under ``tests/experiments/golden/``.

GrowthBook's stats engine (``gbstats`` on PyPI) is the oracle our statistics are checked
against, but it pins numpy < 2 and pandas < 2, so it must never enter the project's
environment. Run ``python tools/gbstats_cases.py`` (any Python 3.11+, standard library only):
it builds a throwaway virtualenv in a temporary directory, installs ``gbstats==0.8.0`` there,
and re-runs itself inside it with ``--inside`` to

* draw a few hundred seeded random experiments (mean metrics from normal, log-normal and
  Poisson units, proportions, ratio metrics, CUPED metrics with a correlated pre-period
  covariate; unequal group sizes; one to three variants against control; a handful of
  degenerate ones), each reduced to per-variant sufficient statistics;
* run gbstats' ``TwoSidedTTest``, ``EffectBayesianABTest`` and ``SequentialTwoSidedTTest`` on
  every (control, variant) pair, for absolute and relative effects, with the case's alpha,
  direction and sequential tuning, and its ``check_srm`` on random traffic splits;
* write one compact JSON file per method (``frequentist.json``, ``bayesian.json``,
  ``sequential.json``, ``srm.json``), one case per line.

``--venv DIR`` reuses (or creates) a virtualenv at DIR instead of a temporary one.
The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

GBSTATS = "gbstats==0.8.0"
SEED = 17
CASES_PER_KIND = 60
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "experiments" / "golden"


# --- outside: the throwaway environment -------------------------------------------------


def run_outside(out: Path, venv_dir: Path | None) -> None:
    """Build (or reuse) a virtualenv with gbstats and run the generator inside it."""
    if venv_dir is not None:
        build_and_run(venv_dir, out)
        return
    with tempfile.TemporaryDirectory(prefix="gbstats-venv-") as tmp:
        build_and_run(Path(tmp), out)


def build_and_run(venv_dir: Path, out: Path) -> None:
    python = venv_dir / "bin" / "python"
    if not python.exists():
        print(f"creating a virtualenv at {venv_dir}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    print(f"installing {GBSTATS}", file=sys.stderr)
    subprocess.run([str(python), "-m", "pip", "install", "-q", GBSTATS], check=True)
    subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--inside", "--out", str(out)], check=True
    )


# --- inside: draw cases and ask gbstats -------------------------------------------------


def _number(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def _sums(values: Any) -> tuple[float, float]:
    return float(values.sum()), float((values * values).sum())


def draw_arm(rng: Any, kind: str, n: int, shape: dict[str, float], lift: float) -> dict[str, Any]:
    """The sufficient statistics of ``n`` simulated units of one arm."""
    np = sys.modules["numpy"]
    if kind == "proportion":
        p = min(shape["p"] * (1.0 + lift), 0.99)
        conversions = float(rng.binomial(n, p))
        return {"n": n, "sum": conversions, "sum_squares": conversions}
    if kind == "mean":
        family = shape["family"]
        if family == 0:
            values = rng.normal(shape["mu"] * (1.0 + lift), shape["sd"], n)
        elif family == 1:
            values = rng.lognormal(shape["mu"], shape["sd"], n) * (1.0 + lift)
        else:
            values = rng.poisson(shape["mu"] * (1.0 + lift), n).astype(np.float64)
        total, squares = _sums(values)
        return {"n": n, "sum": total, "sum_squares": squares}
    if kind == "ratio":
        sessions = 1.0 + rng.poisson(shape["sessions"], n)
        buys = rng.random(n) < shape["p"] * (1.0 + lift)
        revenue = buys * sessions * rng.gamma(2.0, shape["mu"], n)
        total, squares = _sums(revenue)
        d_total, d_squares = _sums(sessions)
        return {
            "n": n,
            "sum": total,
            "sum_squares": squares,
            "denominator_sum": d_total,
            "denominator_sum_squares": d_squares,
            "main_denominator_sum_product": float((revenue * sessions).sum()),
        }
    # cuped: a post-exposure value correlated with its pre-exposure covariate
    pre = rng.lognormal(shape["mu"], 0.6, n)
    post = shape["slope"] * pre + rng.normal(0.0, shape["sd"], n) + lift * shape["mu"]
    total, squares = _sums(post)
    c_total, c_squares = _sums(pre)
    return {
        "n": n,
        "sum": total,
        "sum_squares": squares,
        "covariate_sum": c_total,
        "covariate_sum_squares": c_squares,
        "main_covariate_sum_product": float((post * pre).sum()),
    }


def draw_cases(rng: Any) -> list[dict[str, Any]]:
    """Random experiments of every kind, then a few degenerate ones."""
    cases: list[dict[str, Any]] = []
    for kind in ("mean", "proportion", "ratio", "cuped"):
        for _ in range(CASES_PER_KIND):
            shape = {
                "family": int(rng.integers(0, 3)),
                "mu": float(rng.uniform(0.5, 20.0)),
                "sd": float(rng.uniform(0.2, 1.2)) if kind == "mean" else float(rng.uniform(1, 8)),
                "p": float(rng.uniform(0.01, 0.5)),
                "sessions": float(rng.uniform(0.5, 4.0)),
                "slope": float(rng.uniform(0.3, 1.5)),
            }
            if kind == "mean" and shape["family"] == 0:
                shape["sd"] = float(rng.uniform(1.0, 30.0))
            arms = []
            for index in range(1 + int(rng.integers(1, 4))):
                n = int(math.exp(rng.uniform(math.log(30), math.log(20000))))
                lift = 0.0 if index == 0 else float(rng.normal(0.0, 0.08))
                arms.append(draw_arm(rng, kind, n, shape, lift))
            cases.append(
                {
                    "kind": kind,
                    "alpha": float(rng.choice([0.01, 0.05, 0.1])),
                    "tuning": float(rng.choice([500.0, 5000.0, 50000.0])),
                    "inverse": bool(rng.random() < 0.3),
                    "control": arms[0],
                    "variants": arms[1:],
                }
            )
    mean = {"n": 100, "sum": 10.0, "sum_squares": 30.0}
    degenerate = [
        ("mean", {"n": 0, "sum": 0.0, "sum_squares": 0.0}, mean),
        ("mean", mean, {"n": 0, "sum": 0.0, "sum_squares": 0.0}),
        ("mean", {"n": 1, "sum": 3.0, "sum_squares": 9.0}, mean),
        ("mean", {"n": 50, "sum": 100.0, "sum_squares": 200.0}, mean),
        ("mean", mean, {"n": 40, "sum": 40.0, "sum_squares": 40.0}),
        ("mean", {"n": 4, "sum": 0.0, "sum_squares": 10.0}, mean),
        ("proportion", {"n": 500, "sum": 0.0, "sum_squares": 0.0}, mean),
    ]
    for kind, control, variant in degenerate:
        cases.append(
            {
                "kind": kind,
                "alpha": 0.05,
                "tuning": 5000.0,
                "inverse": False,
                "degenerate": True,
                "control": control,
                "variants": [variant],
            }
        )
    for number, case in enumerate(cases):
        case["id"] = number
    return cases


def gbstats_statistic(kind: str, arm: dict[str, Any]) -> Any:
    """gbstats' statistic for one arm (a fresh object: its tests mutate CUPED's theta)."""
    from gbstats.models.statistics import (
        RatioStatistic,
        RegressionAdjustedStatistic,
        SampleMeanStatistic,
    )

    main = SampleMeanStatistic(n=int(arm["n"]), sum=arm["sum"], sum_squares=arm["sum_squares"])
    if kind == "ratio":
        denominator = SampleMeanStatistic(
            n=int(arm["n"]), sum=arm["denominator_sum"], sum_squares=arm["denominator_sum_squares"]
        )
        return RatioStatistic(
            n=int(arm["n"]),
            m_statistic=main,
            d_statistic=denominator,
            m_d_sum_of_products=arm["main_denominator_sum_product"],
        )
    if kind == "cuped":
        covariate = SampleMeanStatistic(
            n=int(arm["n"]), sum=arm["covariate_sum"], sum_squares=arm["covariate_sum_squares"]
        )
        return RegressionAdjustedStatistic(
            n=int(arm["n"]),
            post_statistic=main,
            pre_statistic=covariate,
            post_pre_sum_of_products=arm["main_covariate_sum_product"],
            theta=0,
        )
    # proportions too: our documents carry sum_squares = sum, the unbiased sample variance
    return main


def run_method(
    method: str, case: dict[str, Any], variant: dict[str, Any], difference: str
) -> dict[str, Any]:
    """One gbstats test of control against ``variant``, reduced to plain numbers."""
    from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig
    from gbstats.frequentist.tests import (
        FrequentistConfig,
        SequentialConfig,
        SequentialTwoSidedTTest,
        TwoSidedTTest,
    )
    from gbstats.models.statistics import RegressionAdjustedStatistic

    a = gbstats_statistic(case["kind"], case["control"])
    b = gbstats_statistic(case["kind"], variant)
    alpha = case["alpha"]
    test: Any
    if method == "frequentist":
        test = TwoSidedTTest(a, b, FrequentistConfig(alpha=alpha, difference_type=difference))
    elif method == "sequential":
        config = SequentialConfig(
            alpha=alpha, difference_type=difference, sequential_tuning_parameter=case["tuning"]
        )
        test = SequentialTwoSidedTTest(a, b, config)
    else:
        config = EffectBayesianConfig(
            alpha=alpha, difference_type=difference, inverse=case["inverse"]
        )
        test = EffectBayesianABTest(a, b, config)
    try:
        result = test.compute_result()
    except ZeroDivisionError:
        return {"error": "EXCEPTION"}
    out: dict[str, Any] = {
        "error": result.error_message,
        "estimate": _number(result.expected),
        "ci": [_number(result.ci[0]), _number(result.ci[1])],
        "stddev": _number(result.uplift.stddev),
    }
    if method in ("frequentist", "sequential"):
        out["p_value"] = _number(result.p_value)
        if method == "frequentist" and result.error_message is None:
            out["dof"] = _number(test.dof)
    else:
        out["chance_to_win"] = _number(result.chance_to_win)
        out["risk"] = [_number(result.risk[0]), _number(result.risk[1])]
    if case["kind"] == "cuped":
        stat = test.stat_a
        out["theta"] = float(stat.theta) if isinstance(stat, RegressionAdjustedStatistic) else 0.0
    return out


def srm_cases(rng: Any) -> list[dict[str, Any]]:
    """Random traffic splits, some of them skewed, with gbstats' SRM p-value."""
    from gbstats.utils import check_srm

    cases = []
    for number in range(60):
        k = int(rng.integers(2, 5))
        weights = [float(w) for w in rng.dirichlet([5.0] * k)]
        skew = [float(s) for s in rng.normal(0.0, 0.05, k)] if number % 2 else [0.0] * k
        shares = [max(w + s, 0.001) for w, s in zip(weights, skew, strict=True)]
        total = int(math.exp(rng.uniform(math.log(200), math.log(200000))))
        users = [int(u) for u in rng.multinomial(total, [s / sum(shares) for s in shares])]
        cases.append(
            {
                "id": number,
                "users": users,
                "weights": weights,
                "p_value": float(check_srm(users, weights)),
            }
        )
    return cases


def write(path: Path, header: dict[str, Any], cases: list[dict[str, Any]]) -> None:
    """A compact file: the header, then one case per line."""
    lines = [json.dumps(case, separators=(",", ":"), allow_nan=False) for case in cases]
    head = json.dumps(header, separators=(",", ":"))[:-1]
    path.write_text(head + ',"cases":[\n' + ",\n".join(lines) + "\n]}\n", encoding="utf-8")


def run_inside(out: Path) -> None:
    """Draw the cases, run gbstats on them and write the golden files."""
    import importlib.metadata
    import warnings

    import numpy as np

    # gbstats' sequential e-value overflows to inf for huge statistics (a p-value of 0): expected
    warnings.filterwarnings("ignore", "overflow encountered in exp", RuntimeWarning)

    version = importlib.metadata.version("gbstats")
    rng = np.random.default_rng(SEED)
    cases = draw_cases(rng)
    out.mkdir(parents=True, exist_ok=True)
    notes = {
        "frequentist": "TwoSidedTTest; estimate/ci/stddev of the effect, two-sided p_value, Welch dof",
        "sequential": "SequentialTwoSidedTTest with the case's tuning; always-valid ci and p_value",
        "bayesian": "EffectBayesianABTest, default (improper) prior; inverse = lower is better; risk = [choose control, choose variant]",
    }
    for method, note in notes.items():
        rows = []
        for case in cases:
            results = [
                {
                    difference: run_method(method, case, variant, difference)
                    for difference in ("absolute", "relative")
                }
                for variant in case["variants"]
            ]
            rows.append({**case, "results": results})
        header = {"gbstats": version, "seed": SEED, "method": method, "note": note}
        write(out / f"{method}.json", header, rows)
        print(f"wrote {out / (method + '.json')}: {len(rows)} cases", file=sys.stderr)
    header = {"gbstats": version, "seed": SEED, "method": "srm", "note": "gbstats.utils.check_srm"}
    write(out / "srm.json", header, srm_cases(rng))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON files go")
    parser.add_argument("--venv", type=Path, default=None, help="reuse a virtualenv here")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        run_inside(args.out)
    else:
        run_outside(args.out, args.venv)


if __name__ == "__main__":
    main()
