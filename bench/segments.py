"""Segments benchmark: the stream worker with 100 active rules against none, the sweep, and
a clustering of 1,000,000 users against a bare mini-batch k-means.

Run it with ``.venv/bin/python bench/segments.py [--events N] [--users U] [--batch N]
[--sweep-profiles N] [--cluster-users N] [--parts worker,sweep,clustering] [--quick]``. It prints ONE JSON object on stdout
(progress goes to stderr) with, measured in this run, each figure in a process of its own:

* ``runs.none`` / ``runs.segments_100`` — the shop traffic of ``bench/worker.py``
  (``shop_traffic``) put in a fresh SQLite event log and drained by the runtime's
  ``StreamWorker`` into a fresh SQLite state database (``bench/worker.py``'s ``run_worker``,
  unchanged), with no segment, or with 100 active rule segments saved through
  ``SegmentRepository.create`` before the drain: traits (``plan``, ``visits``: what the
  generator's identify events carry), features of the profile document (orders, revenue,
  sessions, recency, event counts, affinities, the last browser and device), windowed event
  counts with ``where`` filters on properties (windows from 30 minutes to 30 days),
  ``all``/``any``/``not`` and segment references. The drain evaluates every rule for every
  touched profile in the profiles' transaction, and the relay appends the ``Segment Entered``
  / ``Segment Exited`` events to the log after each batch. Those come after the shop's events
  in the log, so ``run_worker`` stops before them; a second timed drain (``membership_drain``)
  reads them (the worker skips them: not the user's activity) until the log has no lag.
  ``events_per_s`` is the first drain's rate, ``events_per_s_all_in`` the shop's events over
  both drains' time: the sustained rate with the membership events paid. ``ratio`` is ``segments_100 / none`` of the all-in
  rates (target 0.7); ``ratio_first_drain`` of the first drains alone. ``members`` counts the
  open memberships at the end, and how many of the 100 segments have any.
* ``sweep`` — N profiles (``--sweep-profiles``, 1,000,000 by default), each with windowed
  counters for 20 windowed rule segments, every one due: the time of one
  ``SegmentSweep.sweep()`` (the runtime's, default page size) and its peak memory, measured
  like ``bench/worker.py``'s ``rss_peak_delta_bytes``. The state is built fast, straight
  into the state database with ``executemany``, not by pushing events through the worker:
  each profile's state is a real one (a profile of the shop traffic applied with
  ``apply_event``, so it has traits, context, sessions, features and affinities) given its
  own ids, a last event between 1 hour and 20 days ago, and 1-4 times per counter inside
  each window before that last event; its memberships at that moment (computed with
  ``evaluate_profile_segments``, the stage's own evaluation) are written to
  ``segment_members`` and its ``next_expiry`` to ``segment_due``, as the worker would have.
  Every profile holds a 1-hour counter, so every one is due by now.
* ``baseline_decode`` — the floor the sweep is compared with, in the same run: the same N
  stored states read from the state database in pages and decoded with ``decode_state``
  (``decode_seconds`` the decoding alone, ``seconds`` with the reads).
* ``clustering.ours`` — ``fit_shards`` with ``ClusteringSpec(features, k="auto")`` (every
  other option its default) on N synthetic users x 20 features (``--cluster-users``,
  1,000,000 by default) held in memory in shards of 100,000 rows: 7 planted groups of users
  (``USER_GROUPS``) with skewed, correlated, overlapping features (``user_shard``). Its wall
  and CPU seconds, the seconds of each pass (``phases_seconds``, from when ``fit_shards``
  starts and ends each pass over the shards), the chosen k and every candidate's silhouette,
  peak RSS added (VmHWM at the end minus VmRSS at the start; the shards are there before),
  and the adjusted Rand index of its labels against the planted groups.
* ``clustering.bare_minibatch_kmeans`` — the baseline, in the same run: the same users in one
  matrix, standardised as ``fit_shards`` does (mean and standard deviation over every row),
  and ``sklearn.cluster.MiniBatchKMeans(n_clusters=<the k chosen>, random_state=0).fit`` on
  it, every other parameter sklearn's default; measured the same way. ``ratio`` is ours over
  the baseline's seconds (standardising included; ``ratio_fit_only`` without it): target at
  most 1.5, and ours under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.settings import Settings

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
HEADLINE_BATCH = 10_000
RUN_TIMEOUT_S = 3600.0
# the membership events' own drain: rounds of draining until the log has no lag
MEMBERSHIP_DRAIN_TIMEOUT_S = 600.0
# profiles written (and built) per transaction when the sweep's state is made
BUILD_CHUNK = 10_000
DECODE_PAGE = 10_000
_CATEGORIES = ["shoes", "hats", "books", "garden", "kitchen", "toys"]
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS


# -- the rules --------------------------------------------------------------------------------


def _leaf(source: str, path: str, op: str, value: Any = None) -> dict[str, Any]:
    leaf: dict[str, Any] = {source: path, "op": op}
    if value is not None:
        leaf["value"] = value
    return leaf


def _events(
    name: str,
    within: str | None = None,
    where: list[dict[str, Any]] | None = None,
    count: tuple[str, Any] | None = None,
) -> dict[str, Any]:
    leaf: dict[str, Any] = {"event": name}
    if where:
        leaf["where"] = where
    if within:
        leaf["within"] = within
    if count:
        leaf["count"] = {"op": count[0], "value": count[1]}
    return leaf


def _prop(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"property": path, "op": op, "value": value}


def worker_rules() -> list[tuple[str, dict[str, Any]]]:
    """100 rule segments over the shop traffic, in an order where a segment comes after the
    segments it refers to (the order they are saved in)."""
    rules: list[tuple[str, dict[str, Any]]] = [
        # traits: identify events carry plan (free or pro) and visits
        ("pro", _leaf("trait", "plan", "eq", "pro")),
        ("free", _leaf("trait", "plan", "eq", "free")),
        ("known-plan", _leaf("trait", "plan", "exists")),
        ("plan-paid", _leaf("trait", "plan", "in", ["pro", "team"])),
        ("not-pro", {"not": _leaf("trait", "plan", "eq", "pro")}),
        ("frequent-visitor", _leaf("trait", "visits", "gte", 10)),
        ("new-visitor", _leaf("trait", "visits", "lt", 3)),
        ("mid-visitor", _leaf("trait", "visits", "between", [3, 9])),
        # features of the profile document (default feature set)
        ("buyer-30d", _leaf("feature", "orders.30d", "gte", 1)),
        ("repeat-buyer", _leaf("feature", "orders.30d", "gte", 2)),
        ("big-spender", _leaf("feature", "revenue.30d", "gte", 300)),
        ("mid-spender", _leaf("feature", "revenue.30d", "between", [50, 300])),
        ("high-aov", _leaf("feature", "average_order_value.all", "gte", 150)),
        ("recent-order", _leaf("feature", "days_since_last_order.all", "lt", 2)),
        ("engaged-7d", _leaf("feature", "sessions.count_7d", "gte", 3)),
        ("active-today", _leaf("feature", "recency_days", "lt", 1)),
        ("lapsing", _leaf("feature", "recency_days", "gte", 2)),
        ("heavy-viewer", _leaf("feature", "event_counts.Product Viewed.7d", "gte", 10)),
        ("video-watcher", _leaf("feature", "event_counts.Video Played.30d", "gte", 2)),
        ("mobile", _leaf("feature", "context.last.device_type", "eq", "mobile")),
        ("ios", _leaf("feature", "context.last.os", "eq", "iOS")),
        ("from-google", _leaf("feature", "context.last.referrer", "eq", "google.com")),
        (
            "desktop-chrome",
            {
                "all": [
                    _leaf("feature", "context.last.device_type", "eq", "desktop"),
                    _leaf("feature", "context.last.browser", "eq", "Chrome"),
                ]
            },
        ),
    ]
    for category in _CATEGORIES:
        path = f"affinities.product_category.{category}"
        rules.append((f"affinity-{category}", _leaf("feature", path, "gte", 5)))
    # windowed event counts with filters on properties
    for category in _CATEGORIES:
        where = [_prop("category", "eq", category)]
        rules += [
            (f"viewed-{category}-1h", _events("Product Viewed", "1h", where)),
            (f"viewed-{category}-1d", _events("Product Viewed", "1d", where, ("gte", 2))),
            (f"viewed-{category}-7d", _events("Product Viewed", "7d", where, ("gte", 3))),
            (f"viewed-{category}-30d", _events("Product Viewed", "30d", where, ("gte", 5))),
            (f"page-{category}-1d", _events("$page", "1d", where)),
        ]
    rules += [
        ("expensive-1d", _events("Product Viewed", "1d", [_prop("price", "gte", 80)])),
        (
            "bargain-7d",
            _events("Product Viewed", "7d", [_prop("price", "lt", 20)], ("gte", 2)),
        ),
        ("order-1d", _events("Order Completed", "1d")),
        ("order-100-7d", _events("Order Completed", "7d", [_prop("revenue", "gte", 100)])),
        ("no-order-30d", _events("Order Completed", "30d", count=("eq", 0))),
        (
            "big-order-30d",
            _events("Order Completed", "30d", [_prop("revenue", "between", [200, 300])]),
        ),
        ("long-video-7d", _events("Video Played", "7d", [_prop("seconds", "gte", 300)])),
        ("video-1h", _events("Video Played", "1h")),
        (
            "mid-price-30d",
            _events("Product Viewed", "30d", [_prop("price", "between", [30, 60])], ("gte", 3)),
        ),
        ("pages-1h", _events("$page", "1h", count=("gte", 3))),
        ("pages-12h", _events("$page", "12h", count=("gte", 5))),
        ("identified-30d", _events("$identify", "30d")),
        ("aliased-30d", _events("$alias", "30d")),
        (
            "top-skus-30d",
            _events(
                "Product Viewed",
                "30d",
                [_prop("product_id", "in", [f"sku-{n}" for n in range(1, 21)])],
            ),
        ),
        ("browsing-now", _events("Product Viewed", "30m", count=("gte", 2))),
        ("viewer-2w", _events("Product Viewed", "2w", count=("between", [5, 50]))),
    ]
    rules += [
        (f"video-{c}-7d", _events("Video Played", "7d", [_prop("tags", "contains", c)]))
        for c in _CATEGORIES
    ]
    # combinators
    rules += [
        (
            "pro-shoe-fan",
            {
                "all": [
                    _leaf("trait", "plan", "eq", "pro"),
                    _events("Product Viewed", "7d", [_prop("category", "eq", "shoes")], ("gte", 3)),
                    {"not": _leaf("feature", "recency_days", "gte", 2)},
                ]
            },
        ),
        (
            "cart-abandoner",
            {
                "all": [
                    _events("Product Viewed", "1d", count=("gte", 3)),
                    _events("Order Completed", "1d", count=("eq", 0)),
                ]
            },
        ),
        (
            "home-and-garden-1d",
            {
                "any": [
                    _events("Product Viewed", "1d", [_prop("category", "eq", c)])
                    for c in ("garden", "kitchen")
                ]
            },
        ),
        (
            "high-value",
            {
                "any": [
                    _leaf("feature", "revenue.30d", "gte", 200),
                    _leaf("feature", "orders.30d", "gte", 3),
                ]
            },
        ),
        (
            "mobile-video",
            {
                "all": [
                    _leaf("feature", "context.last.device_type", "eq", "mobile"),
                    _events("Video Played", "7d"),
                ]
            },
        ),
        (
            "free-big-basket",
            {
                "all": [
                    _leaf("trait", "plan", "eq", "free"),
                    _events("Order Completed", "30d", [_prop("revenue", "gte", 150)]),
                ]
            },
        ),
        (
            "window-shopper",
            {
                "all": [
                    _events("Product Viewed", "7d", count=("gte", 5)),
                    {"not": _events("Order Completed", "7d")},
                ]
            },
        ),
        (
            "multi-category-1d",
            {
                "all": [
                    _events("Product Viewed", "1d", [_prop("category", "in", ["shoes", "hats"])]),
                    _events("Product Viewed", "1d", [_prop("category", "in", ["books", "toys"])]),
                ]
            },
        ),
        (
            "night-owl-pro",
            {
                "all": [
                    _leaf("trait", "visits", "gte", 5),
                    {
                        "any": [
                            _events("$page", "1h"),
                            _events("Video Played", "1d", [_prop("seconds", "gte", 120)]),
                        ]
                    },
                ]
            },
        ),
        (
            "engaged-anonymous",
            {
                "all": [
                    {"not": _leaf("trait", "plan", "exists")},
                    _leaf("feature", "sessions.count_7d", "gte", 2),
                ]
            },
        ),
        # segment references
        ("pro-buyer", {"all": [{"segment": "pro"}, {"segment": "buyer-30d"}]}),
        ("vip", {"all": [{"segment": "big-spender"}, {"segment": "engaged-7d"}]}),
        ("at-risk", {"all": [{"segment": "buyer-30d"}, {"segment": "lapsing"}]}),
        ("vip-mobile", {"all": [{"segment": "vip"}, {"segment": "mobile"}]}),
        (
            "viewer-not-buyer",
            {"all": [{"segment": "heavy-viewer"}, {"not": {"segment": "buyer-30d"}}]},
        ),
        ("shoe-people", {"any": [{"segment": "viewed-shoes-7d"}, {"segment": "affinity-shoes"}]}),
        (
            "win-back",
            {
                "all": [
                    {"segment": "free"},
                    {"segment": "no-order-30d"},
                    {"segment": "video-watcher"},
                ]
            },
        ),
    ]
    rules += [
        ("vip-or-pro", {"any": [{"segment": "vip"}, {"segment": "pro"}]}),
        ("returning-buyer", {"all": [{"segment": "repeat-buyer"}, {"segment": "engaged-7d"}]}),
    ]
    if len(rules) != 100:
        raise AssertionError(f"{len(rules)} rules, not 100")
    return rules


def sweep_rules() -> list[tuple[str, dict[str, Any]]]:
    """20 windowed rule segments, one counter each (the counters the sweep's profiles hold)."""
    rules = [
        (
            f"sweep-viewed-{c}-1d",
            _events("Product Viewed", "1d", [_prop("category", "eq", c)], ("gte", 2)),
        )
        for c in _CATEGORIES
    ]
    rules += [
        (
            f"sweep-viewed-{c}-7d",
            _events("Product Viewed", "7d", [_prop("category", "eq", c)], ("gte", 3)),
        )
        for c in _CATEGORIES
    ]
    rules += [
        ("sweep-video-1h", _events("Video Played", "1h")),
        ("sweep-pages-1h", _events("$page", "1h", count=("gte", 2))),
        ("sweep-order-1d", _events("Order Completed", "1d")),
        ("sweep-order-100-7d", _events("Order Completed", "7d", [_prop("revenue", "gte", 100)])),
        ("sweep-order-30d", _events("Order Completed", "30d", count=("gte", 2))),
        ("sweep-expensive-1d", _events("Product Viewed", "1d", [_prop("price", "gte", 80)])),
        ("sweep-long-video-7d", _events("Video Played", "7d", [_prop("seconds", "gte", 300)])),
        ("sweep-identified-30d", _events("$identify", "30d")),
    ]
    return rules


# -- settings and runtime -----------------------------------------------------------------------


def bench_settings(folder: Path, batch: int) -> Settings:
    """The settings ``run_worker`` builds for ``folder`` (so both open the same databases)."""
    return Settings(
        _env_file=None,
        data_dir=folder / "data",
        environment="test",
        pii_hash_key="bench",
        run_worker=False,
        worker_batch_size=batch,
    )


def save_rules(folder: Path, batch: int, rules: list[tuple[str, dict[str, Any]]]) -> None:
    """Create the state database in ``folder`` and save ``rules`` in it (none: schema only)."""
    from personify.runtime import Runtime

    services = Runtime.build(bench_settings(folder, batch))
    try:
        for key, condition in rules:
            services.segments.create(key, condition=condition)
    finally:
        asyncio.run(services.close())


def membership_counts(db: Any) -> dict[str, Any]:
    """Open memberships, segments with members, every stay and the outbox at the end."""
    from personify.segments.tables import segment_definitions, segment_members, segment_outbox

    m = segment_members.c
    with db.engine.connect() as conn:
        empty = conn.execute(
            sa.select(segment_definitions.c.key)
            .where(
                segment_definitions.c.key.not_in(
                    sa.select(m.segment_key).where(m.exited_at.is_(None))
                )
            )
            .order_by(segment_definitions.c.key)
        ).scalars()
        segments_without_members = [str(key) for key in empty]
        open_rows = sa.select(sa.func.count()).where(m.exited_at.is_(None))
        with_members = sa.select(sa.func.count(sa.distinct(m.segment_key))).where(
            m.exited_at.is_(None)
        )
        return {
            "open": int(conn.execute(open_rows.select_from(segment_members)).scalar_one()),
            "segments_with_members": int(conn.execute(with_members).scalar_one()),
            "stays": int(
                conn.execute(sa.select(sa.func.count()).select_from(segment_members)).scalar_one()
            ),
            "segments_without_members": segments_without_members,
            "outbox_left": int(
                conn.execute(sa.select(sa.func.count()).select_from(segment_outbox)).scalar_one()
            ),
        }


async def drain_membership_events(folder: Path, batch: int) -> dict[str, Any]:
    """Drain what ``run_worker`` left in the log (the membership events, and the events they
    cause in turn) until the log has no lag; the figures of that drain and the memberships."""
    from personify.runtime import Runtime

    services = Runtime.build(bench_settings(folder, batch))
    await services.start()
    try:
        worker = services.worker
        deadline = time.monotonic() + MEMBERSHIP_DRAIN_TIMEOUT_S
        started, cpu = time.perf_counter(), time.process_time()
        # the relay may still hold events when a batch failed to flush: flush before reading
        await services.segment_relay.flush()
        while await services.log.lag(worker.group) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the membership events did not drain in time")
            await worker.step()
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        return {
            "entries_read": worker.stats.entries_read,
            "events_applied": worker.stats.events_applied,
            "seconds": round(elapsed, 3),
            "cpu_seconds": round(cpu_s, 3),
            "members": membership_counts(services.db),
        }
    finally:
        await services.close()


def drain_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured drain (with ``spec["segments"]`` rules or none) and the membership drain."""
    from personify.cli.tuning import tune_process

    events = shop_traffic(spec["events"], spec["users"])
    payloads = [msgspec.json.encode(e) for e in events]
    # as bench/worker.py: the generated traffic is frozen out of the collector's sight
    tune_process()
    gc.collect()
    gc.freeze()
    rules = worker_rules() if spec["segments"] else []
    with tempfile.TemporaryDirectory(prefix="personify-bench-segments-") as tmp:
        folder = Path(tmp)
        save_rules(folder, spec["batch"], rules)
        result = asyncio.run(run_worker(payloads, events, folder, spec["batch"], None, False))
        feedback = asyncio.run(drain_membership_events(folder, spec["batch"]))
    members = feedback.pop("members")
    total_s = result["seconds"] + feedback["seconds"]
    total_cpu_s = result["cpu_seconds"] + feedback["cpu_seconds"]
    return {
        "segments": len(rules),
        "events_per_s_all_in": round(len(payloads) / total_s),
        "cpu_us_per_event_all_in": round(total_cpu_s * 1e6 / len(payloads), 2),
        **result,
        "membership_drain": feedback,
        "members": members,
    }


# -- the sweep's state ------------------------------------------------------------------------


def template_states(count: int) -> list[Any]:
    """``count`` real profile states: the shop traffic applied event by event, identified
    profiles first (their traits, context, sessions, features and affinities are the ballast
    every swept profile carries)."""
    from personify.profiles.events import view_event
    from personify.profiles.features import FeatureSet
    from personify.profiles.state import ProfileState, apply_event, compact_state

    features = FeatureSet()
    states: dict[str, ProfileState] = {}
    for data in shop_traffic(count * 25, count, seed=7):
        event = view_event(msgspec.json.decode(msgspec.json.encode(data)))
        state = states.get(event.ids[0])
        if state is None:
            state = states[event.ids[0]] = ProfileState()
        apply_event(state, event, features)
    for state in states.values():
        compact_state(state, features)
    ordered = sorted(states.values(), key=lambda s: (not s.user_ids, -s.events))
    return ordered[:count]


def sweep_profiles(
    n: int, counters: list[tuple[str, int]], now_ms: int, seed: int = 3
) -> Iterator[tuple[str, int, dict[str, list[int]]]]:
    """``(profile id, last event ms, counters)`` of ``n`` profiles: the last event 1 hour to
    20 days ago, and 1-4 times per counter in its window before it (a 1-hour counter in each,
    so every profile is due by now)."""
    rng = random.Random(seed)
    for i in range(n):
        last_ms = now_ms - rng.randint(_HOUR_MS, 20 * _DAY_MS)
        held: dict[str, list[int]] = {}
        for counter_id, within_ms in counters:
            times = [last_ms - rng.randrange(within_ms) for _ in range(rng.randint(1, 4))]
            times[0] = last_ms if within_ms == _HOUR_MS else times[0]
            held[counter_id] = sorted(times)
        yield f"user-{i:07d}", last_ms, held


def build_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Save the 20 windowed rules and write ``spec["profiles"]`` due profiles into the state
    database of ``spec["folder"]`` (profiles, open memberships, ``segment_due``)."""
    from personify.profiles.counters import CounterPlan, next_expiry
    from personify.profiles.features import FeatureSet
    from personify.profiles.state import encode_state
    from personify.profiles.tables import profiles
    from personify.runtime import Runtime
    from personify.segments.stage import evaluate_profile_segments
    from personify.segments.tables import segment_due, segment_members

    started = time.perf_counter()
    folder = Path(spec["folder"])
    save_rules(folder, HEADLINE_BATCH, sweep_rules())
    services = Runtime.build(bench_settings(folder, HEADLINE_BATCH))
    features = FeatureSet()
    templates = template_states(spec["templates"])
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    memberships = 0
    try:
        with services.db.begin() as conn:
            compiled = services.segments.compiled(conn)
        if len(compiled.counters) != 20 or any(
            s.predicate.reads_features for s in compiled.segments
        ):
            raise RuntimeError(f"{len(compiled.counters)} counters; the sweep needs 20")
        plan = CounterPlan(compiled.counters)
        windows = [(c.id, int(c.within_ms or 0)) for c in compiled.counters]
        rows: list[dict[str, Any]] = []
        stays: list[dict[str, Any]] = []
        due: list[dict[str, Any]] = []

        def write() -> None:
            with services.db.begin() as conn:
                conn.execute(profiles.insert(), rows)
                if stays:
                    conn.execute(segment_members.insert(), stays)
                conn.execute(segment_due.insert(), due)
            rows.clear()
            stays.clear()
            due.clear()

        for i, (pid, last_ms, held) in enumerate(sweep_profiles(spec["profiles"], windows, now_ms)):
            template = templates[i % len(templates)]
            first_ms = min(template.first_seen or last_ms, last_ms - 30 * _DAY_MS)
            state = msgspec.structs.replace(
                template,
                user_ids={pid},
                anonymous_ids={f"anon-{pid}"},
                previous_ids=set(),
                first_seen=first_ms,
                last_seen=last_ms,
                counters=held,
                counter_totals={},
            )
            last = datetime.fromtimestamp(last_ms / 1000, UTC)
            rows.append(
                {
                    "profile_id": pid,
                    "version": 1,
                    "state": encode_state(state).decode(),
                    "first_seen_ms": first_ms,
                    "last_seen_ms": last_ms,
                    "personalization_allowed": True,
                    "history_in_row": False,
                    "created_at": last,
                    "updated_at": last,
                }
            )
            for key in sorted(evaluate_profile_segments(state, compiled, features, last_ms)):
                stays.append(
                    {
                        "segment_key": key,
                        "profile_id": pid,
                        "segment_version": 1,
                        "entered_at": last,
                        "entry_reason": "rule",
                        "exited_at": None,
                        "exit_reason": None,
                    }
                )
                memberships += 1
            expiry = next_expiry(state, plan, last_ms)
            if expiry is None or expiry > now_ms:
                raise RuntimeError(f"profile {pid} is not due ({expiry} > {now_ms})")
            due.append({"profile_id": pid, "due_ms": expiry})
            if len(rows) >= BUILD_CHUNK:
                write()
                progress(f"  {i + 1} profiles written")
        if rows:
            write()
    finally:
        asyncio.run(services.close())
    return {
        "profiles": spec["profiles"],
        "open_memberships": memberships,
        "seconds": round(time.perf_counter() - started, 1),
        "state_db_bytes": sum(p.stat().st_size for p in (folder / "data").glob("personify*")),
    }


def decode_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline: every stored state read in pages and decoded with ``decode_state``."""
    from personify.profiles.state import decode_state, state_text
    from personify.runtime import Runtime

    services = Runtime.build(bench_settings(Path(spec["folder"]), HEADLINE_BATCH))
    decoded = 0
    state_bytes = 0
    decode_s = 0.0
    try:
        gc.collect()
        rss_before = proc_status_bytes("VmRSS")
        hwm_reset = reset_rss_peak()
        started, cpu = time.perf_counter(), time.process_time()
        with services.db.engine.connect() as conn:
            result = conn.exec_driver_sql("SELECT state FROM profiles")
            while page := result.fetchmany(DECODE_PAGE):
                page_started = time.perf_counter()
                for (blob,) in page:
                    decode_state(state_text(blob))
                decode_s += time.perf_counter() - page_started
                decoded += len(page)
                state_bytes += sum(len(blob) for (blob,) in page)
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        hwm = proc_status_bytes("VmHWM")
    finally:
        asyncio.run(services.close())
    return {
        "profiles": decoded,
        "profiles_per_s": round(decoded / decode_s),
        "decode_seconds": round(decode_s, 3),
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu_s, 3),
        "mean_state_bytes": state_bytes // max(decoded, 1),
        "rss_before_bytes": rss_before,
        "rss_peak_delta_bytes": hwm - rss_before,
        "rss_peak_since": "read start" if hwm_reset else "process start",
    }


def sweep_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``SegmentSweep.sweep()`` of the runtime over the built state, timed."""
    from personify.cli.tuning import tune_process
    from personify.runtime import Runtime
    from personify.segments.tables import segment_due, segment_outbox

    tune_process()
    services = Runtime.build(bench_settings(Path(spec["folder"]), HEADLINE_BATCH))
    try:
        gc.collect()
        rss_before = proc_status_bytes("VmRSS")
        hwm_reset = reset_rss_peak()
        started, cpu = time.perf_counter(), time.process_time()
        swept = services.segment_sweep.sweep()
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        hwm = proc_status_bytes("VmHWM")
        with services.db.engine.connect() as conn:
            outbox = conn.execute(sa.select(sa.func.count()).select_from(segment_outbox))
            still_due = conn.execute(sa.select(sa.func.count()).select_from(segment_due))
            outbox_rows, due_rows = int(outbox.scalar_one()), int(still_due.scalar_one())
    finally:
        asyncio.run(services.close())
    return {
        "profiles": swept.profiles,
        "profiles_per_s": round(swept.profiles / elapsed),
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu_s, 3),
        "cpu_us_per_profile": round(cpu_s * 1e6 / max(swept.profiles, 1), 2),
        "entries": swept.entries,
        "exits": swept.exits,
        "outbox_rows_after": outbox_rows,
        "due_rows_after": due_rows,
        "rss_before_bytes": rss_before,
        "rss_peak_delta_bytes": hwm - rss_before,
        "rss_peak_since": "sweep start" if hwm_reset else "process start",
    }


