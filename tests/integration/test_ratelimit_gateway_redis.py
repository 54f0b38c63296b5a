"""Rate limits shared through a real Redis, through the real gateway: what the buckets hold
(never a client's credential, in memory or in Redis) and which Redis they are shared
through after a reload that moves ``cache.redis``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.app import Gateway
from gateway.auth.digests import token_digest
from gateway.config.loader import load_config
from tests.support.gateway import base_config, running_gateway, write_config
from tests.support.redis import TEST_CACHE_KEY, RedisServer
from tests.support.upstream import RecordingUpstream

PREFIX = "test:rl:"
TOKENS = ("Bearer tok-alice-1", "Bearer tok-bob-22")  # short: under any length bound


def config(upstream: RecordingUpstream, redis_url: str) -> dict[str, Any]:
    limits = {"anonymous": [{"name": "per-credential", "key": ["header:Authorization"],
                             "limit": 2, "window": 60}]}  # fmt: skip
    routes = [{"match": {"path": {"prefix": "/"}}, "upstream": "app", "rate_limits": limits}]
    return base_config(
        upstream.url,
        routes,
        cache={"redis": {"url": redis_url, "timeout": "500ms", "key": TEST_CACHE_KEY}},
        rate_limiting={"redis": True, "sync_interval": "50ms", "key_prefix": PREFIX},
    )


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as first, RedisServer() as second:
        yield first, second


async def status(gw: Gateway, authorization: str) -> int:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{gw.proxy_port}/x"
        async with session.get(url, headers={"Authorization": authorization}) as response:
            await response.read()
            return response.status


def digest_of(value: str) -> str:
    return token_digest(value).hex()


async def stored(server: RedisServer) -> dict[str, str]:
    """Every key in ``server`` with its value, as text."""
    client = aioredis.Redis.from_url(server.url)
    try:
        found = {}
        async for key in client.scan_iter(match="*"):
            value = await client.get(key)
            found[key.decode()] = (value or b"").decode("latin-1")
        return found
    finally:
        await client.aclose()


async def synced(server: RedisServer, within: float = 5.0) -> dict[str, str]:
    """The rate-limit keys in ``server`` once a sync round has written some."""
    async with asyncio.timeout(within):
        while True:
            found = {k: v for k, v in (await stored(server)).items() if k.startswith(PREFIX)}
            if found:
                return found
            await asyncio.sleep(0.02)


async def test_no_bucket_holds_a_credential_and_each_still_has_its_own(
    tmp_path: Path, upstream: RecordingUpstream, redis_server: RedisServer
) -> None:
    """A limit keyed by ``header:Authorization`` counts per token without keeping one:
    the in-process buckets and every key and value in Redis hold digests only."""
    redis = redis_server
    async with running_gateway(tmp_path, config(upstream, redis.url)) as gw:
        alice, bob = TOKENS
        assert [await status(gw, alice) for _ in range(3)] == [200, 200, 429]
        assert [await status(gw, bob) for _ in range(2)] == [200, 200]
        assert await status(gw, alice) == 429  # still alice's bucket, not a fresh one
        limiter = gw.holder.current.limits.limiter
        assert limiter is not None and len(limiter) == 2
        in_memory = [part for bucket in limiter._buckets.values() for part in bucket.key]
        in_memory += [part for key in limiter._buckets for part in key]
        assert await synced(redis)  # the buckets reached Redis...
        in_redis = await stored(redis)  # ...and nothing there, key or value, is a token
    texts = [*in_memory, *in_redis, *in_redis.values()]
    for token in TOKENS:
        secret = token.removeprefix("Bearer ")
        assert not [text for text in texts if secret in text], token


async def test_a_reload_that_moves_cache_redis_moves_the_sync_and_keeps_the_counts(
    tmp_path: Path, upstream: RecordingUpstream, two_redis: tuple[RedisServer, RedisServer]
) -> None:
    """The limiter (and its clients' counts) outlives a reload; its cluster sync is bound to
    a Redis client, so a reload to another ``cache.redis`` starts a sync on the new one
    rather than sharing counts through a Redis the config no longer names."""
    old, new = two_redis
    async with running_gateway(tmp_path, config(upstream, old.url)) as gw:
        alice, bob = TOKENS
        assert [await status(gw, alice) for _ in range(2)] == [200, 200]
        await synced(old)
        kept = gw.holder.current.limits.limiter
        await gw.reload(load_config(write_config(tmp_path, config(upstream, new.url)), env={}))
        assert kept is not None and gw.holder.current.limits.limiter is kept
        assert await status(gw, alice) == 429  # counts survive the reload
        before = set(await stored(old))
        assert await status(gw, bob) == 200
        bucket = next(b for b in kept._buckets.values() if b.key[-1] == digest_of(bob))
        async with asyncio.timeout(5):
            while bucket.remote_key not in await synced(new):  # bob's, through the new Redis
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # several sync intervals
        assert set(await stored(old)) == before  # and nothing more through the old one
