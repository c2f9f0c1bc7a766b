"""The lake eraser: Delta delete, vacuum and log cleanup, on a real Delta table."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personify.lake.schema import events_to_table
from personify.lake.table import Lake
from personify.privacy.erasure import Subject
from personify.privacy.lake import LakeEraser, match_predicate, text_patterns
from tests.lake.conftest import normalized, track, write_lake


def _identify(number: int, user: str, email: str) -> dict[str, Any]:
    return normalized(
        {
            "type": "identify",
            "userId": user,
            "traits": {"email": email, "plan": "pro"},
            "messageId": f"i{number}",
            "timestamp": "2024-03-01T10:00:00Z",
        }
    )


def _alias(number: int, user: str, previous: str) -> dict[str, Any]:
    return normalized(
        {
            "type": "alias",
            "userId": user,
            "previousId": previous,
            "messageId": f"a{number}",
            "timestamp": "2024-03-01T10:00:00Z",
        }
    )


def _seed(folder: Path) -> tuple[Lake, Subject, int]:
    """A lake with alice's events (by every path) among bob's and carol's; alice's subject,
    and how many rows are hers."""
    alice_identify = _identify(1, "alice-0001", "alice@example.com")
    hashed = alice_identify["traits"]["email"]
    events = [
        normalized(track(1, user="alice-0001")),
        normalized(track(2, anon="anon-alice-77")),
        _alias(3, "alice-0001", "anon-alice-77"),
        alice_identify,
        # bob's event that mentions alice's hashed email (a referral): it names her too
        normalized(track(5, user="bob-0002", properties={"referrer": hashed})),
        # a promoted string property holding her id
        normalized(track(6, user="carol-0003", properties={"friend": "alice-0001"})),
        normalized(track(7, user="bob-0002")),
        normalized(track(8, user="carol-0003", properties={"url": "https://x.test/?q=1"})),
        _identify(9, "bob-0002", "bob@example.com"),
    ]
    lake = write_lake(folder, events, batch=3)
    subject = Subject(
        profile_ids=frozenset({"profile-alice"}),
        ids=frozenset({"alice-0001", "anon-alice-77"}),
        hashed=frozenset({hashed}),
    )
    return lake, subject, 6


def _every_text(folder: Path) -> list[str]:
    """Every string value of every Parquet file on disk, and every log file's text."""
    texts: list[str] = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            texts.append(path.read_text())
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            texts.append(str(table.to_pylist()))
    return texts


def test_erase_removes_every_row_and_file_naming_the_subject(tmp_path: Path) -> None:
    lake, subject, hers = _seed(tmp_path / "lake")
    before = lake.open().count()
    eraser = LakeEraser(lake, retention_hours=0)

    result = eraser.erase(subject)

    assert result["rows_deleted"] == hers
    assert "remains" not in result
    assert result["files_vacuumed"] >= 1
    assert lake.open().count() == before - hers
    users = lake.dataset().to_table(columns=["user_id"]).column("user_id").to_pylist()
    assert sorted(users) == ["bob-0002", "bob-0002", "carol-0003"]
    assert eraser.find(subject) == []
    for text in _every_text(tmp_path / "lake"):
        for needle in subject.needles:
            assert needle not in text


def test_find_reports_the_rows_before_erasure(tmp_path: Path) -> None:
    lake, subject, hers = _seed(tmp_path / "lake")
    found = LakeEraser(lake, retention_hours=0).find(subject)
    assert found[0].startswith(f"lake: {hers} rows in version")
    # the commits' statistics name her too
    assert any("log file" in place for place in found)


def test_within_the_retention_the_old_files_remain_and_are_reported(tmp_path: Path) -> None:
    lake, subject, hers = _seed(tmp_path / "lake")
    result = LakeEraser(lake, retention_hours=168).erase(subject)

    assert result["rows_deleted"] == hers
    assert result["files_vacuumed"] == 0
    assert result["log_files_removed"] == 0
    remains = result["remains"]
    assert remains["retention_hours"] == 168
    assert any("rows in the removed file" in place for place in remains["files"])
    assert any("log file" in place for place in remains["files"])
    assert not any("in version" in place for place in remains["files"])
    # the current version no longer has her; a re-run after the retention (0 here) cleans up
    again = LakeEraser(lake, retention_hours=0)
    second = again.erase(subject)
    assert second["rows_deleted"] == 0
    assert second["files_vacuumed"] >= 1
    assert second["log_files_removed"] >= 1
    assert again.find(subject) == []