# -- the clustering part ------------------------------------------------------------------------

CLUSTER_SHARD_ROWS = 100_000
CLUSTER_SEED = 11
TARGET_CLUSTER_SECONDS = 60.0
TARGET_CLUSTER_RATIO = 1.5
CLUSTER_FEATURES = (
    "sessions_30d",
    "page_views_30d",
    "session_minutes_avg",
    "orders_90d",
    "revenue_90d",
    "average_order_value",
    "days_since_last_visit",
    "days_since_last_order",
    "tenure_days",
    "email_open_rate",
    "email_click_rate",
    "discount_share",
    "support_tickets_90d",
    "mobile_share",
    "video_minutes_30d",
    "cart_adds_30d",
    "returns_90d",
    "categories_viewed",
    "searches_30d",
    "night_share",
)
# The planted groups. Per group: its share of users, sessions a month, pages a session, the
# log-mean of session minutes, orders in 90 days, the log-mean of an order's value, the mean
# days since the last visit and since the last order, tenure (gamma shape, scale), beta
# parameters of the email open rate, of clicks given opens, of the discount share, of the
# mobile share and of the night share, support tickets, the chance of watching video and the
# log-mean of its minutes, cart adds a page, the chance an order is returned, categories
# viewed, searches a session.
# fmt: off
USER_GROUPS: dict[str, dict[str, Any]] = {
    "casual": {
        "share": 0.30, "sessions": 4, "pages": 5, "minutes": 1.3, "orders": 0.3, "value": 3.6,
        "visit_gap": 8, "order_gap": 60, "tenure": (2, 200), "opens": (2, 6), "clicks": (1, 8),
        "discount": (2, 6), "mobile": (3, 3), "night": (2, 6), "tickets": 0.1, "video": 0.2,
        "video_minutes": 2.0, "carts": 0.03, "returns": 0.05, "categories": 2, "searches": 0.5,
    },
    "loyal": {
        "share": 0.15, "sessions": 14, "pages": 7, "minutes": 1.8, "orders": 3.0, "value": 4.0,
        "visit_gap": 2, "order_gap": 15, "tenure": (4, 250), "opens": (6, 3), "clicks": (3, 5),
        "discount": (2, 8), "mobile": (3, 4), "night": (2, 7), "tickets": 0.3, "video": 0.3,
        "video_minutes": 2.3, "carts": 0.06, "returns": 0.06, "categories": 4, "searches": 0.8,
    },
    "bargain": {
        "share": 0.15, "sessions": 9, "pages": 9, "minutes": 1.6, "orders": 2.0, "value": 3.3,
        "visit_gap": 4, "order_gap": 20, "tenure": (3, 150), "opens": (5, 4), "clicks": (3, 5),
        "discount": (6, 2), "mobile": (4, 3), "night": (2, 5), "tickets": 0.2, "video": 0.2,
        "video_minutes": 2.0, "carts": 0.08, "returns": 0.12, "categories": 5, "searches": 1.5,
    },
    "lapsed": {
        "share": 0.15, "sessions": 0.8, "pages": 4, "minutes": 1.1, "orders": 0.2, "value": 3.8,
        "visit_gap": 60, "order_gap": 150, "tenure": (3, 300), "opens": (1, 9), "clicks": (1, 12),
        "discount": (2, 5), "mobile": (3, 3), "night": (2, 6), "tickets": 0.2, "video": 0.1,
        "video_minutes": 1.5, "carts": 0.02, "returns": 0.08, "categories": 1, "searches": 0.3,
    },
    "new": {
        "share": 0.12, "sessions": 6, "pages": 6, "minutes": 1.5, "orders": 0.5, "value": 3.5,
        "visit_gap": 3, "order_gap": 10, "tenure": (1.5, 12), "opens": (4, 4), "clicks": (2, 6),
        "discount": (3, 4), "mobile": (5, 2), "night": (2, 5), "tickets": 0.3, "video": 0.3,
        "video_minutes": 2.0, "carts": 0.05, "returns": 0.03, "categories": 3, "searches": 1.0,
    },
    "whale": {
        "share": 0.05, "sessions": 12, "pages": 8, "minutes": 2.0, "orders": 6.0, "value": 5.3,
        "visit_gap": 2, "order_gap": 8, "tenure": (5, 300), "opens": (5, 3), "clicks": (3, 4),
        "discount": (1, 9), "mobile": (2, 5), "night": (2, 8), "tickets": 0.6, "video": 0.2,
        "video_minutes": 2.0, "carts": 0.07, "returns": 0.10, "categories": 6, "searches": 0.7,
    },
    "mobile-video": {
        "share": 0.08, "sessions": 18, "pages": 3, "minutes": 2.4, "orders": 0.6, "value": 3.4,
        "visit_gap": 1, "order_gap": 45, "tenure": (2, 180), "opens": (2, 7), "clicks": (1, 9),
        "discount": (2, 5), "mobile": (9, 1.5), "night": (4, 3), "tickets": 0.1, "video": 0.95,
        "video_minutes": 4.5, "carts": 0.02, "returns": 0.04, "categories": 2, "searches": 0.3,
    },
}
# fmt: on


