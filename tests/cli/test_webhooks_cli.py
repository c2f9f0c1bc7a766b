"""``personify webhooks …`` through click's runner on a real SQLite data folder, delivering to
a real HTTP receiver: create (the secret once), list, deliver, deliveries, retry, delete, and
the one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from personify.clock import SystemClock
from personify.content.webhooks import enqueue_event, verify_signature
from personify.store.database import open_database
from tests.cli.conftest import Invoke, ok
from tests.conftest import make_settings
from tests.content.receiver import Receiver, receiving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as started:
        yield started


def as_json(text: str) -> Any:
    return msgspec.json.decode(text)


def publish(data_dir: Path, item_id: str) -> int:
    """Deliveries as the catalog writes them, in the CLI's state database."""
    db = open_database(make_settings(data_dir))
    try:
        with db.begin() as conn:
            return enqueue_event(conn, "content.published", item_id, 2, {}, now=SystemClock().now())
    finally:
        db.dispose()


def test_webhooks_from_the_command_line(run: Invoke, data_dir: Path, receiver: Receiver) -> None:
    created = as_json(ok(run("webhooks", "create", f"{receiver.url}/hook")))
    assert created["secret"].startswith("whsec_") and created["active"] is True
    assert created["events"] == ["content.published", "content.unpublished"]
    only_unpublished = as_json(
        ok(
            run(
                "webhooks",
                "create",
                f"{receiver.url}/other",
                "--event",
                "content.unpublished",
            )
        )
    )
    assert only_unpublished["events"] == ["content.unpublished"]
    listed = as_json(ok(run("webhooks", "list")))
    assert [w["id"] for w in listed] == [created["id"], only_unpublished["id"]]
    assert all("secret" not in w for w in listed)

    assert publish(data_dir, "spring-banner") == 1
    receiver.answer(500)
    first = as_json(ok(run("webhooks", "deliver")))
    assert first == {"due": 1, "delivered": 0, "retrying": 1, "failed": 0, "skipped": 0}
    log = as_json(ok(run("webhooks", "deliveries", str(created["id"]))))
    [delivery] = log["data"]
    assert delivery["status"] == "pending" and delivery["lastStatusCode"] == 500
    assert log["next"] is None
    # not due again before its backoff
    assert as_json(ok(run("webhooks", "deliver")))["due"] == 0
    [got] = receiver.requests
    assert verify_signature(
        created["secret"],
        got.headers["personify-signature"],
        got.body,
        now=SystemClock().now(),
    )
    assert got.json()["data"]["itemId"] == "spring-banner"

    # a pending delivery is not retried by hand
    refused = run("webhooks", "retry", str(delivery["id"]))
    assert refused.exit_code == 1
    assert "error [delivery_not_failed]" in refused.output

    deleted = as_json(ok(run("webhooks", "delete", str(created["id"]))))
    assert deleted["active"] is False
    stopped = as_json(ok(run("webhooks", "deliveries", str(created["id"]), "--status", "failed")))
    assert [d["id"] for d in stopped["data"]] == [delivery["id"]]
    assert [w["id"] for w in as_json(ok(run("webhooks", "list")))] == [only_unpublished["id"]]
    assert len(as_json(ok(run("webhooks", "list", "--all")))) == 2
    refused = run("webhooks", "retry", str(delivery["id"]))
    assert refused.exit_code == 1 and "error [webhook_inactive]" in refused.output

    missing = run("webhooks", "deliveries", "4242")
    assert missing.exit_code == 1 and "error [webhook_not_found]" in missing.output
    bad = run("webhooks", "create", "ftp://example.com/hook")
    assert bad.exit_code == 1 and "error [invalid_url]" in bad.output
    assert run("webhooks", "create", receiver.url, "--event", "content.deleted").exit_code == 2


def test_a_failed_delivery_is_retried_from_the_command_line(
    run: Invoke, data_dir: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one try only, so the first refusal fails the delivery (the runner keeps os.environ)
    monkeypatch.setenv("PERSONIFY_CONTENT_WEBHOOK_MAX_ATTEMPTS", "1")
    created = as_json(ok(run("webhooks", "create", receiver.url)))
    publish(data_dir, "a")
    receiver.answer(503)
    assert as_json(ok(run("webhooks", "deliver")))["failed"] == 1
    [failed] = as_json(ok(run("webhooks", "deliveries", str(created["id"]))))["data"]
    assert failed["status"] == "failed" and failed["lastError"] == "HTTP 503: refused with 503"

    again = as_json(ok(run("webhooks", "retry", str(failed["id"]))))
    assert again["status"] == "pending" and again["attempts"] == 1
    assert as_json(ok(run("webhooks", "deliver")))["delivered"] == 1
    [done] = as_json(ok(run("webhooks", "deliveries", str(created["id"]))))["data"]
    assert done["status"] == "delivered" and done["attempts"] == 2
    assert len(receiver.requests) == 2
    missing = run("webhooks", "retry", "999")
    assert missing.exit_code == 1 and "error [delivery_not_found]" in missing.output
