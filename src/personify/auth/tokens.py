"""Bearer JWTs from an OpenID Connect issuer: who is calling, and with which role.

``TokenVerifier.verify`` turns a token into a ``Principal`` or refuses it. What it guarantees:

* the signature is checked by PyJWT with a key from the issuer's JWKS, and only with an
  asymmetric algorithm that key supports (RS*, PS*, ES*, EdDSA): ``alg: none`` and HS* are
  refused whatever the header says, so a public key can never be used as an HMAC secret;
* ``iss`` equals the issuer, ``aud`` contains the audience, ``sub`` is present, ``exp`` is
  present and not past, ``nbf`` and ``iat`` (when present) are not in the future, each time
  within ``leeway_s`` of the injectable clock;
* the role comes from one claim (a string or a list); the most privileged value that maps
  to a role wins, in the order of ``ROLES`` (owner first);
* the JWKS is fetched once and kept for ``jwks_ttl_s``. A token naming an unknown ``kid``
  triggers one refresh (a key rotation shows up at once), but such refreshes happen at most
  once per ``MISS_REFRESH_INTERVAL_S``, so a flood of made-up kids costs the issuer one
  request per interval. With the issuer unreachable, cached keys keep verifying; with
  nothing cached, ``BackendUnavailable`` (``jwks_unavailable``).

Refusals are ``Unauthorized`` with a specific code (``token_expired``,
``token_not_yet_valid``, ``invalid_audience``, ``invalid_issuer``, ``invalid_signature``,
``unknown_key``, ``invalid_token``); a valid token without a role is ``Forbidden``
(``no_role``). Messages say what is wrong and never echo the token or its header values.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

import httpx
import jwt

from personify.auth.roles import ROLES
from personify.clock import Clock, SystemClock
from personify.errors import BackendUnavailable, ConfigurationError, Forbidden, Unauthorized

if TYPE_CHECKING:
    from personify.settings import Settings

__all__ = [
    "ALGORITHMS",
    "MISS_REFRESH_INTERVAL_S",
    "Principal",
    "TokenVerifier",
]

_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES: Final = frozenset({"Ed25519", "Ed448"})
# the only algorithms a token may name: asymmetric ones, so the verifying key is public
ALGORITHMS: Final = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHM_BY_CURVE.values()) | {"EdDSA"}

# at most one JWKS refresh per this many seconds because of an unknown kid
MISS_REFRESH_INTERVAL_S: Final = 30.0
# after a failed fetch with nothing cached, requests fail at once for this long instead of
# each waiting for the issuer's timeout
_EMPTY_RETRY_S: Final = 5.0
# real tokens are a few KB; a header this large is an attack or a mistake
_MAX_TOKEN_CHARS: Final = 16_384
# the discovery document and the JWKS are small; a larger answer is not read to the end
_MAX_DOCUMENT_BYTES: Final = 1_000_000
# datetime cannot hold a later instant (year 10000)
_MAX_EPOCH_S: Final = 253_402_300_799
_MAX_NAME_CHARS: Final = 200
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
_NAME_CLAIMS: Final = ("name", "preferred_username", "email")
# ROLES is ordered from most to least privileged
_PRIVILEGE: Final = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key, a person's bearer token, or a source's write key."""

    kind: Literal["api_key", "token", "write_key"]
    id: str
    name: str
    role: str | None
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class _SigningKey:
    """A public key from the JWKS with the algorithms it may verify."""

    key: Any
    algorithms: frozenset[str]


class _FetchFailed(Exception):
    """The discovery document or the JWKS could not be fetched or read."""