def test_erase_is_idempotent(tmp_path: Path) -> None:
    lake, subject, _ = _seed(tmp_path / "lake")
    eraser = LakeEraser(lake, retention_hours=0)
    eraser.erase(subject)
    version = lake.version()
    rows = lake.open().count()
    again = eraser.erase(subject)
    assert again["rows_deleted"] == 0
    assert "remains" not in again
    assert lake.open().count() == rows
    # nothing to delete commits no delete
    later = lake.history(lake.version() - version)  # type: ignore[operator]
    assert [c["operation"] for c in later if c["operation"] == "DELETE"] == []


def test_a_short_id_matches_whole_values_only(tmp_path: Path) -> None:
    events = [
        normalized(track(1, user="u7")),
        normalized(track(2, user="u8", properties={"friend": "u7"})),
        normalized(track(3, user="u9", properties={"path": "/menu7/u7x"})),
    ]
    lake = write_lake(tmp_path / "lake", events)
    subject = Subject(frozenset(), frozenset({"u7"}), frozenset())
    result = LakeEraser(lake, retention_hours=0).erase(subject)
    assert result["rows_deleted"] == 2
    users = lake.dataset().to_table(columns=["user_id"]).column("user_id").to_pylist()
    assert users == ["u9"]


def test_an_empty_or_missing_lake_is_already_clean(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "nothing"))
    subject = Subject(frozenset(), frozenset({"alice-0001"}), frozenset())
    eraser = LakeEraser(lake, retention_hours=0)
    assert eraser.erase(subject)["rows_deleted"] == 0
    assert eraser.find(subject) == []


def test_erase_while_the_lake_writer_appends(tmp_path: Path) -> None:
    lake, subject, hers = _seed(tmp_path / "lake")
    before = lake.open().count()
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        # another process's lake writer: its own Lake handle, its own consumer group
        other = Lake(lake.uri)
        number = 100
        try:
            while not stop.is_set() and number < 160:
                rows = events_to_table(
                    [normalized(track(number, user="dave-0004"))],
                    partitions=[0],
                    offsets=[str(number)],
                    existing=other.schema(),
                )
                other.watermarks("writer-2", {0})
                other.append(rows, group="writer-2", offsets={0: str(number)})
                written.append(number)
                number += 1
                # the real writer commits a batch every linger_ms (1 s by default)
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [LakeEraser(lake, retention_hours=0).erase(subject) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert sum(r["rows_deleted"] for r in results) == hers
    table = lake.open()
    assert table.count() == before - hers + len(written)
    dave = [u for u in lake.dataset().to_table().column("user_id").to_pylist() if u == "dave-0004"]
    assert len(dave) == len(written)
    assert LakeEraser(lake, retention_hours=0).find(subject) == []


def test_the_predicate_covers_ids_text_and_promoted_string_columns() -> None:
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("anonymous_id", pa.string()),
            ("properties", pa.string()),
            ("prop_friend", pa.string()),
            ("prop_price", pa.float64()),
        ]
    )
    predicate = match_predicate(schema, {"it's-long-id"}, {"it's-long-id", "u7"})
    assert predicate is not None
    assert "\"user_id\" IN ('it''s-long-id')" in predicate
    assert 'strpos("prop_friend", \'"u7"\') > 0' in predicate
    assert "prop_price" not in predicate
    assert text_patterns(["", "u7", "long-enough"]) == ['"u7"', "long-enough"]


@pytest.mark.parametrize("hours", [-1.0, float("nan")])
def test_a_bad_retention_is_refused(tmp_path: Path, hours: float) -> None:
    with pytest.raises(ValueError, match="retention_hours"):
        LakeEraser(Lake(str(tmp_path)), retention_hours=hours)
