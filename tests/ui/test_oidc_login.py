"""The console's sign-in through an OpenID Connect issuer, end to end: the real app over
HTTP against a local issuer on 127.0.0.1 (its own keys, discovery document, JWKS, an
authorization endpoint that answers at once and a token endpoint that checks the client
secret and the PKCE verifier). A good ID token opens a session with the mapped role; a wrong
state, nonce, audience, expiry, signature or ``alg: none`` opens none; a claim that maps to no
role gets a 403 page; ``next`` never leaves the console."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import jwt
import pytest
import sqlalchemy as sa

from personify.ui.oidc import FLOW_COOKIE
from tests.api import Harness, running_app
from tests.auth.issuer import LocalIssuer, new_rsa_key

CLIENT_ID = "personify-console"
CLIENT_SECRET = "console-secret-for-tests"
API_AUDIENCE = "personify-api"


class CodeIssuer(LocalIssuer):
    """``LocalIssuer`` with the two endpoints of the authorization code flow.

    ``/authorize`` checks the request and redirects straight back with a code (or with
    ``deny``'s error); ``/token`` checks the client's secret, the code (once), the redirect
    URI and the PKCE verifier, and answers an ID token over claims the test controls:
    ``claims`` overrides the defaults (``None`` removes one), ``make_token`` replaces the
    signing."""

    def __init__(self) -> None:
        self.claims: dict[str, Any] = {}
        self.make_token: Callable[[dict[str, Any]], str] | None = None
        self.deny: tuple[str, str] | None = None
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self._codes: dict[str, dict[str, str]] = {}
        self._flow_lock = threading.Lock()
        super().__init__()

    def discovery(self) -> dict[str, Any]:
        return {
            **super().discovery(),
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def authorize(self, query: dict[str, str]) -> str:
        """Where ``/authorize`` sends the browser back."""
        with self._flow_lock:
            self.authorize_requests.append(query)
        back = query["redirect_uri"]
        if self.deny is not None:
            error, description = self.deny
            params = {"error": error, "error_description": description, "state": query["state"]}
            return f"{back}?{urlencode(params)}"
        assert query["client_id"] == CLIENT_ID
        assert query["response_type"] == "code"
        assert "openid" in query["scope"].split()
        assert query["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        with self._flow_lock:
            self._codes[code] = {
                "nonce": query["nonce"],
                "challenge": query["code_challenge"],
                "redirect_uri": back,
            }
        return f"{back}?{urlencode({'code': code, 'state': query['state']})}"

    def token(self, authorization: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's status and JSON answer."""
        with self._flow_lock:
            self.token_requests.append(form)
            grant = self._codes.pop(form.get("code", ""), None)
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if authorization != f"Basic {basic}":
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "authorization_code" or grant is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown code"}
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri differs"}
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if challenge != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE failed"}
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "sub": "person-7",
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "iat": now,
            "exp": now + 600,
            "nonce": grant["nonce"],
            "personify_role": "analyst",
        }
        claims.update(self.claims)
        claims = {name: value for name, value in claims.items() if value is not None}
        id_token = self.make_token(claims) if self.make_token else self.sign(claims)
        return 200, {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 600,
            "id_token": id_token,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base = super()._handler()
        issuer = self

        class Handler(base):  # type: ignore[valid-type,misc]
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/authorize":
                    super().do_GET()
                    return
                query = {name: values[0] for name, values in parse_qs(parts.query).items()}
                self.send_response(302)
                self.send_header("location", issuer.authorize(query))
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                if self.path != "/token":
                    self.send_error(404)
                    return
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length).decode()
                form = {name: values[0] for name, values in parse_qs(body).items()}
                status, document = issuer.token(self.headers.get("authorization", ""), form)
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@pytest.fixture
def issuer() -> Iterator[CodeIssuer]:
    server = CodeIssuer()
    yield server
    server.stop()


