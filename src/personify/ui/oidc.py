"""Signing in to the console through the OpenID Connect issuer the API already trusts.

With ``PERSONIFY_OIDC_ISSUER``, ``PERSONIFY_OIDC_CLIENT_ID`` and
``PERSONIFY_OIDC_CLIENT_SECRET`` set, the sign-in page offers "Sign in with <issuer>": the
authorization code flow of OpenID Connect Core §3.1 with PKCE (RFC 7636, S256), run by
authlib's client; no token is parsed by hand.

* ``GET /console/login/oidc?next=…`` reads the issuer's discovery document, draws a fresh
  ``state``, ``nonce`` and PKCE verifier, and sends the browser to the authorization
  endpoint. The three values and ``next`` travel in a short-lived cookie (``FLOW_COOKIE``,
  ten minutes, only under ``/console/login/oidc``) that is a JWT signed with a key derived
  from the client secret, so every API node can check it without shared storage and nobody
  without the secret can forge one. It is HttpOnly and SameSite=Lax: the issuer sends the
  browser back with a cross-site top-level GET, which a Strict cookie would not survive.
* ``GET /console/login/oidc/callback?code&state`` refuses a ``state`` that is not the
  cookie's, shows an issuer's ``error`` (with its description only when the state matched,
  so a crafted link cannot put words on our page), exchanges the code (with the verifier,
  authenticated by the client secret), and verifies the ID token with ``TokenVerifier``:
  the signature by the issuer's JWKS with an asymmetric algorithm only, ``iss``, ``aud``
  (the client id), ``exp``, ``nbf``, ``iat``; then the ``nonce`` must be the cookie's, and
  ``azp``, when present, the client id. The role comes from the same claim and map as a
  bearer token's; a person whose claim maps to no role gets a 403 page, not a session.
* Success opens a console session exactly as the API-key form does (``signin.sign_in_as``),
  ending when the ID token expires if that is sooner than the session's lifetime, and
  answers a page that moves on to ``next`` itself (a ``Refresh`` header and a link): the
  session cookie is SameSite=Strict, and a browser withholds it from every request of a
  redirect chain the issuer started, so a plain redirect would land on the sign-in page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import quote, urlsplit

import httpx2
import jwt
import sqlalchemy as sa
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from litestar import Request, Response, get
from litestar.concurrency import sync_to_thread
from litestar.datastructures import Cookie
from litestar.exceptions import NotFoundException
from litestar.params import QueryParameter
from litestar.response import Redirect

from personify.auth.audit import AuditRecord
from personify.auth.ratelimit import enforce
from personify.auth.tokens import Principal, TokenVerifier
from personify.errors import (
    BackendUnavailable,
    ConfigurationError,
    Forbidden,
    PersonifyError,
    RateLimited,
    Unauthorized,
)
from personify.runtime import Runtime
from personify.settings import Settings
from personify.ui.rendering import page_headers, render, render_error
from personify.ui.session import public_page, same_token
from personify.ui.signin import safe_next, secure, sign_in_as

__all__ = ["CALLBACK_PATH", "FLOW_COOKIE", "ROUTES", "issuer_name"]

log = logging.getLogger(__name__)

FLOW_PATH: Final = "/console/login/oidc"
CALLBACK_PATH: Final = f"{FLOW_PATH}/callback"
# state, nonce, PKCE verifier and next, between leaving for the issuer and coming back
FLOW_COOKIE: Final = "personify_console_oidc"
# a person has this long to sign in at the issuer
_FLOW_TTL_S: Final = 600
# the flow cookie is a JWT for this audience only: no other token of ours passes for one
_FLOW_AUDIENCE: Final = "personify-console-oidc-flow"
_SCOPE: Final = "openid profile email"
_TIMEOUT_S: Final = 5.0
_MAX_DOCUMENT_BYTES: Final = 1_000_000
# what an issuer's error and description may show on our page
_MAX_ERROR_CHARS: Final = 300
_MAX_NAME_CHARS: Final = 200
# code exchanges per client address: each costs a request to the issuer
_CALLBACK_PER_S: Final = 1.0
_CALLBACK_BURST: Final = 10
_STATE_KEY: Final = "console_oidc"
# what a console path may keep unquoted in the Refresh header (it is already a safe path)
_URL_SAFE: Final = "/?&=%:;,+@!$'()*~#"


def issuer_name(settings: Settings) -> str | None:
    """The issuer's host, shown as "Sign in with …", when the console offers single sign-on
    (an issuer and a client id are configured); else ``None``."""
    if not (settings.oidc_issuer and settings.oidc_client_id):
        return None
    return urlsplit(settings.oidc_issuer).hostname or settings.oidc_issuer


@dataclass(frozen=True, slots=True)
class _Endpoints:
    """What the discovery document says about the issuer."""

    authorization: str
    token: str
    jwks: str


@dataclass(frozen=True, slots=True)
class _Flow:
    """One sign-in under way: what the callback checks."""

    state: str
    nonce: str
    verifier: str
    next_path: str


class _SingleSignOn:
    """The console's client at the issuer: settings, discovery (cached), the ID-token
    verifier and the flow cookie's key. One per app, kept in ``app.state``."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        if not (settings.oidc_issuer and settings.oidc_client_id):
            raise NotFoundException()
        if not settings.oidc_client_secret:
            raise ConfigurationError(
                "PERSONIFY_OIDC_CLIENT_ID is set but PERSONIFY_OIDC_CLIENT_SECRET is not: the "
                "console signs in as a confidential client; set the secret the issuer gave it",
                code="oidc_not_configured",
            )
        self.runtime = runtime
        self.settings = settings
        self.issuer: str = settings.oidc_issuer
        self.client_id: str = settings.oidc_client_id
        self.client_secret: str = settings.oidc_client_secret
        # HMAC key of the flow cookie, derived so the cookie never reveals the secret itself
        self.flow_key = hmac.new(
            self.client_secret.encode(), b"personify console oidc flow", hashlib.sha256
        ).digest()
        self._endpoints: _Endpoints | None = None
        self._stale_at = 0.0
        self.verifier: TokenVerifier | None = None

    def client(self, redirect_uri: str) -> AsyncOAuth2Client:
        """An authlib client for one request (PKCE S256, client_secret_basic)."""
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope=_SCOPE,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=_TIMEOUT_S,
            follow_redirects=False,
        )

    async def endpoints(self, client: AsyncOAuth2Client) -> _Endpoints:
        """The issuer's endpoints, from its discovery document (kept for the JWKS TTL)."""
        now = self.runtime.clock.time()
        if self._endpoints is not None and now < self._stale_at:
            return self._endpoints
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        document = await _fetch_json(client, url)
        # Discovery §4.3: the document must name exactly the issuer asked about
        if document.get("issuer") != self.issuer:
            raise BackendUnavailable(
                f"the discovery document at {url} names another issuer",
                code="oidc_unavailable",
            )
        found: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or not _is_http_url(value):
                raise BackendUnavailable(
                    f"the discovery document at {url} has no http(s) {name}",
                    code="oidc_unavailable",
                )
            found[name] = value
        endpoints = _Endpoints(
            authorization=found["authorization_endpoint"],
            token=found["token_endpoint"],
            jwks=self.settings.oidc_jwks_url or found["jwks_uri"],
        )
        if self.verifier is None or endpoints != self._endpoints:
            # ID tokens are meant for this client: their audience is the client id
            self.verifier = TokenVerifier(
                issuer=self.issuer,
                audience=self.client_id,
                jwks_url=endpoints.jwks,
                role_claim=self.settings.oidc_role_claim,
                role_map=self.settings.oidc_role_map,
                jwks_ttl_s=self.settings.oidc_jwks_ttl_s,
                leeway_s=self.settings.oidc_leeway_s,
                clock=self.runtime.clock,
                timeout_s=_TIMEOUT_S,
            )
        self._endpoints = endpoints
        self._stale_at = now + self.settings.oidc_jwks_ttl_s
        return endpoints

    def seal(self, flow: _Flow) -> str:
        """The flow cookie's value: ``flow`` signed (HS256) with the flow key."""
        expires = int(self.runtime.clock.time()) + _FLOW_TTL_S
        claims = {
            "aud": _FLOW_AUDIENCE,
            "exp": expires,
            "state": flow.state,
            "nonce": flow.nonce,
            "verifier": flow.verifier,
            "next": flow.next_path,
        }
        return jwt.encode(claims, self.flow_key, algorithm="HS256")

    def unseal(self, value: str) -> _Flow | None:
        """The flow a cookie carries, or ``None``: forged, altered, expired or malformed."""
        if not value or len(value) > 4096:
            return None
        try:
            claims = jwt.decode(
                value,
                self.flow_key,
                algorithms=["HS256"],
                audience=_FLOW_AUDIENCE,
                # the expiry is checked against the runtime's clock below
                options={"verify_exp": False, "require": ["exp", "aud"]},
            )
        except jwt.PyJWTError:
            return None
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self.runtime.clock.time():
            return None
        values = [claims.get(name) for name in ("state", "nonce", "verifier", "next")]
        texts = [value for value in values if isinstance(value, str) and value]
        if len(texts) != len(values):
            return None
        state, nonce, verifier, next_path = texts
        return _Flow(state=state, nonce=nonce, verifier=verifier, next_path=next_path)

    def redirect_uri(self, request: Request[Any, Any, Any]) -> str:
        """Where the issuer sends the browser back (registered with the issuer)."""
        if self.settings.oidc_redirect_url:
            return self.settings.oidc_redirect_url
        base = self.settings.public_url or str(request.base_url).rstrip("/")
        return f"{base}{CALLBACK_PATH}"


