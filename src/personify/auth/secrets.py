"""Creating and hashing secrets that are shown once and stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets


def new_secret(prefix: str) -> str:
    """A fresh random secret such as ``pk_3vQ…``; 32 random bytes."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    """SHA-256 of the secret: the only form we store. Secrets are random, so no salt is needed."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
