"""``Lake.optimize``: compaction and vacuum, also while a writer keeps appending."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
from click.testing import CliRunner

from personify.cli.main import main
from personify.lake.schema import events_to_table
from personify.lake.table import Lake
from tests.lake.conftest import cli_env, normalized, track


def _rows(start: int, count: int) -> pa.Table:
    events = [normalized(track(i)) for i in range(start, start + count)]
    return events_to_table(
        events,
        partitions=[0] * count,
        offsets=[str(i + 1) for i in range(start, start + count)],
    )


def _append_batches(lake: Lake, batches: int, size: int, start: int = 0) -> None:
    for b in range(batches):
        first = start + b * size
        lake.append(_rows(first, size), group="lake", offsets={0: str(first + size)})


def _data_files(folder: Path) -> int:
    return sum(1 for f in folder.rglob("*.parquet") if "_delta_log" not in f.parts)


def _ids(lake: Lake) -> list[str]:
    ids: list[str] = lake.open().to_pyarrow_table(columns=["message_id"]).column(0).to_pylist()
    return ids


def test_compaction_merges_small_files_and_keeps_every_row(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    _append_batches(lake, 12, 20)
    files_before = lake.file_count()
    result = lake.optimize(retention_hours=168)
    assert result.files_removed == files_before
    assert lake.file_count() == result.files_added < files_before
    assert sorted(_ids(lake)) == sorted(f"m{i}" for i in range(240))
    # within the retention nothing is deleted, so older versions stay readable
    assert result.files_vacuumed == 0
    assert lake.open(version=5).count() == 120


def test_vacuum_deletes_the_compacted_files_after_the_retention(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    _append_batches(lake, 6, 10)
    parquet_before = _data_files(tmp_path / "lake")
    first = lake.optimize(retention_hours=168)
    second = lake.optimize(retention_hours=0)
    assert first.files_removed == parquet_before
    assert second.files_vacuumed == parquet_before
    assert _data_files(tmp_path / "lake") == first.files_added
    assert len(_ids(lake)) == 60


def test_optimize_while_a_writer_appends_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    _append_batches(lake, 10, 10)
    writer_lake = Lake(str(tmp_path / "lake"))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            _append_batches(writer_lake, 30, 10, start=100)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    results = []
    while writer.is_alive():
        results.append(lake.optimize(retention_hours=0))
    writer.join()
    results.append(lake.optimize(retention_hours=0))
    assert not errors
    assert sum(r.files_removed for r in results) > 0
    ids = _ids(lake)
    assert len(ids) == 400
    assert sorted(ids) == sorted(f"m{i}" for i in range(400))
    assert lake.watermarks("lake", {0}) == {0: 400}


def test_the_optimize_command_reports_what_it_did(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lake = Lake(str(data / "lake"))
    _append_batches(lake, 4, 5)
    runner = CliRunner()
    result = runner.invoke(main, ["lake", "optimize"], env=cli_env(data))
    assert result.exit_code == 0, result.output
    assert "compacted 4 files into 1" in result.output
    refused = runner.invoke(main, ["lake", "optimize", "--retention-hours", "0"], env=cli_env(data))
    assert refused.exit_code == 1
    assert "at least 1" in refused.output


def test_a_full_vacuum_removes_files_of_writes_that_never_committed(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    _append_batches(lake, 2, 5)
    partition = next(p for p in (tmp_path / "lake").iterdir() if p.name.startswith("event_date="))
    orphan = partition / "part-crashed.parquet"
    orphan.write_bytes(b"PAR1 half a file")
    assert lake.optimize(retention_hours=1, full=True).files_vacuumed == 0  # too young
    assert orphan.exists()
    assert lake.optimize(retention_hours=0, full=True).files_vacuumed >= 1
    assert not orphan.exists()
    assert len(_ids(lake)) == 10
