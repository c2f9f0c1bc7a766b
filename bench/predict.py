"""Predictions benchmark: training churn and CLV models on 1,000,000 users against a bare
LightGBM fit, the stream worker with the models served against none, and one profile's score.

Run it with ``.venv/bin/python bench/predict.py [--train-users N] [--events N] [--users U]
[--batch N] [--latency-profiles N] [--parts training,worker,latency] [--quick]``. It prints
ONE JSON object on stdout (progress goes to stderr) with, measured in this run, each figure
in a process of its own (so its memory is its own):

* ``training.<churn|clv>.ours`` — two synthetic training frames of N users each
  (``--train-users``, 1,000,000 by default; ``training_frame``): the columns a real feature
  table has (40 numeric ones: ``events_total``, ``recency_days``, ``sessions__*``,
  ``event_counts__<event>__1d/7d/30d/all``, ``orders__*``, ``revenue__*``…; three
  low-cardinality text columns ``context__last__country`` / ``device_type`` / ``browser``;
  ``first_seen`` and ``as_of`` for ``age_days``) as a pyarrow Table, with labels planted
  from the features (``label_churn``; ``label_clv`` with most users at 0, and
  ``label_orders``). Timed as ``ModelTrainer.train`` does it: ``choose_features`` on the
  validation frame, ``spec.matrix`` of both frames, ``labels_of``, then
  ``fit_model(target, spec, fit, valid, refit=valid)`` (fit on the first frame, early
  stopped and calibrated on the second, the served boosters refit on the second). Wall and
  CPU seconds of each step, peak RSS added (VmHWM at the end minus VmRSS at the start, the
  frames already built), the rounds, and validation ROC-AUC (churn) or revenue MAE (CLV,
  beside the MAE of predicting the mean).
* ``training.<churn|clv>.bare_lightgbm`` — the baseline, in the same run: ``lightgbm.train``
  with the same parameters and the rounds ours chose, on the same refit matrix (the served
  boosters only, no validation, no calibration): the floor a hand-written script pays.
  ``ratio`` is ours over it (seconds).
* ``worker.runs.off`` / ``worker.runs.on`` — ``bench/worker.py``'s shop traffic drained by
  its ``run_worker`` (the runtime's ``StreamWorker``, fresh SQLite log and state) with no
  model served, or with a churn and a CLV model registered and promoted before the drain.
  Those models are real: the same traffic applied to in-memory profiles with
  ``apply_event``, evaluated and flattened into a feature table (``feature_table``),
  labelled from what the profiles show (``shop_labels``), and fit with ``fit_model``.
  ``ratio`` is ``on / off`` of events/s (target 0.7); ``predictions`` counts the
  ``profile_predictions`` rows at the end.
* ``latency`` — one profile at a time (``--latency-profiles``, 10,000 by default, from the
  shop traffic applied with ``apply_event``): ``evaluate_profile`` + ``flatten_document`` +
  ``prediction_values`` with the churn model (reasons on), each part timed, and the model
  call alone (``spec.row`` + ``model.predict``); p50 / p99 / max in ms. Target: p99 of the
  whole score at most 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR)]

from worker import (  # noqa: E402  (bench/worker.py: the shop's traffic and the measured drain)
    proc_status_bytes,
    progress,
    ratio,
    reset_rss_peak,
    run_worker,
    shop_traffic,
)

TARGET_RATIO = 0.7
TARGET_P99_MS = 1.0
TARGET_TRAIN_SECONDS = 300.0
HEADLINE_BATCH = 10_000
RUN_TIMEOUT_S = 3600.0
_DAY_MS = 86_400_000
# the training frames' text columns: a few common values and a thin tail
_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "PL", "BR", "IN", "JP"]
_DEVICES = ["desktop", "mobile", "tablet"]
_BROWSERS = ["Chrome", "Safari", "Firefox", "Edge", "Samsung Internet"]
# the feature table's events (column names as ``column_name`` writes them) and their rate per
# session; ``order_completed`` is also ``orders__*``
_EVENT_RATES = {
    "page": 3.0,
    "product_viewed": 4.0,
    "video_played": 0.4,
    "identify": 0.15,
    "alias": 0.02,
    "order_completed": 0.12,
}


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99 and max of durations in nanoseconds, in milliseconds."""
    ordered = sorted(samples_ns)

    def at(share: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
        return round(ordered[index] / 1e6, 4)

    return {
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] / 1e6, 4),
        "mean_ms": round(sum(ordered) / len(ordered) / 1e6, 4),
    }