def _single_sign_on(request: Request[Any, Any, Any]) -> _SingleSignOn:
    sso: _SingleSignOn | None = request.app.state.get(_STATE_KEY)
    if sso is None:
        sso = _SingleSignOn(request.app.state.runtime)
        request.app.state[_STATE_KEY] = sso
    return sso


async def _fetch_json(client: AsyncOAuth2Client, url: str) -> dict[str, Any]:
    """A JSON object from ``url``, read up to ``_MAX_DOCUMENT_BYTES``."""
    body = bytearray()
    try:
        async with client.stream(
            "GET", url, withhold_token=True, headers={"accept": "application/json"}
        ) as response:
            if response.status_code != 200:
                raise BackendUnavailable(
                    f"{url} answered HTTP {response.status_code}", code="oidc_unavailable"
                )
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_DOCUMENT_BYTES:
                    raise BackendUnavailable(
                        f"{url} answered more than {_MAX_DOCUMENT_BYTES} bytes",
                        code="oidc_unavailable",
                    )
    except httpx2.HTTPError as exc:
        raise BackendUnavailable(
            f"the issuer is unreachable ({type(exc).__name__})", code="oidc_unavailable"
        ) from exc
    try:
        document = json.loads(bytes(body))
    except ValueError as exc:
        raise BackendUnavailable(f"{url} did not answer JSON", code="oidc_unavailable") from exc
    if not isinstance(document, dict):
        raise BackendUnavailable(f"{url} did not answer a JSON object", code="oidc_unavailable")
    return document


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _flow_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=FLOW_COOKIE,
        value=value,
        path=FLOW_PATH,
        max_age=max_age,
        httponly=True,
        # the issuer sends the browser back with a cross-site top-level GET: Lax, not Strict
        samesite="lax",
        secure=secure(request),
    )


