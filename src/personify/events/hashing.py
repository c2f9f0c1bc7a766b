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

    @property
    def paths(self) -> list[tuple[str, ...]]:
        """The configured paths, split at their dots."""
        return list(self._paths)

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
            node = event.get(path[0])
            if node is None:
                continue
            # the common case, no PII in this event, settles with two dictionary lookups
            if len(path) > 1 and type(node) is dict and path[1] not in node:
                continue
            self._apply_path(event, path)

    def _apply_path(self, event: dict[str, Any], path: tuple[str, ...]) -> None:
        # look first, copy only when there is something to hash: most events carry no PII
        node: Any = event
        depth = 0
        while depth < len(path) and isinstance(node, dict):
            node = node.get(path[depth])
            depth += 1
        if node is None or isinstance(node, bool):
            return
        if isinstance(node, str) and node.startswith(HASH_PREFIX):
            return
        # copy the chain of objects down to where the value sits, then replace it there
        parent = event
        for name in path[: depth - 1]:
            child = dict(parent[name])
            parent[name] = child
            parent = child
        leaf = path[depth - 1]
        if depth == len(path) and isinstance(node, str | int | float):
            parent[leaf] = self.hash_value(leaf, str(node))
        else:
            # a structured value on a PII path, or a scalar where an object was expected
            # ("traits": "ann@x.com"), has no field to normalise by: drop it, never keep it raw
            parent[leaf] = None
