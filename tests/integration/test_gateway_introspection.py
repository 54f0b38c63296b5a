"""Opaque tokens through the running gateway: RFC 7662 introspection behind L1 + Redis.

Two gateway instances sharing one real Redis stand in for a fleet of replicas; a real
introspection endpoint counts its calls, so "about once per TTL" is asserted, not assumed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.support.gateway import running_gateway, wait_ready
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.redis import TEST_CACHE_KEY, RedisServer, redis_url_or_start
from tests.support.upstream import RecordingUpstream


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_url_or_start() as url:
        yield url


@pytest.fixture
async def introspection():
    server = TestIntrospectionServer()
    await server.start()
    yield server
    await server.close()


def config(
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream: RecordingUpstream,
    *,
    redis_url: str | None = None,
    prefix: str = "",
    **issuer_extra: Any,
) -> dict[str, Any]:
    cache: dict[str, Any] = {"max_ttl": "60s", "negative_ttl": "60s", "l1": {"ttl": "60s"}}
    if redis_url:
        cache["redis"] = {"url": redis_url, "timeout": "500ms", "key": TEST_CACHE_KEY}
        cache["key_prefix"] = prefix or f"test:{uuid.uuid4().hex}:"
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [
            {
                "issuer": issuer.url,
                "audiences": ["api://default"],
                "mode": "auto",
                "introspection": {
                    "endpoint": introspection.url,
                    "client": {"client_id": "gateway", "client_secret": "gateway-secret"},
                },
                **issuer_extra,
            }
        ],
        "cache": cache,
        "routes": [
            {"match": {"path": "/read/**"}, "upstream": "app",
             "require": {"scopes": {"all": ["read"]}}},
            {"match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
    }  # fmt: skip


def opaque(introspection: TestIntrospectionServer, *, exp_in: float = 300, **fields: Any) -> str:
    token = secrets.token_urlsafe(32)
    answer = {
        "sub": "svc-user", "client_id": "svc", "scope": "read", "aud": "api://default",
        "exp": int(time.time() + exp_in),
    } | fields  # fmt: skip
    introspection.add_token(token, **answer)
    return token


async def get(gw, path: str, token: str | None) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{gw.proxy_port}{path}", headers=headers) as r:
            body = await r.json(content_type=None)
            return r.status, dict(r.headers), body


async def admin(gw, method: str, path: str, json: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"http://127.0.0.1:{gw.admin_port}{path}", json=json) as r:
            return r.status, await r.json(content_type=None)


async def test_opaque_token_is_introspected_once_and_cached(
    tmp_path: Path, issuer, introspection, upstream
):
    token = opaque(introspection, sub="alice", client_id="svc-a", scope="read write")
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        for _ in range(20):
            status, _, _ = await get(gw, "/read/x", token)
            assert status == 200
    assert introspection.calls == 1
    received = upstream.last
    assert received.header("X-Auth-Subject") == "alice"
    assert received.header("X-Auth-Client-Id") == "svc-a"
    assert received.header("X-Auth-Scopes") == "read write"


async def test_opaque_token_scope_policy_applies(tmp_path: Path, issuer, introspection, upstream):
    token = opaque(introspection, scope="other")
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        status, headers, _ = await get(gw, "/read/x", token)
    assert status == 403
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert upstream.received == []


async def test_inactive_token_is_invalid_and_negatively_cached(
    tmp_path: Path, issuer, introspection, upstream
):
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        for _ in range(5):
            status, headers, body = await get(gw, "/x", "never-issued-token")
            assert status == 401
            challenge = headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="gateway", error="invalid_token"')
            assert body["status"] == 401
    assert introspection.calls == 1
    assert upstream.received == []


@pytest.mark.parametrize(
    ("fields", "case"),
    [
        pytest.param({"aud": "api://elsewhere"}, "audience", id="wrong-audience"),
        pytest.param({"iss": "https://other.example"}, "issuer", id="wrong-issuer"),
        pytest.param({"exp": int(time.time()) - 600}, "expired", id="expired"),
    ],
)
async def test_active_answer_that_does_not_fit_is_rejected(
    tmp_path: Path, issuer, introspection, upstream, fields, case
):
    token = opaque(introspection, **fields)
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        status, headers, _ = await get(gw, "/x", token)
    assert status == 401, case
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.received == []


async def test_an_answer_within_the_leeway_of_its_exp_is_accepted_end_to_end(
    tmp_path: Path, issuer, introspection, upstream
):
    """The leeway (30 s by default) for clock skew holds after the cache's own re-check,
    which had compared exp without it and refused what introspection accepted."""
    token = opaque(introspection, exp_in=-10)
    beyond = opaque(introspection, exp_in=-40)
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        assert (await get(gw, "/x", token))[0] == 200
        assert (await get(gw, "/x", beyond))[0] == 401
    assert len(upstream.received) == 1


async def test_auto_mode_validates_jwts_locally(tmp_path: Path, issuer, introspection, upstream):
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        await wait_ready(gw)
        status, _, _ = await get(gw, "/read/x", issuer.mint(scope="read"))
    assert status == 200
    assert introspection.calls == 0


async def test_introspect_jwts_sees_revocation(tmp_path: Path, issuer, introspection, upstream):
    jwt_token = issuer.mint(scope="read")
    cfg = config(issuer, introspection, upstream, introspect_jwts=True)
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        status, _, _ = await get(gw, "/read/x", jwt_token)  # valid JWT, but AS says inactive
    assert status == 401
    assert introspection.calls == 1
    assert upstream.received == []


async def test_authorization_server_down_fails_closed_but_cached_tokens_work(
    tmp_path: Path, issuer, introspection, upstream
):
    known = opaque(introspection)
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        assert (await get(gw, "/x", known))[0] == 200
        introspection.mode = "error"
        status, _, body = await get(gw, "/x", opaque(introspection))
        assert status == 503
        assert body["status"] == 503
        assert (await get(gw, "/x", known))[0] == 200  # cached, keeps working
        assert len(upstream.received) == 2


async def test_replicas_share_answers_through_redis(
    tmp_path: Path, issuer, introspection, upstream, redis_url
):
    token = opaque(introspection)
    cfg = config(issuer, introspection, upstream, redis_url=redis_url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_gateway(tmp_path / "a", cfg) as first,
        running_gateway(tmp_path / "b", cfg) as second,
    ):
        assert (await get(first, "/x", token))[0] == 200
        await asyncio.sleep(0.1)  # the L2 write is not on the request's critical path
        assert (await get(second, "/x", token))[0] == 200
        assert introspection.calls == 1
        # No raw token anywhere in Redis: keys are SHA-256, values a compact identity.
        client = redis.Redis.from_url(redis_url)
        prefix = cfg["cache"]["key_prefix"]
        keys = list(client.scan_iter(match=f"{prefix}*"))
        assert keys, "nothing was written to Redis"
        for key in keys:
            assert token.encode() not in key
            if client.type(key) == b"string":
                assert token.encode() not in client.get(key)
        client.close()


async def test_admin_eviction_reaches_every_replica(
    tmp_path: Path, issuer, introspection, upstream, redis_url
):
    token = opaque(introspection, sub="mallory")
    cfg = config(issuer, introspection, upstream, redis_url=redis_url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_gateway(tmp_path / "a", cfg) as first,
        running_gateway(tmp_path / "b", cfg) as second,
    ):
        assert (await get(first, "/x", token))[0] == 200
        assert (await get(second, "/x", token))[0] == 200
        introspection.remove_token(token)  # revoked at the authorization server
        assert (await get(second, "/x", token))[0] == 200  # still cached until evicted
        status, body = await admin(first, "POST", "/cache/evict", {"subject": "mallory"})
        assert status == 200, body
        await asyncio.sleep(0.3)  # pub/sub delivery
        assert (await get(second, "/x", token))[0] == 401
        assert (await get(first, "/x", token))[0] == 401


async def test_admin_eviction_validates_input(tmp_path: Path, issuer, introspection, upstream):
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        assert (await admin(gw, "POST", "/cache/evict", {"token_sha256": "zz"}))[0] == 400
        assert (await admin(gw, "POST", "/cache/evict", {"a": "1", "b": "2"}))[0] == 400
        assert (await admin(gw, "POST", "/cache/evict", {"token": "abc"}))[0] == 200


async def test_redis_unreachable_at_start_serves_degraded(
    tmp_path: Path, issuer, introspection, upstream
):
    dead = RedisServer()  # a free port with nothing listening
    token = opaque(introspection)
    cfg = config(issuer, introspection, upstream, redis_url=dead.url)
    async with running_gateway(tmp_path, cfg) as gw:
        assert (await get(gw, "/x", token))[0] == 200
        assert (await get(gw, "/x", token))[0] == 200
        status, body = await admin(gw, "GET", "/readyz", None)
        await wait_ready(gw)
        status, body = await admin(gw, "GET", "/readyz", None)
        assert status == 200
        assert "degraded" in body["notes"].values()
    assert introspection.calls == 1  # L1 carried it


async def test_redis_killed_and_restarted_mid_traffic(
    tmp_path: Path, issuer, introspection, upstream
):
    with RedisServer() as server:
        cfg = config(issuer, introspection, upstream, redis_url=server.url)
        async with running_gateway(tmp_path, cfg) as gw:
            await wait_ready(gw)
            first = opaque(introspection)
            assert (await get(gw, "/x", first))[0] == 200
            server.stop()
            during = opaque(introspection)
            for _ in range(3):
                assert (await get(gw, "/x", during))[0] == 200
            assert (await get(gw, "/x", issuer.mint()))[0] == 200  # JWTs never touch Redis
            server.restart()
            after = opaque(introspection)
            deadline = time.monotonic() + 10
            while True:
                _, body = await admin(gw, "GET", "/readyz", None)
                assert (await get(gw, "/x", after))[0] == 200
                if "degraded" not in body["notes"].values():
                    break
                assert time.monotonic() < deadline, "the cache did not recover"
                await asyncio.sleep(0.2)


async def test_without_l1_every_request_reaches_the_shared_tiers(
    tmp_path: Path, issuer, introspection, upstream
):
    token = opaque(introspection)
    cfg = config(issuer, introspection, upstream)
    cfg["cache"]["l1"] = {"max_entries": 0}
    cfg["cache"]["max_ttl"] = "0s"  # nothing cached anywhere: each request asks the server
    async with running_gateway(tmp_path, cfg) as gw:
        for _ in range(3):
            assert (await get(gw, "/x", token))[0] == 200
    assert introspection.calls == 3


@pytest.mark.parametrize("answer_cnf", [None, {"jkt": "B" * 42 + "A"}], ids=["left-out", "other"])
@pytest.mark.parametrize("mode", ["auto", "introspection"])
async def test_an_introspection_answer_never_unbinds_a_bound_jwt(
    tmp_path: Path, issuer, introspection, upstream, mode: str, answer_cnf: Any
):
    """RFC 9449 §6.2: the answer for a DPoP-bound token carries its cnf. One that leaves it
    out (or names another key) must not turn the JWT, whose own cnf.jkt says it is bound,
    into a bearer token anyone holding it can use: here, on a route without DPoP."""
    token = issuer.mint({"cnf": {"jkt": "A" * 43}}, scope="read")
    introspection.add_token(token, sub="user-1", scope="read", aud="api://default",
                            exp=int(time.time() + 300), cnf=answer_cnf)  # fmt: skip
    cfg = config(issuer, introspection, upstream, introspect_jwts=True)
    cfg["issuers"][0]["mode"] = mode
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        status, headers, _ = await get(gw, "/x", token)
    assert introspection.calls == 1
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.received == []
