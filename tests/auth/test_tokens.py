"""Bearer JWTs from an OpenID Connect issuer, against a local issuer with its own keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personify.auth.tokens import MISS_REFRESH_INTERVAL_S, Principal, TokenVerifier
from personify.clock import FrozenClock
from personify.errors import BackendUnavailable, ConfigurationError, Forbidden, Unauthorized
from tests.auth.issuer import LocalIssuer, new_ec_key, new_rsa_key
from tests.conftest import make_settings

AUDIENCE = "personify-api"
START = datetime(2030, 1, 1, tzinfo=UTC)
TTL_S = 600.0


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    server = LocalIssuer()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def verifier(issuer: LocalIssuer, clock: FrozenClock) -> TokenVerifier:
    return make_verifier(issuer, clock)


def make_verifier(server: LocalIssuer, clock: FrozenClock, **overrides: Any) -> TokenVerifier:
    values: dict[str, Any] = {
        "issuer": server.url,
        "audience": AUDIENCE,
        "jwks_url": server.jwks_url,
        "jwks_ttl_s": TTL_S,
        "clock": clock,
        "timeout_s": 2.0,
    }
    values.update(overrides)
    return TokenVerifier(**values)


def make_claims(issuer: LocalIssuer, clock: FrozenClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock.time())
    claims: dict[str, Any] = {
        "iss": issuer.url,
        "aud": AUDIENCE,
        "sub": "user-42",
        "name": "Ada Lovelace",
        "iat": now,
        "exp": now + 600,
        "personify_role": "analyst",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    """A token assembled without a JOSE library: the shape an attacker sends."""
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature),
        ]
    )


def refused(verifier: TokenVerifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    # the message says what is wrong without repeating the token or any part of it
    for segment in token.split("."):
        if segment:
            assert segment not in caught.value.message
    return caught.value


# --- valid tokens


def test_an_rs256_token_gives_the_principal(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock))
    assert verifier.verify(token) == Principal(
        kind="token",
        id="user-42",
        name="Ada Lovelace",
        role="analyst",
        expires_at=datetime.fromtimestamp(clock.time() + 600, UTC),
    )


def test_an_es256_token_gives_the_principal(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock, personify_role="editor"), alg="ES256")
    principal = verifier.verify(token)
    assert (principal.kind, principal.id, principal.role) == ("token", "user-42", "editor")


def test_an_eddsa_token_from_a_rotated_in_key_is_accepted(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    issuer.rotate("okp")
    token = issuer.sign(make_claims(issuer, clock, personify_role="service"), alg="EdDSA")
    assert verifier.verify(token).role == "service"


def test_the_name_falls_back_to_the_username_then_the_subject(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    named = issuer.sign(make_claims(issuer, clock, name=None, preferred_username="ada"))
    assert verifier.verify(named).name == "ada"
    anonymous = issuer.sign(make_claims(issuer, clock, name=None))
    assert verifier.verify(anonymous).name == "user-42"


def test_an_audience_list_that_contains_ours_is_accepted(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock, aud=["console", AUDIENCE]))
    assert verifier.verify(token).role == "analyst"


# --- times


def test_an_expired_token_is_refused(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock, leeway_s=30)
    now = int(clock.time())
    token = issuer.sign(make_claims(issuer, clock, iat=now - 3600, exp=now - 31))
    assert refused(verifier, token).code == "token_expired"


def test_expiry_allows_the_leeway_then_refuses(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock, leeway_s=30)
    token = issuer.sign(make_claims(issuer, clock, exp=int(clock.time()) + 60))
    clock.advance(60 + 29)
    assert verifier.verify(token).id == "user-42"
    clock.advance(1)
    assert refused(verifier, token).code == "token_expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_not_yet_valid_is_refused(
    issuer: LocalIssuer, clock: FrozenClock, claim: str
) -> None:
    verifier = make_verifier(issuer, clock, leeway_s=30)
    token = issuer.sign(make_claims(issuer, clock, **{claim: int(clock.time()) + 120}))
    assert refused(verifier, token).code == "token_not_yet_valid"
    clock.advance(100)
    assert verifier.verify(token).id == "user-42"


def test_a_token_without_expiry_is_refused(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock, exp=None))
    assert refused(verifier, token).code == "invalid_token"


@pytest.mark.parametrize("exp", ["tomorrow", 10**400, True])
def test_an_expiry_that_is_not_a_sane_number_is_refused(
    issuer: LocalIssuer, clock: FrozenClock, exp: object
) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock, exp=exp))
    assert refused(verifier, token).code == "invalid_token"


# --- audience, issuer, signature, algorithms


def test_a_token_for_another_audience_is_refused(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    assert refused(verifier, issuer.sign(make_claims(issuer, clock, aud="billing"))).code == (
        "invalid_audience"
    )
    assert refused(verifier, issuer.sign(make_claims(issuer, clock, aud=None))).code == (
        "invalid_audience"
    )


def test_a_token_from_another_issuer_is_refused(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock, iss="https://evil.example"))
    assert refused(verifier, token).code == "invalid_issuer"


def test_a_token_signed_by_another_key_under_our_kid_is_refused(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    forged_rsa = issuer.sign(make_claims(issuer, clock, personify_role="owner"), key=new_rsa_key())
    assert refused(verifier, forged_rsa).code == "invalid_signature"
    forged_ec = issuer.sign(make_claims(issuer, clock), alg="ES256", key=new_ec_key())
    assert refused(verifier, forged_ec).code == "invalid_signature"


def test_a_tampered_payload_is_refused(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    header, _, signature = issuer.sign(make_claims(issuer, clock)).split(".")
    promoted = b64url(json.dumps(make_claims(issuer, clock, personify_role="owner")).encode())
    assert refused(verifier, f"{header}.{promoted}.{signature}").code == "invalid_signature"


def test_alg_none_is_refused(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    for alg in ("none", "None", "NONE"):
        token = hand_made_token(
            {"alg": alg, "typ": "JWT", "kid": issuer.rsa_kid},
            make_claims(issuer, clock, personify_role="owner"),
            b"",
        )
        assert token.endswith(".")
        assert TokenVerifier.looks_like_jwt(token)
        assert refused(verifier, token).code == "invalid_token"


def test_hs256_signed_with_the_public_key_is_refused(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    # the algorithm-confusion attack: the issuer's public key, which anyone can fetch, used
    # as an HMAC secret, in the hope the verifier feeds its "key" to HMAC
    verifier = make_verifier(issuer, clock)
    verifier.verify(issuer.sign(make_claims(issuer, clock)))
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        header = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": issuer.rsa_kid}).encode())
        payload = b64url(json.dumps(make_claims(issuer, clock, personify_role="owner")).encode())
        mac = hmac.new(issuer.public_pem(issuer.rsa_kid), f"{header}.{payload}".encode(), digest)
        token = f"{header}.{payload}.{b64url(mac.digest())}"
        assert refused(verifier, token).code == "invalid_token"


def test_an_algorithm_the_key_does_not_declare_is_refused(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    # the RSA key declares RS256: a PS256 signature by the same private key is refused, and so
    # is an EC algorithm naming the RSA key
    verifier = make_verifier(issuer, clock)
    assert refused(verifier, issuer.sign(make_claims(issuer, clock), alg="PS256")).code == (
        "invalid_token"
    )
    mismatched = issuer.sign(
        make_claims(issuer, clock), alg="ES256", kid=issuer.rsa_kid, key=new_ec_key()
    )
    assert refused(verifier, mismatched).code == "invalid_token"


@pytest.mark.parametrize(
    "token",
    ["", "pk_live_abc", "a.b.c", "e30.e30.", "not a token at all", "x" * 20_000, "....."],
)
def test_malformed_tokens_are_refused(issuer: LocalIssuer, clock: FrozenClock, token: str) -> None:
    verifier = make_verifier(issuer, clock)
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    assert caught.value.code == "invalid_token"


def test_a_token_without_a_kid_uses_the_only_key_or_is_refused(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock), kid="")
    # the issuer publishes an RSA and an EC key: which one is meant is not for us to guess
    assert refused(verifier, token).code == "invalid_token"
    issuer.remove(issuer.ec_kid)
    clock.advance(TTL_S)
    assert verifier.verify(token).id == "user-42"


# --- roles


def test_a_token_without_the_role_claim_is_forbidden(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    for role in (None, "superuser", ["superuser", 7], {"role": "owner"}):
        token = issuer.sign(make_claims(issuer, clock, personify_role=role))
        with pytest.raises(Forbidden) as caught:
            verifier.verify(token)
        assert caught.value.code == "no_role"


def test_a_role_list_gives_the_most_privileged_role(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(
        make_claims(issuer, clock, personify_role=["viewer", "unknown", "editor", "service"])
    )
    assert verifier.verify(token).role == "editor"


def test_the_role_map_translates_the_issuers_values(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(
        issuer,
        clock,
        role_claim="groups",
        role_map={"personify-admins": "admin", "data-team": "analyst", "viewer": "service"},
    )
    both = issuer.sign(make_claims(issuer, clock, groups=["data-team", "personify-admins"]))
    assert verifier.verify(both).role == "admin"
    # a mapped value wins over its meaning as a role name; unmapped role names map to themselves
    assert verifier.verify(issuer.sign(make_claims(issuer, clock, groups="viewer"))).role == (
        "service"
    )
    assert verifier.verify(issuer.sign(make_claims(issuer, clock, groups=["owner"]))).role == (
        "owner"
    )


def test_a_dotted_role_claim_reads_a_nested_one(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock, role_claim="realm_access.roles")
    token = issuer.sign(make_claims(issuer, clock, realm_access={"roles": ["offline", "analyst"]}))
    assert verifier.verify(token).role == "analyst"


# --- the key set: caching, unknown kids, rotation, an issuer that goes away


def test_the_jwks_is_fetched_once_per_ttl(issuer: LocalIssuer, clock: FrozenClock) -> None:
    verifier = make_verifier(issuer, clock)
    for _ in range(5):
        verifier.verify(issuer.sign(make_claims(issuer, clock)))
    assert issuer.jwks_fetches == 1
    clock.advance(TTL_S)
    verifier.verify(issuer.sign(make_claims(issuer, clock)))
    assert issuer.jwks_fetches == 2


def test_an_unknown_kid_refreshes_once_then_is_rate_limited(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    verifier.verify(issuer.sign(make_claims(issuer, clock)))
    assert issuer.jwks_fetches == 1
    stranger = new_rsa_key()
    first = issuer.sign(make_claims(issuer, clock), kid="kid-one", key=stranger)
    assert refused(verifier, first).code == "unknown_key"
    assert issuer.jwks_fetches == 2
    second = issuer.sign(make_claims(issuer, clock), kid="kid-two", key=stranger)
    assert refused(verifier, second).code == "unknown_key"
    clock.advance(MISS_REFRESH_INTERVAL_S - 1)
    assert refused(verifier, second).code == "unknown_key"
    assert issuer.jwks_fetches == 2
    clock.advance(1)
    assert refused(verifier, second).code == "unknown_key"
    assert issuer.jwks_fetches == 3


def test_a_flood_of_unknown_kids_from_many_threads_fetches_once(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    stranger = new_ec_key()
    tokens = [
        issuer.sign(make_claims(issuer, clock), alg="ES256", kid=f"junk-{i}", key=stranger)
        for i in range(64)
    ]

    def code(token: str) -> str:
        with pytest.raises(Unauthorized) as caught:
            verifier.verify(token)
        return caught.value.code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(code, tokens))
    assert set(codes) == {"unknown_key"}
    # the first load, then one refresh for all the unknown kids
    assert issuer.jwks_fetches == 2


def test_a_rotated_key_is_accepted_after_one_refresh(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    old_kid = issuer.rsa_kid
    old_token = issuer.sign(make_claims(issuer, clock))
    verifier.verify(old_token)
    new_kid = issuer.rotate()
    assert new_kid != old_kid
    new_token = issuer.sign(make_claims(issuer, clock, personify_role="admin"))
    assert verifier.verify(new_token).role == "admin"
    assert issuer.jwks_fetches == 2
    # both keys are published during the overlap: the old token still verifies, no fetch
    assert verifier.verify(old_token).role == "analyst"
    assert verifier.verify(new_token).role == "admin"
    assert issuer.jwks_fetches == 2


def test_a_removed_key_is_refused_once_the_cache_expires(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    old_token = issuer.sign(make_claims(issuer, clock, exp=int(clock.time()) + 7200))
    verifier.verify(old_token)
    old_kid = issuer.rsa_kid
    issuer.rotate()
    issuer.remove(old_kid)
    clock.advance(TTL_S)
    assert refused(verifier, old_token).code == "unknown_key"


def test_an_issuer_down_at_start_is_backend_unavailable(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    token = issuer.sign(make_claims(issuer, clock))
    issuer.stop()
    verifier = make_verifier(issuer, clock)
    for _ in range(2):
        with pytest.raises(BackendUnavailable) as caught:
            verifier.verify(token)
        assert caught.value.code == "jwks_unavailable"
        assert token not in caught.value.message


def test_an_issuer_down_later_leaves_the_cached_keys_working(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock)
    token = issuer.sign(make_claims(issuer, clock, exp=int(clock.time()) + 7200))
    verifier.verify(token)
    issuer.stop()
    clock.advance(TTL_S + 1)
    assert verifier.verify(token).id == "user-42"
    # an unknown kid while the issuer is down is still the caller's problem, not a 503
    stranger = issuer.sign(make_claims(issuer, clock), kid="nobody", key=new_rsa_key())
    assert refused(verifier, stranger).code == "unknown_key"
    assert issuer.jwks_fetches == 1


def test_the_jwks_url_is_discovered_from_the_issuer(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    verifier = make_verifier(issuer, clock, jwks_url=None)
    for _ in range(3):
        verifier.verify(issuer.sign(make_claims(issuer, clock)))
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)
    clock.advance(TTL_S)
    verifier.verify(issuer.sign(make_claims(issuer, clock)))
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 2)


def test_discovery_naming_another_issuer_is_not_trusted(
    issuer: LocalIssuer, clock: FrozenClock
) -> None:
    # the discovery document names the issuer without the trailing slash we were given
    verifier = make_verifier(issuer, clock, issuer=f"{issuer.url}/", jwks_url=None)
    with pytest.raises(BackendUnavailable) as caught:
        verifier.verify(issuer.sign(make_claims(issuer, clock)))
    assert caught.value.code == "jwks_unavailable"
    assert issuer.jwks_fetches == 0


# --- settings and shape


def test_from_settings(issuer: LocalIssuer, clock: FrozenClock, tmp_path: Path) -> None:
    assert TokenVerifier.from_settings(make_settings(tmp_path)) is None
    with pytest.raises(ConfigurationError):
        TokenVerifier.from_settings(make_settings(tmp_path, oidc_issuer=issuer.url))
    with pytest.raises(ConfigurationError):
        TokenVerifier.from_settings(
            make_settings(
                tmp_path,
                oidc_issuer=issuer.url,
                oidc_audience=AUDIENCE,
                oidc_role_map={"admins": "superuser"},
            )
        )
    verifier = TokenVerifier.from_settings(
        make_settings(
            tmp_path,
            oidc_issuer=issuer.url,
            oidc_audience=AUDIENCE,
            oidc_role_claim="groups",
            oidc_role_map={"admins": "admin"},
        ),
        clock=clock,
    )
    assert verifier is not None
    token = issuer.sign(make_claims(issuer, clock, groups=["admins"]))
    assert verifier.verify(token).role == "admin"
    assert issuer.discovery_fetches == 1


def test_looks_like_jwt(issuer: LocalIssuer, clock: FrozenClock) -> None:
    assert TokenVerifier.looks_like_jwt(issuer.sign(make_claims(issuer, clock)))
    assert TokenVerifier.looks_like_jwt(issuer.sign(make_claims(issuer, clock), alg="ES256"))
    for value in ("pk_live_3f9a0c", "pk_a.b", "a.b", "a.b.c.d", ".b.c", "a..c", "a b.c.d", ""):
        assert not TokenVerifier.looks_like_jwt(value)


@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"))
def test_api_keys_never_look_like_jwts(key: str) -> None:
    assert not TokenVerifier.looks_like_jwt(f"pk_{key}")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_arbitrary_tokens_are_only_ever_refused(
    issuer: LocalIssuer, verifier: TokenVerifier, data: st.DataObject
) -> None:
    # whatever a client sends, the answer is a 401, never a crash or a 500
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )
    header = data.draw(
        st.fixed_dictionaries(
            {
                "alg": st.sampled_from(["RS256", "PS256", "ES256", "EdDSA", "none", "HS256"])
                | json_values,
                "kid": st.sampled_from([issuer.rsa_kid, issuer.ec_kid, "other"]) | json_values,
            }
        )
    )
    claims = data.draw(
        st.dictionaries(st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat"]), json_values)
    )
    signature = data.draw(st.binary(max_size=300))
    token = data.draw(st.just(hand_made_token(header, claims, signature)) | st.text(max_size=80))
    with pytest.raises(Unauthorized):
        verifier.verify(token)
