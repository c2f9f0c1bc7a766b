"""``personify import`` drops the rows of an erased person, as the collector drops their
events: an erasure holds for historical imports too."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Invoke, ok


def test_an_import_drops_the_rows_of_erased_people(run: Invoke, tmp_path: Path) -> None:
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"type": "identify", "userId": "gone-1", "traits": {"plan": "a"}}))
    ok(run("import", str(first)))
    ok(run("worker", "--drain"))
    assert json.loads(ok(run("privacy", "erase", "gone-1", "--wait")))["status"] == "done"
    rows = tmp_path / "history.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps(row)
            for row in (
                {"type": "track", "userId": "gone-1", "event": "Product Viewed"},
                {"type": "track", "userId": "stays-2", "event": "Product Viewed"},
            )
        )
    )
    output = ok(run("import", str(rows)))
    assert "1 accepted" in output and "1 of erased people dropped" in output