def _refused(
    request: Request[Any, Any, Any], status: int, heading: str, message: str, code: str
) -> Response[str]:
    """An error page that also forgets the sign-in under way."""
    response = render_error(request, status, heading, message, code)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


def _clip(value: str) -> str:
    text = "".join(ch for ch in value if ch.isprintable())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


@get(FLOW_PATH.removeprefix("/console"), opt=public_page(), name="console:sign-in-oidc")
async def sign_in_with_issuer(
    request: Request[Any, Any, Any],
    next: Annotated[str | None, QueryParameter(max_length=2000)] = None,
) -> Response[Any]:
    """Send the browser to the issuer's authorization endpoint (state, nonce, PKCE)."""
    sso = _single_sign_on(request)
    flow = _Flow(
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        # RFC 7636 §4.1: 43 to 128 characters; 64 random bytes give 86
        verifier=secrets.token_urlsafe(64),
        next_path=safe_next(next),
    )
    redirect_uri = sso.redirect_uri(request)
    async with sso.client(redirect_uri) as client:
        endpoints = await sso.endpoints(client)
        url, _ = client.create_authorization_url(
            endpoints.authorization,
            state=flow.state,
            code_verifier=flow.verifier,
            nonce=flow.nonce,
        )
    response = Redirect(url, status_code=303, headers=page_headers())
    response.set_cookie(_flow_cookie(request, sso.seal(flow), _FLOW_TTL_S))
    return response


