"""PII hashing at ingest: configured paths are normalised, then replaced by HMAC-SHA256.

The raw value never leaves this module: it is not stored, logged or put in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

_NON_DIGITS = re.compile(r"\D+")
HASH_PREFIX = "hmac-sha256:"


def normalize_pii(field: str, value: str) -> str:
    """Canonical form before hashing, so that ``" Ann@X.com"`` and ``"ann@x.com"`` match."""
    name = field.lower()
    if "email" in name:
        return value.strip().lower()
    if "phone" in name:
        return _NON_DIGITS.sub("", value)
    return value.strip()


class PiiHasher:
    """Replaces the values at dotted ``paths`` (e.g. ``traits.email``) by keyed hashes."""

    def __init__(self, key: bytes, paths: Iterable[str]) -> None:
        self._key = key
        self._paths = [tuple(p.split(".")) for p in paths if p]

    def hash_value(self, field: str, value: str) -> str:
        """The keyed hash of one value, prefixed so a hashed value is recognisable."""
        canonical = normalize_pii(field, value)
        digest = hmac.new(self._key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest

    def apply(self, event: dict[str, Any]) -> None:
        """Hash, in place, every configured path present in ``event`` (copying what it changes).

        Nested objects on a hashed path are copied first, so the caller's input is untouched.
        """
        for path in self._paths:
            self._apply_path(event, path)

    def _apply_path(self, event: dict[str, Any], path: tuple[str, ...]) -> None:
        # look first, copy only when there is something to hash: most events carry no PII
        node: Any = event
        for name in path:
            if not isinstance(node, dict):
                return
            node = node.get(name)
        if node is None or isinstance(node, bool):
            return
        if isinstance(node, str) and node.startswith(HASH_PREFIX):
            return
        parent = event
        for name in path[:-1]:
            child = dict(parent[name])
            parent[name] = child
            parent = child
        if isinstance(node, str | int | float):
            parent[path[-1]] = self.hash_value(path[-1], str(node))
        else:
            # a structured value on a PII path cannot be normalised; drop it rather than keep it raw
            parent[path[-1]] = None