@pytest.fixture
async def harness(tmp_path: Path, issuer: CodeIssuer) -> AsyncIterator[Harness]:
    async with running_app(
        tmp_path / "data",
        run_lake_sink=False,
        oidc_issuer=issuer.url,
        oidc_audience=API_AUDIENCE,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_role_map={"staff": "editor"},
    ) as h:
        yield h


async def to_issuer_and_back(client: httpx.AsyncClient, next_path: str = "/console") -> str:
    """Start a sign-in and follow the browser through the issuer; the callback URL."""
    start = await client.get(
        f"/console/login/oidc?next={quote(next_path, safe='')}", follow_redirects=False
    )
    assert start.status_code == 303, start.text[:500]
    async with httpx.AsyncClient(timeout=5) as browser:
        at_issuer = await browser.get(start.headers["location"], follow_redirects=False)
    assert at_issuer.status_code == 302
    back: str = at_issuer.headers["location"]
    assert back.startswith("http://test/console/login/oidc/callback?")
    return back


def session_rows(harness: Harness) -> list[dict[str, Any]]:
    with harness.services.db.connect() as conn:
        rows = conn.execute(sa.text("SELECT subject, role, kind, expires_at FROM console_sessions"))
        return [dict(row._mapping) for row in rows]


def refused_without_session(harness: Harness, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text[:800]
    assert "text/html" in response.headers["content-type"]
    assert "personify_console=" not in response.headers.get("set-cookie", "")
    assert harness.client.cookies.get("personify_console") is None
    assert session_rows(harness) == []


async def test_the_sign_in_page_offers_the_issuer(harness: Harness) -> None:
    page = await harness.client.get("/console/login")
    assert page.status_code == 200
    assert "Sign in with 127.0.0.1" in page.text
    assert 'href="/console/login/oidc?next=/console"' in page.text


async def test_signing_in_through_the_issuer_opens_a_session_with_the_role(
    harness: Harness, issuer: CodeIssuer
) -> None:
    client = harness.client
    start = await client.get("/console/login/oidc?next=/console", follow_redirects=False)
    assert start.status_code == 303
    flow_cookie = start.headers["set-cookie"]
    assert flow_cookie.startswith(f"{FLOW_COOKIE}=")
    assert "HttpOnly" in flow_cookie and "samesite=lax" in flow_cookie.lower()
    assert "Path=/console/login/oidc" in flow_cookie
    assert start.headers["location"].startswith(f"{issuer.url}/authorize?")
    async with httpx.AsyncClient(timeout=5) as browser:
        at_issuer = await browser.get(start.headers["location"], follow_redirects=False)
    asked = issuer.authorize_requests[0]
    assert asked["redirect_uri"] == "http://test/console/login/oidc/callback"
    assert len(asked["state"]) >= 32 and len(asked["nonce"]) >= 32
    # the flow cookie carries the verifier, never the page or the URL
    assert "code_verifier" not in asked

    done = await client.get(at_issuer.headers["location"])
    assert done.status_code == 200, done.text[:800]
    assert "Signed in" in done.text and 'href="/console"' in done.text
    # the Strict session cookie is sent on a navigation this page starts, not on a redirect
    # of the issuer's chain
    assert done.headers["refresh"] == "0; url=/console"
    cookies = done.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("personify_console="))
    assert "HttpOnly" in session_cookie and "samesite=strict" in session_cookie.lower()
    assert "Path=/console" in session_cookie
    # the sign-in under way is forgotten
    assert any(c.startswith(f"{FLOW_COOKIE}=") and "Max-Age=0" in c for c in cookies)
    # the token endpoint saw the PKCE verifier (it checks it against the challenge)
    assert issuer.token_requests[0]["code_verifier"]

    page = await client.get("/console")
    assert page.status_code == 200
    assert "ada@example.com" in page.text
    assert '<span class="role">analyst</span>' in page.text
    assert session_rows(harness)[0]["subject"] == "person-7"
    assert session_rows(harness)[0]["kind"] == "token"
    # the sign-in is in the audit log as the person's
    with harness.services.db.connect() as conn:
        actions = conn.execute(
            sa.text("SELECT actor, action FROM audit_log WHERE actor = 'person-7'")
        ).all()
    assert ("person-7", "GET /console/login/oidc/callback") in [tuple(a) for a in actions]


