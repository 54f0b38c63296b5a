"""Evictions and the admin API tell the truth and reach everyone (issue 11, defects 3, 6-8).

Real gateways (in-process, and ``gateway run --workers 2`` as a process), a real Redis, a
real introspection server: each test asserts what clients get after an eviction.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import yaml

from gateway.compiler import compile_config
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config_text
from tests.support.gateway import running_gateway
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.redis import TEST_CACHE_KEY, RedisServer, free_port, redis_url_or_start
from tests.support.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
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
    audiences: list[str] | None = None,
    prefix: str | None = None,
    admin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cache: dict[str, Any] = {"max_ttl": "60s", "negative_ttl": "60s", "l1": {"ttl": "60s"}}
    if redis_url:
        cache["redis"] = {"url": redis_url, "timeout": "500ms", "key": TEST_CACHE_KEY}
        cache["key_prefix"] = prefix or f"test:{uuid.uuid4().hex}:"
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0} | (admin or {}),
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{
            "issuer": issuer.url, "audiences": audiences or ["api://default"],
            "mode": "introspection",
            "introspection": {"endpoint": introspection.url, "client": {
                "client_id": "gateway", "client_secret": "gateway-secret"}},
        }],
        "cache": cache,
        "routes": [{"match": {"path": {"prefix": "/"}}, "upstream": "app"}],
    }  # fmt: skip


def opaque(server: TestIntrospectionServer, aud: str = "api://default", **fields: Any) -> str:
    token = secrets.token_urlsafe(24)
    server.add_token(token, **({"sub": "svc-user", "scope": "read", "aud": aud,
                                "exp": int(time.time() + 300)} | fields))  # fmt: skip
    return token


async def get(gw: Any, token: str) -> int:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{gw.proxy_port}/x"
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
            return r.status


async def evict(
    gw: Any, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{gw.admin_port}/cache/evict"
        data = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) else body
        async with session.post(url, json=json_body, data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None)


# --- 3: gateways with different rules share a Redis without sharing answers --------------------


async def test_3_two_gateways_with_different_audiences_never_share_entries(
    tmp_path: Path, issuer: TestIssuer, introspection, upstream, redis_url: str
) -> None:
    prefix = f"shared:{uuid.uuid4().hex}:"  # same Redis, same prefix: only the contexts differ
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = config(issuer, introspection, upstream, redis_url=redis_url, prefix=prefix,
                   audiences=["api://a"])  # fmt: skip
    second = config(issuer, introspection, upstream, redis_url=redis_url, prefix=prefix,
                    audiences=["api://b"])  # fmt: skip
    for_a, for_b = opaque(introspection, aud="api://a"), opaque(introspection, aud="api://b")
    async with (
        running_gateway(tmp_path / "a", first) as gw_a,
        running_gateway(tmp_path / "b", second) as gw_b,
    ):
        assert await get(gw_a, for_a) == 200
        assert await get(gw_b, for_b) == 200
        await asyncio.sleep(0.1)
        assert await get(gw_b, for_a) == 401  # not served from A's entry
        assert await get(gw_a, for_b) == 401
        await asyncio.sleep(0.1)
        assert await get(gw_a, for_a) == 200  # nor blocked by B's rejection of it
        assert await get(gw_b, for_b) == 200
    assert introspection.calls == 4


# --- 6: subject eviction at scale answers honestly -------------------------------------------


async def test_6_subject_eviction_with_many_entries_completes_and_says_so(
    tmp_path: Path, issuer: TestIssuer, introspection, upstream, redis_url: str
) -> None:
    cfg = config(issuer, introspection, upstream, redis_url=redis_url)
    prefix = cfg["cache"]["key_prefix"]
    token = opaque(introspection, sub="bulk")
    async with running_gateway(tmp_path, cfg) as gw:
        assert await get(gw, token) == 200
        await asyncio.sleep(0.1)
        client = redis.Redis.from_url(redis_url)
        group = f"{prefix}sub:{hashlib.sha256(b'bulk').hexdigest()}"
        later = int((time.time() + 300) * 1000)
        filler = {f"{prefix}filler:{i}": later for i in range(40_000)}
        client.zadd(group, filler)
        introspection.remove_token(token)
        status, body = await evict(gw, {"subject": "bulk"})
        assert status == 200, body
        assert body["shared"] == "done" and body["broadcast"] == "sent"
        assert "local_entries" not in body  # no token configured: nothing to learn from it
        assert client.exists(group) == 0
        client.close()
        assert await get(gw, token) == 401


async def test_6_an_eviction_redis_cannot_complete_answers_503_and_still_evicts_locally(
    tmp_path: Path, issuer: TestIssuer, introspection, upstream
) -> None:
    server = RedisServer()
    server.start()
    try:
        cfg = config(issuer, introspection, upstream, redis_url=server.url)
        token = opaque(introspection, sub="carol")
        async with running_gateway(tmp_path, cfg) as gw:
            assert await get(gw, token) == 200
            server.stop()
            introspection.remove_token(token)
            status, body = await evict(gw, {"subject": "carol"})
            assert status == 503
            assert body["local"] == "done" and body["shared"] != "done"
            assert body["broadcast"] == "failed"  # attempted regardless
            assert await get(gw, token) == 401  # gone from this replica's memory
    finally:
        server.stop()


# --- 7: with --workers N and no Redis, an eviction reaches every worker ----------------------


def _request(port: int, token: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/x", headers={"Authorization": f"Bearer {token}",
                                               "Connection": "close"}
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_7_an_eviction_without_redis_reaches_every_worker(
    tmp_path: Path, issuer: TestIssuer, introspection, upstream
) -> None:
    port, admin_port = free_port(), free_port()
    cfg = config(issuer, introspection, upstream)
    cfg["listen"]["port"], cfg["admin"]["port"] = port, admin_port
    cfg["shutdown"] = {"readiness_delay": "0s", "drain_timeout": "2s"}
    cfg["logging"] = {"access_log": False}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    token = opaque(introspection, sub="dave")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(path), "--workers", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while introspection.calls < 2:  # until both workers hold the answer in memory
            assert time.monotonic() < deadline, "the token never reached both workers"
            try:
                assert await asyncio.to_thread(_request, port, token) == 200
            except OSError:
                await asyncio.sleep(0.1)
        introspection.remove_token(token)
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin_port}/cache/evict", data=b'{"token": "%s"}' % token.encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        await asyncio.sleep(0.3)
        statuses = [await asyncio.to_thread(_request, port, token) for _ in range(30)]
        assert set(statuses) == {401}, statuses
    finally:
        process.terminate()
        process.wait(timeout=15)


# --- 8: admin actions are never open by accident, and answers reveal nothing -----------------


BASE = """\
upstreams: {app: {url: "http://127.0.0.1:9"}}
defaults: {auth: anonymous}
routes: [{upstream: app}]
"""


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        pytest.param(
            "admin: {host: 0.0.0.0}\n",
            "admin.token: the admin listener is bound to 0.0.0.0",
            id="open-without-token",
        ),
        pytest.param(
            'admin: {host: 0.0.0.0, token: ""}\n', "the admin token is empty", id="empty-token"
        ),
        pytest.param(
            'admin: {host: 127.0.0.1, token: "${T}"}\n',
            "the admin token is empty",
            id="empty-variable",
        ),
    ],
)
def test_8_an_open_admin_listener_is_a_config_error(admin: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_config(load_config_text(admin + BASE, "gw.yaml", env={"T": ""}))
    assert "gw.yaml:1:" in str(caught.value) and message in str(caught.value)


def test_8_a_loopback_admin_listener_may_go_without_a_token() -> None:
    assert compile_config(load_config_text(BASE, "gw.yaml")).admin_token is None


async def test_8_with_a_token_only_its_holder_learns_about_a_subject(
    tmp_path: Path, issuer: TestIssuer, introspection, upstream
) -> None:
    cfg = config(issuer, introspection, upstream, admin={"token": "s3cret-admin"})
    token = opaque(introspection, sub="erin")
    async with running_gateway(tmp_path, cfg) as gw:
        assert await get(gw, token) == 200
        status, body = await evict(gw, {"subject": "erin"})
        assert status == 401 and "local_entries" not in body
        status, body = await evict(gw, {"subject": "erin"}, {"Authorization": "Bearer wr\u00f6ng"})
        assert status == 401  # a non-ASCII header is a refusal, not a 500
        status, body = await evict(
            gw, {"subject": "erin"}, {"Authorization": "Bearer s3cret-admin"}
        )
        assert status == 200 and body["local_entries"] == 1
        assert await get(gw, token) == 200  # still active at the AS: asked again, fine


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 1000 + b"]" * 1000, id="nested-1000"),
        pytest.param(b'{"subject": ' + b"[" * 50 + b"]" * 50 + b"}", id="nested-value"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b'{"token": 1}', id="not-a-string"),
        pytest.param(b'{"who": "x"}', id="unknown-kind"),
    ],
)
async def test_8_malformed_admin_bodies_are_400(
    tmp_path: Path, issuer: TestIssuer, introspection, upstream, body: bytes
) -> None:
    async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
        status, answer = await evict(gw, body, {"Content-Type": "application/json"})
    assert status == 400
    assert answer["status"] == 400 and answer["type"].startswith("urn:oauth-gateway:problem:")