# -- the synthetic training frames ----------------------------------------------------------


def training_frame(users: int, seed: int, as_of: datetime) -> Any:
    """A feature table of ``users`` synthetic users as of ``as_of`` with its labels.

    Each user has an activity level (lognormal) and a lapse (days since the last visit,
    longer for the less active); sessions, event counts per window, orders and revenue follow
    from them with Poisson noise. Churn is more likely the longer the lapse and the fewer the
    recent sessions and orders, and differs by country and device; future orders are Poisson
    around the recent order rate (most users none), their revenue the user's order value."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n = users
    activity = rng.lognormal(0.0, 0.8, n)
    recency = np.minimum(rng.exponential(6.0 / np.sqrt(activity)), 120.0)
    fade = np.exp(-recency / 10.0)
    sessions_7d = rng.poisson(1.5 * activity * fade)
    sessions_30d = sessions_7d + rng.poisson(4.0 * activity * np.exp(-recency / 30.0))
    sessions_all = sessions_30d + rng.poisson(10.0 * activity)
    columns: dict[str, Any] = {}
    counts_all = np.zeros(n, dtype=np.int64)
    taste = rng.lognormal(0.0, 0.4, (n, len(_EVENT_RATES)))
    for k, (event, rate) in enumerate(_EVENT_RATES.items()):
        per_session = rate * taste[:, k]
        c7 = rng.poisson(sessions_7d * per_session)
        c1 = rng.binomial(c7, np.where(recency < 1.0, 0.4, 0.02))
        c30 = c7 + rng.poisson((sessions_30d - sessions_7d) * per_session)
        every = c30 + rng.poisson((sessions_all - sessions_30d) * per_session)
        for window, values in (("1d", c1), ("7d", c7), ("30d", c30), ("all", every)):
            columns[f"event_counts__{event}__{window}"] = values
        counts_all += every
    orders_7d = columns["event_counts__order_completed__7d"]
    orders_30d = columns["event_counts__order_completed__30d"]
    orders_all = columns["event_counts__order_completed__all"]
    order_value = rng.lognormal(3.6, 0.6, n)
    revenue_30d = orders_30d * order_value * rng.lognormal(0.0, 0.15, n)
    revenue_all = revenue_30d + (orders_all - orders_30d) * order_value
    has_order = orders_all > 0
    duration = rng.lognormal(5.5, 0.7, n)
    country = rng.choice(_COUNTRIES, n, p=_shares(len(_COUNTRIES)))
    device = rng.choice(_DEVICES, n, p=[0.55, 0.38, 0.07])
    browser = rng.choice(_BROWSERS, n, p=[0.6, 0.25, 0.07, 0.06, 0.02])
    age_days = recency + rng.exponential(200.0, n)
    as_of_ms = int(as_of.timestamp() * 1000)
    first_ms = as_of_ms - (age_days * _DAY_MS).astype(np.int64)
    last_ms = as_of_ms - (recency * _DAY_MS).astype(np.int64)
    columns |= {
        "events_total": counts_all,
        "recency_days": np.round(recency, 3),
        "sessions__count": sessions_all,
        "sessions__count_7d": sessions_7d,
        "sessions__count_30d": sessions_30d,
        "sessions__window_days": np.full(n, 30, dtype=np.int64),
        "sessions__average_duration_s": np.where(sessions_all > 0, duration, np.nan),
        "sessions__events_per_session": np.where(
            sessions_all > 0, counts_all / np.maximum(sessions_all, 1), np.nan
        ),
        "sessions__pages_per_session": np.where(
            sessions_all > 0,
            columns["event_counts__page__all"] / np.maximum(sessions_all, 1),
            np.nan,
        ),
        "orders__7d": orders_7d,
        "orders__30d": orders_30d,
        "orders__all": orders_all,
        "revenue__30d": revenue_30d,
        "revenue__all": revenue_all,
        "average_order_value__all": np.where(has_order, order_value, np.nan),
        "days_since_last_order__all": np.where(
            has_order, recency + rng.exponential(20.0, n), np.nan
        ),
    }
    # labels: churn from the lapse, recent sessions and orders, country and device
    country_effect = {c: 0.25 * math.sin(i) for i, c in enumerate(_COUNTRIES)}
    logit = (
        -0.8
        + 0.09 * recency
        - 0.55 * np.log1p(sessions_7d)
        - 0.5 * np.log1p(orders_30d)
        - 0.2 * np.log(activity)
        + np.vectorize(country_effect.__getitem__)(country)
        + np.where(device == "mobile", 0.2, 0.0)
    )
    churned = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    future_rate = (0.05 + 0.6 * orders_30d + 0.05 * orders_all) * fade * np.where(churned, 0.1, 1)
    future_orders = rng.poisson(future_rate)
    future_revenue = future_orders * order_value * rng.lognormal(0.0, 0.3, n)
    table = pa.table(
        {
            "user_id": pa.array(np.char.add("user-", np.arange(n).astype(str))),
            "as_of": pa.array(np.full(n, as_of_ms, dtype="datetime64[ms]")).cast(
                pa.timestamp("us", tz="UTC")
            ),
            **{name: pa.array(values) for name, values in sorted(columns.items())},
            "context__last__browser": pa.array(browser, pa.string()),
            "context__last__country": pa.array(country, pa.string()),
            "context__last__device_type": pa.array(device, pa.string()),
            "first_seen": _iso(first_ms),
            "last_seen": _iso(last_ms),
            "label_churn": pa.array(churned),
            "label_clv": pa.array(np.round(future_revenue, 2)),
            "label_orders": pa.array(future_orders),
        }
    )
    return table


def _shares(count: int) -> list[float]:
    """Zipf-like shares of ``count`` values (the most common first)."""
    weights = [1.0 / (rank + 1) for rank in range(count)]
    total = sum(weights)
    return [w / total for w in weights]


def _iso(ms: Any) -> Any:
    """Milliseconds since the epoch as the profile document's ISO-8601 strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    moments = pa.array(ms.astype("datetime64[ms]"))
    return pc.strftime(moments, format="%Y-%m-%dT%H:%M:%S.000Z")