async def test_the_role_map_applies_and_the_session_ends_with_the_token(
    harness: Harness, issuer: CodeIssuer
) -> None:
    issuer.claims = {"personify_role": ["staff", "nobody"], "exp": int(time.time()) + 120}
    done = await harness.client.get(await to_issuer_and_back(harness.client))
    assert done.status_code == 200, done.text[:800]
    (row,) = session_rows(harness)
    assert row["role"] == "editor"
    cookie = next(
        c for c in done.headers.get_list("set-cookie") if c.startswith("personify_console=")
    )
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= 120


async def test_a_wrong_state_is_refused(harness: Harness, issuer: CodeIssuer) -> None:
    back = await to_issuer_and_back(harness.client)
    forged = re.sub(r"state=[^&]+", "state=someone-elses-state", back)
    response = await harness.client.get(forged)
    refused_without_session(harness, response, 400)
    assert "oidc_state_mismatch" in response.text
    # the code was never exchanged
    assert issuer.token_requests == []
    assert (await harness.client.get("/console", follow_redirects=False)).status_code == 303


async def test_a_callback_this_browser_did_not_start_is_refused(harness: Harness) -> None:
    back = await to_issuer_and_back(harness.client)
    harness.client.cookies.delete(FLOW_COOKIE)
    response = await harness.client.get(back)
    refused_without_session(harness, response, 400)
    assert "oidc_flow_expired" in response.text


async def test_a_forged_flow_cookie_is_refused(harness: Harness) -> None:
    back = await to_issuer_and_back(harness.client)
    state = parse_qs(urlsplit(back).query)["state"][0]
    forged = jwt.encode(
        {
            "aud": "personify-console-oidc-flow",
            "exp": int(time.time()) + 600,
            "state": state,
            "nonce": "n",
            "verifier": "v" * 43,
            "next": "https://evil.example/",
        },
        "not-the-key-" * 4,
        algorithm="HS256",
    )
    harness.client.cookies.delete(FLOW_COOKIE)
    response = await harness.client.get(back, headers={"cookie": f"{FLOW_COOKIE}={forged}"})
    refused_without_session(harness, response, 400)
    assert "oidc_flow_expired" in response.text


def _unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]


def _bad_tokens(issuer: CodeIssuer) -> list[tuple[str, dict[str, Any], Any, str]]:
    """ID tokens the console must refuse: (case, claims, signer or None, refusal code)."""
    now = int(time.time())
    stranger = new_rsa_key()
    return [
        ("wrong nonce", {"nonce": "not-this-sign-in"}, None, "invalid_nonce"),
        ("wrong audience", {"aud": API_AUDIENCE}, None, "invalid_audience"),
        (
            "another client's azp",
            {"aud": [CLIENT_ID, "other"], "azp": "other"},
            None,
            "invalid_audience",
        ),
        ("expired", {"iat": now - 7200, "exp": now - 3600}, None, "token_expired"),
        (
            "wrong signature",
            {},
            lambda claims: issuer.sign(claims, key=stranger),
            "invalid_signature",
        ),
        ("alg none", {}, _unsigned, "invalid_token"),
        ("another issuer", {"iss": "https://elsewhere.example"}, None, "invalid_issuer"),
    ]


