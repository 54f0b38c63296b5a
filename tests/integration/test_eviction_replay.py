"""An eviction whose message got through but whose deletion did not is sent again after it.

The case this guards: a Redis Cluster node holding a subject's index (or the entries) is down
while the node that carries PUBLISH answers. Replica A evicts the subject: its DEL fails and
is kept for replay, its message reaches replica B, which empties its memory and, on the next
request, reads the entry the DEL left behind from Redis again. Before the fix B then served
the revoked token until the entry's TTL, even after A's replay had deleted it from Redis.

A real Redis stands in for the cluster: A logs in as an ACL user that is refused ZRANGE and
DEL (the commands of the deletion) while it may still GET, SET and PUBLISH; giving them back
is the node coming back.
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

from gateway.app import Gateway
from tests.support import redis_fleet as fleet
from tests.support.gateway import running_gateway
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.redis import TEST_CACHE_KEY, RedisServer
from tests.support.upstream import RecordingUpstream

USER, PASSWORD = "replica-a", secrets.token_hex(8)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


@pytest.fixture
async def introspection() -> Any:
    server = TestIntrospectionServer()
    await server.start()
    yield server
    await server.close()


def acl(server: RedisServer, *rules: str) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
                           channels=["*"], commands=list(rules), reset=True)  # fmt: skip
    finally:
        client.close()


def config(
    url: str,
    prefix: str,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream: RecordingUpstream,
) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{
            "issuer": issuer.url, "audiences": ["api://default"], "mode": "introspection",
            "introspection": {"endpoint": introspection.url, "client": {
                "client_id": "gateway", "client_secret": "gateway-secret"}},
        }],
        "cache": {"max_ttl": "60s", "negative_ttl": "60s", "l1": {"ttl": "60s"},
                  "key_prefix": prefix,
                  "redis": {"url": url, "timeout": "500ms", "key": TEST_CACHE_KEY}},
        "routes": [{"match": {"path": {"prefix": "/"}}, "upstream": "app"}],
    }  # fmt: skip


async def status(session: aiohttp.ClientSession, gateway: Gateway, token: str) -> int:
    url = f"http://127.0.0.1:{gateway.proxy_port}/read/x"
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status


async def test_a_replica_that_read_the_undeleted_entry_drops_it_once_the_deletion_is_replayed(
    tmp_path: Path,
    server: RedisServer,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream: RecordingUpstream,
) -> None:
    acl(server, "+@all")
    prefix = f"replay:{uuid.uuid4().hex}:"
    as_a = f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    revoked = fleet.opaque_token(introspection, subject="mallory")
    async with (
        running_gateway(tmp_path / "a", config(as_a, prefix, issuer, introspection, upstream)) as a,
        running_gateway(
            tmp_path / "b", config(server.url, prefix, issuer, introspection, upstream)
        ) as b,
        aiohttp.ClientSession() as session,
    ):
        assert await status(session, a, revoked) == 200  # introspected, written to Redis
        assert await status(session, b, revoked) == 200  # read from Redis
        assert introspection.calls == 1

        acl(server, "+@all", "-zrange", "-del", "-unlink")  # the index's node is down
        introspection.remove_token(revoked)
        received = fleet.evictions_received(b)
        async with session.post(
            f"http://127.0.0.1:{a.admin_port}/cache/evict", json={"subject": "mallory"}
        ) as response:
            report = await response.json()
        assert response.status == 503 and report["shared"] != "done", report
        assert report["broadcast"] == "sent", report
        await fleet.eventually(
            _true(lambda: fleet.evictions_received(b) > received), 5.0, "B heard the eviction"
        )
        assert await status(session, a, revoked) == 401  # A's memory is empty, Redis is a miss
        # The gap this cannot close: B read the entry the DEL left behind.
        assert await status(session, b, revoked) == 200
        assert fleet.redis_of(a).pending >= 1
        errors = fleet.redis_errors(a)
        await fleet.eventually(
            lambda: _replay_failed(session, a, introspection, errors), 5.0, "A tried a replay"
        )
        await asyncio.sleep(0.2)
        assert fleet.evictions_received(b) == received + 1  # not sent again before the DEL

        acl(server, "+@all")  # the node is back
        deadline = time.monotonic() + 10.0
        while fleet.redis_of(a).pending and time.monotonic() < deadline:
            # any command of A's replays first, once its breaker lets one through
            await status(session, a, fleet.opaque_token(introspection))
            await asyncio.sleep(0.1)
        assert fleet.redis_of(a).pending == 0
        await fleet.eventually(
            lambda: _refused(session, b, revoked), 5.0, "B refuses the token after the replay"
        )
        assert await status(session, a, revoked) == 401


async def _replay_failed(
    session: aiohttp.ClientSession,
    gateway: Gateway,
    introspection: TestIntrospectionServer,
    errors: int,
) -> bool:
    """A fresh token's L2 read, which replays the kept evictions first (once the breaker
    lets a command through): whether a replay has failed since ``errors`` was read."""
    assert await status(session, gateway, fleet.opaque_token(introspection)) == 200
    await asyncio.sleep(0.05)
    return fleet.redis_errors(gateway) > errors


def _true(condition: Any) -> Any:
    async def check() -> bool:
        return bool(condition())

    return check


async def _refused(session: aiohttp.ClientSession, gateway: Gateway, token: str) -> bool:
    return await status(session, gateway, token) == 401
