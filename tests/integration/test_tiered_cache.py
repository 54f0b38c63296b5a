"""The generic two-tier cache (``TieredCache``) and its Redis tier (``RedisCache``) against a
real Redis: hits, freshness stamps, sealed values, key rotation, single flight, serve-stale,
outages and the breaker, and the bounded group index with honest group deletion.

What the values mean is the caller's ``EntryPolicy``; here a small ``Answer`` stands in.
Identity-specific behaviour (lifetimes capped by exp, re-checks against the validation
context, evictions over pub/sub) is in tests/integration/test_identity_cache.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway import boundedjson
from gateway.cache.memory import MemoryCache
from gateway.cache.redis import RedisCache
from gateway.cache.sealing import Sealer
from gateway.cache.settings import RedisSettings
from gateway.cache.tiered import TieredCache
from gateway.problems import ServiceUnavailable
from tests.support.redis import RedisServer, free_port, redis_url_or_start

WALL_START = 1_700_000_000.0
KEY_A, KEY_B = b"A" * 32, b"B" * 32
STAMP = struct.Struct(">Q")  # the tier's freshness stamp: ms since the epoch, big-endian


class Clocks:
    """Monotonic and wall clocks that advance together (Redis's own clock is real time)."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.elapsed = elapsed

    def monotonic(self) -> float:
        return 50.0 + self.elapsed

    def wall(self) -> float:
        return WALL_START + self.elapsed


@dataclass(frozen=True)
class Answer:
    """A cached value of the test policy: it says how long it lives and where it belongs."""

    text: str
    ttl: float = 300.0
    negative: bool = False
    group: str | None = None


class AnswerPolicy:
    def __init__(self, l1_ttl: float = 30.0) -> None:
        self._l1_ttl = l1_ttl

    def encode(self, value: Answer) -> bytes:
        return json.dumps([value.text, value.ttl, value.negative, value.group]).encode()

    def decode(self, data: bytes) -> Answer | None:
        try:
            text, ttl, negative, group = boundedjson.loads(data, max_bytes=4096)
        except (ValueError, TypeError):
            return None
        return Answer(text, ttl, negative, group)

    def ttl(self, value: Answer) -> float:
        return value.ttl

    def l1_ttl(self, value: Answer) -> float:
        return self._l1_ttl

    def negative(self, value: Answer) -> bool:
        return value.negative

    def group(self, value: Answer) -> str | None:
        return value.group


POLICY = AnswerPolicy()


class Loader:
    """Counts loads; answers ``result`` (an Answer or an exception) after ``delay``."""

    def __init__(self, result: Answer | BaseException, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> Answer:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def never_called() -> Loader:
    return Loader(AssertionError("the loader must not run"))


def unavailable() -> Loader:
    return Loader(ServiceUnavailable("down", reason="introspection_error"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_url_or_start() as url:
        yield url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private server this test may kill and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Tier:
    """A ``TieredCache`` with the names a test needs: ``get(name)`` uses key ``name`` and
    the Redis key ``prefix + name``."""

    def __init__(self, cache: TieredCache[Answer], prefix: str) -> None:
        self.cache = cache
        self.prefix = prefix

    def shared_key(self, name: str) -> str:
        return self.prefix + name

    async def get(self, name: str, load: Callable[[], Awaitable[Answer]]) -> Answer:
        return await self.cache.get_or_load(name.encode(), self.shared_key(name), load, POLICY)

    @property
    def stats(self) -> dict[str, int]:
        return self.cache.stats

    @property
    def redis(self) -> RedisCache:
        assert self.cache.redis is not None
        return self.cache.redis


TierFactory = Callable[..., Awaitable[Tier]]


@pytest.fixture
async def make_tier(redis_url: str, prefix: str) -> AsyncIterator[TierFactory]:
    made: list[TieredCache[Answer]] = []

    async def make(
        *,
        url: str | None = redis_url,
        keys: tuple[bytes, ...] = (KEY_A,),
        clocks: Clocks | None = None,
        probe_interval: float = 0.1,
        timeout: float = 0.5,
        serve_stale: float = 0.0,
        max_entries: int = 10_000,
    ) -> Tier:
        clocks = clocks or Clocks()
        redis = None
        if url is not None:
            settings = RedisSettings(url=url, timeout=timeout, admin_timeout=timeout)
            redis = RedisCache(settings, f"{prefix}evict", probe_interval=probe_interval)
            await redis.start()
        cache: TieredCache[Answer] = TieredCache(
            MemoryCache(max_entries, 16 * 1024 * 1024, clocks.monotonic),
            MemoryCache(max_entries, max_entries * 512, clocks.monotonic),
            redis,
            Sealer(keys) if redis is not None else None,
            serve_stale=serve_stale,
            group_ttl=600.0,
            clock=clocks.monotonic,
            wall=clocks.wall,
        )
        made.append(cache)
        return Tier(cache, prefix)

    yield make
    for cache in made:
        await cache.close()
        if cache.redis is not None:
            await cache.redis.close()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


def sealed(plaintext: bytes, redis_key: str, keys: tuple[bytes, ...] = (KEY_A,)) -> bytes:
    return Sealer(keys).seal(plaintext, redis_key.encode())


def stamped(fresh_until: float, payload: bytes) -> bytes:
    return STAMP.pack(round(fresh_until * 1000)) + payload


# --- hits, freshness, sealed values --------------------------------------------------------


async def test_l1_hit_returns_the_loaded_value_without_loading(make_tier: TierFactory) -> None:
    tier = await make_tier()
    value = Answer("v")
    load = Loader(value)
    assert await tier.get("k", load) is value
    assert await tier.get("k", load) is value
    assert load.calls == 1
    assert (tier.stats["l1_hits"], tier.stats["l1_misses"], tier.stats["loads"]) == (1, 1, 1)


async def test_l2_hit_is_shared_by_a_second_instance(make_tier: TierFactory) -> None:
    first, second = await make_tier(), await make_tier()
    await first.get("shared", Loader(Answer("v")))
    assert await second.get("shared", never_called()) == Answer("v")
    assert await second.get("shared", never_called()) == Answer("v")
    assert (second.stats["l2_hits"], second.stats["l1_hits"], second.stats["loads"]) == (1, 1, 0)


async def test_the_shared_value_is_sealed_and_its_lifetime_set_in_redis(
    make_tier: TierFactory, raw_redis: Redis
) -> None:
    tier = await make_tier()
    await tier.get("k", Loader(Answer("plain-text-answer", ttl=20.0)))
    stored = await raw_redis.get(tier.shared_key("k"))
    assert stored is not None and b"plain-text-answer" not in stored
    assert 19_000 < await raw_redis.pttl(tier.shared_key("k")) <= 20_000


async def test_the_freshness_stamp_keeps_the_millisecond(make_tier: TierFactory) -> None:
    """Ported from the codec's entry round trip: a replica reading the value later knows,
    to the millisecond, how much freshness is left."""
    writer = await make_tier(clocks=Clocks())
    await writer.get("k", Loader(Answer("v", ttl=123.4567)))  # fresh until …123.457
    just_before = await make_tier(clocks=Clocks(elapsed=123.4569))
    assert await just_before.get("k", never_called()) == Answer("v", ttl=123.4567)
    at_the_stamp = await make_tier(clocks=Clocks(elapsed=123.457))
    reload = Loader(Answer("new"))
    assert await at_the_stamp.get("k", reload) == Answer("new")
    assert (reload.calls, at_the_stamp.stats["l2_rejected"]) == (1, 0)


@pytest.mark.parametrize(
    "plaintext",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 7, id="short-stamp"),
        pytest.param(STAMP.pack(10**15), id="stamp-only"),
        pytest.param(stamped(WALL_START + 300, b"[junk"), id="payload-junk"),
        pytest.param(stamped(WALL_START + 300, b"[" * 1000 + b"]" * 1000), id="nested-1000"),
    ],
)
async def test_junk_entries_are_misses_never_errors(
    make_tier: TierFactory, raw_redis: Redis, plaintext: bytes
) -> None:
    """Sealed with the right key for the right Redis key, but not a value: a miss."""
    tier = await make_tier()
    await raw_redis.set(tier.shared_key("k"), sealed(plaintext, tier.shared_key("k")), ex=60)
    load = Loader(Answer("fresh"))
    assert await tier.get("k", load) == Answer("fresh")
    assert (load.calls, tier.stats["l2_rejected"]) == (1, 1)
    replica = await make_tier()  # the fresh value replaced the junk
    assert await replica.get("k", never_called()) == Answer("fresh")


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda key, genuine: os.urandom(64), id="random-bytes"),
        pytest.param(lambda key, genuine: b"", id="empty"),
        pytest.param(lambda key, genuine: genuine[:-1], id="truncated"),
        pytest.param(
            lambda key, genuine: genuine[:-1] + bytes([genuine[-1] ^ 1]), id="one-bit-flipped"
        ),
        pytest.param(
            lambda key, genuine: stamped(WALL_START + 300, POLICY.encode(Answer("planted"))),
            id="plaintext-not-sealed",
        ),
        pytest.param(
            lambda key, genuine: sealed(
                stamped(WALL_START + 300, POLICY.encode(Answer("planted"))), key, (KEY_B,)
            ),
            id="sealed-with-another-key",
        ),
        pytest.param(lambda key, genuine: None, id="moved-from-another-redis-key"),
    ],
)
async def test_a_value_the_tier_did_not_seal_for_this_key_is_a_miss(
    make_tier: TierFactory,
    raw_redis: Redis,
    forge: Callable[[str, bytes], bytes | None],
) -> None:
    tier = await make_tier()
    await tier.get("other", Loader(Answer("belongs-to-other")))
    genuine = await raw_redis.get(tier.shared_key("other"))
    assert genuine is not None
    planted = forge(tier.shared_key("k"), genuine)
    await raw_redis.set(tier.shared_key("k"), genuine if planted is None else planted, ex=60)
    reader = await make_tier()
    load = Loader(Answer("fresh"))
    assert await reader.get("k", load) == Answer("fresh")
    assert (load.calls, reader.stats["l2_rejected"], reader.stats["l2_hits"]) == (1, 1, 0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plaintext=st.binary(max_size=200),
    associated=st.binary(max_size=40),
    flip=st.integers(min_value=0),
)
def test_a_sealed_value_opens_only_unaltered_under_its_own_key(
    plaintext: bytes, associated: bytes, flip: int
) -> None:
    sealer = Sealer([KEY_A])
    blob = sealer.seal(plaintext, associated)
    assert sealer.open(blob, associated) == plaintext
    assert plaintext not in blob or len(plaintext) < 4
    altered = bytearray(blob)
    altered[flip % len(blob)] ^= 1 << (flip % 8)
    assert sealer.open(bytes(altered), associated) is None
    assert sealer.open(blob, associated + b"\x00") is None
    assert Sealer([KEY_B]).open(blob, associated) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_any_blob_opens_to_none_or_raises_nothing(blob: bytes) -> None:
    assert Sealer([KEY_A]).open(blob, b"key") is None