@get(CALLBACK_PATH.removeprefix("/console"), opt=public_page(), name="console:oidc-callback")
async def issuer_callback(
    request: Request[Any, Any, Any],
    code: Annotated[str | None, QueryParameter(max_length=4096)] = None,
    # "state" is a name Litestar reserves for the app state
    returned_state: Annotated[str | None, QueryParameter(name="state", max_length=1024)] = None,
    error: Annotated[str | None, QueryParameter(max_length=200)] = None,
    error_description: Annotated[str | None, QueryParameter(max_length=2000)] = None,
) -> Response[Any]:
    """Finish a sign-in: check the state, exchange the code, verify the ID token, open a
    session (module docstring)."""
    sso = _single_sign_on(request)
    runtime = sso.runtime
    flow = sso.unseal(request.cookies.get(FLOW_COOKIE, ""))
    if flow is None:
        return _refused(
            request,
            400,
            "Sign-in expired",
            "This sign-in did not start here or took too long; start again from the sign-in page.",
            "oidc_flow_expired",
        )
    if not same_token(returned_state or "", flow.state):
        return _refused(
            request,
            400,
            "Sign-in refused",
            "The answer from the issuer does not belong to the sign-in this browser started "
            "(its state differs); start again from the sign-in page.",
            "oidc_state_mismatch",
        )
    host = issuer_name(sso.settings) or sso.issuer
    if error is not None:
        described = f": {_clip(error_description)}" if error_description else ""
        return _refused(
            request,
            401 if error in ("access_denied", "login_required") else 502,
            "The issuer did not sign you in",
            f"{host} answered {_clip(error)}{described}",
            "oidc_issuer_error",
        )
    if not code:
        return _refused(
            request,
            400,
            "Sign-in refused",
            f"{host} sent the browser back without an authorization code.",
            "oidc_no_code",
        )
    client_host = request.client.host if request.client else "unknown"
    try:
        await enforce(
            runtime.rate_limiter,
            f"console-oidc:{client_host}",
            rate_per_s=_CALLBACK_PER_S,
            burst=_CALLBACK_BURST,
        )
    except RateLimited:
        return _refused(
            request,
            429,
            "Too many sign-ins",
            "Too many sign-in attempts; wait a minute and try again.",
            "rate_limited",
        )
    try:
        id_token = await _exchange(request, sso, flow, code)
        principal = await _principal(sso, flow, id_token)
    except Forbidden as exc:
        return _refused(request, 403, "No role in Personify", exc.message, exc.code)
    except Unauthorized as exc:
        return _refused(request, 401, "Sign-in refused", exc.message, exc.code)
    except BackendUnavailable as exc:
        return _refused(request, 503, "The issuer is unavailable", exc.message, exc.code)
    return await _signed_in(request, principal, flow.next_path)


