"""Creating and hashing secrets that are shown once and stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets

# Far above any key we issue (``new_secret`` makes 46 characters) or a Segment write key: the
# callers refuse a longer one before it is hashed, looked up or remembered anywhere.
MAX_SECRET_CHARS = 256


def new_secret(prefix: str) -> str:
    """A fresh random secret such as ``pk_3vQ…``; 32 random bytes."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    """SHA-256 of the secret: the only form we store. Secrets are random, so no salt is needed."""
    # surrogatepass: a lone surrogate is no key we issued, but must not be an encoding error
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