@pytest.mark.parametrize(
    ("writer_keys", "reader_keys", "read"),
    [
        pytest.param((KEY_A,), (KEY_B, KEY_A), True, id="old-value-read-after-rotation"),
        pytest.param((KEY_A,), (KEY_B,), False, id="old-key-dropped"),
        pytest.param((KEY_B, KEY_A), (KEY_B,), True, id="new-key-seals"),
        pytest.param((KEY_B, KEY_A), (KEY_A,), False, id="not-yet-rotated-reader"),
    ],
)
async def test_sealing_keys_rotate_first_seals_every_one_opens(
    make_tier: TierFactory,
    writer_keys: tuple[bytes, ...],
    reader_keys: tuple[bytes, ...],
    read: bool,
) -> None:
    writer = await make_tier(keys=writer_keys)
    await writer.get("k", Loader(Answer("v")))
    reader = await make_tier(keys=reader_keys)
    load = Loader(Answer("reloaded"))
    assert await reader.get("k", load) == (Answer("v") if read else Answer("reloaded"))
    assert (reader.stats["l2_hits"], reader.stats["l2_rejected"]) == (int(read), int(not read))


def test_a_shared_tier_without_a_sealer_is_refused() -> None:
    redis = RedisCache(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"), "p:")
    with pytest.raises(ValueError, match="sealer"):
        TieredCache(MemoryCache(10, 10_000), MemoryCache(10, 10_000), redis, None)


async def test_a_value_with_no_lifetime_is_not_cached(
    make_tier: TierFactory, raw_redis: Redis
) -> None:
    tier = await make_tier()
    load = Loader(Answer("v", ttl=0.0))
    await tier.get("k", load)
    await tier.get("k", load)
    assert load.calls == 2
    assert await raw_redis.exists(tier.shared_key("k")) == 0


async def test_negative_and_positive_values_live_in_separate_bounded_tiers(
    make_tier: TierFactory,
) -> None:
    tier = await make_tier(url=None, max_entries=100)
    for name in ("p1", "p2"):
        await tier.get(name, Loader(Answer(name)))
    for n in range(1000):
        await tier.get(f"junk-{n}", Loader(Answer("no", negative=True)))
    assert len(tier.cache) == 102
    for name in ("p1", "p2"):
        assert await tier.get(name, never_called()) == Answer(name)


# --- single flight and cancellation --------------------------------------------------------


async def test_200_concurrent_callers_for_one_key_share_one_load(make_tier: TierFactory) -> None:
    tier = await make_tier()
    value = Answer("v")
    load = Loader(value, delay=0.05)
    results = await asyncio.gather(*(tier.get("hot", load) for _ in range(200)))
    assert load.calls == 1
    assert all(result == value for result in results)
    # The others joined the load, or (a Redis read slower than the load) found its copy.
    joined = tier.stats["coalesced"]
    assert joined + tier.stats["l2_hits"] == 199
    assert sum(result is value for result in results) == 1 + joined


async def test_200_concurrent_callers_without_redis_all_get_the_one_loaded_object(
    make_tier: TierFactory,
) -> None:
    tier = await make_tier(url=None)
    value = Answer("v")
    load = Loader(value, delay=0.05)
    results = await asyncio.gather(*(tier.get("hot", load) for _ in range(200)))
    assert load.calls == 1
    assert all(result is value for result in results)
    assert tier.stats["coalesced"] == 199


async def test_200_distinct_keys_concurrently_load_200_times(make_tier: TierFactory) -> None:
    tier = await make_tier()
    load = Loader(Answer("v"), delay=0.02)
    names = [uuid.uuid4().hex for _ in range(200)]
    await asyncio.gather(*(tier.get(name, load) for name in names))
    assert load.calls == 200
    assert tier.stats["coalesced"] == 0


async def test_a_burst_of_concurrent_misses_is_not_treated_as_an_outage(
    make_tier: TierFactory, raw_redis: Redis
) -> None:
    # 200 writes queue for 64 connections; a generous timeout, so that only the queueing
    # is under test, not how busy the shared machine is.
    tier = await make_tier(probe_interval=5.0, timeout=2.0)
    load = Loader(Answer("v"), delay=0.02)
    names = [uuid.uuid4().hex for _ in range(200)]
    await asyncio.gather(*(tier.get(name, load) for name in names))
    shared = sum([await raw_redis.exists(tier.shared_key(name)) for name in names])
    assert (tier.redis.errors, shared) == (0, 200)


async def test_one_waiter_cancelled_does_not_cancel_the_shared_load(
    make_tier: TierFactory,
) -> None:
    tier = await make_tier()
    value = Answer("v")
    load = Loader(value, delay=0.1)
    impatient = asyncio.create_task(tier.get("k", load))
    patient = asyncio.create_task(tier.get("k", load))
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert await patient is value
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert load.calls == 1


async def test_every_waiter_cancelled_still_completes_and_caches_the_load(
    make_tier: TierFactory,
) -> None:
    tier = await make_tier()
    load = Loader(Answer("v"), delay=0.05)
    waiters = [asyncio.create_task(tier.get("k", load)) for _ in range(3)]
    await asyncio.sleep(0.01)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await asyncio.sleep(0.1)
    assert await tier.get("k", never_called()) == Answer("v")
    assert load.calls == 1


async def test_a_load_straddling_a_forget_is_returned_but_not_cached(
    make_tier: TierFactory, raw_redis: Redis
) -> None:
    tier = await make_tier()
    load = Loader(Answer("v"), delay=0.05)
    pending = asyncio.create_task(tier.get("k", load))
    await asyncio.sleep(0.01)
    assert await tier.cache.forget(b"k", tier.shared_key("k"))
    assert await pending == Answer("v")
    assert await raw_redis.exists(tier.shared_key("k")) == 0
    await tier.get("k", load)
    assert load.calls == 2


async def test_a_load_error_reaches_every_waiter_and_is_not_cached(
    make_tier: TierFactory,
) -> None:
    tier = await make_tier()
    load = Loader(ServiceUnavailable("down", reason="introspection_error"), delay=0.02)
    results = await asyncio.gather(*(tier.get("k", load) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(result, ServiceUnavailable) for result in results)
    assert (load.calls, tier.stats["load_errors"]) == (1, 1)
    with pytest.raises(ServiceUnavailable):
        await tier.get("k", load)
    assert load.calls == 2


# --- serve stale ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serve_stale", "advance", "new_replica", "served"),
    [
        pytest.param(60.0, 15.0, False, True, id="on-from-l1"),
        pytest.param(60.0, 15.0, True, True, id="on-from-l2-new-replica"),
        pytest.param(0.0, 15.0, False, False, id="off"),
        pytest.param(60.0, 71.0, False, False, id="past-the-stale-window"),
        pytest.param(60.0, 71.0, True, False, id="past-the-stale-window-from-l2"),
    ],
)
async def test_serve_stale_only_when_the_load_fails(
    make_tier: TierFactory,
    serve_stale: float,
    advance: float,
    new_replica: bool,
    served: bool,
) -> None:
    clocks = Clocks()
    tier = await make_tier(clocks=clocks, serve_stale=serve_stale)
    value = Answer("v", ttl=10.0)
    await tier.get("k", Loader(value))
    if new_replica:
        tier = await make_tier(clocks=clocks, serve_stale=serve_stale)
    clocks.elapsed = advance
    down = unavailable()
    if served:
        assert await tier.get("k", down) == value
        assert tier.stats["stale_served"] == 1
    else:
        with pytest.raises(ServiceUnavailable):
            await tier.get("k", down)
    assert down.calls == 1


async def test_a_stale_value_is_not_served_while_the_loader_works(make_tier: TierFactory) -> None:
    clocks = Clocks()
    tier = await make_tier(clocks=clocks, serve_stale=60.0)
    await tier.get("k", Loader(Answer("old", ttl=10.0)))
    clocks.elapsed = 11.0
    assert await tier.get("k", Loader(Answer("new"))) == Answer("new")


async def test_a_negative_value_is_never_served_stale(make_tier: TierFactory) -> None:
    clocks = Clocks()
    tier = await make_tier(clocks=clocks, serve_stale=60.0)
    await tier.get("k", Loader(Answer("no", ttl=5.0, negative=True)))
    clocks.elapsed = 6.0
    with pytest.raises(ServiceUnavailable):
        await tier.get("k", unavailable())


@pytest.mark.parametrize("with_redis", [False, True], ids=["l1-only", "with-redis"])
async def test_negative_values_are_still_cached_when_serve_stale_is_on(
    make_tier: TierFactory, redis_url: str, with_redis: bool
) -> None:
    tier = await make_tier(url=redis_url if with_redis else None, serve_stale=60.0)
    load = Loader(Answer("no", ttl=10.0, negative=True))
    for _ in range(3):
        await tier.get("junk", load)
    assert (load.calls, tier.stats["l1_hits"]) == (1, 2)


# --- Redis outages -------------------------------------------------------------------------


async def test_redis_killed_mid_run_then_restarted(
    make_tier: TierFactory, own_redis: RedisServer
) -> None:
    tier = await make_tier(url=own_redis.url, timeout=0.1)
    load = Loader(Answer("v"))
    await tier.get("cached", load)
    assert not tier.cache.degraded

    own_redis.stop()
    result, elapsed = await timed(tier.get("cached", never_called()))
    assert (result, elapsed < 0.1) == (Answer("v"), True)
    for _ in range(20):
        result, elapsed = await timed(tier.get(uuid.uuid4().hex, Loader(Answer("new"))))
        assert result == Answer("new")
        assert elapsed < 0.3
    assert tier.cache.degraded

    own_redis.restart()
    await asyncio.sleep(0.15)  # one probe interval: the next command is the probe
    await tier.get("after-restart", Loader(Answer("back")))
    assert not tier.cache.degraded
    client = Redis.from_url(own_redis.url)
    try:
        assert await client.exists(tier.shared_key("after-restart")) == 1
    finally:
        await client.aclose()


async def test_redis_unreachable_at_start_is_degraded_but_serving(make_tier: TierFactory) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    tier, elapsed = await timed(make_tier(url=dead, timeout=0.1))
    assert elapsed < 0.5
    assert tier.cache.degraded
    load = Loader(Answer("v"))
    for name in ("a", "b", "a"):
        assert (await timed(tier.get(name, load)))[1] < 0.3
    assert load.calls == 2


async def test_redis_cache_breaker_probes_once_per_interval() -> None:
    settings = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout=0.1)
    redis = RedisCache(settings, "p:", probe_interval=0.2)
    try:
        await redis.start()
        assert (redis.healthy, redis.commands, redis.errors) == (False, 1, 1)
        for _ in range(10):
            assert await redis.get("k") is None
        assert (redis.commands, redis.errors) == (1, 1)  # skipped, not attempted
        await asyncio.sleep(0.25)
        assert await redis.get("k") is None
        assert (redis.commands, redis.errors) == (2, 2)
    finally:
        await redis.close()


