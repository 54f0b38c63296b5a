"""The L2's request-path GETs against a real Redis, both ways: auto-pipelined through
redis-py (``gateway.cache.batching``) and in flight on one connection of our own
(``gateway.cache.inflight``). Each caller gets its own key's answer, one failure or one
impatient caller touches no other, a burst costs one connection rather than one per GET,
and a silent Redis fails the whole batch at its time limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.cache.batching import GetBatcher
from gateway.cache.inflight import InFlightGets, endpoint_of
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


# --- one connection, many GETs in flight (gateway.cache.inflight) ----------------------------


async def test_in_flight_gets_answer_each_caller_in_order_on_one_connection(
    server: RedisServer,
) -> None:
    endpoint = endpoint_of(server.url)
    assert endpoint is not None
    gets = InFlightGets(endpoint, 1.0)
    try:
        keys = [f"k{i}" for i in range(50)] + ["missing", "k7"]
        answers = await asyncio.gather(*(gets.get(key) for key in keys))
        assert answers == [f"v{i}".encode() for i in range(50)] + [None, b"v7"]
        with redis.Redis(port=server.port) as probe:
            assert probe.info("clients")["connected_clients"] == 2
        # A wrong-type key fails its own GET only; an impatient caller leaves the rest.
        impatient = asyncio.ensure_future(gets.get("k1"))
        calls = asyncio.gather(gets.get("k0"), gets.get("a-list"), gets.get("k2"),
                               return_exceptions=True)  # fmt: skip
        await asyncio.sleep(0)
        impatient.cancel()
        first, wrong_type, last = await calls
        assert (first, last) == (b"v0", b"v2")
        assert isinstance(wrong_type, ConnectionError)
        assert await gets.get("k3") == b"v3"  # the connection is still in step
    finally:
        await gets.close()


async def test_in_flight_gets_authenticate_and_select_from_the_url() -> None:
    with RedisServer() as running, redis.Redis(port=running.port) as admin:
        admin.select(3)
        admin.set("only-in-db-3", "yes")
        admin.config_set("requirepass", "s3cret")
        for url, expected in ((f"redis://:s3cret@127.0.0.1:{running.port}/3", b"yes"),
                              (f"redis://:s3cret@127.0.0.1:{running.port}/0", None)):  # fmt: skip
            endpoint = endpoint_of(url)
            assert endpoint is not None
            gets = InFlightGets(endpoint, 1.0)
            try:
                assert await gets.get("only-in-db-3") == expected
            finally:
                await gets.close()
        wrong = endpoint_of(f"redis://:wrong@127.0.0.1:{running.port}/3")
        assert wrong is not None
        gets = InFlightGets(wrong, 1.0)
        try:
            with pytest.raises(ConnectionError):
                await gets.get("only-in-db-3")
        finally:
            await gets.close()


async def test_in_flight_gets_time_out_as_a_batch_and_reconnect_after(
    server: RedisServer,
) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers
        writer.close()

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    endpoint = endpoint_of(f"redis://127.0.0.1:{silent.sockets[0].getsockname()[1]}")
    assert endpoint is not None
    gets = InFlightGets(endpoint, 0.2)
    started = asyncio.get_running_loop().time()
    try:
        results = await asyncio.gather(*(gets.get(f"k{i}") for i in range(5)),
                                       return_exceptions=True)  # fmt: skip
        assert all(isinstance(result, TimeoutError) for result in results), results
        assert 0.15 < asyncio.get_running_loop().time() - started < 1.0
    finally:
        await gets.close()
        silent.close()
    # A connection Redis closes: the next GET opens a new one.
    endpoint = endpoint_of(server.url)
    assert endpoint is not None
    gets = InFlightGets(endpoint, 1.0)
    try:
        assert await gets.get("k1") == b"v1"
        with redis.Redis(port=server.port) as admin:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        await asyncio.sleep(0.1)
        assert await gets.get("k2") == b"v2"
    finally:
        await gets.close()


@pytest.mark.parametrize(
    ("url", "fast"),
    [
        pytest.param("redis://127.0.0.1:6379/0", True, id="plain"),
        pytest.param("redis://user:pw@h/2", True, id="auth-and-db"),
        pytest.param("rediss://h:6379", False, id="tls-keeps-redis-py"),
        pytest.param("unix:///tmp/r.sock", False, id="unix-keeps-redis-py"),
        pytest.param("redis://h:6379?socket_keepalive=true", False, id="options-keep-redis-py"),
    ],
)
def test_which_urls_take_the_in_flight_path(url: str, fast: bool) -> None:
    assert (endpoint_of(url) is not None) is fast