def user_shard(rows: int, number: int, seed: int = CLUSTER_SEED) -> tuple[Any, Any]:
    """Shard ``number`` of the synthetic users: ``rows`` x 20 features (``CLUSTER_FEATURES``)
    and each row's planted group. The same (seed, number) gives the same shard, whatever the
    number of users. Counts are Poisson around a user's own activity level (lognormal, shared
    by sessions, pages, carts, searches and video), money is lognormal, rates are beta, gaps
    exponential: skewed, correlated, and the groups' spreads overlap."""
    import numpy as np

    rng = np.random.default_rng([seed, number])
    groups = list(USER_GROUPS.values())
    shares = np.array([g["share"] for g in groups])
    group = rng.choice(len(groups), size=rows, p=shares / shares.sum())

    def of(name: str) -> Any:
        return np.array([g[name] for g in groups], dtype=np.float64)[group]

    def beta(name: str) -> Any:
        both = of(name)
        return rng.beta(both[:, 0], both[:, 1])

    activity = rng.lognormal(0.0, 0.5, rows)
    sessions = rng.poisson(of("sessions") * activity)
    pages = rng.poisson(sessions * of("pages") * rng.lognormal(0.0, 0.3, rows))
    minutes = rng.lognormal(of("minutes"), 0.6)
    orders = rng.poisson(of("orders") * rng.lognormal(0.0, 0.6, rows) * np.sqrt(activity))
    revenue = orders * rng.lognormal(of("value"), 0.5) * rng.lognormal(0.0, 0.2, rows)
    order_value = np.where(orders > 0, revenue / np.maximum(orders, 1), 0.0)
    visit_gap = np.minimum(rng.exponential(of("visit_gap")), 365.0)
    order_gap = np.where(orders > 0, np.minimum(rng.exponential(of("order_gap")), 90.0), 365.0)
    tenure = of("tenure")
    opens = beta("opens")
    watched = rng.random(rows) < of("video")
    video = np.where(watched, rng.lognormal(of("video_minutes"), 1.0) * activity, 0.0)
    matrix = np.column_stack(
        [
            sessions,
            pages,
            minutes,
            orders,
            revenue,
            order_value,
            visit_gap,
            order_gap,
            np.maximum(rng.gamma(tenure[:, 0], tenure[:, 1]), visit_gap),
            opens,
            opens * beta("clicks"),
            beta("discount"),
            rng.poisson(of("tickets") * (1 + 0.2 * orders)),
            beta("mobile"),
            video,
            rng.poisson(pages * of("carts")),
            rng.binomial(orders, of("returns")),
            np.minimum(1 + rng.poisson(of("categories")), 12),
            rng.poisson(sessions * of("searches")),
            beta("night"),
        ]
    ).astype(np.float64)
    return matrix, group.astype(np.int64)


