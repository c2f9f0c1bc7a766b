"""``personify serve --workers 2``: each process counts its own requests, and a scrape, which
reaches one of them, reports the sum over both (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from personify.cli.multiprocess import MULTIPROC_ENV, prepare_multiprocess_metrics
from tests.api import basic_auth
from tests.e2e.conftest import ServerProcess, make_server

pytestmark = pytest.mark.e2e

REQUESTS = "personify_ingest_requests_total"


def ok_requests(text: str) -> float:
    """The ``ok`` track requests of one metrics document, over every source."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == REQUESTS
        and sample.labels.get("route") == "track"
        and sample.labels.get("outcome") == "ok"
    )


def per_process(folder: Path) -> dict[str, float]:
    """``ok`` track requests by process, read from each process's own counter file."""
    counts: dict[str, float] = {}
    for path in sorted(folder.glob("counter_*.db")):
        pid = path.stem.removeprefix("counter_")
        metrics = MultiProcessCollector.merge([str(path)], accumulate=False)
        counts[pid] = sum(
            sample.value
            for metric in metrics
            for sample in metric.samples
            if sample.name == REQUESTS
            and sample.labels.get("route") == "track"
            and sample.labels.get("outcome") == "ok"
        )
    return counts


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path / "metrics"
    server = make_server(
        tmp_path / "data", "--workers", "2", "--no-worker", **{MULTIPROC_ENV: str(folder)}
    )
    server.start(timeout_s=60)
    yield server, folder
    server.stop()


def test_two_processes_counts_are_summed_by_any_scrape(
    served: tuple[ServerProcess, Path],
) -> None:
    server, folder = served
    sent = 0
    # a new connection per request: the kernel hands each to either process; keep sending
    # until both have answered some (a few dozen requests, almost always the first 20)
    while sent < 20 or len([n for n in per_process(folder).values() if n > 0]) < 2:
        assert sent < 600, f"one process answered everything: {per_process(folder)}"
        response = httpx.post(
            f"{server.base_url}/v1/track",
            json={"userId": "u1", "event": "Viewed", "messageId": f"m{sent}"},
            headers={**basic_auth(server.write_key), "Connection": "close"},
        )
        assert response.status_code == 200, response.text
        sent += 1
        if sent >= 20:
            # each process moves its counts to its file every second
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while sum(per_process(folder).values()) < sent:
        assert time.monotonic() < deadline, per_process(folder)
        time.sleep(0.1)
    files = per_process(folder)
    assert len(files) == 2 and all(count > 0 for count in files.values()), files
    assert sum(files.values()) == sent
    # every scrape, whichever process answers it, reports both processes' requests
    for _ in range(6):
        response = httpx.get(
            f"{server.base_url}/metrics",
            headers={"Authorization": f"Bearer {server.admin_key}", "Connection": "close"},
        )
        assert response.status_code == 200, response.text
        assert ok_requests(response.text) == sent


def test_serve_prepares_an_empty_folder_for_more_than_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    assert prepare_multiprocess_metrics(1) is None
    assert MULTIPROC_ENV not in os.environ
    made = prepare_multiprocess_metrics(2)
    assert made is not None and made.is_dir() and not list(made.iterdir())
    assert os.environ[MULTIPROC_ENV] == str(made)
    # a folder named already is kept, and emptied of an earlier run's files
    named = tmp_path / "named"
    named.mkdir()
    (named / "counter_1.db").write_bytes(b"old")
    (named / "notes.txt").write_text("kept")
    monkeypatch.setenv(MULTIPROC_ENV, str(named))
    assert prepare_multiprocess_metrics(4) == named
    assert sorted(p.name for p in named.iterdir()) == ["notes.txt"]