def training_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Our training of one target on two fresh frames, timed step by step (module docstring)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from personify.predict.learning import choose_features, fit_model, labels_of
    from personify.predict.targets import target

    goal = target(spec["target"])
    as_of = datetime(2026, 12, 1, tzinfo=UTC)
    fit_table = training_frame(spec["users"], 11, as_of - timedelta(days=goal.horizon_days))
    valid_table = training_frame(spec["users"], 12, as_of)
    gc.collect()
    rss_before = proc_status_bytes("VmRSS")
    hwm_reset = reset_rss_peak()
    started, cpu = time.perf_counter(), time.process_time()
    features = choose_features(valid_table)
    chosen = time.perf_counter()
    fit = (features.matrix(fit_table), labels_of(fit_table, goal))
    valid = (features.matrix(valid_table), labels_of(valid_table, goal))
    read = time.perf_counter()
    fitted = fit_model(goal, features, fit, valid, refit=valid)
    ended, cpu_s = time.perf_counter(), time.process_time() - cpu
    hwm = proc_status_bytes("VmHWM")
    result: dict[str, Any] = {
        "users": spec["users"],
        "frames": 2,
        "features": len(features.names),
        "categorical": {name: len(vocabulary) for name, vocabulary in features.categorical},
        "seconds": round(ended - started, 3),
        "cpu_seconds": round(cpu_s, 3),
        "steps_seconds": {
            "choose_features": round(chosen - started, 3),
            "matrix_and_labels": round(read - chosen, 3),
            "fit_model": round(ended - read, 3),
        },
        "rounds": fitted.rounds,
        "kind": fitted.model.kind,
        "table_bytes": fit_table.nbytes + valid_table.nbytes,
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": hwm,
        "rss_peak_delta_bytes": hwm - rss_before,
        "rss_peak_since": "choose_features start" if hwm_reset else "process start",
    }
    if goal.name == "churn":
        truth = valid[1]["churn"]
        result["label_share"] = round(float(truth.mean()), 4)
        result["validation_roc_auc"] = round(
            float(roc_auc_score(truth, np.asarray(fitted.validation.churn_probability))), 4
        )
    else:
        revenue = valid[1]["revenue"]
        predicted = np.asarray(fitted.validation.expected_revenue)
        result["label_share"] = round(float((revenue > 0).mean()), 4)
        result["validation_revenue_mae"] = round(float(np.mean(np.abs(predicted - revenue))), 4)
        result["validation_mae_of_the_mean"] = round(
            float(np.mean(np.abs(revenue - revenue.mean()))), 4
        )
        result["validation_mae_by_kind"] = {
            kind: round(float(value), 4)
            for kind, value in fitted.model.details.get("validation_mae", {}).items()
        }
    return result


