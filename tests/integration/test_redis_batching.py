"""Auto-pipelined GETs (``gateway.cache.batching``) against a real Redis: each caller gets its
own key's answer, one failure or one impatient caller touches no other, and a burst costs
one connection rather than one per GET."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.cache.batching import GetBatcher
from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        with redis.Redis(port=running.port) as setup:
            setup.mset({f"k{i}": f"v{i}" for i in range(50)})
            setup.lpush("a-list", "x")
        yield running


async def test_a_burst_goes_as_one_pipeline_and_each_caller_gets_its_answer(
    server: RedisServer,
) -> None:
    client = Redis.from_pool(BlockingConnectionPool.from_url(server.url, max_connections=64))
    batcher = GetBatcher(client, 1.0)
    try:
        keys = [f"k{i}" for i in range(50)] + ["missing"]
        answers = await asyncio.gather(*(batcher.get(key) for key in keys))
        assert answers == [f"v{i}".encode() for i in range(50)] + [None]
        with redis.Redis(port=server.port) as probe:
            connected = probe.info("clients")["connected_clients"]
        assert connected == 2  # the probe, and the one connection the burst used
    finally:
        await batcher.close()
        await client.aclose()


async def test_one_failing_get_and_one_impatient_caller_leave_the_others_alone(
    server: RedisServer,
) -> None:
    client = Redis.from_url(server.url)
    batcher = GetBatcher(client, 1.0)
    try:
        impatient = asyncio.ensure_future(batcher.get("k1"))
        calls = [batcher.get("k0"), batcher.get("a-list"), batcher.get("k2")]
        gathered = asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0)
        impatient.cancel()
        first, wrong_type, last = await gathered
        assert (first, last) == (b"v0", b"v2")
        assert isinstance(wrong_type, redis.ResponseError)
        assert impatient.cancelled()
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_redis_that_is_gone_fails_every_caller_of_the_batch(server: RedisServer) -> None:
    client = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    batcher = GetBatcher(client, 1.0)
    try:
        results = await asyncio.gather(*(batcher.get(f"k{i}") for i in range(3)),
                                       return_exceptions=True)  # fmt: skip
        assert all(isinstance(result, redis.ConnectionError) for result in results)
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_batch_that_gets_no_answer_fails_every_caller_at_its_time_limit() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    client = Redis.from_url(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    batcher = GetBatcher(client, 0.2)
    started = asyncio.get_running_loop().time()
    try:
        results = await asyncio.gather(*(batcher.get(f"k{i}") for i in range(5)),
                                       return_exceptions=True)  # fmt: skip
        elapsed = asyncio.get_running_loop().time() - started
        assert all(isinstance(result, TimeoutError) for result in results), results
        assert 0.15 < elapsed < 1.0
    finally:
        await batcher.close()
        await client.aclose()
        server.close()