def user_shards(users: int) -> tuple[list[Any], Any]:
    """The ``users`` synthetic users in shards of ``CLUSTER_SHARD_ROWS``, and every row's
    planted group."""
    import numpy as np

    made = [
        user_shard(min(CLUSTER_SHARD_ROWS, users - start), number)
        for number, start in enumerate(range(0, users, CLUSTER_SHARD_ROWS))
    ]
    return [matrix for matrix, _ in made], np.concatenate([group for _, group in made])


class _TimedShards:
    """The shards, re-iterable, noting when each pass over them starts and ends: the phases
    of ``fit_shards`` without touching it."""

    def __init__(self, shards: list[Any]) -> None:
        self._shards = shards
        self.passes: list[tuple[float, float]] = []

    def __iter__(self) -> Iterator[Any]:
        started = time.perf_counter()
        yield from self._shards
        self.passes.append((started, time.perf_counter()))


def _phases(began: float, ended: float, passes: list[tuple[float, float]]) -> dict[str, float]:
    """Seconds of each phase of a k-means ``fit_shards`` run from its three passes' times."""
    if len(passes) != 3:
        return {"total": round(ended - began, 3)}
    (s1, e1), (s2, e2), (s3, e3) = passes
    return {
        "moments_and_sample": round(e1 - s1, 3),
        "choose_k": round(s2 - e1, 3),
        "minibatch_pass": round(e2 - s2, 3),
        "assign_and_sums": round(e3 - s3, 3),
        "describe_and_quality": round(ended - e3, 3),
        "other": round((s1 - began) + (s3 - e2), 3),
    }


