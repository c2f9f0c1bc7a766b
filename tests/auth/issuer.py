"""A local OpenID Connect issuer for tests: discovery document, JWKS and signing keys.

It serves ``/.well-known/openid-configuration`` and ``/jwks.json`` from a threaded
``http.server`` on 127.0.0.1 (a free port), holds RSA and EC private keys, signs tokens with
them, rotates and removes keys, and counts how often each document was fetched.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA private key (PyJWT's minimum)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key (ES256)."""
    return ec.generate_private_key(ec.SECP256R1())


class LocalIssuer:
    """An OIDC issuer on 127.0.0.1 with one current RSA key and one current EC key (and an
    Ed25519 key once ``rotate("okp")`` adds one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, PrivateKey] = {}
        self.rsa_kid = self._add(new_rsa_key())
        self.ec_kid = self._add(new_ec_key())
        self.okp_kid = ""
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.jwks_url = f"{self.url}/jwks.json"
        # a short poll interval: stop() waits for the serving loop to notice
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._stopped = False
        self._thread.start()

    def sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None = None,
        alg: str = "RS256",
        key: PrivateKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token over ``claims``: by default signed with the current key of the family
        ``alg`` belongs to, under that key's kid; ``key`` signs with another private key
        (under ``kid``, or the current kid of the family, or none when ``kid=""``)."""
        current = {"ES": self.ec_kid, "Ed": self.okp_kid}.get(alg[:2], self.rsa_kid)
        kid = current if kid is None else kid
        if key is None:
            with self._lock:
                key = self._keys[kid or current]
        header: dict[str, Any] = {"kid": kid} if kid else {}
        header.update(headers or {})
        return jwt.encode(claims, key, algorithm=alg, headers=header)

    def rotate(self, kind: str = "rsa") -> str:
        """Add a new key of ``kind`` (``rsa``, ``ec`` or ``okp``) and make it current; its
        kid."""
        if kind == "rsa":
            self.rsa_kid = self._add(new_rsa_key())
            return self.rsa_kid
        if kind == "ec":
            self.ec_kid = self._add(new_ec_key())
            return self.ec_kid
        self.okp_kid = self._add(ed25519.Ed25519PrivateKey.generate())
        return self.okp_kid

    def remove(self, kid: str) -> None:
        """Stop publishing (and signing with) the key ``kid``."""
        with self._lock:
            del self._keys[kid]

    def public_pem(self, kid: str) -> bytes:
        """The PEM of the public key ``kid``: what an algorithm-confusion attacker knows."""
        with self._lock:
            public = self._keys[kid].public_key()
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, Any]:
        """The published key set: RSA keys declare RS256, EC and OKP keys leave ``alg`` out
        (both shapes occur in the wild)."""
        with self._lock:
            keys = list(self._keys.items())
        published = []
        for kid, private in keys:
            if isinstance(private, rsa.RSAPrivateKey):
                entry = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
                entry["alg"] = "RS256"
            elif isinstance(private, ec.EllipticCurvePrivateKey):
                entry = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
            else:
                entry = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
            published.append({**entry, "kid": kid, "use": "sig"})
        return {"keys": published}

    def discovery(self) -> dict[str, Any]:
        """The OpenID Connect discovery document."""
        return {
            "issuer": self.url,
            "jwks_uri": self.jwks_url,
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def stop(self) -> None:
        """Shut the server down and free its port (again is a no-op)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _add(self, key: PrivateKey) -> str:
        kid = uuid.uuid4().hex[:12]
        with self._lock:
            self._keys[kid] = key
        return kid

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    with issuer._lock:
                        issuer.discovery_fetches += 1
                    document = issuer.discovery()
                elif self.path == "/jwks.json":
                    with issuer._lock:
                        issuer.jwks_fetches += 1
                    document = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # keep the test output clean
                return

        return Handler
