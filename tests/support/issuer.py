"""A real test authorization server (RFC 8414 metadata, RFC 7517 JWK Set, RFC 7515 signing).

``TestIssuer`` serves discovery and a JWK Set over HTTP on 127.0.0.1 and mints tokens with
its own keys, so tests exercise the gateway's real fetching, caching and verification code.
Its failure switches (``jwks_status``, ``jwks_hang``, ``jwks_delay``) and counters
(``jwks_fetches``, ``discovery_fetches``) are plain attributes; routes for other endpoints
(introspection) can be added to ``app`` before ``start``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl as ssl_module
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from gateway.auth.settings import IssuerSettings
from tests.support.settings import Issuer

_FAMILIES = {"RS": "rsa", "PS": "rsa", "ES": "ec", "Ed": "ed"}
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


class _Default:
    """Marks "the issuer's current key for this algorithm" where None means "no kid"."""


DEFAULT_KID: Any = _Default()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_compact(
    header: Mapping[str, Any] | bytes, payload: Mapping[str, Any] | bytes, signature: bytes
) -> str:
    """A JWS compact string from parts; bytes parts are used verbatim (for malformed JSON)."""
    parts = [p if isinstance(p, bytes) else json.dumps(p).encode() for p in (header, payload)]
    return ".".join([*map(b64url, parts), b64url(signature)])


@dataclass(frozen=True)
class SigningKey:
    kid: str
    family: str  # "rsa", "ec" or "ed"
    private: Any
    jwk: dict[str, Any]  # the public JWK as published


def _family(alg: str) -> str:
    return _FAMILIES[alg[:2]]


def _new_key(alg: str, kid: str) -> SigningKey:
    family = _family(alg)
    if family == "rsa":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)  # no alg: RS* and PS*
    elif family == "ec":
        private = ec.generate_private_key(_CURVES[alg]())
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True) | {"alg": alg}
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True) | {"alg": "EdDSA"}
    return SigningKey(kid, family, private, jwk | {"kid": kid, "use": "sig"})


class TestIssuer:
    __test__ = False  # not a pytest test class

    def __init__(
        self, *, audience: str = "api://default", ssl: ssl_module.SSLContext | None = None
    ) -> None:
        self.audience = audience
        self._ssl = ssl  # serve https with this server context
        self.hmac_secret = secrets.token_urlsafe(48)
        self.signing_keys: dict[str, SigningKey] = {}  # every key ever made, by kid
        self.published: list[str] = []  # kids served in the JWK Set, oldest first
        self.extra_jwks: list[dict[str, Any]] = []  # served verbatim after the real keys
        self.metadata_overrides: dict[str, Any] = {}
        self.serve_openid_configuration = True  # False: 404, so RFC 8414's location is used
        self.discovery_status = 200
        self.discovery_hang = False  # until close()
        self.jwks_status = 200
        self.jwks_hang = False  # until close()
        self.jwks_delay = 0.0  # seconds before each JWK Set answer
        self.jwks_max_age: int | None = None
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self._counter = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.app = web.Application()
        self.app.router.add_get("/.well-known/openid-configuration", self._openid_configuration)
        self.app.router.add_get("/.well-known/oauth-authorization-server", self._oauth_metadata)
        self.app.router.add_get("/jwks", self._jwks)
        for alg in ("RS256", "ES256", "EdDSA"):
            self.rotate(alg)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._release.set()  # let hanging requests finish so the server can stop
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        assert self._port, "start() the issuer first"
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    def config(self, **overrides: Any) -> IssuerSettings:
        """An ``Issuer`` config trusting this server through discovery; overrides win."""
        values: dict[str, Any] = {
            "issuer": self.url,
            "keys": {"discovery": True},
            "audiences": [self.audience],
        }
        return Issuer(**(values | overrides))

    # --- keys ---------------------------------------------------------------------------

    def rotate(self, alg: str = "RS256") -> str:
        """Publish a new key for ``alg``'s family; it becomes that family's default signer."""
        self._counter += 1
        kid = f"{_family(alg)}-{self._counter}"
        self.signing_keys[kid] = _new_key(alg, kid)
        self.published.append(kid)
        return kid

    def remove_key(self, kid: str) -> None:
        """Stop publishing ``kid``; tokens can still be minted with it."""
        self.published.remove(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.signing_keys[kid].jwk for kid in self.published] + self.extra_jwks}

    def default_kid(self, alg: str) -> str:
        family = _family(alg)
        return next(k for k in reversed(self.published) if self.signing_keys[k].family == family)

    def _signer(self, kid: str | None, alg: str) -> SigningKey:
        """The key named by ``kid`` if it can sign ``alg``, else the default one (so a token
        can name an unknown or wrong kid and still be signed by this issuer)."""
        chosen = self.signing_keys.get(kid) if kid is not None else None
        if chosen is None or chosen.family != _family(alg):
            chosen = self.signing_keys[self.default_kid(alg)]
        return chosen

    # --- tokens -------------------------------------------------------------------------

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        alg: str = "RS256",
        kid: str | None = DEFAULT_KID,
        headers: dict[str, Any] | None = None,
        key: Any = None,
        exp_in: float = 300,
        audience: str | list[str] = "api://default",
        scope: str = "read",
    ) -> str:
        """A signed token. ``alg`` picks the signer; ``headers`` may still say anything (an
        attacker's ``alg`` too). A None value in ``claims`` or ``headers`` removes that member.
        ``key``: a private key or HMAC secret to sign with instead of the issuer's."""
        now = time.time()
        payload: dict[str, Any] = {
            "iss": self.url,
            "sub": "user-1",
            "client_id": "client-1",
            "aud": audience,
            "exp": int(now + exp_in),
            "iat": int(now),
            "jti": uuid.uuid4().hex,
            "scope": scope,
        }
        _merge(payload, claims)
        hmac = alg.startswith("HS")
        unsigned = alg.lower() == "none"
        if kid is DEFAULT_KID:
            kid = None if hmac or unsigned else self.default_kid(alg)
        header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid}
        _merge(header, headers)
        header = {name: value for name, value in header.items() if value is not None}
        if key is None and hmac:
            key = self.hmac_secret.encode()
        elif key is None and not unsigned:
            key = self._signer(kid, alg).private
        if isinstance(key, str):
            key = key.encode()
        return self.sign(header, payload, alg=alg, key=key)

    @staticmethod
    def sign(
        header: Mapping[str, Any] | bytes, payload: Mapping[str, Any] | bytes, *, alg: str, key: Any
    ) -> str:
        """Sign exactly these parts with ``alg`` (raw JOSE signatures, as RFC 7518 requires);
        bytes parts are used verbatim (for JSON no encoder would write)."""
        parts = [p if isinstance(p, bytes) else json.dumps(p).encode() for p in (header, payload)]
        signing_input = ".".join(b64url(part) for part in parts).encode()
        if alg.lower() == "none":
            signature = b""
        else:
            signature = get_default_algorithms()[alg].sign(signing_input, key)
        return f"{signing_input.decode()}.{b64url(signature)}"

    # --- HTTP ---------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {"issuer": self.url, "jwks_uri": self.jwks_url} | self.metadata_overrides

    async def _openid_configuration(self, request: web.Request) -> web.Response:
        if not self.serve_openid_configuration:
            raise web.HTTPNotFound()
        return await self._oauth_metadata(request)

    async def _oauth_metadata(self, request: web.Request) -> web.Response:
        self.discovery_fetches += 1
        if self.discovery_hang:
            await self._release.wait()
        if self.discovery_status != 200:
            return web.json_response({"error": "unavailable"}, status=self.discovery_status)
        return web.json_response(self.metadata())

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.jwks_hang:
            await self._release.wait()
        if self.jwks_delay:
            await asyncio.sleep(self.jwks_delay)
        if self.jwks_status != 200:
            return web.json_response({"error": "unavailable"}, status=self.jwks_status)
        headers = {}
        if self.jwks_max_age is not None:
            headers["Cache-Control"] = f"public, max-age={self.jwks_max_age}"
        return web.json_response(self.jwks(), headers=headers)


def _merge(target: dict[str, Any], changes: Mapping[str, Any] | None) -> None:
    for name, value in (changes or {}).items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