def cluster_fit_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Our fit: ``fit_shards`` on the users' shards with k chosen (``k="auto"``), timed."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from personify.segments.clustering import ClusteringSpec, fit_shards

    shards, planted = user_shards(spec["users"])
    timed = _TimedShards(shards)
    keys: list[list[str | None]] = [[] for _ in shards]

    def keep(number: int, clusters: Any, run_keys: Any) -> None:
        keys[number] = [run_keys[i] if i >= 0 else None for i in clusters.tolist()]

    gc.collect()
    rss_before = proc_status_bytes("VmRSS")
    hwm_reset = reset_rss_peak()
    started, cpu = time.perf_counter(), time.process_time()
    run = fit_shards(timed, ClusteringSpec(CLUSTER_FEATURES, k="auto"), on_labels=keep)
    ended, cpu_s = time.perf_counter(), time.process_time() - cpu
    hwm = proc_status_bytes("VmHWM")
    labels = np.array([key for shard in keys for key in shard])
    return {
        "users": spec["users"],
        "features": len(CLUSTER_FEATURES),
        "shards": len(shards),
        "k": run.k,
        "candidates": {str(k): v for k, v in sorted(run.candidates.items())},
        "silhouette": run.silhouette,
        "davies_bouldin": run.davies_bouldin,
        "seconds": round(ended - started, 3),
        "cpu_seconds": round(cpu_s, 3),
        "phases_seconds": _phases(started, ended, timed.passes),
        "ari_planted": round(float(adjusted_rand_score(planted, labels)), 4),
        "clusters": [{"size": c.size, "name": c.name} for c in run.clusters],
        "data_bytes": sum(s.nbytes for s in shards),
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": hwm,
        "rss_peak_delta_bytes": hwm - rss_before,
        "rss_peak_since": "fit start" if hwm_reset else "process start",
    }


