"""The webhook signature scheme, both directions: Personify's webhooks out sign with it and
the signed webhooks in (``POST /v1/webhooks/{source}``) are verified with it.

A signature header is ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, b"<t>." + body)>``:
the timestamp is signed with the body, so a captured request cannot be sent again later
with a new time. A header may carry several ``v1`` entries (a sender signing with an old and
a new secret while it rotates); it verifies when one of them does. The secret is used as its
UTF-8 bytes, whole (``whsec_`` prefix included). It is the shape Stripe's
``Stripe-Signature`` header has, so a sender built for that scheme signs for this one.

``check`` says why a header fails (``invalid_signature``, ``stale_signature``) and which
secret matched; ``verify`` is its yes-or-no form for receivers.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "INVALID_SIGNATURE",
    "MAX_HEADER_CHARS",
    "MAX_SIGNATURES",
    "SIGNATURE_HEADER",
    "STALE_SIGNATURE",
    "SignatureHeader",
    "Verification",
    "check",
    "parse_header",
    "sign",
    "signature_header",
    "verify",
]

SIGNATURE_HEADER = "Personify-Signature"
DEFAULT_TOLERANCE_S = 300.0
INVALID_SIGNATURE = "invalid_signature"
STALE_SIGNATURE = "stale_signature"
# a header past these bounds is malformed, read no further: every v1 entry costs a compare
MAX_HEADER_CHARS = 2048
MAX_SIGNATURES = 8
# Unix seconds have 10 digits until the year 2286; 12 leaves room and bounds the integer
_MAX_TIMESTAMP_DIGITS = 12
_DIGEST_CHARS = 64
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """A parsed signature header: the signed timestamp and each ``v1`` digest offered."""

    timestamp: int
    signatures: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Verification:
    """How checking a header went: ``reason`` is ``None`` when it verified, else
    ``invalid_signature`` or ``stale_signature``. ``secret_index`` is the position of the
    first secret that matched (``None`` when none did); ``timestamp`` is the header's."""

    reason: str | None
    timestamp: int | None = None
    secret_index: int | None = None

    @property
    def is_valid(self) -> bool:
        """The header signs the body with one of the secrets, within the tolerance."""
        return self.reason is None


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int, body: str | bytes) -> str:
    """The hex HMAC-SHA256 of ``b"<timestamp>." + body`` under ``secret`` (as UTF-8)."""
    message = str(timestamp).encode() + b"." + _bytes(body)
    return hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()


def signature_header(
    secret: str | bytes,
    body: str | bytes,
    *,
    timestamp: int,
    also: Iterable[str | bytes] = (),
) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (Unix seconds); with
    ``also`` (a rotated-out secret), one more ``v1`` for each, so that a receiver that still
    holds an old secret verifies it while it moves to the new one."""
    digests = [sign(one, timestamp, body) for one in (secret, *also)]
    return f"t={timestamp}," + ",".join(f"v1={digest}" for digest in digests)


def parse_header(header: str | bytes | None) -> SignatureHeader | None:
    """The timestamp and ``v1`` digests of a header; ``None`` when it is missing or malformed
    (no ``t``, no well-formed ``v1``, more than ``MAX_SIGNATURES`` of them, or longer than
    ``MAX_HEADER_CHARS``). Entries of other schemes (``v0=…``) are skipped."""
    if not header or len(header) > MAX_HEADER_CHARS:
        return None
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return None
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            if not (value.isascii() and value.isdigit()) or len(value) > _MAX_TIMESTAMP_DIGITS:
                return None
            timestamp = int(value)
        elif name == "v1":
            digest = value.lower()
            if len(digest) != _DIGEST_CHARS or not _HEX.issuperset(digest):
                return None
            signatures.append(digest)
    if timestamp is None or not signatures or len(signatures) > MAX_SIGNATURES:
        return None
    return SignatureHeader(timestamp, tuple(signatures))


def check(
    secrets: Sequence[str | bytes],
    header: str | bytes | None,
    body: str | bytes,
    *,
    now: datetime | float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> Verification:
    """Check ``header`` against ``body`` and each of ``secrets`` (a keyring), at ``now``
    (a datetime or Unix seconds).

    The digests are compared first, in constant time, every secret against every ``v1``
    entry (so the time taken says nothing about which matched); the timestamp after, so
    ``stale_signature`` is only ever said of a request one of the secrets really signed
    (an old one replayed, or a sender whose clock is off). Never raises."""
    parsed = parse_header(header)
    if parsed is None or not secrets:
        return Verification(INVALID_SIGNATURE)
    matched: int | None = None
    for index, secret in enumerate(secrets):
        expected = sign(secret, parsed.timestamp, body).encode()
        hit = False
        for candidate in parsed.signatures:
            hit |= hmac.compare_digest(expected, candidate.encode())
        if hit and matched is None:
            matched = index
    if matched is None:
        return Verification(INVALID_SIGNATURE, parsed.timestamp)
    current = now.timestamp() if isinstance(now, datetime) else float(now)
    if abs(current - parsed.timestamp) > tolerance_s:
        return Verification(STALE_SIGNATURE, parsed.timestamp, matched)
    return Verification(None, parsed.timestamp, matched)


def verify(
    secret: str | bytes,
    header: str | bytes | None,
    body: str | bytes,
    *,
    now: datetime | float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time no more than
    ``tolerance_s`` from ``now``. Pass the raw body as received, before any JSON parsing.
    Never raises: a malformed header is ``False``."""
    return check([secret], header, body, now=now, tolerance_s=tolerance_s).is_valid
