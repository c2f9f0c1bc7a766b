"""Webhooks out: URLs told, with a signed body, when a content item is published or
unpublished, so that caches and CMSs can react (docs/webhooks.md).

The catalog calls ``enqueue_event`` inside the transaction that publishes: one ``pending``
delivery per subscribed active webhook is written with the change, so a rollback sends
nothing and a commit loses nothing. ``WebhookDeliverer.deliver_due`` (the ``content-webhooks``
job) sends what is due and records each outcome; a failed try is tried again after
``BACKOFF_S``, and the delivery is ``failed`` after ``max_attempts`` tries. The rows are the
delivery log.

Each body is signed with the webhook's secret: the ``Personify-Signature`` header is
``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, b"<t>." + body)>``, which receivers check
with ``verify_signature``.

Delivery is at least once: a process that dies between sending and recording, or a receiver
slower than the claim it was sent under, can make a receiver see a delivery twice. The
body's ``id`` (one per event, shared by every webhook told of it) is what receivers dedupe
by; ``Personify-Delivery`` names the delivery row.
"""

from __future__ import annotations

import builtins
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock, format_timestamp
from personify.content.tables import content_webhook_deliveries, content_webhooks
from personify.errors import ConfigurationError, Conflict, NotFound, ValidationError
from personify.ingest import signing
from personify.ingest.signing import SIGNATURE_HEADER, sign, signature_header
from personify.store.database import Database, aware

__all__ = [
    "BACKOFF_S",
    "DELIVERY_HEADER",
    "DELIVERY_STATUSES",
    "EVENT_HEADER",
    "MAX_URL_CHARS",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "WEBHOOK_EVENTS",
    "Delivery",
    "DeliveryPage",
    "Webhook",
    "WebhookDeliverer",
    "WebhookRepository",
    "check_url",
    "enqueue_event",
    "enqueue_events",
    "sign",
    "signature_header",
    "verify_signature",
]

WEBHOOK_EVENTS = ("content.published", "content.unpublished")
EVENT_HEADER = "Personify-Event"
DELIVERY_HEADER = "Personify-Delivery"
SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2000
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)
# the wait after the 1st, 2nd, … failed try; the last step repeats (10 s, 30 s, 2 min, 10 min,
# 1 h, 6 h, 6 h…): with 8 tries a receiver may be away about 13 hours and miss nothing
BACKOFF_S: tuple[float, ...] = (10.0, 30.0, 120.0, 600.0, 3600.0, 21600.0)
# what a delivery log entry keeps of a refusing receiver's answer
_MAX_ERROR_CHARS = 500
_USER_AGENT = "Personify-Webhooks/1"
_DELETED = "the webhook was deleted before this delivery was sent"


@dataclass(frozen=True, slots=True)
class Webhook:
    """A URL told of content events (its secret is shown once, when it is created)."""

    id: int
    url: str
    events: tuple[str, ...]
    active: bool
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the API returns."""
        return {
            "id": self.id,
            "url": self.url,
            "events": builtins.list(self.events),
            "active": self.active,
            "createdAt": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one webhook: its body, and how sending it went so far."""

    id: int
    webhook_id: int
    event: str
    item_id: str
    item_version: int | None
    payload: Any
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the API returns."""
        return {
            "id": self.id,
            "webhookId": self.webhook_id,
            "event": self.event,
            "itemId": self.item_id,
            "itemVersion": self.item_version,
            "payload": self.payload,
            "status": self.status,
            "attempts": self.attempts,
            "nextAttemptAt": _iso(self.next_attempt_at),
            "lastStatusCode": self.last_status_code,
            "lastError": self.last_error,
            "createdAt": self.created_at.isoformat(),
            "deliveredAt": _iso(self.delivered_at),
        }


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """A page of a webhook's deliveries, newest first; ``next`` is the next page's ``before``."""

    deliveries: list[Delivery]
    next: int | None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# -- signing ---------------------------------------------------------------------------------
# the scheme is ingest's (``personify.ingest.signing``): the webhooks in verify what these sign


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: str | bytes,
    *,
    now: datetime | float,
    tolerance_s: float = signing.DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether ``header`` (a ``Personify-Signature`` value) signs ``body`` with ``secret``,
    at a time no more than ``tolerance_s`` from ``now`` (a datetime or Unix seconds).

    For receivers. Pass the raw body as received, before any JSON parsing. A header with
    several ``v1`` entries passes when one matches. Digests are compared in constant time; a
    stale or future timestamp fails, so a captured request cannot be replayed later. Never
    raises for a malformed header: it is ``False``.
    """
    return signing.verify(secret, header, body, now=now, tolerance_s=tolerance_s)