class TokenVerifier:
    """Verifies bearer JWTs from one OpenID Connect issuer (thread-safe; see the module)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        role_claim: str = "personify_role",
        role_map: Mapping[str, str] | None = None,
        jwks_ttl_s: float = 3600,
        leeway_s: float = 30,
        clock: Clock | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if not _is_http_url(issuer):
            raise ConfigurationError("PERSONIFY_OIDC_ISSUER must be an http(s) URL")
        if jwks_url is not None and not _is_http_url(jwks_url):
            raise ConfigurationError("PERSONIFY_OIDC_JWKS_URL must be an http(s) URL")
        if not audience:
            raise ConfigurationError("PERSONIFY_OIDC_AUDIENCE must name the audience")
        if not role_claim:
            raise ConfigurationError("PERSONIFY_OIDC_ROLE_CLAIM must name a claim")
        unknown = sorted({role for role in (role_map or {}).values() if role not in ROLES})
        if unknown:
            raise ConfigurationError(
                f"PERSONIFY_OIDC_ROLE_MAP maps to unknown roles {unknown}; "
                f"roles are {', '.join(ROLES)}"
            )
        if not (jwks_ttl_s > 0 and leeway_s >= 0 and timeout_s > 0):
            raise ConfigurationError(
                "oidc_jwks_ttl_s and the timeout must be positive, oidc_leeway_s not negative"
            )
        self.issuer = issuer
        self.audience = audience
        self._jwks_url = jwks_url
        self._role_claim = role_claim
        self._role_map = dict(role_map or {})
        self._ttl_s = float(jwks_ttl_s)
        self._leeway_s = float(leeway_s)
        self._clock: Clock = clock or SystemClock()
        self._timeout_s = timeout_s
        # one fetch at a time: concurrent requests wait for it instead of repeating it
        self._lock = threading.Lock()
        self._keys: dict[str, _SigningKey] | None = None
        self._keyless: tuple[_SigningKey, ...] = ()
        self._stale_at = 0.0
        self._retry_at = 0.0
        self._last_miss_refresh: float | None = None
        self._last_failure = ""

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Clock | None = None
    ) -> TokenVerifier | None:
        """The verifier the settings describe, or ``None`` when no issuer is configured.

        Raises ``ConfigurationError`` when the issuer is set without an audience (or a
        setting is malformed)."""
        if not settings.oidc_issuer:
            return None
        if not settings.oidc_audience:
            raise ConfigurationError(
                "PERSONIFY_OIDC_ISSUER is set but PERSONIFY_OIDC_AUDIENCE is not: set the "
                "audience the issuer puts in tokens meant for Personify"
            )
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url or None,
            role_claim=settings.oidc_role_claim,
            role_map=settings.oidc_role_map,
            jwks_ttl_s=settings.oidc_jwks_ttl_s,
            leeway_s=settings.oidc_leeway_s,
            clock=clock,
        )

    @staticmethod
    def looks_like_jwt(value: str) -> bool:
        """Whether ``value`` has a JWT's shape: three base64url segments (header, payload and
        a signature that may be empty). API keys (``pk_…``) never do."""
        parts = value.split(".")
        return (
            len(parts) == 3
            and _BASE64URL.fullmatch(parts[0]) is not None
            and _BASE64URL.fullmatch(parts[1]) is not None
            and (parts[2] == "" or _BASE64URL.fullmatch(parts[2]) is not None)
        )

    def verify(self, token: str) -> Principal:
        """The principal a valid token names.

        Raises ``Unauthorized`` (the code says why) for a token that fails any check,
        ``Forbidden`` (``no_role``) for a valid token without a role, and
        ``BackendUnavailable`` (``jwks_unavailable``) when the issuer's keys cannot be had.
        Blocking: it may fetch the JWKS, so async callers run it in a thread."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized(
                f"the bearer token is longer than {_MAX_TOKEN_CHARS} characters",
                code="invalid_token",
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized(
                "the bearer token is not a well-formed JWT", code="invalid_token"
            ) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise Unauthorized(
                "the token's algorithm is not accepted: it must be one of "
                f"{', '.join(sorted(ALGORITHMS))} (never none or HS*)",
                code="invalid_token",
            )
        signing_key = self._signing_key(header.get("kid"))
        if alg not in signing_key.algorithms:
            raise Unauthorized(
                "the token's algorithm does not fit the issuer key it names "
                f"(that key verifies {', '.join(sorted(signing_key.algorithms))})",
                code="invalid_token",
            )
        claims = self._decode(token, signing_key.key, alg)
        expires_at = self._check_times(claims)
        subject = claims["sub"]
        if not subject:
            raise Unauthorized("the token's 'sub' claim is empty", code="invalid_token")
        return Principal(
            kind="token",
            id=subject,
            name=_display_name(claims, subject),
            role=self._role(claims),
            expires_at=expires_at,
        )

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        """The claims, after PyJWT checked the signature, ``iss``, ``aud`` and ``sub``."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    # times are checked against our clock (_check_times), not the wall clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud", "sub"],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthorized(
                "the token's signature does not verify with the issuer's key",
                code="invalid_signature",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            code = {"aud": "invalid_audience", "iss": "invalid_issuer"}.get(
                exc.claim, "invalid_token"
            )
            raise Unauthorized(f"the token has no {exc.claim!r} claim", code=code) from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(
                f"the token is not meant for this audience ({self.audience!r})",
                code="invalid_audience",
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(
                f"the token was not issued by {self.issuer!r}", code="invalid_issuer"
            ) from None
        except jwt.InvalidKeyError:
            raise Unauthorized(
                "the issuer key the token names is too weak to trust", code="invalid_token"
            ) from None
        except jwt.PyJWTError:
            raise Unauthorized("the bearer token is malformed", code="invalid_token") from None
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> datetime:
        """Check ``exp``, ``nbf`` and ``iat`` against the clock; the expiry as a datetime."""
        now = self._clock.time()
        exp = _epoch_claim(claims, "exp")
        if exp is None:
            raise Unauthorized("the token has no 'exp' claim", code="invalid_token")
        if exp <= now - self._leeway_s:
            raise Unauthorized("the token has expired", code="token_expired")
        for name in ("nbf", "iat"):
            moment = _epoch_claim(claims, name)
            if moment is not None and moment > now + self._leeway_s:
                raise Unauthorized(
                    f"the token is not valid yet ({name!r} is in the future)",
                    code="token_not_yet_valid",
                )
        return datetime.fromtimestamp(exp, UTC)

    def _role(self, claims: Mapping[str, Any]) -> str:
        """The most privileged role the role claim maps to."""
        value = _claim(claims, self._role_claim)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        roles = {role for item in values if isinstance(item, str) and (role := self._map(item))}
        if not roles:
            raise Forbidden(
                f"the token's {self._role_claim!r} claim maps to no Personify role "
                f"({', '.join(ROLES)}); map the issuer's values with PERSONIFY_OIDC_ROLE_MAP",
                code="no_role",
            )
        return min(roles, key=_PRIVILEGE.__getitem__)

    def _map(self, value: str) -> str | None:
        if value in self._role_map:
            return self._role_map[value]
        return value if value in _PRIVILEGE else None

    def _signing_key(self, kid: Any) -> _SigningKey:
        """The key that verifies a token naming ``kid``, refreshing the JWKS as the module
        docstring describes."""
        with self._lock:
            now = self._clock.time()
            refreshed = False
            if (self._keys is None or now >= self._stale_at) and now >= self._retry_at:
                refreshed = self._refresh(now)
            if self._keys is None:
                raise BackendUnavailable(
                    f"the issuer's signing keys (JWKS) cannot be fetched: {self._last_failure}",
                    code="jwks_unavailable",
                    retry_after_s=math.ceil(max(self._retry_at - now, 1.0)),
                )
            found = self._lookup(kid)
            if (
                found is None
                and kid is not None
                and not refreshed
                and now >= self._retry_at
                and (
                    self._last_miss_refresh is None
                    or now - self._last_miss_refresh >= MISS_REFRESH_INTERVAL_S
                )
            ):
                self._last_miss_refresh = now
                self._refresh(now)
                found = self._lookup(kid)
        if found is not None:
            return found
        if kid is None:
            raise Unauthorized(
                "the token names no key (kid) and the issuer publishes several",
                code="invalid_token",
            )
        raise Unauthorized(
            "the token's key id (kid) is not among the issuer's signing keys",
            code="unknown_key",
        )

    def _lookup(self, kid: Any) -> _SigningKey | None:
        keys = self._keys or {}
        if kid is None:
            every = [*keys.values(), *self._keyless]
            return every[0] if len(every) == 1 else None
        return keys.get(kid) if isinstance(kid, str) else None

    def _refresh(self, now: float) -> bool:
        """Fetch the JWKS; on failure keep what is cached and wait before trying again."""
        try:
            keys, keyless = self._download()
        except _FetchFailed as exc:
            self._last_failure = str(exc)
            # with keys cached, waiting a while costs nothing; with none, retry sooner
            backoff_s = MISS_REFRESH_INTERVAL_S if self._keys is not None else _EMPTY_RETRY_S
            self._retry_at = now + min(backoff_s, self._ttl_s)
            return False
        self._keys, self._keyless = keys, keyless
        self._stale_at = now + self._ttl_s
        self._retry_at = 0.0
        return True

    def _download(self) -> tuple[dict[str, _SigningKey], tuple[_SigningKey, ...]]:
        with httpx.Client(timeout=self._timeout_s, follow_redirects=False) as client:
            if self._jwks_url is None:
                self._jwks_url = self._discover(client)
            document = _fetch_json(client, self._jwks_url)
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise _FetchFailed("the JWKS has no 'keys' list")
        keys: dict[str, _SigningKey] = {}
        keyless: list[_SigningKey] = []
        for entry in entries:
            signing_key = _signing_key_from_jwk(entry)
            if signing_key is None:
                continue
            kid = entry.get("kid")
            if isinstance(kid, str):
                keys[kid] = signing_key
            else:
                keyless.append(signing_key)
        if not keys and not keyless:
            raise _FetchFailed("the JWKS holds no usable signing key")
        return keys, tuple(keyless)

    def _discover(self, client: httpx.Client) -> str:
        """The JWKS URL from the issuer's discovery document (OpenID Connect Discovery 1.0)."""
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        document = _fetch_json(client, url)
        # Discovery §4.3: the document's issuer must be exactly the one asked about
        if document.get("issuer") != self.issuer:
            raise _FetchFailed(f"the discovery document at {url} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _is_http_url(jwks_uri):
            raise _FetchFailed(f"the discovery document at {url} has no http(s) jwks_uri")
        return jwks_uri


def _fetch_json(client: httpx.Client, url: str) -> dict[str, Any]:
    """A JSON object from ``url``, read up to ``_MAX_DOCUMENT_BYTES``."""
    try:
        with client.stream("GET", url, headers={"accept": "application/json"}) as response:
            if response.status_code != 200:
                raise _FetchFailed(f"{url} answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > _MAX_DOCUMENT_BYTES:
                    raise _FetchFailed(f"{url} answered more than {_MAX_DOCUMENT_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise _FetchFailed(f"{url} is unreachable ({type(exc).__name__})") from exc
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise _FetchFailed(f"{url} did not answer JSON") from exc
    if not isinstance(document, dict):
        raise _FetchFailed(f"{url} did not answer a JSON object")
    return document


def _signing_key_from_jwk(entry: Any) -> _SigningKey | None:
    """The public key and its algorithms, or ``None`` for a key we never verify with
    (encryption keys, symmetric keys, unknown types, malformed entries)."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    # a JWKS holds public keys; a private one ("d") published by mistake is not used
    if "d" in entry:
        return None
    kty, crv = entry.get("kty"), entry.get("crv")
    if kty == "RSA":
        supported = _RSA_ALGORITHMS
    elif kty == "EC" and crv in _EC_ALGORITHM_BY_CURVE:
        supported = frozenset({_EC_ALGORITHM_BY_CURVE[crv]})
    elif kty == "OKP" and crv in _OKP_CURVES:
        supported = frozenset({"EdDSA"})
    else:
        # "oct" (a shared secret) above all: a JWKS is public, its keys must be too
        return None
    declared = entry.get("alg")
    if declared is not None:
        # a key that declares its algorithm verifies with that one only (RFC 7517 §4.4)
        supported = supported & {declared}
    if not supported:
        return None
    try:
        key = jwt.PyJWK(entry, algorithm=min(supported)).key
    except jwt.PyJWTError:
        return None
    return _SigningKey(key=key, algorithms=supported)


def _epoch_claim(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2), or ``None`` when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"the token's {name!r} claim is not a number", code="invalid_token")
    # compared without converting (a 400-digit integer must not overflow a float); NaN and
    # infinities fail the comparison too
    if not 0 <= value <= _MAX_EPOCH_S:
        raise Unauthorized(f"the token's {name!r} claim is out of range", code="invalid_token")
    return float(value)


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _display_name(claims: Mapping[str, Any], subject: str) -> str:
    for name in _NAME_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()[:_MAX_NAME_CHARS]
    return subject[:_MAX_NAME_CHARS]


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
