"""The derived-files eraser: lineage-recorded feature tables and training frames, export
folders, the models folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from personify.privacy.derived import DerivedFilesEraser
from personify.privacy.erasure import Subject
from personify.quality.lineage import LineageRepository
from personify.store.database import Database

ALICE = Subject(
    profile_ids=frozenset({"profile-alice"}),
    ids=frozenset({"alice-0001", "anon-alice-77"}),
    hashed=frozenset({"hmac-sha256:5f1e0c"}),
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'state.db'}", auto_upgrade=True)
    yield database
    database.dispose()


def _frame() -> pa.Table:
    return pa.table(
        {
            "user_id": ["alice-0001", "bob-0002", "anon-alice-77", "carol-0003"],
            "orders": [3.0, 1.0, 0.0, 2.0],
            "label_churn": [0, 1, 1, 0],
        }
    )


def _record(db: Database, kind: str, output: Path) -> str:
    return (
        LineageRepository(db)
        .record(
            kind,
            lake_uri="lake",
            lake_versions={"events": 3},
            time_start=None,
            time_end=None,
            parameters={},
            output=str(output),
            row_count=4,
        )
        .id
    )


def test_recorded_files_are_rewritten_without_the_subject(tmp_path: Path, db: Database) -> None:
    features = tmp_path / "out" / "features.parquet"
    features.parent.mkdir()
    pq.write_table(_frame(), features)
    frame_id = _record(db, "feature_table", features)
    exports = tmp_path / "exports"
    exports.mkdir()
    pacsv.write_csv(_frame(), exports / "scores.csv")
    (exports / "rejected.jsonl").write_text(
        '{"userId":"bob-0002"}\n{"traits":{"email":"hmac-sha256:5f1e0c"}}\n{"userId":"u9"}\n'
    )
    eraser = DerivedFilesEraser(db, folders=[exports], models_dir=tmp_path / "models")
    assert len(eraser.find(ALICE)) == 3

    result = eraser.erase(ALICE)

    assert result["rows_removed"] == 5
    assert "remains" not in result
    assert {Path(r["file"]).name for r in result["files_rewritten"]} == {
        "features.parquet",
        "scores.csv",
        "rejected.jsonl",
    }
    assert pq.read_table(features).column("user_id").to_pylist() == ["bob-0002", "carol-0003"]
    assert pq.read_table(features).column("orders").to_pylist() == [1.0, 2.0]
    assert pacsv.read_csv(exports / "scores.csv").num_rows == 2
    assert (exports / "rejected.jsonl").read_text() == '{"userId":"bob-0002"}\n{"userId":"u9"}\n'
    assert eraser.find(ALICE) == []
    # the rewrite is recorded, naming the original record and never the subject
    rewrites = LineageRepository(db).list("erasure_rewrite")
    assert [r.row_count for r in rewrites] == [2, 2, 2]
    assert any(frame_id in r.inputs for r in LineageRepository(db).list("erasure_rewrite"))
    for record in LineageRepository(db).list("erasure_rewrite"):
        assert "alice" not in str(record.to_dict())
    # idempotent
    assert eraser.erase(ALICE)["rows_removed"] == 0


def test_a_file_that_is_gone_is_skipped_and_one_unreadable_is_reported(
    tmp_path: Path, db: Database
) -> None:
    _record(db, "training_frame", tmp_path / "gone.parquet")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet alice-0001")
    _record(db, "training_frame", broken)
    eraser = DerivedFilesEraser(db)
    result = eraser.erase(ALICE)
    assert result["rows_removed"] == 0
    assert len(result["remains"]["unreadable_files"]) == 1
    assert "broken.parquet" in result["remains"]["unreadable_files"][0]
    assert eraser.find(ALICE) == [
        f"derived_files: cannot read {result['remains']['unreadable_files'][0]}"
    ]


def test_model_files_naming_the_subject_are_reported(tmp_path: Path, db: Database) -> None:
    models = tmp_path / "models" / "churn"
    models.mkdir(parents=True)
    (models / "v1.json").write_text('{"boosters": {"main": "tree\\nsplit_feature=0 1"}}')
    eraser = DerivedFilesEraser(db, models_dir=tmp_path / "models")
    assert eraser.find(ALICE) == []
    assert "remains" not in eraser.erase(ALICE)
    (models / "v2.json").write_text('{"details": {"example": "alice-0001"}}')
    result = eraser.erase(ALICE)
    assert result["remains"]["model_files"] == [str(models / "v2.json")]
    assert len(eraser.find(ALICE)) == 1
