"""Signed identity tokens and rate limits on the request path (issue 17), through the real
gateway: the upstream verifies the token with a stock library against the admin JWKS, and
clients see 429 with Retry-After and the RateLimit fields."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.gateway import running_gateway, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

GATEWAY_ISSUER = "https://gateway.example.test/"


def key_file(directory: Path, name: str = "id.pem") -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def config(tmp: Path, issuer: TestIssuer, upstream: RecordingUpstream) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"orders": {"url": upstream.url}, "billing": {"url": upstream.url}},
        "issuers": [{"issuer": issuer.url, "audiences": ["api://default"]}],
        "token_signing": {"issuer": GATEWAY_ISSUER,
                          "keys": [{"file": str(key_file(tmp)), "kid": "gw-1", "alg": "ES256"}]},
        "defaults": {"identity_token": {"claims": {"tenant": "{claims.tenant}"}}},
        "routes": [
            {"name": "orders", "match": {"path": {"prefix": "/orders"}}, "upstream": "orders"},
            {"name": "billing", "match": {"path": {"prefix": "/billing"}}, "upstream": "billing",
             "forward_authorization": False},
            {"name": "limited", "match": {"path": {"prefix": "/limited"}}, "upstream": "orders",
             "identity_token": {"enabled": False},
             "rate_limits": {"headers": True, "limits": [
                 {"name": "per-client", "key": ["client_id"], "limit": 3, "window": 60},
                 {"name": "route", "limit": 1000, "window": 60}]}},
            {"name": "open", "match": {"path": {"prefix": "/open"}}, "upstream": "orders",
             "auth": "anonymous", "identity_token": {"enabled": False},
             "rate_limits": {"anonymous": [{"name": "per-ip", "key": ["ip"], "limit": 2,
                                            "window": 60}]}},
        ],
    }  # fmt: skip


@pytest.fixture
async def gateway(tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream):
    async with running_gateway(tmp_path, config(tmp_path, issuer, upstream)) as gw:
        await wait_ready(gw)
        yield gw


async def get(gw: Any, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.proxy_port}{path}", headers=headers) as r:
            await r.read()
            return r.status, r.headers


async def verify(gw: Any, token: str, audience: str) -> dict[str, Any]:
    """What an upstream does with a stock library: PyJWKClient against the published keys."""
    client = jwt.PyJWKClient(f"http://127.0.0.1:{gw.admin_port}/.well-known/jwks.json")
    key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
    return jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer=GATEWAY_ISSUER,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )  # fmt: skip


async def test_the_upstream_verifies_a_signed_identity_bound_to_its_request(
    gateway: Any, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = issuer.mint({"sub": "alice", "tenant": "acme"}, scope="read write", exp_in=600)
    assert (await get(gateway, "/orders/42?x=1", token))[0] == 200
    signed = upstream.last.header("X-Identity-Token")
    assert signed is not None and upstream.last.header("Authorization") == f"Bearer {token}"
    claims = await verify(gateway, signed, "orders")
    assert claims["sub"] == "alice" and claims["scope"] == "read write"
    assert claims["tenant"] == "acme" and claims["client_id"] == "client-1"
    assert claims["htm"] == "GET" and claims["htu"].endswith("/orders/42")
    assert claims["exp"] - claims["iat"] <= 60
    with pytest.raises(jwt.InvalidAudienceError):  # not a token route B's upstream accepts
        await verify(gateway, signed, "billing")


async def test_without_the_clients_token_the_identity_token_is_the_bearer(
    gateway: Any, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = issuer.mint({"sub": "bob"})
    assert (await get(gateway, "/billing/7", token))[0] == 200
    authorization = upstream.last.header("Authorization")
    assert authorization is not None and authorization.startswith("Bearer ")
    assert authorization != f"Bearer {token}"
    assert (await verify(gateway, authorization.removeprefix("Bearer "), "billing"))["sub"] == "bob"


async def test_a_client_cannot_send_its_own_identity_token(
    gateway: Any, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = issuer.mint()
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{gateway.proxy_port}/orders/1"
        headers = {"Authorization": f"Bearer {token}", "X-Identity-Token": "forged"}
        async with session.get(url, headers=headers) as r:
            assert r.status == 200
    assert upstream.last.headers_named("X-Identity-Token") != ["forged"]
    assert len(upstream.last.headers_named("X-Identity-Token")) == 1


async def test_two_limits_refuse_with_retry_after_and_ratelimit_fields(
    gateway: Any, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = issuer.mint()
    answers = [await get(gateway, "/limited/x", token) for _ in range(4)]
    assert [status for status, _ in answers] == [200, 200, 200, 429]
    allowed = answers[0][1]
    assert allowed["RateLimit-Policy"] == '"per-client";q=3;w=60, "route";q=1000;w=60'
    assert allowed["RateLimit"].startswith('"per-client";r=2;t=')
    refused = answers[3][1]
    assert int(refused["Retry-After"]) > 0
    assert refused["Content-Type"] == "application/problem+json"
    assert refused["RateLimit"].startswith('"per-client";r=0;t=')
    assert len(upstream.received) == 3
    other = issuer.mint({"client_id": "client-2"})
    assert (await get(gateway, "/limited/x", other))[0] == 200  # its own bucket


async def test_refused_requests_are_never_counted_and_anonymous_traffic_has_its_own_limit(
    gateway: Any, issuer: TestIssuer
) -> None:
    for _ in range(5):
        assert (await get(gateway, "/limited/x"))[0] == 401  # refused before the limits
    assert (await get(gateway, "/limited/x", issuer.mint()))[0] == 200
    statuses = [(await get(gateway, "/open/x"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_a_client_that_honours_retry_after_gets_through(tmp_path: Path, issuer, upstream):
    cfg = config(tmp_path, issuer, upstream)
    cfg["routes"][2]["rate_limits"]["limits"][0].update(limit=2, window=1)
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        token = issuer.mint()
        started, done, waits = time.monotonic(), 0, 0
        while done < 5:
            status, headers = await get(gw, "/limited/x", token)
            if status == 429:
                waits += 1
                await asyncio.sleep(float(headers["Retry-After"]))
                continue
            assert status == 200
            done += 1
        assert waits >= 1 and time.monotonic() - started < 6


async def test_behind_a_trusted_proxy_the_ip_key_is_the_forwarded_client(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """Two clients behind the same trusted front proxy have their own buckets, and a client
    cannot get a fresh one by writing addresses of its own on the left of the header."""
    cfg = config(tmp_path, issuer, upstream)
    cfg["forwarding"] = {"trusted_proxies": ["127.0.0.1/32"]}
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)

        async def from_client(chain: str) -> int:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{gw.proxy_port}/open/x"
                async with session.get(url, headers={"X-Forwarded-For": chain}) as r:
                    return r.status

        first = [await from_client("203.0.113.1") for _ in range(3)]
        spoofed = [await from_client(f"198.51.100.{n}, 203.0.113.1") for n in range(2)]
        second = [await from_client("203.0.113.2") for _ in range(2)]
        assert first == [200, 200, 429]
        assert spoofed == [429, 429]  # the left-most entries are the client's own text
        assert second == [200, 200]


@pytest.mark.parametrize("on_proxy", [True, False])
async def test_the_key_set_is_on_the_proxy_listener_only_when_asked(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream, on_proxy: bool
) -> None:
    cfg = config(tmp_path, issuer, upstream)
    cfg["token_signing"]["jwks"] = {"on_proxy": on_proxy}
    cfg["routes"].append({"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "orders",
                          "auth": "anonymous", "identity_token": {"enabled": False}})  # fmt: skip
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        async with aiohttp.ClientSession() as session:
            admin = f"http://127.0.0.1:{gw.admin_port}/.well-known/jwks.json"
            async with session.get(admin) as r:
                published = await r.read()
            url = f"http://127.0.0.1:{gw.proxy_port}/.well-known/jwks.json"
            async with session.get(url) as r:
                body, content_type = await r.read(), r.headers.get("Content-Type")
    if on_proxy:
        assert body == published and content_type == "application/jwk-set+json"
        assert upstream.received == []  # answered by the gateway, never forwarded
    else:
        assert len(upstream.received) == 1  # an ordinary path, routed as any other