async def test_a_redis_that_accepts_but_never_answers_costs_one_timeout() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client gives up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = RedisCache(RedisSettings(url=f"redis://127.0.0.1:{port}/0", timeout=0.1), "p:")
    try:
        elapsed = (await timed(redis.start()))[1]
        # One 100 ms timeout, with slack for a loaded machine (two would be 0.2 s or more).
        assert 0.09 < elapsed < 0.5
        assert not redis.healthy
        for _ in range(5):
            assert (await timed(redis.get("k")))[1] < 0.09  # the breaker: no wait at all
        assert redis.errors == 1
    finally:
        await redis.close()
        server.close()
        await server.wait_closed()


async def test_redis_cache_uses_the_callers_keys_as_given(
    redis_url: str, raw_redis: Redis, prefix: str
) -> None:
    redis = RedisCache(RedisSettings(url=redis_url, timeout=0.5), f"{prefix}evict")
    try:
        await redis.set(prefix + "k", b"value", ttl=5.0)
        assert await raw_redis.get(prefix + "k") == b"value"
        assert await redis.get(prefix + "k") == b"value"
        assert await redis.delete(prefix + "k")
        assert await redis.get(prefix + "k") is None
        assert (redis.healthy, redis.commands, redis.errors) == (True, 4, 0)
    finally:
        await redis.close()