async def _exchange(
    request: Request[Any, Any, Any], sso: _SingleSignOn, flow: _Flow, code: str
) -> str:
    """The ID token for ``code`` (RFC 6749 §4.1.3 with the PKCE verifier)."""
    async with sso.client(sso.redirect_uri(request)) as client:
        endpoints = await sso.endpoints(client)
        try:
            token = await client.fetch_token(
                endpoints.token,
                grant_type="authorization_code",
                code=code,
                code_verifier=flow.verifier,
            )
        except OAuthError as exc:
            described = f": {_clip(exc.description)}" if exc.description else ""
            raise Unauthorized(
                f"the issuer refused the authorization code ({_clip(str(exc.error))}{described})",
                code="oidc_code_refused",
            ) from None
        except (httpx2.HTTPError, ValueError) as exc:
            raise BackendUnavailable(
                f"the issuer's token endpoint failed ({type(exc).__name__})",
                code="oidc_unavailable",
            ) from exc
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise Unauthorized(
            "the issuer answered no ID token; allow the openid scope for this client",
            code="oidc_no_id_token",
        )
    return id_token


async def _principal(sso: _SingleSignOn, flow: _Flow, id_token: str) -> Principal:
    """The person the ID token names, after every check of the module docstring."""
    verifier = sso.verifier
    if verifier is None:  # endpoints() builds it before any exchange
        raise BackendUnavailable("the issuer was not discovered", code="oidc_unavailable")
    verified = await sync_to_thread(verifier.verify, id_token)
    # the token's signature, issuer, audience and times are verified above; these are its
    # claims, read by PyJWT without checking them a second time
    claims: dict[str, Any] = jwt.decode(id_token, options={"verify_signature": False})
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not same_token(nonce, flow.nonce):
        raise Unauthorized(
            "the ID token was not issued for this sign-in (its nonce differs)",
            code="invalid_nonce",
        )
    audiences = claims.get("aud")
    azp = claims.get("azp")
    several = isinstance(audiences, list) and len(audiences) > 1
    # OpenID Connect Core §3.1.3.7: a token for several audiences names us as its party
    if (azp is not None or several) and azp != sso.client_id:
        raise Unauthorized(
            "the ID token was issued to another client (azp)", code="invalid_audience"
        )
    name = next(
        (
            value.strip()
            for value in (claims.get("email"), claims.get("name"))
            if isinstance(value, str) and value.strip()
        ),
        verified.id,
    )
    return Principal(
        kind="token",
        id=verified.id,
        name=name[:_MAX_NAME_CHARS],
        role=verified.role,
        # the session repository ends the session at this if it is sooner than its lifetime
        expires_at=verified.expires_at,
    )


async def _signed_in(
    request: Request[Any, Any, Any], principal: Principal, next_path: str
) -> Response[Any]:
    """Open the session and answer the page that moves on to ``next_path``."""
    runtime: Runtime = request.app.state.runtime
    target = safe_next(next_path)
    page = render(
        request,
        "oidc_signed_in.html",
        title="Signed in",
        name=principal.name,
        role=principal.role,
        next_path=target,
        # a navigation this page starts is same-site, so the Strict session cookie goes along
        headers={"Refresh": f"0; url={quote(target, safe=_URL_SAFE)}"},
    )
    page.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    response = await sign_in_as(request, principal, page)
    client = request.client.host if request.client else None
    record = AuditRecord(
        at=runtime.clock.now(),
        actor_kind=principal.kind,
        actor=principal.id,
        role=principal.role,
        action=f"GET {CALLBACK_PATH}",
        resource=CALLBACK_PATH,
        status=200,
        outcome="ok",
        source=client,
        details={"name": principal.name, "issuer": runtime.settings.oidc_issuer},
    )
    try:
        await sync_to_thread(runtime.audit.append, record)
    # a sign-in is not undone because its record could not be written; the gap is logged
    except (PersonifyError, sa.exc.SQLAlchemyError, OSError):
        log.exception("console sign-in through the issuer could not be audited")
    return response


ROUTES = [sign_in_with_issuer, issuer_callback]
