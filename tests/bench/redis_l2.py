"""What one L2 hit (a Redis GET) costs the gateway's process, by client (issue 14 item 5).

    PYTHONPATH=. .venv/bin/python tests/bench/redis_l2.py [--seconds 5] [--concurrency 50]

A private ``redis-server`` on core 1 holds 200 values of 600 bytes (a sealed identity's
size); this process, alone on core 0 under uvloop, runs ``--concurrency`` tasks that GET
them in turn for ``--seconds``, as 50 concurrent requests of ``gateway-opaque-l2`` would.
Reported per candidate: GETs/s, this process's CPU µs per GET (utime+stime), and what
importing and connecting the client added to RSS. Candidates:

- ``redis-py``: redis.asyncio with hiredis, a BlockingConnectionPool of 64 (the gateway's
  client before this change), RESP2;
- ``redis-py-resp3``: the same with ``protocol=3``;
- ``redis-py-single``: one connection (``single_connection_client``): one GET in flight;
- ``redis-py-batched``: ``gateway.cache.batching.GetBatcher`` over the pooled client: the
  GETs issued in one loop iteration leave as one pipeline (the gateway's way for TLS, unix
  sockets, Sentinel and Cluster);
- ``in-flight``: ``gateway.cache.inflight.InFlightGets``: one connection of our own, the
  GETs of one loop iteration in one write, replies parsed by hiredis in order (the
  gateway's way for a plain ``redis://`` URL);
- ``valkey-glide``: GLIDE's asyncio client (a Rust core multiplexing one connection), if
  installed (``pip install valkey-glide``; not a dependency of the gateway).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.support.redis import RedisServer

KEYS = [f"bench:l2:{i:03d}" for i in range(200)]
VALUE = bytes(range(200)) * 3  # the same in every process


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def cpu() -> float:
    times = os.times()
    return times.user + times.system


Get = Callable[[str], Awaitable[Any]]


async def drive(get: Get, seconds: float, concurrency: int) -> tuple[int, float]:
    stop = False
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while not stop:
            value = await get(KEYS[index % len(KEYS)])
            assert value == VALUE
            index += 7
            done += 1

    tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(0.5)  # warm-up
    start_ops, start_cpu, start = done, cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    ops, spent, elapsed = done - start_ops, cpu() - start_cpu, time.perf_counter() - start
    stop = True
    await asyncio.gather(*tasks)
    return int(ops / elapsed), spent / ops * 1e6


async def redis_py(url: str, variant: str) -> tuple[Get, Callable[[], Awaitable[None]]]:
    from redis.asyncio import BlockingConnectionPool, Redis

    if variant == "single":
        client = Redis.from_url(url, single_connection_client=True)
    else:
        protocol = 3 if variant == "resp3" else 2
        pool = BlockingConnectionPool.from_url(url, max_connections=64, protocol=protocol)
        client = Redis.from_pool(pool)
    await client.ping()
    if variant == "batched":
        from gateway.cache.redis import GetBatcher

        batcher = GetBatcher(client, 1.0)
        return batcher.get, client.aclose
    return client.get, client.aclose


async def in_flight(url: str) -> tuple[Get, Callable[[], Awaitable[None]]]:
    from gateway.cache.inflight import InFlightGets, endpoint_of

    endpoint = endpoint_of(url)
    assert endpoint is not None
    gets = InFlightGets(endpoint, 1.0)
    return gets.get, gets.close


async def glide(port: int) -> tuple[Get, Callable[[], Awaitable[None]]]:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress

    client = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", port)]))
    return client.get, client.close


async def measure(name: str, port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    before = rss_kib()
    url = f"redis://127.0.0.1:{port}"
    try:
        if name == "valkey-glide":
            get, close = await glide(port)
        elif name == "in-flight":
            get, close = await in_flight(url)
        else:
            get, close = await redis_py(url, name.removeprefix("redis-py").lstrip("-") or "pool")
    except ImportError as error:
        return {"name": name, "skipped": str(error)}
    added = rss_kib() - before
    rate, micros = await drive(get, seconds, concurrency)
    await close()
    return {"name": name, "rate": rate, "cpu_us": micros, "rss_mb": added / 1024}


def child(name: str, port: int, seconds: float, concurrency: int) -> None:
    import uvloop

    result = uvloop.run(measure(name, port, seconds, concurrency))
    print(repr(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.seconds, args.concurrency)
        return 0
    names = ["redis-py", "redis-py-resp3", "redis-py-single", "redis-py-batched", "in-flight",
             "valkey-glide"]  # fmt: skip
    with RedisServer() as server:
        assert server._process is not None
        subprocess.run(
            ["taskset", "-pc", "1", str(server._process.pid)], check=True, capture_output=True
        )
        import redis

        with redis.Redis(port=server.port) as setup:
            setup.mset(dict.fromkeys(KEYS, VALUE))
        print("| client | GETs/s | client CPU µs/GET | RSS added MB |\n|---|---:|---:|---:|")
        for name in names:
            command = ["taskset", "-c", "0", sys.executable, __file__, "--child", name,
                       str(server.port), "--seconds", str(args.seconds),
                       "--concurrency", str(args.concurrency)]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = out.stdout.strip().splitlines()
            if out.returncode != 0 or not lines:
                print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1:]} | | |")
                continue
            result = eval(lines[-1])  # noqa: S307 - our own child's repr of a dict
            if "skipped" in result:
                print(f"| {name} | skipped ({result['skipped']}) | | |")
                continue
            print(f"| {name} | {result['rate']:,} | {result['cpu_us']:.1f} "
                  f"| {result['rss_mb']:.1f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