# --- the group index and group deletion ----------------------------------------------------


@pytest.fixture
async def redis_cache(redis_url: str, prefix: str) -> AsyncIterator[RedisCache]:
    redis = RedisCache(RedisSettings(url=redis_url, timeout=1.0), f"{prefix}evict")
    yield redis
    await redis.close()


async def test_the_group_index_trims_expired_members_on_write(
    redis_cache: RedisCache, raw_redis: Redis, prefix: str
) -> None:
    group = prefix + "sub:alice"
    for n in range(50):
        await redis_cache.set(f"{prefix}short-{n}", b"v", 0.5, group=group, group_ttl=60)
    assert await raw_redis.zcard(group) == 50
    await asyncio.sleep(0.55)
    await redis_cache.set(prefix + "long", b"v", 60, group=group, group_ttl=60)
    assert await raw_redis.zrange(group, 0, -1) == [(prefix + "long").encode()]
    assert 59_000 < await raw_redis.pttl(group) <= 60_000


async def test_the_group_index_is_capped_keeping_the_entries_expiring_last(
    redis_cache: RedisCache, raw_redis: Redis, prefix: str
) -> None:
    group = prefix + "sub:alice"
    far = round((time.time() + 3600) * 1000)
    await raw_redis.zadd(group, {f"{prefix}old-{n}": far + n for n in range(10_000)})
    await redis_cache.set(prefix + "newest", b"v", 7200, group=group, group_ttl=60)
    assert await raw_redis.zcard(group) == 10_000
    assert await raw_redis.zscore(group, prefix + "newest") is not None
    assert await raw_redis.zscore(group, f"{prefix}old-0") is None