def bare_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline: ``lightgbm.train`` of the served boosters with ours' parameters and
    rounds on the same refit matrix (the validation frame), nothing else, timed."""
    import lightgbm as lgb
    import numpy as np

    from personify.predict.learning import _OBJECTIVES, _PARAMS, choose_features, labels_of
    from personify.predict.targets import target

    goal = target(spec["target"])
    as_of = datetime(2026, 12, 1, tzinfo=UTC)
    table = training_frame(spec["users"], 12, as_of)
    features = choose_features(table)
    x = features.matrix(table)
    labels = labels_of(table, goal)
    # the table stays alive: pages it freed would be reused by the fit and hide its memory
    targets: dict[str, Any] = {
        "churn": labels.get("churn"),
        "orders": labels.get("orders"),
        "buyer": None if "revenue" not in labels else (labels["revenue"] > 0).astype(np.float64),
        "revenue": labels.get("revenue"),
    }
    gc.collect()
    rss_before = proc_status_bytes("VmRSS")
    hwm_reset = reset_rss_peak()
    started, cpu = time.perf_counter(), time.process_time()
    for name, rounds in spec["rounds"].items():
        rows, y = x, targets.get(name)
        if name == "spend":
            buyers = labels["revenue"] > 0
            rows, y = x[buyers], labels["revenue"][buyers]
        data = lgb.Dataset(rows, y, categorical_feature=features.categorical_indices)
        lgb.train({**_PARAMS, **_OBJECTIVES[name]}, data, num_boost_round=rounds)
    ended, cpu_s = time.perf_counter(), time.process_time() - cpu
    hwm = proc_status_bytes("VmHWM")
    return {
        "users": spec["users"],
        "boosters": spec["rounds"],
        "seconds": round(ended - started, 3),
        "cpu_seconds": round(cpu_s, 3),
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": hwm,
        "rss_peak_delta_bytes": hwm - rss_before,
        "rss_peak_since": "first Dataset" if hwm_reset else "process start",
    }


# -- the shop's profiles and their models ---------------------------------------------------


def shop_states(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The traffic applied event by event to in-memory profile states (profile id -> state)."""
    from personify.profiles.events import view_event
    from personify.profiles.features import FeatureSet
    from personify.profiles.state import ProfileState, apply_event, compact_state

    features = FeatureSet()
    states: dict[str, ProfileState] = {}
    for data in events:
        event = view_event(msgspec.json.decode(msgspec.json.encode(data)))
        state = states.get(event.ids[0])
        if state is None:
            state = states[event.ids[0]] = ProfileState()
        apply_event(state, event, features)
    for state in states.values():
        compact_state(state, features)
    return states


def shop_labels(table: Any) -> dict[str, Any]:
    """Labels planted in a feature table of the shop's profiles: churn likelier the longer
    since the last event and the fewer the events; future orders around the past ones."""
    import numpy as np

    rng = np.random.default_rng(5)

    def column(name: str) -> Any:
        if name not in table.column_names:
            return np.zeros(table.num_rows)
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.nan_to_num(values)

    recency, events, orders = column("recency_days"), column("events_total"), column("orders__all")
    logit = -0.5 + 1.2 * recency - 0.5 * np.log1p(events) - 0.4 * orders
    churn = rng.random(table.num_rows) < 1.0 / (1.0 + np.exp(-logit))
    future = rng.poisson((0.1 + 0.5 * orders) * np.where(churn, 0.2, 1.0))
    revenue = future * rng.lognormal(4.0, 0.5, table.num_rows)
    return {
        "churn": churn.astype(np.float64),
        "orders": future.astype(np.float64),
        "revenue": revenue,
    }