def cluster_bare_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline: the same users in one matrix, standardised as ``fit_shards`` does (mean
    and standard deviation over every row), and a bare ``MiniBatchKMeans(n_clusters=k)``
    (sklearn's defaults but ``random_state``) fitted on it, timed."""
    import numpy as np
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_rand_score

    shards, planted = user_shards(spec["users"])
    matrix = np.vstack(shards)
    del shards
    gc.collect()
    rss_before = proc_status_bytes("VmRSS")
    hwm_reset = reset_rss_peak()
    started, cpu = time.perf_counter(), time.process_time()
    mean, scale = matrix.mean(axis=0), matrix.std(axis=0)
    standard = (matrix - mean) / np.where(scale > 0, scale, 1.0)
    standardised = time.perf_counter()
    model = MiniBatchKMeans(n_clusters=spec["k"], random_state=0).fit(standard)
    ended, cpu_s = time.perf_counter(), time.process_time() - cpu
    hwm = proc_status_bytes("VmHWM")
    return {
        "users": spec["users"],
        "k": spec["k"],
        "seconds": round(ended - started, 3),
        "standardise_seconds": round(standardised - started, 3),
        "fit_seconds": round(ended - standardised, 3),
        "cpu_seconds": round(cpu_s, 3),
        "n_steps": int(model.n_steps_),
        "n_iter": int(model.n_iter_),
        "ari_planted": round(float(adjusted_rand_score(planted, model.labels_)), 4),
        "cluster_sizes": np.bincount(model.labels_, minlength=spec["k"]).tolist(),
        "data_bytes": matrix.nbytes,
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": hwm,
        "rss_peak_delta_bytes": hwm - rss_before,
        "rss_peak_since": "standardise start" if hwm_reset else "process start",
    }


_CHILDREN = {
    "drain": drain_child,
    "build": build_child,
    "decode": decode_child,
    "sweep": sweep_child,
    "cluster_fit": cluster_fit_child,
    "cluster_bare": cluster_bare_child,
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


# -- the two parts ------------------------------------------------------------------------------


def worker_part(args: argparse.Namespace) -> dict[str, Any]:
    """The drain with no segment, then with 100: figures and the ratio of the rates."""
    runs: dict[str, Any] = {}
    for name, segments in (("none", False), ("segments_100", True)):
        progress(f"worker, {name}: {args.events} events of {args.users} users, batch {args.batch}")
        spec = {
            "events": args.events,
            "users": args.users,
            "batch": args.batch,
            "segments": segments,
        }
        figures = in_child("drain", spec)
        progress(
            f"  {figures['events_per_s']} events/s ({figures['events_per_s_all_in']} all in), "
            f"{figures['cpu_us_per_event']} CPU µs/event, {figures['members']['open']} members"
        )
        runs[name] = figures
    none, rules = runs["none"], runs["segments_100"]
    all_in = ratio(rules["events_per_s_all_in"], none["events_per_s_all_in"])
    return {
        "runs": runs,
        "ratio": all_in,
        "ratio_first_drain": ratio(rules["events_per_s"], none["events_per_s"]),
        "ratio_cpu_us_per_event": ratio(
            rules["cpu_us_per_event_all_in"], none["cpu_us_per_event_all_in"]
        ),
        "target": TARGET_RATIO,
        "meets_target": all_in is not None and all_in >= TARGET_RATIO,
    }


def sweep_part(args: argparse.Namespace) -> dict[str, Any]:
    """Build N due profiles, decode them all (the baseline), then sweep them."""
    with tempfile.TemporaryDirectory(prefix="personify-bench-sweep-") as tmp:
        spec = {"folder": tmp, "profiles": args.sweep_profiles, "templates": 400}
        progress(f"sweep: writing {args.sweep_profiles} due profiles")
        built = in_child("build", spec)
        progress(f"  built in {built['seconds']} s, {built['open_memberships']} memberships")
        decoded = in_child("decode", spec)
        progress(f"  decode baseline: {decoded['profiles_per_s']} profiles/s")
        swept = in_child("sweep", spec)
        progress(
            f"  sweep: {swept['profiles']} profiles in {swept['seconds']} s "
            f"({swept['profiles_per_s']} profiles/s), {swept['exits']} exits"
        )
    return {
        "sweep": swept,
        "baseline_decode": decoded,
        "sweep_build": built,
        "ratio_sweep_to_decode": ratio(swept["profiles_per_s"], decoded["profiles_per_s"]),
        "sweep_scaled_to_1m_seconds": round(swept["seconds"] * 1_000_000 / swept["profiles"], 1)
        if swept["profiles"]
        else None,
        "sweep_note": None
        if args.sweep_profiles >= 1_000_000
        else f"ran {args.sweep_profiles} profiles, not 1,000,000; "
        "sweep_scaled_to_1m_seconds assumes the rate holds",
    }


def clustering_part(args: argparse.Namespace) -> dict[str, Any]:
    """Our fit with k chosen, then the bare mini-batch k-means with the k it chose."""
    users = args.cluster_users
    progress(f"clustering: {users} users x {len(CLUSTER_FEATURES)} features, k=auto")
    ours = in_child("cluster_fit", {"users": users})
    progress(
        f"  k={ours['k']} in {ours['seconds']} s, peak RSS +"
        f"{ours['rss_peak_delta_bytes'] // 2**20} MiB, ARI {ours['ari_planted']}"
    )
    bare = in_child("cluster_bare", {"users": users, "k": ours["k"]})
    progress(
        f"  bare MiniBatchKMeans: {bare['seconds']} s, peak RSS +"
        f"{bare['rss_peak_delta_bytes'] // 2**20} MiB, ARI {bare['ari_planted']}"
    )
    seconds_ratio = ratio(ours["seconds"], bare["seconds"])
    return {
        "clustering": {
            "ours": ours,
            "bare_minibatch_kmeans": bare,
            "ratio": seconds_ratio,
            "ratio_fit_only": ratio(ours["seconds"], bare["fit_seconds"]),
            "ratio_rss_peak_delta": ratio(
                ours["rss_peak_delta_bytes"], bare["rss_peak_delta_bytes"]
            ),
            "target_seconds": TARGET_CLUSTER_SECONDS,
            "target_ratio": TARGET_CLUSTER_RATIO,
            "meets_target_seconds": ours["seconds"] < TARGET_CLUSTER_SECONDS,
            "meets_target_ratio": seconds_ratio is not None
            and seconds_ratio <= TARGET_CLUSTER_RATIO,
            "note": None
            if users >= 1_000_000
            else f"ran {users} users, not 1,000,000: the targets are for 1,000,000",
        }
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--batch", type=int, default=HEADLINE_BATCH)
    parser.add_argument("--sweep-profiles", type=int, default=1_000_000)
    parser.add_argument(
        "--cluster-users",
        type=int,
        default=1_000_000,
        help="users (rows of 20 features) the clustering part fits",
    )
    parser.add_argument(
        "--parts",
        default="worker,sweep,clustering",
        help="comma-separated: worker, sweep, clustering (all three)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20,000 events of 800 users, a sweep of 20,000 profiles, 100,000 users clustered",
    )
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.users = min(args.events, 20_000), min(args.users, 800)
        args.sweep_profiles = min(args.sweep_profiles, 20_000)
        args.cluster_users = min(args.cluster_users, 100_000)
    args.parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not args.parts or args.parts - {"worker", "sweep", "clustering"}:
        parser.error("--parts takes worker, sweep, clustering")
    if args.sweep_profiles < 1 or args.events < 1 or args.batch < 1:
        parser.error("--events, --batch and --sweep-profiles are at least 1")
    if args.cluster_users < 100:
        parser.error("--cluster-users is at least 100")
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
        "benchmark": "segments",
        "date": started_at.isoformat(timespec="seconds"),
        "events": args.events,
        "users": args.users,
        "batch_size": args.batch,
        "sweep_profiles": args.sweep_profiles,
        "cluster_users": args.cluster_users,
    }
    if "worker" in args.parts:
        result |= worker_part(args)
    if "sweep" in args.parts:
        result |= sweep_part(args)
    if "clustering" in args.parts:
        result |= clustering_part(args)
    result["memory"] = (
        "rss_peak_delta_bytes: VmHWM at the end minus VmRSS at the start of what is measured, "
        "VmHWM reset through /proc/self/clear_refs then (the whole process)"
    )
    result["setup"] = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
