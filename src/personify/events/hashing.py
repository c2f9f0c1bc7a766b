"""PII hashing at ingest: values under PII keys are normalised, then replaced by HMAC-SHA256.

Where PII is looked for is a list of dotted paths (``PERSONIFY_PII_PATHS``). A path's first
name is a top-level field of the event, spelled as the Segment spec spells it (``traits``,
``context``). Every name below it is compared by its *key name* (``pii_key_name``): ASCII
letters lower-cased, ``-``, ``_``, ``.`` and spaces dropped, so ``"E-Mail"``, ``"EMAIL"`` and
``"e_mail"`` all name ``email``. A path that ends in ``*`` (``traits.*``) covers every key
there whose key name is in ``PII_KEYS``; the defaults are ``traits.*`` and
``context.traits.*``, where the spec puts traits for every event type.

The raw value never leaves this module: it is not stored, logged or put in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from personify.errors import ConfigurationError
from personify.settings import Settings

_NON_DIGITS = re.compile(r"\D+")
HASH_PREFIX = "hmac-sha256:"
# exactly what hash_value returns; anything else that starts with the prefix is hashed too
_DIGEST = re.compile(r"hmac-sha256:[0-9a-f]{64}")
_DIGEST_CHARS = len(HASH_PREFIX) + 64

ANY_PII_KEY = "*"
"""The last name of a path that covers every key of ``PII_KEYS`` at that place."""

EMAIL_KEYS = frozenset(
    {
        "email",
        "emailaddress",
        "emailaddr",
        "mail",
        "mailaddress",
        "useremail",
        "workemail",
        "personalemail",
        "contactemail",
        "primaryemail",
        "secondaryemail",
        "businessemail",
    }
)
"""Key names of e-mail addresses (normalised: trimmed, lower-cased)."""

PHONE_KEYS = frozenset(
    {
        "phone",
        "phonenumber",
        "phoneno",
        "phonenum",
        "telephone",
        "telephonenumber",
        "tel",
        "telno",
        "telnumber",
        "mobile",
        "mobilephone",
        "mobilenumber",
        "mobileno",
        "mobilephonenumber",
        "cell",
        "cellphone",
        "cellnumber",
        "cellphonenumber",
        "cellular",
        "homephone",
        "workphone",
        "businessphone",
        "userphone",
        "contactphone",
        "primaryphone",
        "fax",
        "faxnumber",
        "msisdn",
    }
)
"""Key names of phone numbers (normalised: reduced to digits)."""

PII_KEYS = EMAIL_KEYS | PHONE_KEYS
"""The key names a path ending in ``*`` covers (docs/ingest.md lists them)."""

_SEPARATORS = "-_. "
# ASCII only: the wire path looks for key names in raw UTF-8 bytes, where only ASCII letters
# fold byte by byte; a rule that also folded other letters (the Kelvin sign to "k") could
# name a key that the byte search never finds
_KEY_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, _SEPARATORS)
KEY_FOLD_BYTES = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
"""``bytes.translate`` table that lower-cases ASCII, as ``pii_key_name`` does."""
KEY_SEPARATORS = _SEPARATORS.encode()
"""The bytes ``pii_key_name`` drops (``bytes.translate``'s ``delete``)."""

# key names by key: the same few keys come in every event; long keys are not kept, so the
# cache stays small whatever clients send
_key_names: dict[str, str] = {}
_MAX_CACHED_KEYS = 4096
_MAX_CACHED_KEY_CHARS = 64


def pii_key_name(key: str) -> str:
    """``key`` as PII paths compare it: ASCII lower-case, without ``-``, ``_``, ``.``, spaces."""
    name = _key_names.get(key)
    if name is None:
        name = key.translate(_KEY_FOLD)
        if len(key) <= _MAX_CACHED_KEY_CHARS:
            if len(_key_names) >= _MAX_CACHED_KEYS:
                _key_names.clear()
            _key_names[key] = name
    return name


def key_name_stems(names: Iterable[str]) -> tuple[str, ...]:
    """The fewest of ``names`` that every one of ``names`` contains one of (``"mail"`` for
    ``"email"`` and ``"emailaddress"``): what a search for any of them must look for."""
    unique = set(names)
    return tuple(
        sorted(name for name in unique if not any(o != name and o in name for o in unique))
    )


def is_pii_digest(value: str) -> bool:
    """Whether ``value`` has exactly the form ``hash_value`` gives: ``hmac-sha256:`` and 64
    lower-case hex digits. Such a value is kept as it is, so hashing twice changes nothing."""
    return len(value) == _DIGEST_CHARS and _DIGEST.fullmatch(value) is not None


def normalize_pii(field: str, value: str) -> str:
    """Canonical form before hashing, so that ``" Ann@X.com"`` and ``"ann@x.com"`` match."""
    name = pii_key_name(field)
    if name in EMAIL_KEYS or "email" in name:
        return value.strip().lower()
    if name in PHONE_KEYS or "phone" in name:
        return _NON_DIGITS.sub("", value)
    return value.strip()


@dataclass(slots=True)
class _Node:
    """One place on the PII paths: its children by key name."""

    children: dict[str, _Node] = field(default_factory=dict)
    # the value here is PII
    leaf: bool = False
    # a child whose key name is in PII_KEYS is PII (a path ending in "*")
    any_key: bool = False


def _tree(paths: list[tuple[str, ...]]) -> dict[str, _Node]:
    roots: dict[str, _Node] = {}
    for path in paths:
        if ANY_PII_KEY in path[:-1] or path == (ANY_PII_KEY,):
            raise ConfigurationError(
                f"PERSONIFY_PII_PATHS: in {'.'.join(path)!r}, '*' may only be the last name "
                "of a path below a top-level field (e.g. 'traits.*')",
                code="invalid_pii_path",
            )
        node = roots.setdefault(path[0], _Node())
        for name in path[1:-1]:
            node = node.children.setdefault(pii_key_name(name), _Node())
        if len(path) == 1:
            node.leaf = True
        elif path[-1] == ANY_PII_KEY:
            node.any_key = True
        else:
            node.children.setdefault(pii_key_name(path[-1]), _Node()).leaf = True
    return roots


def key_id(key: bytes) -> str:
    """A key's public id: the first 12 hex digits of SHA-256 over ``personify-key-id:`` and
    the key (it names the key in status output without revealing it)."""
    return hashlib.sha256(b"personify-key-id:" + key).hexdigest()[:12]


class PiiHasher:
    """Replaces the values at dotted ``paths`` (``traits.*``, ``traits.email``) by keyed
    hashes; names below the top-level field match by key name (see the module docstring).

    Raises ``ConfigurationError`` for a path with ``*`` anywhere but at its end.
    """

    def __init__(
        self, key: bytes, paths: Iterable[str], *, retired_keys: Iterable[bytes] = ()
    ) -> None:
        self._key = key
        # a keyring: ``key`` hashes; retired keys still match a lookup (``candidates``)
        self._retired = tuple(k for k in retired_keys if k and k != key)
        self._paths = [tuple(p.split(".")) for p in paths if p]
        self._roots = tuple(_tree(self._paths).items())

    @classmethod
    def from_settings(cls, settings: Settings) -> PiiHasher:
        """The hasher ``settings`` configure: the active key, the retired keys, the paths."""
        return cls(
            settings.resolved_pii_hash_key(),
            settings.pii_paths,
            retired_keys=settings.resolved_pii_hash_retired_keys(),
        )

    @property
    def key_ids(self) -> list[str]:
        """The keyring's key ids (``key_id``), the active key first."""
        return [key_id(k) for k in (self._key, *self._retired)]

    @property
    def rotated(self) -> bool:
        """Whether retired keys are on the ring (lookups then try each of them)."""
        return bool(self._retired)

    @property
    def paths(self) -> list[tuple[str, ...]]:
        """The configured paths, split at their dots (``"*"`` as the last name stays)."""
        return list(self._paths)

    def hash_value(self, field: str, value: str) -> str:
        """The keyed hash of one value, prefixed so a hashed value is recognisable."""
        canonical = normalize_pii(field, value).encode("utf-8")
        return HASH_PREFIX + hmac.new(self._key, canonical, hashlib.sha256).hexdigest()

    def candidates(self, field: str, value: str) -> tuple[str, ...]:
        """The hash of one value under every key of the ring, the active key's first: what a
        lookup of a value stored before a rotation must try (retired keys verify, only the
        active key hashes new data)."""
        canonical = normalize_pii(field, value).encode("utf-8")
        return tuple(
            HASH_PREFIX + hmac.new(key, canonical, hashlib.sha256).hexdigest()
            for key in (self._key, *self._retired)
        )

    def apply(self, event: dict[str, Any]) -> None:
        """Hash, in place, every PII value present in ``event`` (copying what it changes).

        Nested objects on a hashed path are copied first, so the caller's input is untouched.
        """
        for name, node in self._roots:
            value = event.get(name)
            if value is None:
                continue
            if node.leaf:
                replaced = self._hashed(name, value)
                if replaced is not value:
                    event[name] = replaced
            elif type(value) is dict:
                copy = self._walk(value, node)
                if copy is not None:
                    event[name] = copy
            else:
                # a scalar or list where an object was expected ("traits": "ann@x.com") has
                # no keys to tell PII by: drop it, never keep it raw
                event[name] = None

    def _walk(self, obj: dict[str, Any], node: _Node) -> dict[str, Any] | None:
        """A copy of ``obj`` with its PII replaced, or None when there was none."""
        copy: dict[str, Any] | None = None
        children = node.children
        any_key = node.any_key
        for key, value in obj.items():
            if value is None:
                continue
            name = pii_key_name(key)
            child = children.get(name)
            if (child is not None and child.leaf) or (any_key and name in PII_KEYS):
                replaced = self._hashed(name, value)
            elif child is None:
                continue
            elif type(value) is dict:
                replaced = self._walk(value, child)
                if replaced is None:
                    continue
            else:
                replaced = None  # as in apply: no object where one was expected
            if replaced is value:
                continue
            if copy is None:
                copy = dict(obj)
            copy[key] = replaced
        return copy

    def _hashed(self, name: str, value: Any) -> Any:
        """What a PII value is stored as: hashed, kept (a bool, our own digest) or None."""
        if type(value) is str:
            return value if is_pii_digest(value) else self.hash_value(name, value)
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return self.hash_value(name, str(value))
        # a structured value on a PII path has no field to normalise by: drop it
        return None
