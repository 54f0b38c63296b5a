"""An upstream verifies the gateway's identity tokens with a stock library: PyJWT's
``PyJWKClient`` fetching our JWK Set over HTTP from a real aiohttp server. Identities come
from the real verifiers: a JWT checked by ``JwtVerifier`` against a test issuer and an
opaque token answered by a real introspection endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.identity import Identity
from gateway.auth.identity_token import (
    RETIRE_LEEWAY,
    IdentityTokenRoute,
    IdentityTokenSigner,
    request_uri,
)
from gateway.auth.introspection import Introspector
from gateway.auth.jwks import KeySetProvider
from gateway.auth.jwt import JwtVerifier
from gateway.compiler.auth import issuer_settings
from gateway.compiler.identity_token import compile_route_token, compile_signing
from gateway.config.models import ClientAuth, Introspection, Issuer
from gateway.config.models.identity_token import RouteIdentityToken, TokenSigning
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer

GATEWAY = "https://gateway.example/"
ORDERS_GET = ("GET", request_uri("http", "orders.internal", 8080, "/v1/orders/42"))
ORDERS_LIST = ("GET", request_uri("http", "orders.internal", 8080, "/v1/orders"))
KEY_MAKERS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "RS256": lambda: rsa.generate_private_key(65537, 2048),
}


def write_key(directory: Path, name: str, alg: str) -> Path:
    path = directory / f"{name}.pem"
    key = KEY_MAKERS[alg]()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                     serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return path


def signing_section(*keys: dict[str, Any]) -> TokenSigning:
    return TokenSigning(issuer=GATEWAY, keys=list(keys))


def route_settings(signer_settings: Any, **section: Any) -> IdentityTokenRoute:
    compiled = compile_route_token(
        RouteIdentityToken(**section), upstream="orders", forward_authorization=False,
        signing=signer_settings,
    )  # fmt: skip
    assert compiled is not None
    return compiled


@dataclass
class JwksServer:
    """Serves whatever signer is current, as the admin listener will."""

    signer: IdentityTokenSigner | None = None
    fetches: int = 0
    responses: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        assert self.signer is not None
        self.fetches += 1
        document = self.signer.jwks()
        self.responses.append({"cache-control": document.cache_control})
        return web.Response(body=document.body, content_type=document.content_type,
                            headers={"Cache-Control": document.cache_control})  # fmt: skip


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/.well-known/jwks.json"
    yield server
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


async def jwt_identity(issuer: TestIssuer, session: aiohttp.ClientSession) -> Identity:
    config = issuer.config(audiences=["api://default"])
    provider = KeySetProvider(config, session)
    await provider.start()
    try:
        token = issuer.mint({"sub": "alice", "client_id": "web-app"}, scope="orders:read")
        return await JwtVerifier([config], {config.key: provider}).verify(token)
    finally:
        await provider.close()


async def opaque_identity(session: aiohttp.ClientSession) -> Identity:
    server = TestIntrospectionServer(client_id="gateway", client_secret="gateway-secret")
    await server.start()
    try:
        server.add_token("opaque-7f3c", sub="bob", client_id="batch", scope="orders:read",
                         aud="api://orders", exp=int(time.time()) + 600)  # fmt: skip
        client = ClientAuth(client_id="gateway", client_secret="gateway-secret")
        introspection = Introspection(client=client, endpoint=server.url)
        config = issuer_settings(Issuer(issuer="https://as.example/", keys={"jwks": {"keys": []}},
                                        audiences=["api://orders"], mode="introspection",
                                        introspection=introspection))  # fmt: skip
        identity = await Introspector(config, session, endpoint=server.url).introspect(
            "opaque-7f3c"
        )
    finally:
        await server.close()
    assert identity is not None and identity.token_kind == "opaque"
    return identity


def upstream_verify(
    url: str,
    token: str,
    *,
    audience: str,
    expect: tuple[str, str] | None,
    algorithms: tuple[str, ...] = ("ES256", "EdDSA", "RS256"),
) -> dict[str, Any]:
    """What a Python upstream does (README): fetch the gateway's JWKS, check signature,
    issuer, audience and expiry, then that htm/htu name this very request."""
    client = jwt.PyJWKClient(url, cache_jwk_set=False)
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=list(algorithms), audience=audience, issuer=GATEWAY,
        options={"require": ["exp", "iat", "iss", "aud"]},
    )  # fmt: skip
    if expect is not None and (claims.get("htm"), claims.get("htu")) != expect:
        raise jwt.InvalidTokenError("the token was issued for another request")
    return claims


def bearer(value: str) -> str:
    assert value.startswith("Bearer ")
    return value.removeprefix("Bearer ")


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
async def test_an_upstream_verifies_a_token_made_from_a_jwt(
    alg: str, issuer: TestIssuer, session: aiohttp.ClientSession, jwks_server: JwksServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    settings = compile_signing(signing_section({"file": write_key(tmp_path, "k", alg)}))
    jwks_server.signer = IdentityTokenSigner.from_settings(settings)
    identity = await jwt_identity(issuer, session)
    route = route_settings(settings)
    name, value = jwks_server.signer.header(identity, route, method=ORDERS_GET[0],
                                            uri=ORDERS_GET[1])  # fmt: skip
    assert name == "Authorization"
    claims = await asyncio.to_thread(
        upstream_verify, jwks_server.url, bearer(value), audience="orders", expect=ORDERS_GET
    )
    assert (claims["sub"], claims["client_id"], claims["scope"]) == (
        "alice", "web-app", "orders:read",
    )  # fmt: skip
    assert claims["exp"] <= identity.expires_at
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(bearer(value))["alg"] == alg
    assert jwks_server.responses[-1]["cache-control"] == "public, max-age=300"


async def test_an_upstream_verifies_a_token_made_from_an_opaque_token(
    session: aiohttp.ClientSession, jwks_server: JwksServer, tmp_path: Path
) -> None:
    settings = compile_signing(signing_section({"file": write_key(tmp_path, "k", "ES256")}))
    jwks_server.signer = IdentityTokenSigner.from_settings(settings)
    identity = await opaque_identity(session)
    route = route_settings(settings, claims={"kind": "{token_kind}"})
    _, value = jwks_server.signer.header(identity, route, method=ORDERS_GET[0],
                                         uri=ORDERS_GET[1])  # fmt: skip
    claims = await asyncio.to_thread(
        upstream_verify, jwks_server.url, bearer(value), audience="orders", expect=ORDERS_GET
    )
    assert (claims["sub"], claims["client_id"], claims["kind"]) == ("bob", "batch", "opaque")


async def test_a_token_for_route_a_is_refused_where_route_b_is_expected(
    issuer: TestIssuer, session: aiohttp.ClientSession, jwks_server: JwksServer, tmp_path: Path
) -> None:
    settings = compile_signing(signing_section({"file": write_key(tmp_path, "k", "ES256")}))
    signer = jwks_server.signer = IdentityTokenSigner.from_settings(settings)
    identity = await jwt_identity(issuer, session)
    route_a = route_settings(settings)
    _, value = signer.header(identity, route_a, method=ORDERS_GET[0], uri=ORDERS_GET[1])
    token = bearer(value)
    # Route B's upstream expects its own audience.
    with pytest.raises(jwt.InvalidAudienceError):
        await asyncio.to_thread(upstream_verify, jwks_server.url, token, audience="billing",
                                expect=None)  # fmt: skip
    # Route B on the same upstream (same audience) at another path or method: htm/htu differ.
    for other in (ORDERS_LIST, ("DELETE", ORDERS_GET[1])):
        with pytest.raises(jwt.InvalidTokenError, match="another request"):
            await asyncio.to_thread(upstream_verify, jwks_server.url, token, audience="orders",
                                    expect=other)  # fmt: skip
    # And the gateway's own cache never hands route A's token to route B.
    route_b = route_settings(settings)
    _, for_b = signer.header(identity, route_b, method=ORDERS_GET[0], uri=ORDERS_GET[1])
    assert for_b != value


async def test_after_rotation_the_old_kid_stays_published_until_its_tokens_expire(
    issuer: TestIssuer, session: aiohttp.ClientSession, jwks_server: JwksServer, tmp_path: Path
) -> None:
    old_file, new_file = write_key(tmp_path, "old", "ES256"), write_key(tmp_path, "new", "ES256")
    identity = await jwt_identity(issuer, session)
    clock_offset = [0.0]

    def clock() -> float:
        return time.time() + clock_offset[0]

    before = compile_signing(signing_section({"file": old_file, "kid": "old"}))
    old_signer = IdentityTokenSigner.from_settings(before, clock=clock)
    route = route_settings(before)
    _, old_value = old_signer.header(identity, route, method=ORDERS_GET[0], uri=ORDERS_GET[1])

    # A reload that replaced the key outright (the old one is gone from the config).
    after = compile_signing(signing_section({"file": new_file, "kid": "new"}))
    signer = jwks_server.signer = IdentityTokenSigner.from_settings(
        after, previous=old_signer, clock=clock
    )
    new_route = route_settings(after)
    _, new_value = signer.header(identity, new_route, method=ORDERS_GET[0], uri=ORDERS_GET[1])
    assert jwt.get_unverified_header(bearer(new_value))["kid"] == "new"
    assert jwt.get_unverified_header(bearer(old_value))["kid"] == "old"
    # Upstreams still verify the token the old key signed, and the new ones.
    for value in (old_value, new_value):
        await asyncio.to_thread(upstream_verify, jwks_server.url, bearer(value),
                                audience="orders", expect=ORDERS_GET)  # fmt: skip
    # Once every token of the old key has expired (its longest lifetime plus leeway), the
    # old kid is gone from the set and nothing it signed verifies.
    clock_offset[0] = 60 + RETIRE_LEEWAY + 1
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        await asyncio.to_thread(upstream_verify, jwks_server.url, bearer(old_value),
                                audience="orders", expect=ORDERS_GET)  # fmt: skip
    kids = [k.kid for k in signer.ring.published(clock())]
    assert kids == ["new"]