def shop_models(states: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A churn and a CLV model fit with ``fit_model`` on the profiles' feature table (every
    other profile to fit, the rest to validate, all of them to refit), keyed by target."""
    import numpy as np

    from personify.predict.features import feature_table
    from personify.predict.learning import choose_features, fit_model
    from personify.predict.targets import target
    from personify.profiles.features import FeatureSet
    from personify.profiles.state import evaluate_profile

    features = FeatureSet()
    # whole milliseconds: ``FeatureSpec.matrix`` casts ``as_of`` to milliseconds and refuses
    # to drop microseconds
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    now_ms = int(now.timestamp() * 1000)
    documents = {pid: evaluate_profile(s, features, now_ms) for pid, s in states.items()}
    table = feature_table(documents, now)
    spec = choose_features(table)
    x = spec.matrix(table)
    labels = shop_labels(table)
    half = np.arange(table.num_rows) % 2 == 0

    def part(mask: Any) -> tuple[Any, dict[str, Any]]:
        return x[mask], {name: values[mask] for name, values in labels.items()}

    every = np.ones(table.num_rows, dtype=bool)
    return {
        name: fit_model(target(name), spec, part(half), part(~half), refit=part(every)).model
        for name in ("churn", "clv")
    }


def serve_models(folder: Path, batch: int, models: dict[str, Any]) -> list[dict[str, Any]]:
    """Create the state database in ``folder`` and register and promote ``models`` in the
    runtime's registry (none: the schema only); the versions served."""
    from personify.predict.features import definitions_digest
    from personify.profiles.features import FeatureSet
    from personify.runtime import Runtime
    from personify.settings import Settings

    settings = Settings(
        _env_file=None,
        data_dir=folder / "data",
        environment="test",
        pii_hash_key="bench",
        run_worker=False,
        worker_batch_size=batch,
    )
    services = Runtime.build(settings)
    served: list[dict[str, Any]] = []
    try:
        for model in models.values():
            version = services.models.register(
                model,
                as_of=datetime.now(UTC),
                definitions=definitions_digest(FeatureSet()),
                lineage_id=None,
                report={"benchmark": "bench/predict.py"},
                status="kept",
            )
            version = services.models.promote(version.id, reason="benchmark")
            served.append({"target": version.target.key, "kind": model.kind, "id": version.id})
    finally:
        asyncio.run(services.close())
    return served


def count_predictions(folder: Path) -> dict[str, int]:
    """``profile_predictions`` rows per target at the end of a drain."""
    engine = sa.create_engine(f"sqlite:///{folder / 'data' / 'personify.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT target, count(*) FROM profile_predictions GROUP BY target")
            ).all()
    finally:
        engine.dispose()
    return {str(name): int(count) for name, count in rows}


