"""Point-in-time features benchmark: ``features_as_of`` over a lake of N events / N/10 users.

Run it with ``.venv/bin/python bench/features.py [--events N] [--users U]`` (default
1,000,000 events, 100,000 users; ``--events 100000`` for a quick run). It prints ONE JSON
object on stdout (progress goes to stderr):

* ``features_as_of`` — wall seconds to compute every user's feature vector at T from the
  lake (DuckDB scan and dedupe, replay through the worker's ``apply_event``/``merge_states``,
  evaluation, Arrow table), events/s, and the peak resident memory of the process that did
  it (a fresh child process that does nothing else, so generating the data does not count)
  next to its resident memory just before the call;
* ``baseline`` — in another fresh process, DuckDB's scan of the same events (the same
  query: columns, ``received_at <= T``, deduplication) fetched into one Arrow table without
  touching Python objects: the floor of reading the lake;
* ``ratio`` — ``features_as_of`` seconds over baseline seconds;
* ``setup`` — events, users, columns of the feature table, lake files, CPU count, versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

from personify.lake.schema import events_to_table
from personify.lake.table import Lake

sys.path.insert(0, str(Path(__file__).parent))
from lake import shop_events  # the lake benchmark's event generator

_CHUNK = 100_000


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_lake(folder: Path, events: int, users: int, end: datetime) -> Lake:
    """Write ``events`` events of ``users`` users into a fresh lake, in 100k-event commits."""
    lake = Lake(str(folder))
    done = 0
    while done < events:
        count = min(_CHUNK, events - done)
        chunk = shop_events(count, users, end=end, seed=done + 1)
        for i, event in enumerate(chunk):
            event["messageId"] = f"bench-{done + i}"
        rows = events_to_table(
            chunk,
            partitions=[0] * count,
            offsets=[str(done + i + 1) for i in range(count)],
            existing=lake.schema(),
        )
        lake.append(rows, group="bench", offsets={0: str(done + count)})
        done += count
        print(f"  {done:,} events written", file=sys.stderr, flush=True)
    return lake


def measure(lake_path: str, as_of: datetime, what: str) -> dict[str, float | int]:
    """In this fresh process: ``features_as_of`` or the baseline scan; time and peak memory."""
    from personify.lake.warehouse import Warehouse
    from personify.predict.features import features_as_of
    from personify.predict.replay import _EVENTS
    from personify.profiles.features import FeatureSet

    lake = Lake(lake_path)
    rss_before = _rss_mb()
    started = time.perf_counter()
    if what == "baseline":
        with Warehouse(lake) as warehouse:
            rows = (
                warehouse.connection.sql(
                    _EVENTS.format(where="received_at <= $as_of"), params={"as_of": as_of}
                )
                .to_arrow_table()
                .num_rows
            )
        columns = 0
    else:
        table = features_as_of(lake, FeatureSet(), as_of)
        rows, columns = table.num_rows, table.num_columns
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "rows": rows,
        "columns": columns,
        "rss_before_mb": round(rss_before),
        "peak_rss_mb": round(_peak_mb()),
    }


def _child(lake: Lake, as_of: datetime, what: str) -> dict[str, float | int]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            what,
            "--lake",
            lake.uri,
            "--as-of",
            as_of.isoformat(),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float | int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Build the lake, measure in a child process, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=None, help="default: events / 10")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lake", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--as-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.lake, datetime.fromisoformat(args.as_of), args.child)))
        return

    users = args.users or max(1, args.events // 10)
    end = datetime.now(UTC).replace(microsecond=0)
    root = Path(tempfile.mkdtemp(prefix="personify-bench-features-"))
    try:
        print(f"building a lake of {args.events:,} events / {users:,} users", file=sys.stderr)
        lake = build_lake(root / "lake", args.events, users, end)
        files = lake.file_count()
        as_of = end + timedelta(seconds=1)
        print("measuring the baseline scan in a fresh process", file=sys.stderr, flush=True)
        baseline = _child(lake, as_of, "baseline")
        print("measuring features_as_of in a fresh process", file=sys.stderr, flush=True)
        child = _child(lake, as_of, "features")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    seconds = float(child["seconds"])
    result = {
        "benchmark": "features_as_of",
        "features_as_of": {
            "seconds": seconds,
            "events_per_s": round(args.events / seconds),
            "users": child["rows"],
            "peak_rss_mb": child["peak_rss_mb"],
            "rss_before_mb": child["rss_before_mb"],
        },
        "baseline": {
            "what": "DuckDB scan + dedupe of the same events into Arrow (no Python objects)",
            "seconds": baseline["seconds"],
            "rows": baseline["rows"],
            "peak_rss_mb": baseline["peak_rss_mb"],
        },
        "ratio": round(seconds / max(float(baseline["seconds"]), 1e-9), 1),
        "setup": {
            "events": args.events,
            "users": users,
            "feature_columns": child["columns"],
            "lake_files": files,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "duckdb": metadata.version("duckdb"),
            "deltalake": metadata.version("deltalake"),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