# -- validation ------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """``url`` stripped, when it is an ``http://`` or ``https://`` URL with a host, no
    credentials and no fragment, of at most ``MAX_URL_CHARS``; else ``ValidationError``
    (``invalid_url``)."""
    text = url.strip()

    def invalid(why: str) -> ValidationError:
        return ValidationError(
            f"the webhook URL {why}", code="invalid_url", details={"field": "url"}
        )

    if not text:
        raise invalid("is empty")
    if len(text) > MAX_URL_CHARS:
        raise invalid(f"is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise invalid("holds whitespace or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
        host = parts.hostname
        # the client that sends must read it as we do (IDNA hosts, ports, brackets)
        httpx.URL(text)
    except (ValueError, httpx.InvalidURL) as exc:
        raise invalid(f"cannot be read: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise invalid("must start with http:// or https://")
    if not host:
        raise invalid("has no host")
    if port == 0:
        raise invalid("has port 0")
    if "@" in parts.netloc:
        # the signature authenticates the sender; a password in the URL would be shown in
        # every listing of the webhooks
        raise invalid("must not hold credentials (verify the signature instead)")
    if parts.fragment:
        raise invalid("must not have a fragment")
    return text


def _check_events(events: Iterable[str] | None) -> tuple[str, ...]:
    if events is None:
        return WEBHOOK_EVENTS
    chosen = builtins.list(events)
    unknown = [event for event in chosen if event not in WEBHOOK_EVENTS]
    if unknown:
        raise ValidationError(
            f"unknown webhook event {unknown[0]!r}: use {', '.join(WEBHOOK_EVENTS)}",
            code="invalid_event",
            details={"field": "events", "allowed": builtins.list(WEBHOOK_EVENTS)},
        )
    if not chosen:
        raise ValidationError(
            "a webhook needs at least one event", code="invalid_event", details={"field": "events"}
        )
    # in the one documented order, each once
    return tuple(event for event in WEBHOOK_EVENTS if event in chosen)


# -- enqueueing ------------------------------------------------------------------------------


def enqueue_event(
    conn: sa.Connection,
    event: str,
    item_id: str,
    item_version: int | None,
    data: Mapping[str, Any],
    *,
    now: datetime,
) -> int:
    """Write one pending delivery of ``event`` per active webhook subscribed to it, in
    ``conn``'s transaction; returns how many.

    Call it inside the transaction that publishes or unpublishes, so the deliveries commit
    or roll back with the change. The body is ``{"id", "event", "createdAt", "data"}``:
    ``id`` is one ``evt_…`` id for this event (the same for every webhook), and ``data`` is
    ``data`` with ``itemId`` and ``itemVersion`` added unless it has them. ``data`` must be
    JSON-able. An unknown ``event`` is a ``ValidationError`` (``invalid_event``).
    """
    return enqueue_events(conn, event, [(item_id, item_version, data)], now=now)


def enqueue_events(
    conn: sa.Connection,
    event: str,
    items: Sequence[tuple[str, int | None, Mapping[str, Any]]],
    *,
    now: datetime,
) -> int:
    """``enqueue_event`` for each ``(item_id, item_version, data)`` of ``items``, with one
    read of the webhooks and one insert for all; returns how many deliveries."""
    if event not in WEBHOOK_EVENTS:
        raise ValidationError(
            f"unknown webhook event {event!r}: use {', '.join(WEBHOOK_EVENTS)}",
            code="invalid_event",
        )
    if not items:
        return 0
    subscribed = [
        row.id
        for row in conn.execute(
            sa.select(content_webhooks.c.id, content_webhooks.c.events).where(
                content_webhooks.c.active.is_(True)
            )
        )
        if event in row.events.split(",")
    ]
    if not subscribed:
        return 0
    created_at = format_timestamp(now)
    rows: list[dict[str, Any]] = []
    for item_id, item_version, data in items:
        body = {
            "id": f"evt_{uuid.uuid4().hex}",
            "event": event,
            "createdAt": created_at,
            "data": {"itemId": item_id, "itemVersion": item_version, **data},
        }
        payload = msgspec.json.encode(body).decode()
        rows.extend(
            {
                "webhook_id": webhook_id,
                "event": event,
                "item_id": item_id,
                "item_version": item_version,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for webhook_id in subscribed
        )
    conn.execute(content_webhook_deliveries.insert(), rows)
    return len(rows)


# -- the repository --------------------------------------------------------------------------


def _webhook(row: sa.RowMapping) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        events=tuple(event for event in row["events"].split(",") if event),
        active=bool(row["active"]),
        created_at=aware(row["created_at"]),  # type: ignore[arg-type]
    )


def _decoded(payload: str) -> Any:
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload


def _delivery(row: sa.RowMapping) -> Delivery:
    return Delivery(
        id=row["id"],
        webhook_id=row["webhook_id"],
        event=row["event"],
        item_id=row["item_id"],
        item_version=row["item_version"],
        payload=_decoded(row["payload"]),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=aware(row["next_attempt_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=aware(row["created_at"]),  # type: ignore[arg-type]
        delivered_at=aware(row["delivered_at"]),
    )


class WebhookRepository:
    """Create, list, show and delete webhooks; read their delivery log; retry a delivery."""

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()

    def create(self, url: str, events: Iterable[str] | None = None) -> tuple[Webhook, str]:
        """A new active webhook for ``events`` (every event when ``None``), and its secret.

        The secret (``whsec_`` and 64 hex digits) is returned here only: keep it where the
        receiver can read it. Raises ``ValidationError`` (``invalid_url``, ``invalid_event``).
        """
        checked_url = check_url(url)
        chosen = _check_events(events)
        secret = SECRET_PREFIX + secrets.token_hex(32)
        now = self._clock.now()
        with self._db.begin() as conn:
            inserted = conn.execute(
                content_webhooks.insert().values(
                    url=checked_url,
                    secret=secret,
                    events=",".join(chosen),
                    active=True,
                    created_at=now,
                )
            ).inserted_primary_key
        assert inserted is not None
        webhook_id = int(inserted[0])
        return Webhook(webhook_id, checked_url, chosen, True, now), secret

    def list(self, *, include_inactive: bool = False) -> builtins.list[Webhook]:
        """The webhooks by id (the active ones unless ``include_inactive``)."""
        query = sa.select(*_WEBHOOK_COLUMNS).order_by(content_webhooks.c.id)
        if not include_inactive:
            query = query.where(content_webhooks.c.active.is_(True))
        with self._db.connect() as conn:
            return [_webhook(row._mapping) for row in conn.execute(query)]

    def get(self, webhook_id: int) -> Webhook:
        """The webhook ``webhook_id`` (deleted ones too, inactive); ``NotFound``
        (``webhook_not_found``) when there is none."""
        with self._db.connect() as conn:
            return self._get(conn, webhook_id)

    def _get(self, conn: sa.Connection, webhook_id: int) -> Webhook:
        row = conn.execute(
            sa.select(*_WEBHOOK_COLUMNS).where(content_webhooks.c.id == webhook_id)
        ).first()
        if row is None:
            raise NotFound(f"no webhook {webhook_id}", code="webhook_not_found")
        return _webhook(row._mapping)

    def secret(self, webhook_id: int) -> str:
        """The webhook's signing secret (for the deliverer and tests; never listed)."""
        with self._db.connect() as conn:
            secret = conn.execute(
                sa.select(content_webhooks.c.secret).where(content_webhooks.c.id == webhook_id)
            ).scalar_one_or_none()
        if secret is None:
            raise NotFound(f"no webhook {webhook_id}", code="webhook_not_found")
        return str(secret)

    def rotate(self, webhook_id: int, *, overlap: timedelta) -> tuple[Webhook, str]:
        """Give an active webhook a new signing secret (returned, shown once). For
        ``overlap`` its deliveries carry a second ``v1`` signature made with the previous
        secret, so the receiver can switch secrets without refusing a delivery.
        ``NotFound`` (``webhook_not_found``) when there is none or it was deleted."""
        if overlap < timedelta(0):
            raise ValidationError("the overlap is zero or more", code="invalid_overlap")
        secret = SECRET_PREFIX + secrets.token_hex(32)
        now = self._clock.now()
        with self._db.begin() as conn:
            webhook = self._get(conn, webhook_id)
            if not webhook.active:
                raise NotFound(f"no active webhook {webhook_id}", code="webhook_not_found")
            conn.execute(
                content_webhooks.update()
                .where(content_webhooks.c.id == webhook_id)
                .values(
                    secret=secret,
                    previous_secret=content_webhooks.c.secret,
                    previous_expires_at=now + overlap,
                )
            )
        return webhook, secret

    def delete(self, webhook_id: int) -> Webhook:
        """Deactivate the webhook: it gets no new deliveries, and its pending ones are marked
        ``failed`` unsent. Deleting a deleted webhook changes nothing. Its delivery log is
        kept. ``NotFound`` (``webhook_not_found``) when there is none."""
        with self._db.begin() as conn:
            webhook = self._get(conn, webhook_id)
            if not webhook.active:
                return webhook
            conn.execute(
                content_webhooks.update()
                .where(content_webhooks.c.id == webhook_id)
                .values(active=False)
            )
            conn.execute(
                content_webhook_deliveries.update()
                .where(
                    content_webhook_deliveries.c.webhook_id == webhook_id,
                    content_webhook_deliveries.c.status == PENDING,
                )
                .values(status=FAILED, next_attempt_at=None, last_error=_DELETED)
            )
        return Webhook(webhook.id, webhook.url, webhook.events, False, webhook.created_at)

    def deliveries(
        self,
        webhook_id: int,
        *,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
        status: str | None = None,
    ) -> DeliveryPage:
        """A page of the webhook's deliveries, newest first: those with an id below
        ``before`` and above ``after`` (each when given), of ``status`` (when given).
        ``next`` is the ``before`` of the next page (``None`` on the last one). ``NotFound``
        (``webhook_not_found``) when the webhook does not exist."""
        if status is not None and status not in DELIVERY_STATUSES:
            raise ValidationError(
                f"unknown delivery status {status!r}: use {', '.join(DELIVERY_STATUSES)}",
                code="invalid_status",
            )
        table = content_webhook_deliveries
        query = sa.select(table).where(table.c.webhook_id == webhook_id)
        if before is not None:
            query = query.where(table.c.id < before)
        if after is not None:
            query = query.where(table.c.id > after)
        if status is not None:
            query = query.where(table.c.status == status)
        # one more than asked, to know whether there is a next page
        query = query.order_by(table.c.id.desc()).limit(max(1, limit) + 1)
        with self._db.connect() as conn:
            self._get(conn, webhook_id)
            rows = [_delivery(row._mapping) for row in conn.execute(query)]
        page = rows[: max(1, limit)]
        return DeliveryPage(page, page[-1].id if len(rows) > len(page) else None)

    def delivery(self, delivery_id: int) -> Delivery:
        """One delivery; ``NotFound`` (``delivery_not_found``) when there is none."""
        with self._db.connect() as conn:
            return self._delivery(conn, delivery_id)

    def _delivery(self, conn: sa.Connection, delivery_id: int) -> Delivery:
        row = conn.execute(
            sa.select(content_webhook_deliveries).where(
                content_webhook_deliveries.c.id == delivery_id
            )
        ).first()
        if row is None:
            raise NotFound(f"no webhook delivery {delivery_id}", code="delivery_not_found")
        return _delivery(row._mapping)

    def retry(self, delivery_id: int, *, webhook_id: int | None = None) -> Delivery:
        """Make a ``failed`` delivery pending again, due now: it is tried once more (its
        attempts go on counting, so a further failure fails it again).

        ``NotFound`` (``delivery_not_found``) when there is no such delivery (of
        ``webhook_id``, when given); ``Conflict`` ``delivery_not_failed`` when it is pending
        or delivered, ``webhook_inactive`` when its webhook was deleted.
        """
        now = self._clock.now()
        table = content_webhook_deliveries
        with self._db.begin() as conn:
            found = self._delivery(conn, delivery_id)
            if webhook_id is not None and found.webhook_id != webhook_id:
                raise NotFound(
                    f"webhook {webhook_id} has no delivery {delivery_id}",
                    code="delivery_not_found",
                )
            if found.status != FAILED:
                raise Conflict(
                    f"delivery {delivery_id} is {found.status}; only a failed one is retried",
                    code="delivery_not_failed",
                )
            if not self._get(conn, found.webhook_id).active:
                raise Conflict(
                    f"webhook {found.webhook_id} was deleted; its deliveries are not sent",
                    code="webhook_inactive",
                )
            changed = conn.execute(
                table.update()
                .where(table.c.id == delivery_id, table.c.status == FAILED)
                .values(status=PENDING, next_attempt_at=now)
            ).rowcount
            if changed != 1:
                raise Conflict(
                    f"delivery {delivery_id} changed meanwhile; read it again",
                    code="delivery_changed",
                )
            return self._delivery(conn, delivery_id)


