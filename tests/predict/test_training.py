"""Point-in-time features: the batch engine over the lake equals the real-time profiles at T,
and nothing received after T reaches a training row."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from personify.cli.main import main
from personify.clock import format_timestamp
from personify.eventlog.sqlite import SQLiteEventLog
from personify.lake.sink import LakeSink
from personify.lake.table import Lake
from personify.lake.warehouse import Warehouse
from personify.predict.features import (
    feature_table,
    features_as_of,
    flatten_document,
    profile_documents,
)
from personify.predict.replay import replay_profiles, replay_shards
from personify.predict.training import FeatureJob
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureDefinition, FeatureSet, ProfileConfig
from personify.profiles.processor import ProfileProcessor
from personify.profiles.state import decode_state, evaluate_profile
from personify.profiles.tables import profiles
from personify.quality.checks import QualityContext
from personify.quality.lineage import LineageRepository
from personify.quality.results import QualityRepository
from personify.quality.runner import QualityCheckFailed
from personify.settings import Settings
from personify.store.database import Database, open_database
from personify.store.failed_events import FailedEventRepository
from personify.worker.worker import StreamWorker
from tests.lake.conftest import cli_env, normalized, records, write_lake

END = datetime(2024, 6, 1, tzinfo=UTC)
FEATURES = FeatureSet(
    ProfileConfig(
        features=[
            FeatureDefinition(name="video_plays", event="Video Played", windows=[7, "all"]),
            FeatureDefinition(
                name="shoe_views",
                event="Product Viewed",
                where={"properties.category": "shoes"},
                windows=[1, 30],
            ),
            FeatureDefinition(
                name="max_price_viewed",
                event="Product Viewed",
                aggregation="max",
                property="properties.price",
                windows=[7, "all"],
            ),
            FeatureDefinition(
                name="plays_per_show",
                event="Video Played",
                group_by="properties.show",
                windows=[30],
            ),
        ]
    )
)
_AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
]


def stream(seed: int, *, users: int = 12, per_user: int = 25) -> list[dict[str, Any]]:
    """A shop's events in arrival order: anonymous browsing that later identifies, second
    devices, aliases, orders, late events (days behind) and out-of-order arrivals."""
    rng = random.Random(seed)
    raws: list[tuple[datetime, dict[str, Any]]] = []
    number = 0
    for u in range(users):
        user = f"user-{u:02d}"
        devices = [f"anon-{u:02d}-{d}" for d in range(rng.randint(1, 2))]
        moment = END - timedelta(days=40) + timedelta(hours=rng.uniform(0, 200))
        identified: set[str] = set()
        for n in range(per_user):
            moment += timedelta(minutes=rng.expovariate(1 / 90))
            if moment >= END - timedelta(hours=1):
                break
            device = rng.choice(devices)
            known = device in identified
            ids: dict[str, Any] = {"anonymousId": device}
            if known or rng.random() < 0.05:
                ids["userId"] = user
            roll = rng.random()
            number += 1
            base: dict[str, Any] = {
                **ids,
                "messageId": f"e{number}",
                "timestamp": format_timestamp(moment),
                "context": {
                    "userAgent": rng.choice(_AGENTS),
                    "campaign": {"source": rng.choice(["news", "ads"]), "name": f"c{n % 3}"},
                },
            }
            if n == per_user // 2 and device not in identified:
                event = base | {
                    "type": "identify",
                    "userId": user,
                    "traits": {"plan": rng.choice(["free", "pro"]), "email": f"{user}@x.io"},
                }
                identified.add(device)
            elif roll < 0.25:
                event = base | {
                    "type": "page",
                    "properties": {"category": rng.choice(["blog", "docs"])},
                }
            elif roll < 0.55:
                event = base | {
                    "type": "track",
                    "event": "Product Viewed",
                    "properties": {
                        "category": rng.choice(["shoes", "hats"]),
                        "price": rng.choice([10, 25.5, 99]),
                        "tags": ["sale"] if rng.random() < 0.3 else [],
                    },
                }
            elif roll < 0.7:
                event = base | {
                    "type": "track",
                    "event": "Video Played",
                    "properties": {"show": rng.choice(["Cooking", "News"])},
                }
            elif roll < 0.8 and "userId" in ids:
                event = base | {
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {
                        "revenue": rng.choice([20, 49.9, 120]),
                        "products": [{"product_id": "p1", "category": "shoes"}],
                    },
                }
            elif roll < 0.83 and len(devices) > 1:
                event = {
                    "type": "alias",
                    "userId": user,
                    "previousId": devices[-1],
                    "messageId": f"e{number}",
                    "timestamp": format_timestamp(moment),
                }
            else:
                event = base | {"type": "track", "event": "Article Viewed"}
            # most arrive within seconds, a few hours out of order, some days late
            delay = rng.choice(
                [timedelta(seconds=rng.uniform(0, 5))] * 8
                + [timedelta(hours=rng.uniform(1, 6)), timedelta(days=rng.uniform(2, 9))]
            )
            raws.append((moment + delay, event))
    raws.sort(key=lambda item: item[0])
    return [normalized(raw, received_at=arrival) for arrival, raw in raws]


def _arrived(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["receivedAt"])


def _realtime_documents(db: Database, as_of: datetime) -> dict[str, dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(profiles.c.profile_id, profiles.c.state)).all()
    as_of_ms = datetime_ms(as_of)
    return {pid: evaluate_profile(decode_state(blob), FEATURES, as_of_ms) for pid, blob in rows}


@pytest.mark.parametrize("seed", [1, 2])
async def test_batch_features_equal_the_real_time_profiles_at_every_cut_off(
    tmp_path: Path, settings: Settings, seed: int
) -> None:
    events = stream(seed)
    late = sum(
        1
        for e in events
        if _arrived(e) - datetime.fromisoformat(e["timestamp"]) > timedelta(days=1)
    )
    out_of_order = sum(1 for a, b in itertools.pairwise(events) if a["timestamp"] > b["timestamp"])
    assert late >= 10 and out_of_order >= 20, (
        "the stream must exercise late and out-of-order events"
    )
    first, last = _arrived(events[0]), _arrived(events[-1])
    cut_offs = [first + (last - first) * f for f in (0.2, 0.45, 0.7, 0.9)] + [last]

    # one event log, two consumer groups: the real stream worker and the lake sink
    db = open_database(settings)
    log = SQLiteEventLog(tmp_path / "events.db", durability="off")
    await log.start()
    worker = StreamWorker(
        log,
        ProfileProcessor(db, FEATURES),
        FailedEventRepository(db),
        batch_size=7,
        poll_timeout_ms=5,
    )
    held: dict[datetime, dict[str, dict[str, Any]]] = {}
    pending = list(events)
    for cut in cut_offs:
        # what the collector accepted by the cut-off, in arrival order; the worker drains it
        due = [e for e in pending if _arrived(e) <= cut]
        pending = pending[len(due) :]
        await log.append(records(due))
        await worker.run(until_idle=True)
        held[cut] = _realtime_documents(db, cut)
    assert not FailedEventRepository(db).list()

    # the batch engine: the whole stream (including what came after each cut-off) in the lake
    lake = Lake(str(tmp_path / "lake"))
    sink = LakeSink(log, lake, linger_ms=0, max_batch_events=97)
    while (await sink.process_once()).read:
        pass
    await log.close()
    db.dispose()
    for cut in cut_offs:
        replayed = replay_profiles(lake, FEATURES, cut)
        batch_docs = profile_documents(replayed, FEATURES)
        assert set(batch_docs) == set(held[cut])
        assert len(batch_docs) > 3
        for pid, document in held[cut].items():
            assert batch_docs[pid] == document, f"profile {pid} differs at {cut}"
        table = features_as_of(lake, FEATURES, cut)
        expected = feature_table(held[cut], cut)
        assert table.to_pylist() == expected.to_pylist()
    # anonymous profiles of the first cut-off were merged into users by the last one
    anonymous_early = {pid for pid in held[cut_offs[0]] if pid.startswith("anon-")}
    assert anonymous_early - set(held[cut_offs[-1]])


# -- no leakage ------------------------------------------------------------------------------


def _after(events: list[dict[str, Any]], cut: datetime) -> list[dict[str, Any]]:
    """Events that arrive after ``cut``: late ones from before it, new ones, new identity links."""
    users = sorted({e["userId"] for e in events if e.get("userId")})
    added: list[dict[str, Any]] = []
    for i, user in enumerate(users):
        arrival = cut + timedelta(hours=1 + i)
        added.append(
            normalized(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "properties": {"revenue": 1000},
                    "timestamp": format_timestamp(cut - timedelta(days=2)),  # late: before T
                    "messageId": f"late-{i}",
                },
                received_at=arrival,
            )
        )
        added.append(
            normalized(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Video Played",
                    "timestamp": format_timestamp(cut + timedelta(days=1)),
                    "messageId": f"next-{i}",
                },
                received_at=cut + timedelta(days=1),
            )
        )
    # a link made after T between two people's ids must not merge them as of T
    added.append(
        normalized(
            {"type": "alias", "userId": users[0], "previousId": users[1], "messageId": "link"},
            received_at=cut + timedelta(days=3),
        )
    )
    added.append(
        normalized(
            {"type": "track", "userId": users[0], "event": "Ping", "messageId": "tail"},
            received_at=cut + timedelta(days=40),
        )
    )
    return added


def test_nothing_received_after_t_reaches_the_features(tmp_path: Path, settings: Settings) -> None:
    events = stream(3)
    cut = _arrived(events[len(events) // 2])
    known = [e for e in events if _arrived(e) <= cut]
    everything = events + _after(events, cut)
    only_known = write_lake(tmp_path / "known", known)
    full = write_lake(tmp_path / "full", everything, batch=50)

    job = FeatureJob(full, FEATURES, db=open_database(settings))
    frame = job.training_frame(cut, label="churn", horizon_days=30)
    reference = features_as_of(only_known, FEATURES, cut)
    features_only = frame.table.drop_columns(["label_churn"])
    assert features_only.to_pylist() == reference.to_pylist()
    # the full lake does hold events from before T that arrived after it (the late orders)
    with Warehouse(full) as warehouse:
        late = warehouse.query(
            "SELECT count(*) AS n FROM events_raw WHERE timestamp <= $t AND received_at > $t".replace(
                "$t", f"TIMESTAMPTZ '{cut.isoformat()}'"
            )
        ).to_pylist()
    assert late[0]["n"] >= 12
    assert max(features_only.column("revenue__all").to_pylist()) < 1000

    # labels do see the window after T: every user known at T played a video the day after
    churn = dict(
        zip(
            frame.table.column("user_id").to_pylist(),
            frame.table.column("label_churn").to_pylist(),
            strict=True,
        )
    )
    with_user_id = {pid for pid in churn if pid.startswith("user-")}
    assert with_user_id and all(churn[pid] == 0 for pid in with_user_id)


def test_clv_labels_sum_revenue_in_the_horizon_by_event_time(
    tmp_path: Path, settings: Settings
) -> None:
    cut = datetime(2024, 3, 1, tzinfo=UTC)
    raw = [
        ("ada", cut - timedelta(days=3), cut - timedelta(days=3), 10.0),
        ("ada", cut + timedelta(days=5), cut + timedelta(days=5), 20.0),
        ("ada", cut + timedelta(days=80), cut + timedelta(days=81), 30.0),
        ("ada", cut + timedelta(days=95), cut + timedelta(days=95), 999.0),  # beyond 90 days
        ("bob", cut - timedelta(days=1), cut - timedelta(days=1), 5.0),
        ("cat", cut + timedelta(days=2), cut + timedelta(days=2), 7.0),  # unknown at T
    ]
    events = [
        normalized(
            {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "properties": {"total": amount},
                "timestamp": format_timestamp(when),
                "messageId": f"o{i}",
            },
            received_at=arrival,
        )
        for i, (user, when, arrival, amount) in enumerate(raw)
    ]
    lake = write_lake(tmp_path / "lake", events)
    job = FeatureJob(lake, FEATURES, db=open_database(settings))
    frame = job.training_frame(cut, label="clv", output=tmp_path / "clv.parquet")
    rows = {r["user_id"]: r for r in pq.read_table(tmp_path / "clv.parquet").to_pylist()}
    assert set(rows) == {"ada", "bob"}
    assert rows["ada"]["label_clv"] == 50.0 and rows["bob"]["label_clv"] == 0.0
    assert rows["ada"]["revenue__all"] == 10.0
    churn = job.training_frame(cut, label="churn", horizon_days=30)
    assert dict(
        zip(
            churn.table.column("user_id").to_pylist(),
            churn.table.column("label_churn").to_pylist(),
            strict=True,
        )
    ) == {"ada": 0, "bob": 1}

    record = LineageRepository(open_database(settings)).get(frame.lineage_id or "")
    assert record.kind == "training_frame"
    assert record.parameters["label"] == "clv" and record.parameters["horizon_days"] == 90.0
    assert record.lake_versions == {"events": lake.version()}
    assert record.time_end == cut + timedelta(days=90)
    assert record.output == str(tmp_path / "clv.parquet") and record.row_count == 2


def test_a_label_window_not_yet_observed_is_refused(tmp_path: Path, settings: Settings) -> None:
    now = datetime(2024, 3, 1, tzinfo=UTC)
    lake = write_lake(
        tmp_path / "lake",
        [normalized({"type": "track", "userId": "a", "event": "X"}, received_at=now)],
    )
    job = FeatureJob(lake, FEATURES, db=open_database(settings))
    with pytest.raises(Exception, match="label window"):
        job.training_frame(now - timedelta(days=10), label="churn")


def test_a_table_failing_a_critical_check_is_neither_written_nor_given_lineage(
    tmp_path: Path, settings: Settings
) -> None:
    db = open_database(settings)
    lake = write_lake(
        tmp_path / "lake",
        [normalized({"type": "track", "userId": "a", "event": "X"}, received_at=END)],
    )
    job = FeatureJob(lake, FEATURES, db=db, quality=QualityContext(now=END))
    documents = {"a": {"orders": {"all": 1}}, "b": {"orders": {"all": -2}}}
    table = feature_table(documents, END)
    table = table.set_column(0, "user_id", pa.array(["a", "a"]))  # one user twice
    target = tmp_path / "bad.parquet"
    with pytest.raises(QualityCheckFailed) as failure:
        job.publish(
            "feature_table",
            table,
            version=lake.version(),
            as_of=END,
            time_end=END,
            parameters={},
            output=target,
        )
    report = failure.value.message
    assert report.startswith("quality FAILED: stage features")
    assert (
        "user_id.field_uniqueness" in report and "orders__all.greater_than_or_equal_to(0)" in report
    )
    assert not target.exists()
    assert LineageRepository(db).list() == []
    [run] = QualityRepository(db).latest("features")
    assert run.status == "failed"
    db.dispose()


def test_the_features_command_writes_parquet_and_lineage(tmp_path: Path) -> None:
    data = tmp_path / "data"
    now = datetime(2024, 4, 1, tzinfo=UTC)
    write_lake(
        data / "lake",
        [
            normalized(
                {
                    "type": "track",
                    "userId": f"u{i % 3}",
                    "event": "Product Viewed",
                    "properties": {"category": "shoes"},
                    "messageId": f"x{i}",
                    "timestamp": format_timestamp(now - timedelta(hours=i)),
                },
                received_at=now - timedelta(hours=i),
            )
            for i in range(12)
        ],
    )
    out = tmp_path / "features.parquet"
    result = CliRunner().invoke(
        main,
        ["lake", "features", "--as-of", "2024-04-01T00:00:00Z", "--output", str(out)],
        env=cli_env(data),
    )
    assert result.exit_code == 0, result.output
    assert "3 users" in result.output
    lineage_id = result.output.split("lineage ")[1].rstrip(")\n")
    shown = CliRunner().invoke(main, ["lineage", "show", lineage_id], env=cli_env(data))
    body = msgspec.json.decode(shown.output)
    assert body["kind"] == "feature_table" and body["rowCount"] == 3
    table = pq.read_table(out)
    assert table.column("event_counts__product_viewed__all").to_pylist() == [4, 4, 4]
    report = CliRunner().invoke(
        main, ["quality", "report", "--stage", "features"], env=cli_env(data)
    )
    assert "stage features" in report.output


def test_flatten_document_joins_paths_and_keeps_json_sections() -> None:
    row = flatten_document(
        {
            "orders": {"7d": 1, "all": 2},
            "event_counts": {"Product Viewed": {"1d": 0}},
            "affinities": {"tag": {"sale": 1.5}},
            "sessions": {"count": 3},
        }
    )
    assert row == {
        "orders__7d": 1,
        "orders__all": 2,
        "event_counts__product_viewed__1d": 0,
        "affinities": '{"tag":{"sale":1.5}}',
        "sessions__count": 3,
    }


def test_null_heavy_features_only_warn(tmp_path: Path, settings: Settings) -> None:
    lake = write_lake(
        tmp_path / "lake",
        [normalized({"type": "track", "userId": "a", "event": "X"}, received_at=END)],
    )
    job = FeatureJob(
        lake,
        FEATURES,
        db=open_database(settings),
        quality=QualityContext(now=END, max_null_rate=0.0),
    )
    result = job.features_as_of(END)
    assert result.quality is not None and result.quality.status == "warned"
    assert result.lineage_id is not None and result.quality.lineage_id == result.lineage_id


def test_an_event_in_the_lake_twice_counts_once_and_its_first_arrival_wins(
    tmp_path: Path,
) -> None:
    first = normalized(
        {
            "type": "track",
            "userId": "ada",
            "event": "Order Completed",
            "messageId": "o1",
            "properties": {"revenue": 10},
            "timestamp": "2024-05-01T00:00:00Z",
        },
        received_at=datetime(2024, 5, 1, tzinfo=UTC),
    )
    resent = first | {
        "properties": {"revenue": 99},
        "receivedAt": format_timestamp(datetime(2024, 5, 3, tzinfo=UTC)),
    }
    other_source = first | {"sourceId": "src-2"}
    lake = write_lake(tmp_path / "lake", [first, resent, other_source], batch=1)
    [row] = features_as_of(lake, FEATURES, datetime(2024, 5, 10, tzinfo=UTC)).to_pylist()
    # the same messageId from another source is another event, as in the worker
    assert row["orders__all"] == 2 and row["revenue__all"] == 20.0


def test_replaying_in_shards_gives_the_same_table(tmp_path: Path) -> None:
    events = stream(4, users=15)
    lake = write_lake(tmp_path / "lake", events, batch=60)
    cut = _arrived(events[-1])
    whole = features_as_of(lake, FEATURES, cut, max_ids_per_shard=None)
    shards = list(replay_shards(lake, FEATURES, cut, max_ids_per_shard=4))
    assert len(shards) > 3
    # every profile is whole in exactly one shard
    assert sum(len(s.states) for s in shards) == whole.num_rows
    assert features_as_of(lake, FEATURES, cut, max_ids_per_shard=4).to_pylist() == whole.to_pylist()


def test_one_pass_over_the_lake_gives_every_cut_offs_frame(tmp_path: Path) -> None:
    from personify.cli.shop_history import generate_history

    end = datetime(2024, 6, 1, tzinfo=UTC)
    history = generate_history(end, customers=120, days=60, seed=5)
    rng = random.Random(3)
    events = []
    for raw in history.events:
        moment = datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00"))
        # a tenth arrive days late, so a cut-off sees some of the past and not the rest
        late = timedelta(days=rng.uniform(1, 9)) if rng.random() < 0.1 else timedelta(0)
        events.append(normalized(raw, received_at=moment + late + timedelta(seconds=1)))
    # a device seen first, linked to a customer later: a merge between two cut-offs
    first = datetime(2024, 4, 10, tzinfo=UTC)
    for number, at in enumerate((first, first + timedelta(days=2))):
        raw = {"type": "track", "event": "Page Viewed", "anonymousId": "device-x"}
        stamp = {"messageId": f"dev-{number}", "timestamp": format_timestamp(at)}
        events.append(normalized({**raw, **stamp}, received_at=at))
    linked = end - timedelta(days=5)
    identify = {"type": "identify", "userId": "cust-0007", "anonymousId": "device-x"}
    stamp = {"messageId": "dev-link", "timestamp": format_timestamp(linked)}
    events.append(normalized({**identify, **stamp}, received_at=linked))
    lake = write_lake(tmp_path / "lake", events)
    cutoffs = [end - timedelta(days=d) for d in (40, 25, 24.5, 10, 0)]
    job = FeatureJob(lake, FEATURES, max_ids_per_shard=150)
    together = job.build_many(cutoffs, lake.version())
    for cut in cutoffs:
        # each cut-off replayed on its own, shard by shard (replay_shards)
        table = features_as_of(lake, FEATURES, cut, version=lake.version(), max_ids_per_shard=150)
        owner = {
            i: pid
            for shard in replay_shards(lake, FEATURES, cut, max_ids_per_shard=150)
            for pid, state in shard.states.items()
            for i in state.all_ids()
        }
        one, one_owner = together[cut]
        assert one.to_pylist() == table.to_pylist(), cut
        assert one_owner == owner, cut
    assert together[cutoffs[-1]][0].num_rows > together[cutoffs[0]][0].num_rows > 0
    # the device is a profile of its own until the link, then the customer's
    assert together[cutoffs[3]][1]["device-x"] == "device-x"
    assert together[cutoffs[4]][1]["device-x"] == "cust-0007"