async def test_a_bad_id_token_opens_no_session(harness: Harness, issuer: CodeIssuer) -> None:
    for case, claims, signer, code in _bad_tokens(issuer):
        issuer.claims = claims
        issuer.make_token = signer
        response = await harness.client.get(await to_issuer_and_back(harness.client))
        refused_without_session(harness, response, 401)
        assert code in response.text, case
        assert "Sign-in refused" in response.text, case
        # the sign-in under way is over: the same answer cannot be tried again
        assert harness.client.cookies.get(FLOW_COOKIE) is None, case


async def test_a_role_claim_that_maps_to_nothing_gets_a_403_page(
    harness: Harness, issuer: CodeIssuer
) -> None:
    issuer.claims = {"personify_role": "intern"}
    response = await harness.client.get(await to_issuer_and_back(harness.client))
    refused_without_session(harness, response, 403)
    assert "No role in Personify" in response.text
    assert "no_role" in response.text and "PERSONIFY_OIDC_ROLE_MAP" in response.text


async def test_the_issuers_error_is_shown_only_for_this_browsers_sign_in(
    harness: Harness, issuer: CodeIssuer
) -> None:
    issuer.deny = ("access_denied", "The person declined to share their profile")
    back = await to_issuer_and_back(harness.client)
    response = await harness.client.get(back)
    refused_without_session(harness, response, 401)
    assert "access_denied" in response.text
    assert "The person declined to share their profile" in response.text
    # a crafted link with another state cannot put words on the page
    await harness.client.get("/console/login/oidc", follow_redirects=False)
    crafted = re.sub(r"state=[^&]+", "state=x", back)
    response = await harness.client.get(crafted)
    assert response.status_code == 400
    assert "declined" not in response.text


async def test_next_never_leaves_the_console(harness: Harness) -> None:
    for next_path in ("https://evil.example/", "//evil.example/console", "/console\\@evil.example"):
        response = await harness.client.get(await to_issuer_and_back(harness.client, next_path))
        assert response.status_code == 200, response.text[:800]
        target = response.headers["refresh"].removeprefix("0; url=")
        assert target == "/console", next_path
        assert "evil" not in response.text
        harness.client.cookies.clear()


async def test_next_inside_the_console_is_kept(harness: Harness) -> None:
    response = await harness.client.get(
        await to_issuer_and_back(harness.client, "/console/segments?tab=rules")
    )
    assert response.status_code == 200
    assert response.headers["refresh"] == "0; url=/console/segments?tab=rules"
    assert 'href="/console/segments?tab=rules"' in response.text


async def test_without_a_client_the_console_offers_no_single_sign_on(tmp_path: Path) -> None:
    async with running_app(tmp_path / "data", run_lake_sink=False) as h:
        page = await h.client.get("/console/login")
        assert "Sign in with" not in page.text
        response = await h.client.get("/console/login/oidc", follow_redirects=False)
        assert response.status_code == 404


async def test_a_refused_code_and_an_unreachable_issuer_are_explained(
    harness: Harness, issuer: CodeIssuer
) -> None:
    back = await to_issuer_and_back(harness.client)
    # the issuer forgets the code (used, or expired at its end)
    issuer._codes.clear()
    response = await harness.client.get(back)
    refused_without_session(harness, response, 401)
    assert "oidc_code_refused" in response.text and "unknown code" in response.text
    # the issuer goes away after sending the browser there (its discovery document is cached)
    start = await harness.client.get("/console/login/oidc", follow_redirects=False)
    assert start.status_code == 303
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    issuer.stop()
    response = await harness.client.get(
        f"/console/login/oidc/callback?{urlencode({'code': 'c', 'state': state})}"
    )
    refused_without_session(harness, response, 503)
    assert "oidc_unavailable" in response.text
    # and with nothing cached, starting a sign-in says so too
    # a fresh start: the app forgets the issuer it discovered
    harness.app.state.pop("console_oidc", None)
    response = await harness.client.get("/console/login/oidc", follow_redirects=False)
    assert response.status_code == 503
    assert "oidc_unavailable" in response.text
