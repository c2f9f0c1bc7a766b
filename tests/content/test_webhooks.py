"""Webhooks out, on a real state database (SQLite and PostgreSQL) and a real HTTP receiver:
signatures a receiver verifies, deliveries written in the publishing transaction, retries
with the documented backoff on a movable clock, giving up, a receiver that is down, slow or
redirecting, deleted webhooks, manual retries, the delivery log's pages, and two deliverers
sharing one database that never send one delivery twice."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from personify.clock import FrozenClock, SystemClock
from personify.content.tables import content_webhook_deliveries
from personify.content.webhooks import (
    BACKOFF_S,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_EVENTS,
    Delivery,
    WebhookDeliverer,
    WebhookRepository,
    enqueue_event,
    sign,
    signature_header,
    verify_signature,
)
from personify.errors import Conflict, NotFound, ValidationError
from personify.store.database import Database
from tests.content.receiver import Receiver, receiving, refused_url
from tests.postgres import fresh_schema, postgres_database

__all__ = ["postgres_database"]

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DOCS = Path(__file__).parents[2] / "docs" / "webhooks.md"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state' / 'personify.db'}"
    else:
        url = fresh_schema(request.getfixturevalue("postgres_database"))
    database = Database(url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def repo(db: Database, clock: FrozenClock) -> WebhookRepository:
    return WebhookRepository(db, clock=clock)


@pytest.fixture
def deliverer(db: Database, clock: FrozenClock) -> WebhookDeliverer:
    return WebhookDeliverer(db, clock=clock, timeout_s=2.0, max_attempts=4)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as started:
        yield started


def publish(db: Database, clock: FrozenClock, item_id: str = "spring-banner", **data: Any) -> int:
    """What the catalog does when it publishes: the deliveries in its transaction."""
    with db.begin() as conn:
        return enqueue_event(
            conn, "content.published", item_id, 3, {"type": "banner", **data}, now=clock.now()
        )


def only_delivery(repo: WebhookRepository, webhook_id: int) -> Delivery:
    page = repo.deliveries(webhook_id)
    assert len(page.deliveries) == 1, page
    return page.deliveries[0]


# -- signatures ------------------------------------------------------------------------------


def test_a_signature_verifies_only_for_its_secret_body_and_time() -> None:
    body = b'{"id":"evt_1","event":"content.published"}'
    secret = "whsec_" + "ab" * 32
    at = int(START.timestamp())
    header = signature_header(secret, body, timestamp=at)
    assert header == f"t={at},v1={sign(secret, at, body)}"
    assert len(header.split("v1=")[1]) == 64
    assert verify_signature(secret, header, body, now=START)
    assert verify_signature(secret, header, body.decode(), now=float(at) + 299)
    assert verify_signature(secret.encode(), header, body, now=at - 300)
    # another body, another secret, a stale or future time: all refused
    assert not verify_signature(secret, header, body + b" ", now=START)
    assert not verify_signature("whsec_" + "cd" * 32, header, body, now=START)
    assert not verify_signature(secret, header, body, now=at + 301)
    assert not verify_signature(secret, header, body, now=at - 301)
    assert not verify_signature(secret, header, body, now=at + 30, tolerance_s=10)
    # one of several v1 entries (a receiver rotating secrets) is enough
    other = sign("whsec_old", at, body)
    assert verify_signature(secret, f"t={at},v1={other},v1={sign(secret, at, body)}", body, now=at)
    for malformed in (
        None,
        "",
        "garbage",
        f"v1={sign(secret, at, body)}",
        f"t={at}",
        f"t=soon,v1={sign(secret, at, body)}",
        f"t={at},v1=",
        f"t={at},v1={sign(secret, at, body)[:-1]}",
        f"t=-{at},v1={sign(secret, at, body)}",
        f"t={at},v1=é{sign(secret, at, body)[1:]}",
    ):
        assert not verify_signature(secret, malformed, body, now=at), malformed


def test_the_documented_receiver_check_verifies_a_real_delivery(
    db: Database, repo: WebhookRepository, receiver: Receiver
) -> None:
    # the Python example of docs/webhooks.md, run as a receiver would run it
    snippet = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert snippet is not None
    namespace: dict[str, Any] = {}
    exec(compile(snippet.group(1), str(DOCS), "exec"), namespace)
    verify: Callable[..., bool] = namespace["verify"]

    webhook, secret = repo.create(receiver.url)
    with db.begin() as conn:
        enqueue_event(conn, "content.published", "a", 1, {}, now=SystemClock().now())
    assert WebhookDeliverer(db).deliver_due()["delivered"] == 1
    [got] = receiver.requests
    header = got.headers["personify-signature"]
    assert verify(secret, header, got.body)
    assert not verify(secret, header, got.body.replace(b'"a"', b'"b"'))
    assert not verify(repo.create(receiver.url)[1], header, got.body)
    assert not verify(secret, header, got.body, -1)  # no tolerance at all: too old
    assert not verify(secret, "v1=" + header.split("v1=")[1], got.body)
    assert webhook.active


# -- webhooks --------------------------------------------------------------------------------


def test_create_validates_and_returns_the_secret_once(repo: WebhookRepository) -> None:
    webhook, secret = repo.create("https://cms.example.com/hooks/personify?team=web")
    assert webhook.id >= 1 and webhook.active
    assert webhook.events == WEBHOOK_EVENTS
    assert webhook.created_at == START
    assert secret.startswith("whsec_") and len(secret) == 6 + 64
    int(secret[6:], 16)  # hex
    assert repo.secret(webhook.id) == secret
    assert "secret" not in webhook.to_dict() and secret not in str(webhook.to_dict())
    second, other_secret = repo.create(
        "http://127.0.0.1:8080/purge", ["content.unpublished", "content.unpublished"]
    )
    assert second.events == ("content.unpublished",)
    assert other_secret != secret
    assert [w.id for w in repo.list()] == [webhook.id, second.id]
    assert repo.get(second.id) == second

    bad_urls = [
        "",
        "   ",
        "ftp://example.com/x",
        "example.com/hook",
        "http://",
        "http:///path",
        "https://user:pass@example.com/hook",
        "https://example.com/hook#part",
        "https://exa mple.com/",
        "https://example.com/a\x00b",
        "https://example.com:0/",
        "https://example.com:99999/",
        "http://[::1/",
        "https://example.com/" + "x" * 2000,
    ]
    for url in bad_urls:
        with pytest.raises(ValidationError) as caught:
            repo.create(url)
        assert caught.value.code == "invalid_url", url
    for events in ([], ["content.deleted"], ["content.published", "x"]):
        with pytest.raises(ValidationError) as caught:
            repo.create("https://example.com/hook", events)
        assert caught.value.code == "invalid_event", events
    assert len(repo.list()) == 2  # nothing refused was saved
    with pytest.raises(NotFound) as missing:
        repo.get(999_999)
    assert missing.value.code == "webhook_not_found"


def test_deliveries_are_written_in_the_publishing_transaction(
    db: Database, clock: FrozenClock, repo: WebhookRepository
) -> None:
    both, _ = repo.create("https://a.example.com/hook")
    published_only, _ = repo.create("https://b.example.com/hook", ["content.published"])
    deleted, _ = repo.create("https://c.example.com/hook")
    repo.delete(deleted.id)

    assert publish(db, clock, title="Spring") == 2
    with db.begin() as conn:
        told = enqueue_event(conn, "content.unpublished", "old", None, {}, now=clock.now())
    assert told == 1
    # a publish that rolls back tells nobody
    with pytest.raises(RuntimeError), db.begin() as conn:
        enqueue_event(conn, "content.published", "x", 1, {}, now=clock.now())
        raise RuntimeError("the publish failed after writing its deliveries")
    with pytest.raises(ValidationError), db.begin() as conn:
        enqueue_event(conn, "content.archived", "x", 1, {}, now=clock.now())

    first = repo.deliveries(both.id).deliveries
    assert [(d.event, d.item_id, d.item_version) for d in first] == [
        ("content.unpublished", "old", None),
        ("content.published", "spring-banner", 3),
    ]
    assert repo.deliveries(deleted.id).deliveries == []
    sent = only_delivery(repo, published_only.id)
    assert (sent.status, sent.attempts, sent.next_attempt_at) == ("pending", 0, START)
    body = sent.payload
    assert set(body) == {"id", "event", "createdAt", "data"}
    assert body["event"] == "content.published"
    assert body["createdAt"] == "2026-03-02T09:00:00.000Z"
    assert body["data"] == {
        "itemId": "spring-banner",
        "itemVersion": 3,
        "type": "banner",
        "title": "Spring",
    }
    # one event id, shared by every webhook told of that event
    assert body["id"].startswith("evt_") and first[1].payload["id"] == body["id"]
    assert first[0].payload["id"] != body["id"]


# -- delivering ------------------------------------------------------------------------------


def test_a_delivery_arrives_signed_and_is_logged(
    db: Database,
    clock: FrozenClock,
    repo: WebhookRepository,
    deliverer: WebhookDeliverer,
    receiver: Receiver,
) -> None:
    webhook, secret = repo.create(f"{receiver.url}/hooks/cms")
    publish(db, clock)
    assert deliverer.deliver_due() == {
        "due": 1,
        "delivered": 1,
        "retrying": 0,
        "failed": 0,
        "skipped": 0,
    }
    [got] = receiver.requests
    delivery = only_delivery(repo, webhook.id)
    assert got.path == "/hooks/cms"
    assert got.headers["content-type"] == "application/json"
    assert got.headers[EVENT_HEADER.lower()] == "content.published"
    assert got.headers[DELIVERY_HEADER.lower()] == str(delivery.id)
    assert verify_signature(secret, got.headers[SIGNATURE_HEADER.lower()], got.body, now=START)
    assert not verify_signature(
        repo.create(receiver.url)[1], got.headers[SIGNATURE_HEADER.lower()], got.body, now=START
    )
    assert got.json() == delivery.payload
    assert delivery.status == "delivered" and delivery.attempts == 1
    assert delivery.last_status_code == 200 and delivery.last_error is None
    assert delivery.delivered_at == START and delivery.next_attempt_at is None
    # delivered is delivered: nothing is sent again
    clock.advance(86_400)
    assert deliverer.deliver_due()["due"] == 0
    assert len(receiver.requests) == 1


def test_a_rotated_secret_signs_with_both_secrets_until_the_overlap_ends(
    db: Database,
    clock: FrozenClock,
    repo: WebhookRepository,
    deliverer: WebhookDeliverer,
    receiver: Receiver,
) -> None:
    webhook, old = repo.create(receiver.url)
    rotated, new = repo.rotate(webhook.id, overlap=timedelta(hours=1))
    assert rotated.id == webhook.id and new != old and new.startswith("whsec_")
    assert repo.secret(webhook.id) == new
    publish(db, clock)
    deliverer.deliver_due()
    header = receiver.requests[-1].headers[SIGNATURE_HEADER.lower()]
    body = receiver.requests[-1].body
    # a receiver on either secret verifies it during the overlap
    assert header.count("v1=") == 2
    assert verify_signature(new, header, body, now=START)
    assert verify_signature(old, header, body, now=START)
    clock.advance(3600)
    publish(db, clock, item_id="summer-banner")
    deliverer.deliver_due()
    header = receiver.requests[-1].headers[SIGNATURE_HEADER.lower()]
    body = receiver.requests[-1].body
    assert header.count("v1=") == 1
    assert verify_signature(new, header, body, now=clock.time())
    assert not verify_signature(old, header, body, now=clock.time())
    # a deleted webhook is not rotated; nor is an overlap below zero accepted
    repo.delete(webhook.id)
    with pytest.raises(NotFound):
        repo.rotate(webhook.id, overlap=timedelta(hours=1))
    other, _ = repo.create(receiver.url)
    with pytest.raises(ValidationError):
        repo.rotate(other.id, overlap=timedelta(seconds=-1))


def test_a_refused_delivery_is_retried_after_its_backoff_then_delivered(
    db: Database,
    clock: FrozenClock,
    repo: WebhookRepository,
    deliverer: WebhookDeliverer,
    receiver: Receiver,
) -> None:
    webhook, secret = repo.create(receiver.url)
    publish(db, clock)
    receiver.answer(500)
    assert deliverer.deliver_due()["retrying"] == 1
    failed_once = only_delivery(repo, webhook.id)
    assert failed_once.status == "pending" and failed_once.attempts == 1
    assert failed_once.last_status_code == 500
    assert failed_once.last_error == "HTTP 500: refused with 500"
    assert failed_once.next_attempt_at == START + timedelta(seconds=BACKOFF_S[0])
    # not before its time
    assert deliverer.deliver_due()["due"] == 0
    clock.advance(BACKOFF_S[0] - 0.5)
    assert deliverer.deliver_due()["due"] == 0
    assert len(receiver.requests) == 1
    clock.advance(0.5)
    assert deliverer.deliver_due()["delivered"] == 1
    first, second = receiver.requests
    assert first.body == second.body  # the same event, so receivers can dedupe by its id
    assert verify_signature(
        secret, second.headers["personify-signature"], second.body, now=clock.now()
    )
    done = only_delivery(repo, webhook.id)
    assert (done.status, done.attempts, done.last_status_code) == ("delivered", 2, 200)
    assert done.last_error is None and done.delivered_at == clock.now()


def test_backoff_follows_the_documented_steps_and_gives_up_after_max_attempts(
    db: Database, clock: FrozenClock, repo: WebhookRepository, receiver: Receiver
) -> None:
    deliverer = WebhookDeliverer(db, clock=clock, timeout_s=2.0, max_attempts=8)
    assert [deliverer.backoff_after(n) for n in range(1, 9)] == [
        10.0,
        30.0,
        120.0,
        600.0,
        3600.0,
        21600.0,
        21600.0,
        21600.0,
    ]
    webhook, _ = repo.create(receiver.url)
    publish(db, clock)
    receiver.answer(*[503] * 8)
    waits: list[float] = []
    for attempt in range(1, 9):
        outcome = deliverer.deliver_due()
        assert outcome["due"] == 1, (attempt, outcome)
        state = only_delivery(repo, webhook.id)
        assert state.attempts == attempt
        if attempt < 8:
            assert state.status == "pending" and state.next_attempt_at is not None
            wait = (state.next_attempt_at - clock.now()).total_seconds()
            waits.append(wait)
            clock.advance(wait)
        else:
            assert outcome["failed"] == 1
            assert state.status == "failed" and state.next_attempt_at is None
            assert state.last_status_code == 503
    assert waits == [10.0, 30.0, 120.0, 600.0, 3600.0, 21600.0, 21600.0]
    # about 13 hours in all, then it stays failed
    assert clock.now() - START == timedelta(seconds=sum(waits))
    clock.advance(7 * 86_400)
    assert deliverer.deliver_due()["due"] == 0
    assert len(receiver.requests) == 8


def test_a_receiver_that_is_down_slow_or_redirecting_fails_the_try_not_the_pass(
    db: Database,
    clock: FrozenClock,
    repo: WebhookRepository,
    receiver: Receiver,
) -> None:
    deliverer = WebhookDeliverer(db, clock=clock, timeout_s=0.3, max_attempts=3)
    down, _ = repo.create(refused_url())
    with receiving(slow_s=2.0) as slow_receiver:
        slow, _ = repo.create(f"{slow_receiver.url}/slow")
        slow_receiver.answer("slow")
        moving, _ = repo.create(f"{receiver.url}/old")
        receiver.answer(301)
        healthy_receiver_calls = 0
        with receiving() as healthy:
            fine, _ = repo.create(f"{healthy.url}/ok")
            publish(db, clock)
            outcome = deliverer.deliver_due()
            healthy_receiver_calls = len(healthy.requests)
    assert outcome == {"due": 4, "delivered": 1, "retrying": 3, "failed": 0, "skipped": 0}
    assert healthy_receiver_calls == 1
    assert only_delivery(repo, fine.id).status == "delivered"

    refused = only_delivery(repo, down.id)
    assert refused.status == "pending" and refused.last_status_code is None
    assert refused.last_error is not None and refused.last_error.startswith("ConnectError")
    timed_out = only_delivery(repo, slow.id)
    assert timed_out.last_status_code is None
    assert timed_out.last_error == "timed out after 0.3 s (ReadTimeout)"
    redirected = only_delivery(repo, moving.id)
    assert redirected.last_status_code == 301
    assert redirected.last_error == f"HTTP 301: redirect to '{receiver.url}/moved' not followed"
    # the redirect was not followed
    assert [r.path for r in receiver.requests] == ["/old"]


def test_a_deleted_webhook_gets_nothing_and_its_pending_deliveries_stop(
    db: Database,
    clock: FrozenClock,
    repo: WebhookRepository,
    deliverer: WebhookDeliverer,
    receiver: Receiver,
) -> None:
    kept, _ = repo.create(f"{receiver.url}/kept")
    dropped, _ = repo.create(f"{receiver.url}/dropped")
    publish(db, clock, item_id="before")
    deleted = repo.delete(dropped.id)
    assert not deleted.active and repo.get(dropped.id) == deleted
    assert repo.delete(dropped.id) == deleted  # again: nothing changes
    assert [w.id for w in repo.list()] == [kept.id]
    assert [w.id for w in repo.list(include_inactive=True)] == [kept.id, dropped.id]
    publish(db, clock, item_id="after")

    assert deliverer.deliver_due()["delivered"] == 2
    assert [(r.path, r.json()["data"]["itemId"]) for r in receiver.requests] == [
        ("/kept", "before"),
        ("/kept", "after"),
    ]
    stopped = only_delivery(repo, dropped.id)
    assert stopped.status == "failed" and stopped.attempts == 0
    assert stopped.last_error == "the webhook was deleted before this delivery was sent"
    with pytest.raises(Conflict) as caught:
        repo.retry(stopped.id)
    assert caught.value.code == "webhook_inactive"
    with pytest.raises(NotFound) as missing:
        repo.delete(424_242)
    assert missing.value.code == "webhook_not_found"


def test_a_failed_delivery_is_retried_by_hand_once(
    db: Database,
    clock: FrozenClock,
    repo: WebhookRepository,
    receiver: Receiver,
) -> None:
    deliverer = WebhookDeliverer(db, clock=clock, timeout_s=2.0, max_attempts=1)
    webhook, _ = repo.create(receiver.url)
    other, _ = repo.create(receiver.url)
    publish(db, clock)
    receiver.answer(500, 500, 500)
    assert deliverer.deliver_due()["failed"] == 2
    failed = only_delivery(repo, webhook.id)
    assert failed.status == "failed"

    clock.advance(60)
    again = repo.retry(failed.id, webhook_id=webhook.id)
    assert (again.status, again.attempts, again.next_attempt_at) == ("pending", 1, clock.now())
    # a further failure fails it again at once: a retry by hand is one more try
    assert deliverer.deliver_due() == {
        "due": 1,
        "delivered": 0,
        "retrying": 0,
        "failed": 1,
        "skipped": 0,
    }
    assert only_delivery(repo, webhook.id).attempts == 2
    repo.retry(failed.id)
    assert deliverer.deliver_due()["delivered"] == 1
    assert only_delivery(repo, webhook.id).status == "delivered"

    for delivery_id, kwargs, error, code in (
        (failed.id, {}, Conflict, "delivery_not_failed"),
        (failed.id, {"webhook_id": other.id}, NotFound, "delivery_not_found"),
        (987_654, {}, NotFound, "delivery_not_found"),
    ):
        with pytest.raises(error) as caught:
            repo.retry(delivery_id, **kwargs)
        assert caught.value.code == code


def test_the_delivery_log_pages_newest_first(
    db: Database, clock: FrozenClock, repo: WebhookRepository, deliverer: WebhookDeliverer
) -> None:
    webhook, _ = repo.create(refused_url())
    for n in range(5):
        publish(db, clock, item_id=f"item-{n}")
    ids = [d.id for d in repo.deliveries(webhook.id, limit=100).deliveries]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)

    first = repo.deliveries(webhook.id, limit=2)
    assert [d.id for d in first.deliveries] == ids[:2] and first.next == ids[1]
    second = repo.deliveries(webhook.id, limit=2, before=first.next)
    assert [d.id for d in second.deliveries] == ids[2:4] and second.next == ids[3]
    last = repo.deliveries(webhook.id, limit=2, before=second.next)
    assert [d.id for d in last.deliveries] == ids[4:] and last.next is None
    newer = repo.deliveries(webhook.id, after=ids[2])
    assert [d.id for d in newer.deliveries] == ids[:2]
    assert repo.deliveries(webhook.id, limit=2, before=ids[4]).deliveries == []

    deliverer.deliver_due()  # refused: every one pending with one attempt
    assert len(repo.deliveries(webhook.id, status="pending").deliveries) == 5
    assert repo.deliveries(webhook.id, status="delivered").deliveries == []
    with pytest.raises(ValidationError):
        repo.deliveries(webhook.id, status="lost")
    with pytest.raises(NotFound):
        repo.deliveries(webhook.id + 100)


def test_two_deliverers_sharing_the_database_never_send_one_delivery_twice(
    db: Database, clock: FrozenClock, repo: WebhookRepository, receiver: Receiver
) -> None:
    webhook, _ = repo.create(receiver.url)
    for n in range(60):
        publish(db, clock, item_id=f"item-{n}")
    # two "API nodes": separate engines on the same database
    second_db = Database(db.url, auto_upgrade=False)
    try:
        deliverers = [
            WebhookDeliverer(db, clock=clock, timeout_s=5.0, batch_size=100),
            WebhookDeliverer(second_db, clock=clock, timeout_s=5.0, batch_size=100),
        ]
        outcomes: list[dict[str, int]] = []
        start = threading.Barrier(2)

        def run(deliverer: WebhookDeliverer) -> None:
            start.wait()
            outcomes.append(deliverer.deliver_due())

        threads = [threading.Thread(target=run, args=(d,)) for d in deliverers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        second_db.dispose()
    assert sum(o["delivered"] for o in outcomes) == 60
    # what one process found claimed by the other it skipped, and sent nothing for it
    assert sum(o["skipped"] for o in outcomes) == sum(o["due"] for o in outcomes) - 60
    # every delivery was sent exactly once, whichever process claimed it
    sent = [int(r.headers["personify-delivery"]) for r in receiver.requests]
    assert len(sent) == 60 and len(set(sent)) == 60
    with db.connect() as conn:
        attempts = conn.execute(
            sa.select(content_webhook_deliveries.c.attempts, content_webhook_deliveries.c.status)
        ).all()
    assert {tuple(row) for row in attempts} == {(1, "delivered")}
    assert msgspec.json.decode(receiver.requests[0].body)["event"] == "content.published"
    assert webhook.active