async def fill_group(raw_redis: Redis, prefix: str, group: str, count: int) -> list[str]:
    keys = [f"{prefix}member-{n}" for n in range(count)]
    expiry = round((time.time() + 600) * 1000)
    async with raw_redis.pipeline(transaction=False) as pipe:
        for name in keys:
            pipe.set(name, b"v", ex=600)
        pipe.zadd(group, dict.fromkeys(keys, expiry))
        await pipe.execute()
    return keys


async def count_existing(raw_redis: Redis, keys: list[str]) -> int:
    async with raw_redis.pipeline(transaction=False) as pipe:
        for name in keys:
            pipe.exists(name)
        return sum(await pipe.execute())


async def test_group_deletion_deletes_every_member_in_batches(
    redis_cache: RedisCache, raw_redis: Redis, prefix: str
) -> None:
    group = prefix + "sub:alice"
    keys = await fill_group(raw_redis, prefix, group, 2_600)
    deletion = await redis_cache.delete_group(group)
    assert (deletion.deleted, deletion.complete, deletion.error) == (2_600, True, None)
    assert await count_existing(raw_redis, keys) == 0
    assert await raw_redis.exists(group) == 0


async def test_group_deletion_out_of_time_says_so_and_counts_honestly(
    redis_cache: RedisCache, raw_redis: Redis, prefix: str
) -> None:
    group = prefix + "sub:alice"
    keys = await fill_group(raw_redis, prefix, group, 5_000)
    deletion = await redis_cache.delete_group(group, budget=0.001)
    assert not deletion.complete
    assert deletion.error == "time budget exceeded"
    assert deletion.deleted < 5_000
    # Counted honestly: what it reports deleted is gone (the background may be further on).
    assert await count_existing(raw_redis, keys) <= 5_000 - deletion.deleted
    assert redis_cache.pending == 0  # not replayed ahead of request-path commands
    # The rest goes on in the background, not left to expire with the tokens.
    for _ in range(200):
        if await count_existing(raw_redis, keys) == 0:
            break
        await asyncio.sleep(0.02)
    assert await count_existing(raw_redis, keys) == 0
    assert await raw_redis.exists(group) == 0


async def test_group_deletion_with_redis_down_is_incomplete(own_redis: RedisServer) -> None:
    redis = RedisCache(RedisSettings(url=own_redis.url, timeout=0.1, admin_timeout=0.2), "p:")
    try:
        await redis.set("k", b"v", 60, group="g", group_ttl=60)
        own_redis.stop()
        deletion = await redis.delete_group("g")
        assert (deletion.complete, deletion.error) == (False, "redis unavailable")
        assert not await redis.publish({"op": "token"})
    finally:
        await redis.close()