def drain_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured drain, with a churn and a CLV model served (``spec["models"]``) or none."""
    from personify.cli.tuning import tune_process

    events = shop_traffic(spec["events"], spec["users"])
    payloads = [msgspec.json.encode(e) for e in events]
    models: dict[str, Any] = {}
    fit_seconds = None
    if spec["models"]:
        started = time.perf_counter()
        models = shop_models(shop_states(events), datetime.now(UTC))
        fit_seconds = round(time.perf_counter() - started, 3)
    # as bench/worker.py: the generated traffic is frozen out of the collector's sight
    tune_process()
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="personify-bench-predict-") as tmp:
        folder = Path(tmp)
        served = serve_models(folder, spec["batch"], models)
        result = asyncio.run(run_worker(payloads, events, folder, spec["batch"], None, False))
        predictions = count_predictions(folder)
    return {
        "models": served,
        "models_fit_seconds": fit_seconds,
        **result,
        "predictions": predictions,
    }


# -- one profile's score --------------------------------------------------------------------


def latency_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One profile at a time: evaluate, flatten and score with the churn model (reasons on),
    each part timed; then the model call alone, and the CLV model's score."""
    from personify.cli.tuning import tune_process
    from personify.predict.features import flatten_document
    from personify.predict.registry import ModelVersion
    from personify.predict.stage import prediction_values
    from personify.profiles.features import FeatureSet
    from personify.profiles.state import evaluate_profile

    events = shop_traffic(spec["events"], spec["users"])
    states = list(shop_states(events).values())
    now = datetime.now(UTC)
    models = shop_models({f"profile-{i}": s for i, s in enumerate(states)}, now)
    features = FeatureSet()
    at_ms = int(now.timestamp() * 1000)
    picked = [states[i % len(states)] for i in range(spec["profiles"])]

    def version(model: Any, number: int) -> ModelVersion:
        return ModelVersion(
            id=number,
            target=model.target,
            number=1,
            status="promoted",
            file="",
            sha256="",
            features=model.spec.to_dict(),
            definitions="",
            lineage_id=None,
            report={},
            as_of=now,
            created_at=now,
            served=True,
        )

    churn, clv = models["churn"], models["clv"]
    churn_version, clv_version = version(churn, 1), version(clv, 2)
    tune_process()
    gc.collect()
    gc.freeze()
    clock = time.perf_counter_ns
    parts: dict[str, list[int]] = {
        name: []
        for name in (
            "score",
            "evaluate_profile",
            "flatten_document",
            "prediction_values",
            "model_call",
            "spec_row",
            "predict",
            "contributions",
            "reasons",
            "clv_prediction_values",
        )
    }
    # a few rounds first: imports, LightGBM's first calls, caches
    for state in picked[:200]:
        row = flatten_document(evaluate_profile(state, features, at_ms))
        prediction_values(churn, churn_version, [row], now)
    for state in picked:
        t0 = clock()
        document = evaluate_profile(state, features, at_ms)
        t1 = clock()
        row = flatten_document(document)
        t2 = clock()
        prediction_values(churn, churn_version, [row], now)
        t3 = clock()
        x = churn.spec.row(row, at_ms)
        t4 = clock()
        churn.predict(x)
        t5 = clock()
        contributions = churn.contributions(x)
        t6 = clock()
        churn.reasons(x, contributions, top=3)
        t7 = clock()
        prediction_values(clv, clv_version, [row], now)
        t8 = clock()
        for name, ns in (
            ("score", t3 - t0),
            ("evaluate_profile", t1 - t0),
            ("flatten_document", t2 - t1),
            ("prediction_values", t3 - t2),
            ("model_call", t5 - t3),
            ("spec_row", t4 - t3),
            ("predict", t5 - t4),
            ("contributions", t6 - t5),
            ("reasons", t7 - t6),
            ("clv_prediction_values", t8 - t7),
        ):
            parts[name].append(ns)
    figures = {name: percentiles_ms(samples) for name, samples in parts.items()}
    return {
        "profiles": spec["profiles"],
        "distinct_states": len(states),
        "features": len(churn.spec.names),
        "churn_trees": churn.boosters["churn"].num_trees(),
        "clv_kind": clv.kind,
        "clv_trees": {name: b.num_trees() for name, b in clv.boosters.items()},
        **figures,
        "score_p99_target_ms": TARGET_P99_MS,
        "meets_target": figures["score"]["p99_ms"] <= TARGET_P99_MS,
    }


_CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train": training_child,
    "bare": bare_child,
    "drain": drain_child,
    "latency": latency_child,
}


def in_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``kind`` in a process of its own (so its memory is its own); its JSON figures."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--run", json.dumps([kind, spec])],
        stdout=subprocess.PIPE,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} run exited {done.returncode}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- the three parts ------------------------------------------------------------------------


def training_part(args: argparse.Namespace) -> dict[str, Any]:
    """Each target trained as the trainer does, then the bare LightGBM fits with its rounds."""
    out: dict[str, Any] = {}
    for name in ("churn", "clv"):
        progress(f"training {name}: two frames of {args.train_users} users")
        ours = in_child("train", {"target": name, "users": args.train_users})
        progress(
            f"  {ours['seconds']} s ({ours['steps_seconds']}), rounds {ours['rounds']}, peak RSS "
            f"+{ours['rss_peak_delta_bytes'] // 2**20} MiB"
        )
        bare = in_child(
            "bare", {"target": name, "users": args.train_users, "rounds": ours["rounds"]}
        )
        progress(
            f"  bare lightgbm.train: {bare['seconds']} s, peak RSS "
            f"+{bare['rss_peak_delta_bytes'] // 2**20} MiB"
        )
        out[name] = {
            "ours": ours,
            "bare_lightgbm": bare,
            "ratio": ratio(ours["seconds"], bare["seconds"]),
            "ratio_rss_peak_delta": ratio(
                ours["rss_peak_delta_bytes"], bare["rss_peak_delta_bytes"]
            ),
            "target_seconds": TARGET_TRAIN_SECONDS,
            "meets_target_seconds": ours["seconds"] <= TARGET_TRAIN_SECONDS,
        }
    out["note"] = (
        None
        if args.train_users >= 1_000_000
        else f"ran {args.train_users} users a frame, not 1,000,000"
    )
    return {"training": out}


