"""Signed webhooks in: ``POST /v1/webhooks/{source}`` takes events a third party signs.

A source takes webhooks once they are enabled on it (``InboundWebhookRepository.enable``),
with a mapping (``personify.ingest.mappings``) and a keyring of secrets. A request is
handled by ``WebhookReceiver.handle``, in this order:

1. the source (by name or id) must exist, be active and take webhooks: else 404
   ``unknown_webhook_source``, the same answer for each case, so that the answer does not
   say which sources exist;
2. the signature header (``Personify-Signature``, or ``Stripe-Signature``: the same
   scheme, ``personify.ingest.signing``) must sign the raw body with one of the keyring's
   secrets (401 ``invalid_signature``), at a time within the tolerance (401
   ``stale_signature``);
3. the body must be JSON (400);
4. the signature id must not have been seen within the tolerance (401
   ``replayed_signature``);
5. the payload is mapped: an event type without a rule answers 200 with ``ignored: 1``
   (never an error, which the sender would retry for days); a mapped event goes through
   ``Collector.collect`` exactly as an event of ``/v1/batch`` does, from this source.

Refused requests are counted by reason (``WebhookReceiver.rejected``) and nothing of them is
stored. The signature id is the hex SHA-256 of the source's id and the signed message
(timestamp and body): a signature header may carry several digests (a sender signing with
two secrets while it rotates) and any one of them verifies, so an id taken from the digests
would let a captured request be replayed once per digest. The scheme has no signed event
id; a resent event (a new timestamp) is deduplicated downstream by its ``messageId``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from personify.auth.lookup import ExpiringLookup
from personify.auth.revocations import RevocationListener
from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import (
    Conflict,
    NotFound,
    PersonifyError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from personify.events.decoding import MAX_DEPTH, decode_document
from personify.events.normalize import parse_timestamp
from personify.ingest import signing
from personify.ingest.collector import Collector
from personify.ingest.mappings import WebhookMapping, builtin_mapping, parse_mapping
from personify.ingest.routes import Headers, read_body
from personify.ingest.sources import Source
from personify.ingest.tables import inbound_webhook_replays, inbound_webhooks, sources
from personify.store.database import Database, aware

__all__ = [
    "INVALID_SIGNATURE",
    "REJECTION_REASONS",
    "REPLAYED_SIGNATURE",
    "SIGNATURE_HEADERS",
    "STALE_SIGNATURE",
    "UNKNOWN_SOURCE",
    "InboundWebhook",
    "InboundWebhookRepository",
    "WebhookReceiver",
    "WebhookSecret",
    "signature_id",
]

INVALID_SIGNATURE = signing.INVALID_SIGNATURE
STALE_SIGNATURE = signing.STALE_SIGNATURE
REPLAYED_SIGNATURE = "replayed_signature"
UNKNOWN_SOURCE = "unknown_webhook_source"
REJECTION_REASONS = (INVALID_SIGNATURE, STALE_SIGNATURE, REPLAYED_SIGNATURE, UNKNOWN_SOURCE)
# where the signature is read, in this order: ours, then Stripe's name for the same scheme
SIGNATURE_HEADERS = (signing.SIGNATURE_HEADER, "Stripe-Signature")
_HEADER_KEYS = tuple(name.lower().encode() for name in SIGNATURE_HEADERS)
SECRET_PREFIX = "whsec_"
# the longest source name; a longer path segment names no source and is refused unread
_MAX_SEGMENT_CHARS = 200
# a secret handed in (a sender's own, such as Stripe's) has this many characters at most
_MAX_SECRET_CHARS = 256
_MIN_SECRET_CHARS = 16
_NOT_FOUND_MESSAGE = "no source takes webhooks here"
_encode = msgspec.json.Encoder().encode
_IGNORED = _encode({"success": True, "accepted": 0, "duplicates": 0, "rejected": 0, "ignored": 1})


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """One secret of a source's keyring; every one verifies until it is retired."""

    id: int
    created_at: datetime
    secret: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape listings show (never the secret)."""
        return {"id": self.id, "createdAt": format_timestamp(self.created_at)}


@dataclass(frozen=True, slots=True)
class InboundWebhook:
    """A source that takes signed webhooks: its mapping and its keyring (newest last)."""

    source_id: str
    source_name: str
    mapping: WebhookMapping
    secrets: tuple[WebhookSecret, ...]
    created_at: datetime
    updated_at: datetime

    @property
    def path(self) -> str:
        """Where the sender posts: by the source's name when a path segment can hold it."""
        name = self.source_name
        reachable = name and "/" not in name and not (name.isascii() and name.isdigit())
        return f"/v1/webhooks/{name if reachable and name.isascii() else self.source_id}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints (no secret)."""
        return {
            "source": self.source_name,
            "sourceId": self.source_id,
            "path": self.path,
            "mapping": self.mapping.name,
            "secrets": [secret.to_dict() for secret in self.secrets],
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class _Target:
    """What a request to one source needs: the source, its secrets, its mapping."""

    source: Source
    secrets: tuple[str, ...]
    mapping: WebhookMapping


def signature_id(source_id: str, timestamp: int, body: bytes) -> str:
    """The replay key of a signed request: hex SHA-256 of the source and the signed message."""
    digest = hashlib.sha256(source_id.encode())
    digest.update(b"\x00" + str(timestamp).encode() + b"." + body)
    return digest.hexdigest()


def _new_secret() -> str:
    import secrets

    return SECRET_PREFIX + secrets.token_hex(32)


def _stored_mapping(mapping: WebhookMapping | str) -> str:
    """The column's text: a built-in by its name (checked), so that it follows upgrades; a
    custom mapping as its JSON document."""
    if isinstance(mapping, str):
        builtin_mapping(mapping)
        return mapping
    return _encode(mapping.document).decode()


def _loaded_mapping(text: str) -> WebhookMapping:
    if text.startswith("{"):
        return parse_mapping(msgspec.json.decode(text))
    return builtin_mapping(text)


def _keyring(text: str) -> tuple[WebhookSecret, ...]:
    entries = msgspec.json.decode(text)
    return tuple(
        WebhookSecret(
            int(entry["id"]), parse_timestamp("createdAt", entry["createdAt"]), entry["secret"]
        )
        for entry in entries
    )


def _keyring_text(keyring: Sequence[WebhookSecret]) -> str:
    return _encode(
        [
            {"id": s.id, "createdAt": format_timestamp(s.created_at), "secret": s.secret}
            for s in keyring
        ]
    ).decode()


def _source(row: sa.RowMapping) -> Source:
    return Source(
        id=row["id"],
        name=row["name"],
        write_key_prefix=row["write_key_prefix"],
        created_at=aware(row["created_at"]),  # type: ignore[arg-type]
        revoked_at=aware(row["revoked_at"]),
    )


class InboundWebhookRepository:
    """Which sources take signed webhooks, their keyrings and mappings; the replay store.

    Lookups for requests are cached for ``cache_ttl_s`` (negative ones too): a rotation,
    retirement or disabling takes effect at once in this process and within that time in
    the others (a source's revocation at once, given the ``revocations`` listener). Seen signature ids are kept twice ``tolerance_s`` (a timestamp may be that far
    from another process's clock and still pass), pruned at most once per ``tolerance_s``.
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        tolerance_s: float = signing.DEFAULT_TOLERANCE_S,
        cache_ttl_s: float = 5.0,
        revocations: RevocationListener | None = None,
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self.tolerance_s = tolerance_s
        self._cache: ExpiringLookup[_Target] = ExpiringLookup(cache_ttl_s)
        if revocations is not None:
            # a source revoked in another process stops taking webhooks at once
            revocations.subscribe(self._cache.clear)
        self._next_prune = 0.0

    # -- sources and keyrings ----------------------------------------------------------------

    def _source_row(self, conn: sa.Connection, id_or_name: str) -> Source:
        row = conn.execute(
            sa.select(sources).where(
                sa.or_(sources.c.id == id_or_name, sources.c.name == id_or_name)
            )
        ).first()
        if row is None:
            raise NotFound(f"no source {id_or_name[:200]!r}", code="source_not_found")
        return _source(row._mapping)

    def _row(self, conn: sa.Connection, source: Source) -> InboundWebhook | None:
        row = conn.execute(
            sa.select(inbound_webhooks).where(inbound_webhooks.c.source_id == source.id)
        ).first()
        if row is None:
            return None
        m = row._mapping
        return InboundWebhook(
            source_id=source.id,
            source_name=source.name,
            mapping=_loaded_mapping(m["mapping"]),
            secrets=_keyring(m["secrets"]),
            created_at=aware(m["created_at"]),  # type: ignore[arg-type]
            updated_at=aware(m["updated_at"]),  # type: ignore[arg-type]
        )

    def enable(
        self, source: str, mapping: WebhookMapping | str = "stripe"
    ) -> tuple[InboundWebhook, str | None]:
        """Let ``source`` (id or name) take signed webhooks mapped by ``mapping`` (a checked
        mapping or a built-in's name). Returns the webhook and its first secret, shown this
        once; on a source that takes webhooks already, only the mapping changes (the secret
        is ``None``). ``NotFound`` for an unknown source, ``Conflict`` for a revoked one."""
        text = _stored_mapping(mapping)
        now = self._clock.now()
        with self._db.begin() as conn:
            found = self._source_row(conn, source)
            if not found.is_active:
                raise Conflict(
                    f"source {found.name!r} is revoked: it takes nothing", code="source_revoked"
                )
            existing = self._row(conn, found)
            secret: str | None = None
            if existing is None:
                secret = _new_secret()
                conn.execute(
                    inbound_webhooks.insert().values(
                        source_id=found.id,
                        secrets=_keyring_text([WebhookSecret(1, now, secret)]),
                        mapping=text,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                conn.execute(
                    inbound_webhooks.update()
                    .where(inbound_webhooks.c.source_id == found.id)
                    .values(mapping=text, updated_at=now)
                )
            enabled = self._row(conn, found)
        self._cache.clear()
        assert enabled is not None
        return enabled, secret

    def get(self, source: str) -> InboundWebhook:
        """The webhook settings of ``source`` (id or name); ``NotFound``
        (``webhook_not_enabled``) when it takes no webhooks."""
        with self._db.connect() as conn:
            found = self._source_row(conn, source)
            webhook = self._row(conn, found)
        if webhook is None:
            raise NotFound(
                f"source {found.name!r} takes no webhooks: enable them first",
                code="webhook_not_enabled",
            )
        return webhook

    def _change_keyring(
        self, source: str, change: Any
    ) -> tuple[InboundWebhook, tuple[WebhookSecret, ...]]:
        now = self._clock.now()
        with self._db.begin() as conn:
            found = self._source_row(conn, source)
            webhook = self._row(conn, found)
            if webhook is None:
                raise NotFound(
                    f"source {found.name!r} takes no webhooks: enable them first",
                    code="webhook_not_enabled",
                )
            keyring: tuple[WebhookSecret, ...] = change(webhook.secrets, now)
            # only over the keyring read: a change by another process meanwhile is kept
            changed = conn.execute(
                inbound_webhooks.update()
                .where(
                    inbound_webhooks.c.source_id == found.id,
                    inbound_webhooks.c.secrets == _keyring_text(webhook.secrets),
                )
                .values(secrets=_keyring_text(keyring), updated_at=now)
            ).rowcount
            if changed != 1:
                raise Conflict(
                    "the keyring changed meanwhile; try again", code="webhook_keyring_changed"
                )
            updated = self._row(conn, found)
        self._cache.clear()
        assert updated is not None
        return updated, keyring

    def rotate(self, source: str, secret: str | None = None) -> tuple[InboundWebhook, str]:
        """Add a new secret to the keyring and return it (shown this once): give it to the
        sender. The older secrets go on verifying until ``retire``. ``secret`` adds one the
        sender issued (Stripe makes its own) instead of a new random one."""
        if secret is not None and not (_MIN_SECRET_CHARS <= len(secret) <= _MAX_SECRET_CHARS):
            raise ValidationError(
                f"a webhook secret has {_MIN_SECRET_CHARS} to {_MAX_SECRET_CHARS} characters",
                code="invalid_secret",
            )
        new = secret or _new_secret()

        def add(keyring: tuple[WebhookSecret, ...], now: datetime) -> tuple[WebhookSecret, ...]:
            next_id = max((s.id for s in keyring), default=0) + 1
            return (*keyring, WebhookSecret(next_id, now, new))

        webhook, _ = self._change_keyring(source, add)
        return webhook, new

    def retire(
        self, source: str, older_than: timedelta
    ) -> tuple[InboundWebhook, list[WebhookSecret]]:
        """Remove the secrets created more than ``older_than`` ago, never the newest one
        (a source always has a secret that verifies); returns the webhook and those removed."""
        removed: list[WebhookSecret] = []

        def drop(keyring: tuple[WebhookSecret, ...], now: datetime) -> tuple[WebhookSecret, ...]:
            cutoff = now - older_than
            newest = max(keyring, key=lambda s: (s.created_at, s.id))
            kept = tuple(s for s in keyring if s is newest or s.created_at >= cutoff)
            removed.extend(s for s in keyring if s not in kept)
            return kept

        webhook, _ = self._change_keyring(source, drop)
        return webhook, removed

    def disable(self, source: str) -> bool:
        """Stop ``source`` taking webhooks (its keyring is dropped); whether it took them."""
        with self._db.begin() as conn:
            found = self._source_row(conn, source)
            deleted = conn.execute(
                inbound_webhooks.delete().where(inbound_webhooks.c.source_id == found.id)
            ).rowcount
        self._cache.clear()
        return bool(deleted)

    # -- the request path --------------------------------------------------------------------

    def target(self, segment: str) -> _Target | None:
        """The active source named (or with the id) ``segment`` that takes webhooks, with its
        secrets and mapping; ``None`` otherwise. Cached for ``cache_ttl_s``."""
        if not segment or len(segment) > _MAX_SEGMENT_CHARS:
            return None
        hit, cached = self._cache.get(segment)
        if hit:
            return cached
        generation = self._cache.generation
        query = (
            sa.select(sources, inbound_webhooks.c.secrets, inbound_webhooks.c.mapping)
            .join(inbound_webhooks, inbound_webhooks.c.source_id == sources.c.id)
            .where(
                sa.or_(sources.c.name == segment, sources.c.id == segment),
                sources.c.revoked_at.is_(None),
            )
            .order_by(sources.c.name == segment)  # a name wins over another source's id
        )
        with self._db.connect() as conn:
            rows = conn.execute(query).all()
        target: _Target | None = None
        if rows:
            m = rows[-1]._mapping
            target = _Target(
                _source(m),
                tuple(s.secret for s in _keyring(m["secrets"])),
                _loaded_mapping(m["mapping"]),
            )
        self._cache.put(segment, target, generation=generation)
        return target

    def remember(self, source_id: str, signature: str) -> bool:
        """Record a signature id as seen; ``False`` when it was seen already (a replay).
        Prunes ids older than twice the tolerance, at most once per tolerance."""
        now = self._clock.now()
        if self._clock.time() >= self._next_prune:
            self._next_prune = self._clock.time() + self.tolerance_s
            self.prune()
        try:
            with self._db.begin() as conn:
                conn.execute(
                    inbound_webhook_replays.insert().values(
                        signature_id=signature, source_id=source_id, seen_at=now
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def forget(self, signature: str) -> None:
        """Drop a signature id, so that the sender's retry of a request that failed here
        (the log was down) is taken."""
        with self._db.begin() as conn:
            conn.execute(
                inbound_webhook_replays.delete().where(
                    inbound_webhook_replays.c.signature_id == signature
                )
            )

    def prune(self) -> int:
        """Delete the signature ids seen more than twice the tolerance ago; how many."""
        cutoff = self._clock.now() - timedelta(seconds=2 * self.tolerance_s)
        with self._db.begin() as conn:
            return int(
                conn.execute(
                    inbound_webhook_replays.delete().where(
                        inbound_webhook_replays.c.seen_at < cutoff
                    )
                ).rowcount
            )


class WebhookReceiver:
    """Handles ``POST /v1/webhooks/{source}``: verify, map, hand to the collector; counts
    what it refuses (``rejected``, by reason) and what it takes (``mapped``, ``ignored``)."""

    def __init__(
        self,
        webhooks: InboundWebhookRepository,
        collector: Collector,
        *,
        max_body_bytes: int,
        clock: Clock | None = None,
    ) -> None:
        self.webhooks = webhooks
        self._collector = collector
        self.max_body_bytes = max_body_bytes
        self._clock = clock or SystemClock()
        self.rejected: dict[str, int] = dict.fromkeys(REJECTION_REASONS, 0)
        self.mapped = 0
        self.ignored = 0

    def _refuse(self, reason: str, message: str) -> PersonifyError:
        self.rejected[reason] += 1
        if reason == UNKNOWN_SOURCE:
            return NotFound(message, code=reason)
        return Unauthorized(message, code=reason)

    async def handle(self, segment: str, headers: Headers, receive: Receive) -> bytes:
        """Answer one webhook request to source ``segment``: the JSON body of a 200, or a
        ``PersonifyError`` raised (404, 401, 400, 413, 415, 503)."""
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"", b"identity"):
            # the signature covers the body as sent; inflating first would sign-check
            # something else, and no webhook sender compresses
            raise UnsupportedMediaType(
                "webhooks are taken uncompressed (no Content-Encoding)",
                code="unsupported_encoding",
            )
        body = await read_body(headers, receive, self.max_body_bytes, "webhook_too_large")
        target = await run_in_threadpool(self.webhooks.target, segment)
        if target is None:
            raise self._refuse(UNKNOWN_SOURCE, _NOT_FOUND_MESSAGE)
        header = next((headers[key] for key in _HEADER_KEYS if key in headers), None)
        checked = signing.check(
            target.secrets,
            header,
            body,
            now=self._clock.time(),
            tolerance_s=self.webhooks.tolerance_s,
        )
        if checked.reason == STALE_SIGNATURE:
            raise self._refuse(
                STALE_SIGNATURE,
                f"the signature's timestamp is more than {self.webhooks.tolerance_s:g} s "
                "from this server's clock",
            )
        if checked.reason is not None or checked.timestamp is None:
            raise self._refuse(
                INVALID_SIGNATURE,
                f"no valid signature: send {signing.SIGNATURE_HEADER}: t=<unix seconds>,"
                "v1=<hex HMAC-SHA256 of '<t>.<body>' under the source's secret>",
            )
        payload = decode_document(body, max_depth=MAX_DEPTH)
        signature = signature_id(target.source.id, checked.timestamp, body)
        if not await run_in_threadpool(self.webhooks.remember, target.source.id, signature):
            raise self._refuse(REPLAYED_SIGNATURE, "this signed request was received already")
        try:
            return await self._take(target, payload)
        except PersonifyError:
            await run_in_threadpool(self.webhooks.forget, signature)
            raise

    async def _take(self, target: _Target, payload: Any) -> bytes:
        mapped = target.mapping.map(payload)
        if mapped is None:
            self.ignored += 1
            return _IGNORED
        outcome = await self._collector.collect(target.source, [mapped.event])
        self.mapped += 1
        return _encode(
            {
                "success": True,
                "accepted": outcome.accepted,
                "duplicates": outcome.duplicates,
                "rejected": len(outcome.rejected),
                "ignored": 0,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The counts since this process started, as the ingest status shows them."""
        return {
            "rejected": {"total": sum(self.rejected.values()), "byReason": dict(self.rejected)},
            "mapped": self.mapped,
            "ignored": self.ignored,
        }
