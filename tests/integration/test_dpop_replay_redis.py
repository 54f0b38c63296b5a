"""The DPoP replay store against a real Redis: SET NX PX shared by replicas, expiry, and
both failure policies when Redis is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from gateway.auth.dpop import replay_key
from gateway.auth.replay import MemoryReplayStore, RedisReplayStore, ReplayStoreUnavailable
from tests.support.redis import RedisServer, redis_url_or_start

JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_url_or_start() as url:
        yield url


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


def replica(
    client: Redis, prefix: str, *, timeout: float = 0.5, fail_open: bool = False
) -> RedisReplayStore:
    """One gateway replica's store: its own L1, the shared Redis."""
    l1 = MemoryReplayStore(1000)
    return RedisReplayStore(client, l1, key_prefix=prefix, timeout=timeout, fail_open=fail_open)


async def test_a_proof_seen_by_one_replica_is_a_replay_on_another(client: Redis) -> None:
    key = replay_key(JKT, "jti-across-replicas")
    first, second = replica(client, "t1:"), replica(client, "t1:")
    assert await first.record(key, 60) is True
    assert await second.record(key, 60) is False
    assert await first.record(key, 60) is False  # answered by the L1, no round trip
    stored = await client.get("t1:" + key.hex())
    assert stored == b"1"
    ttl = await client.pttl("t1:" + key.hex())
    assert 55_000 < ttl <= 60_000


async def test_redis_never_sees_the_raw_jti_or_key(client: Redis) -> None:
    await replica(client, "t2:").record(replay_key(JKT, "secret-jti"), 60)
    keys = [key.decode() async for key in client.scan_iter(match="t2:*")]
    assert keys and all("secret-jti" not in key and JKT not in key for key in keys)


async def test_the_entry_expires_after_its_ttl(client: Redis) -> None:
    key = replay_key(JKT, "short-lived")
    assert await replica(client, "t3:").record(key, 0.05) is True
    await asyncio.sleep(0.12)
    assert await replica(client, "t3:").record(key, 0.05) is True


async def test_concurrent_first_uses_admit_exactly_one(client: Redis) -> None:
    key = replay_key(JKT, "raced")
    replicas = [replica(client, "t4:") for _ in range(8)]
    results = await asyncio.gather(*(store.record(key, 60) for store in replicas))
    assert sorted(results) == [False] * 7 + [True]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_redis_down_fails_closed_by_default(own_redis: RedisServer) -> None:
    redis = Redis.from_url(own_redis.url, socket_connect_timeout=0.2)
    store = replica(redis, "t5:", timeout=0.3)
    assert await store.record(replay_key(JKT, "before"), 60) is True
    own_redis.stop()
    with pytest.raises(ReplayStoreUnavailable) as refused:
        await store.record(replay_key(JKT, "during"), 60)
    assert refused.value.status == 503 and store.errors == 1
    await redis.aclose()


async def test_redis_down_fails_open_to_the_l1_when_configured(own_redis: RedisServer) -> None:
    redis = Redis.from_url(own_redis.url, socket_connect_timeout=0.2)
    store = replica(redis, "t6:", timeout=0.3, fail_open=True)
    own_redis.stop()
    key = replay_key(JKT, "during")
    assert await store.record(key, 60) is True
    assert await store.record(key, 60) is False  # the L1 still catches a replay here
    await redis.aclose()


async def test_a_slow_redis_is_bounded_by_the_timeout(own_redis: RedisServer) -> None:
    redis = Redis.from_url(own_redis.url)
    await redis.execute_command("CLIENT", "PAUSE", "1000", "ALL")
    store = replica(redis, "t7:", timeout=0.1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ReplayStoreUnavailable):
        await store.record(replay_key(JKT, "slow"), 60)
    assert asyncio.get_running_loop().time() - started < 0.5
    await redis.aclose()