def worker_part(args: argparse.Namespace) -> dict[str, Any]:
    """The drain with no model served, then with a churn and a CLV model: the rates' ratio."""
    runs: dict[str, Any] = {}
    for name, models in (("off", False), ("on", True)):
        progress(f"worker, models {name}: {args.events} events of {args.users} users")
        spec = {"events": args.events, "users": args.users, "batch": args.batch, "models": models}
        figures = in_child("drain", spec)
        progress(
            f"  {figures['events_per_s']} events/s, {figures['cpu_us_per_event']} CPU µs/event, "
            f"predictions {figures['predictions']}"
        )
        runs[name] = figures
    on, off = runs["on"], runs["off"]
    rate = ratio(on["events_per_s"], off["events_per_s"])
    return {
        "worker": {
            "runs": runs,
            "ratio": rate,
            "ratio_cpu_us_per_event": ratio(on["cpu_us_per_event"], off["cpu_us_per_event"]),
            "target": TARGET_RATIO,
            "meets_target": rate is not None and rate >= TARGET_RATIO,
        }
    }


def latency_part(args: argparse.Namespace) -> dict[str, Any]:
    """One profile's score, timed part by part."""
    progress(f"latency: {args.latency_profiles} profiles, one at a time")
    spec = {"events": args.events, "users": args.users, "profiles": args.latency_profiles}
    figures = in_child("latency", spec)
    progress(f"  score p50 {figures['score']['p50_ms']} ms, p99 {figures['score']['p99_ms']} ms")
    return {"latency": figures}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--batch", type=int, default=HEADLINE_BATCH)
    parser.add_argument("--latency-profiles", type=int, default=10_000)
    parser.add_argument(
        "--parts",
        default="training,worker,latency",
        help="comma-separated: training, worker, latency (all three)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="frames of 50,000 users, 20,000 events of 800 users, 2,000 profiles scored",
    )
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_users = min(args.train_users, 50_000)
        args.events, args.users = min(args.events, 20_000), min(args.users, 800)
        args.latency_profiles = min(args.latency_profiles, 2_000)
    args.parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not args.parts or args.parts - {"training", "worker", "latency"}:
        parser.error("--parts takes training, worker, latency")
    if args.train_users < 1_000 or args.events < 1 or args.batch < 1:
        parser.error("--train-users is at least 1,000; --events and --batch at least 1")
    if args.latency_profiles < 100:
        parser.error("--latency-profiles is at least 100")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the parts asked for, each measurement in a process of its own; print the JSON."""
    args = parse_args(argv)
    if args.run is not None:
        kind, spec = json.loads(args.run)
        print(json.dumps(_CHILDREN[kind](spec)))
        return
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "benchmark": "predict",
        "date": started_at.isoformat(timespec="seconds"),
        "train_users": args.train_users,
        "events": args.events,
        "users": args.users,
        "batch_size": args.batch,
        "latency_profiles": args.latency_profiles,
    }
    if "training" in args.parts:
        result |= training_part(args)
    if "worker" in args.parts:
        result |= worker_part(args)
    if "latency" in args.parts:
        result |= latency_part(args)
    result["memory"] = (
        "rss_peak_delta_bytes: VmHWM at the end minus VmRSS at the start of what is measured, "
        "VmHWM reset through /proc/self/clear_refs then (the whole process)"
    )
    import lightgbm

    result["setup"] = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "lightgbm": lightgbm.__version__,
        "cpus": os.cpu_count(),
        "openmp_environment": {k: v for k, v in os.environ.items() if k.startswith("OMP_")},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round((datetime.now(UTC) - started_at).total_seconds(), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