_WEBHOOK_COLUMNS = (
    content_webhooks.c.id,
    content_webhooks.c.url,
    content_webhooks.c.events,
    content_webhooks.c.active,
    content_webhooks.c.created_at,
)


# -- delivering ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Due:
    id: int
    attempts: int
    event: str
    payload: str
    url: str
    secret: str
    previous_secret: str | None
    previous_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Outcome:
    delivered: bool
    status_code: int | None
    error: str | None


class WebhookDeliverer:
    """Sends the deliveries that are due, oldest due first, and records how each went.

    A delivery is claimed before it is sent (its ``attempts`` raised and its next try moved
    ahead, by one conditional ``UPDATE`` on the ``attempts`` it was read with), so processes
    sharing a state database never send one try twice. A 2xx answer delivers it; any other
    answer (a redirect too: it is not followed), a timeout or a connection error schedules
    the next try after ``backoff_s`` (its last step repeating), and after ``max_attempts``
    tries the delivery is ``failed``. One delivery going wrong never stops the others.
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        timeout_s: float = 5.0,
        max_attempts: int = 8,
        backoff_s: Sequence[float] = BACKOFF_S,
        batch_size: int = 100,
    ) -> None:
        if timeout_s <= 0 or max_attempts < 1 or batch_size < 1:
            raise ConfigurationError(
                "webhook delivery needs a positive timeout, at least one attempt and a "
                "positive batch size (PERSONIFY_CONTENT_WEBHOOK_TIMEOUT_S, "
                "PERSONIFY_CONTENT_WEBHOOK_MAX_ATTEMPTS)",
                code="invalid_webhook_settings",
            )
        if not backoff_s or any(step <= 0 for step in backoff_s):
            raise ConfigurationError(
                "the webhook backoff needs at least one positive step", code="invalid_backoff"
            )
        self._db = db
        self._clock = clock or SystemClock()
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = tuple(backoff_s)
        self.batch_size = batch_size

    def backoff_after(self, attempts: int) -> float:
        """Seconds between the ``attempts``-th failed try and the next one."""
        return self.backoff_s[min(max(attempts, 1), len(self.backoff_s)) - 1]

    def deliver_due(self) -> dict[str, int]:
        """Send up to ``batch_size`` due deliveries; returns how many were due, delivered,
        scheduled again (``retrying``), given up (``failed``), and left to another process
        that claimed them first (``skipped``)."""
        counts = {"due": 0, "delivered": 0, "retrying": 0, "failed": 0, "skipped": 0}
        due = self._due(self._clock.now())
        counts["due"] = len(due)
        if not due:
            return counts
        # one connection pool per pass; a redirect is never followed: it could point
        # anywhere, and a receiver that moved is updated by whoever set it up
        with httpx.Client(timeout=httpx.Timeout(self.timeout_s), follow_redirects=False) as client:
            for row in due:
                attempt = self._claim(row)
                if attempt is None:
                    counts["skipped"] += 1
                    continue
                outcome = self._send(client, row)
                counts[self._record(row, attempt, outcome)] += 1
        return counts

    def _due(self, now: datetime) -> builtins.list[_Due]:
        table = content_webhook_deliveries
        query = (
            sa.select(
                table.c.id,
                table.c.attempts,
                table.c.event,
                table.c.payload,
                content_webhooks.c.url,
                content_webhooks.c.secret,
                content_webhooks.c.previous_secret,
                content_webhooks.c.previous_expires_at,
            )
            .join(content_webhooks, content_webhooks.c.id == table.c.webhook_id)
            .where(
                table.c.status == PENDING,
                table.c.next_attempt_at <= now,
                content_webhooks.c.active.is_(True),
            )
            .order_by(table.c.next_attempt_at, table.c.id)
            .limit(self.batch_size)
        )
        with self._db.connect() as conn:
            return [_Due(*row) for row in conn.execute(query)]

    def _claim(self, row: _Due) -> int | None:
        """Take the delivery for this try; its number, or ``None`` when another process
        took it (or it was deleted or delivered) since it was read."""
        attempt = row.attempts + 1
        now = self._clock.now()
        # the claim holds it for its backoff step, at least four timeouts (connect, write,
        # read, pool): a process that dies mid-send leaves it to be tried again then
        hold_s = max(self.backoff_after(attempt), 4 * self.timeout_s)
        table = content_webhook_deliveries
        with self._db.begin() as conn:
            claimed = conn.execute(
                table.update()
                .where(
                    table.c.id == row.id,
                    table.c.status == PENDING,
                    table.c.attempts == row.attempts,
                )
                .values(attempts=attempt, next_attempt_at=now + timedelta(seconds=hold_s))
            ).rowcount
        return attempt if claimed == 1 else None

    def _send(self, client: httpx.Client, row: _Due) -> _Outcome:
        body = row.payload.encode()
        timestamp = int(self._clock.time())
        # within a rotation's overlap the previous secret signs too
        previous = row.previous_secret
        expires = aware(row.previous_expires_at)
        also = (
            [previous] if previous and expires is not None and self._clock.now() < expires else []
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            EVENT_HEADER: row.event,
            DELIVERY_HEADER: str(row.id),
            SIGNATURE_HEADER: signature_header(row.secret, body, timestamp=timestamp, also=also),
        }
        try:
            with client.stream("POST", row.url, content=body, headers=headers) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return _Outcome(True, status, None)
                if 300 <= status < 400:
                    where = response.headers.get("location", "")
                    return _Outcome(
                        False, status, f"HTTP {status}: redirect to {where!r} not followed"
                    )
                answer = _beginning(response)
                error = f"HTTP {status}" + (f": {answer}" if answer else "")
                return _Outcome(False, status, error[:_MAX_ERROR_CHARS])
        except httpx.TimeoutException as exc:
            return _Outcome(
                False, None, f"timed out after {self.timeout_s} s ({type(exc).__name__})"
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return _Outcome(False, None, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS])

    def _record(self, row: _Due, attempt: int, outcome: _Outcome) -> str:
        """Write how the try went; returns the counter it adds to."""
        now = self._clock.now()
        values: dict[str, Any] = {
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
        }
        if outcome.delivered:
            kind = DELIVERED
            values.update(status=DELIVERED, delivered_at=now, next_attempt_at=None)
        elif attempt >= self.max_attempts:
            kind = FAILED
            values.update(status=FAILED, next_attempt_at=None)
        else:
            kind = "retrying"
            values["next_attempt_at"] = now + timedelta(seconds=self.backoff_after(attempt))
        table = content_webhook_deliveries
        with self._db.begin() as conn:
            # only over our own claim: a delivery deleted or claimed again meanwhile keeps
            # what its newer owner wrote
            conn.execute(
                table.update()
                .where(table.c.id == row.id, table.c.status == PENDING, table.c.attempts == attempt)
                .values(**values)
            )
        return kind


def _beginning(response: httpx.Response) -> str:
    """The first few hundred characters of an answer, without reading all of a large one."""
    taken = b""
    for chunk in response.iter_bytes():
        taken += chunk
        if len(taken) >= _MAX_ERROR_CHARS:
            break
    return taken[:_MAX_ERROR_CHARS].decode("utf-8", "replace").strip()
