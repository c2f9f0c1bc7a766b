"""``personify audit …`` in-process: commands recorded with ``record_cli`` are listed,
exported as JSON lines and verified; a tampered database fails verify with the record named."""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
from pathlib import Path

import pytest

from personify.cli.audit import record_cli
from personify.cli.context import CliContext
from tests.cli.conftest import Invoke, ok


@pytest.fixture
def recorded(data_dir: Path, monkeypatch: pytest.MonkeyPatch, run: Invoke) -> list[int]:
    """Five CLI commands recorded in the data folder the ``run`` fixture's CLI uses."""
    monkeypatch.setenv("PERSONIFY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PERSONIFY_PII_HASH_KEY", "x")
    monkeypatch.setenv("PERSONIFY_ENVIRONMENT", "test")
    ctx = CliContext()
    ids = [
        record_cli(ctx, "experiments start", 0, resource="hero-test"),
        record_cli(ctx, "segments delete", 1, resource="vip"),
        record_cli(ctx, "keys create", 0),
        record_cli(ctx, "experiments stop", 0, resource="hero-test"),
        record_cli(ctx, "keys revoke", 0),
    ]
    assert ids == [1, 2, 3, 4, 5]
    return [i for i in ids if i is not None]


def test_verify_passes_on_a_good_chain_and_lists_show_the_records(
    run: Invoke, recorded: list[int]
) -> None:
    text = ok(run("audit", "verify"))
    assert text.startswith("ok: 5 records")
    listed = ok(run("audit", "list")).splitlines()
    assert len(listed) == 5
    assert "cli experiments start" in listed[0] and "hero-test" in listed[0]
    assert "failed" in listed[1] and socket.gethostname() in listed[1]
    documents = json.loads(ok(run("audit", "list", "--format", "json", "--limit", "2")))
    assert [d["id"] for d in documents] == [1, 2]
    assert {d["actorKind"] for d in documents} == {"cli"}
    assert [d["status"] for d in documents] == [0, 1]
    actor = documents[0]["actor"]
    assert len(ok(run("audit", "list", "--actor", actor)).splitlines()) == 5
    assert ok(run("audit", "list", "--actor", "someone-else")) == ""
    assert ok(run("audit", "list", "--since", "2999-01-01")) == ""
    bad = run("audit", "list", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "--since" in bad.output


def test_export_writes_json_lines_with_the_chain(
    run: Invoke, recorded: list[int], tmp_path: Path
) -> None:
    output = tmp_path / "audit.jsonl"
    ok(run("audit", "export", "--output", str(output)))
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == [1, 2, 3, 4, 5]
    assert all(b["prevHash"] == a["hash"] for a, b in itertools.pairwise(lines))
    printed = [json.loads(line) for line in ok(run("audit", "export")).splitlines()]
    assert printed == lines


def test_verify_fails_on_a_tampered_database_and_names_the_record(
    run: Invoke, recorded: list[int], data_dir: Path
) -> None:
    with sqlite3.connect(data_dir / "personify.db") as conn:
        conn.execute("UPDATE audit_log SET status = 0 WHERE id = 2")
    result = run("audit", "verify")
    assert result.exit_code == 1
    assert "record 2" in result.output and "altered" in result.output
    with sqlite3.connect(data_dir / "personify.db") as conn:
        conn.execute("UPDATE audit_log SET status = 1 WHERE id = 2")
        conn.execute("DELETE FROM audit_log WHERE id = 4")
    result = run("audit", "verify")
    assert result.exit_code == 1
    assert "record 4" in result.output and "removed" in result.output


def test_verify_of_an_empty_log_passes(run: Invoke) -> None:
    assert ok(run("audit", "verify")).startswith("ok: 0 records")
