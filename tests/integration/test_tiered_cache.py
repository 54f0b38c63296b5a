"""The two-tier introspection cache against a real Redis: hits, lifetimes, single flight,
Redis outages, eviction across replicas over pub/sub, and no raw token ever in Redis."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.auth.identity import Identity
from gateway.cache.redis import RedisCache
from gateway.cache.tiered import TieredCache
from gateway.config.models import IntrospectionCache, L1Cache, RedisConfig
from gateway.problems import InvalidToken, ServiceUnavailable
from tests.support.redis import RedisServer, free_port, redis_url_or_start

WALL_START = 1_700_000_000.0
ISSUER = "https://as.example/"


class Clocks:
    """Monotonic and wall clocks that advance together (Redis's own clock is real time)."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 50.0 + self.elapsed

    def wall(self) -> float:
        return WALL_START + self.elapsed


def identity(subject: str | None = "alice", expires_in: float | None = 3600.0) -> Identity:
    return Identity(
        issuer=ISSUER,
        subject=subject,
        client_id="app",
        scopes=frozenset({"orders:read"}),
        audiences=("api://orders",),
        expires_at=None if expires_in is None else WALL_START + expires_in,
        token_kind="opaque",
    )


class Loader:
    """Counts loads; answers ``result`` (an Identity, None, or an exception) after ``delay``."""

    def __init__(self, result: Identity | BaseException | None, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> Identity | None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def never_called() -> Loader:
    return Loader(AssertionError("the loader must not run"))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return f"opaque-{uuid.uuid4().hex}"


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


CacheFactory = Callable[..., Awaitable[TieredCache]]


@pytest.fixture
async def make_cache(redis_url: str, prefix: str) -> AsyncIterator[CacheFactory]:
    caches: list[TieredCache] = []

    async def make(
        *,
        url: str | None = redis_url,
        clocks: Clocks | None = None,
        probe_interval: float = 0.1,
        timeout: float = 0.5,
        cluster: bool = False,
        **settings: Any,
    ) -> TieredCache:
        config = IntrospectionCache(key_prefix=prefix, **settings)
        redis = None
        if url is not None:
            redis_config = RedisConfig(url=url, timeout=timeout, cluster=cluster)
            redis = RedisCache(redis_config, prefix, probe_interval=probe_interval)
        clocks = clocks or Clocks()
        cache = TieredCache(config, redis, clock=clocks.monotonic, wall=clocks.wall)
        await cache.start()
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- hits and lifetimes --------------------------------------------------------------------


async def test_l1_hit_returns_the_loaded_identity_without_loading(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    who = identity()
    load = Loader(who)
    assert await cache.get_or_load("tok-1", load) is who
    assert await cache.get_or_load("tok-1", load) is who
    assert load.calls == 1
    assert (cache.stats["l1_hits"], cache.stats["l1_misses"], cache.stats["loads"]) == (1, 1, 1)


async def test_l2_hit_is_shared_by_a_second_instance(make_cache: CacheFactory) -> None:
    first, second = await make_cache(), await make_cache()
    who = identity()
    await first.get_or_load("tok-shared", Loader(who))
    assert await second.get_or_load("tok-shared", never_called()) == who
    assert await second.get_or_load("tok-shared", never_called()) == who
    assert (second.stats["l2_hits"], second.stats["l1_hits"], second.stats["loads"]) == (1, 1, 0)


@pytest.mark.parametrize(
    ("expires_in", "l1_ttl", "l2_ttl"),
    [
        pytest.param(10.0, 10.0, 10.0, id="exp-sooner-than-every-cap"),
        pytest.param(60.0, 30.0, 60.0, id="l1-capped-then-l2-until-exp"),
        pytest.param(None, 30.0, 300.0, id="no-exp-gets-max-ttl"),
        pytest.param(1000.0, 30.0, 300.0, id="max-ttl-caps-long-exp"),
    ],
)
async def test_lifetimes_are_capped_by_exp_max_ttl_and_l1_ttl(
    make_cache: CacheFactory,
    raw_redis: Redis,
    prefix: str,
    expires_in: float | None,
    l1_ttl: float,
    l2_ttl: float,
) -> None:
    clocks = Clocks()
    cache = await make_cache(clocks=clocks, max_ttl=300.0, l1=L1Cache(ttl=30.0))
    load = Loader(identity(expires_in=expires_in))
    await cache.get_or_load("tok", load)
    pttl = await raw_redis.pttl(prefix + digest("tok"))
    assert l2_ttl * 1000 - 1000 < pttl <= l2_ttl * 1000

    clocks.elapsed = l1_ttl - 0.01
    await cache.get_or_load("tok", load)
    assert (load.calls, cache.stats["l1_hits"]) == (1, 1)
    clocks.elapsed = l1_ttl
    await cache.get_or_load("tok", load)
    if l1_ttl < l2_ttl:
        assert (load.calls, cache.stats["l2_hits"]) == (1, 1)
        clocks.elapsed = l2_ttl - 0.01
        await cache.get_or_load("tok", load)
        assert load.calls == 1
        clocks.elapsed = l2_ttl
        await cache.get_or_load("tok", load)
    assert load.calls == 2


async def test_an_already_expired_identity_is_not_cached(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    cache = await make_cache(clocks=Clocks())
    load = Loader(identity(expires_in=-1.0))
    await cache.get_or_load("tok", load)
    await cache.get_or_load("tok", load)
    assert load.calls == 2
    assert await raw_redis.exists(prefix + digest("tok")) == 0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(None, id="inactive"),
        pytest.param(InvalidToken("aud mismatch", reason="audience"), id="invalid-token"),
    ],
)
async def test_negative_answers_are_cached_for_negative_ttl_in_both_tiers(
    make_cache: CacheFactory,
    raw_redis: Redis,
    prefix: str,
    answer: InvalidToken | None,
) -> None:
    clocks = Clocks()
    cache = await make_cache(clocks=clocks, negative_ttl=5.0)
    load = Loader(answer)
    if answer is None:
        assert await cache.get_or_load("bad", load) is None
    else:
        with pytest.raises(InvalidToken):
            await cache.get_or_load("bad", load)
    assert await cache.get_or_load("bad", load) is None
    assert load.calls == 1
    assert 4000 < await raw_redis.pttl(prefix + digest("bad")) <= 5000

    other = await make_cache(clocks=clocks, negative_ttl=5.0)
    assert await other.get_or_load("bad", never_called()) is None
    clocks.elapsed = 5.0
    with suppress(InvalidToken):
        assert await cache.get_or_load("bad", load) is None
    assert load.calls == 2


async def test_unavailable_is_never_cached(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    load = Loader(ServiceUnavailable("down", reason="introspection_error"))
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await cache.get_or_load("tok", load)
    assert (load.calls, cache.stats["load_errors"]) == (2, 2)


async def test_without_redis_l1_alone_serves(make_cache: CacheFactory) -> None:
    cache = await make_cache(url=None)
    load = Loader(identity())
    await cache.get_or_load("tok", load)
    await cache.get_or_load("tok", load)
    assert load.calls == 1
    assert not cache.degraded


# --- single flight and cancellation --------------------------------------------------------


async def test_200_concurrent_callers_for_one_token_share_one_load(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    who = identity()
    load = Loader(who, delay=0.05)
    results = await asyncio.gather(*(cache.get_or_load("hot", load) for _ in range(200)))
    assert load.calls == 1
    assert all(result is who for result in results)
    assert cache.stats["coalesced"] == 199


async def test_200_distinct_tokens_concurrently_load_200_times(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    load = Loader(identity(), delay=0.02)
    tokens = [new_token() for _ in range(200)]
    await asyncio.gather(*(cache.get_or_load(token, load) for token in tokens))
    assert load.calls == 200
    assert cache.stats["coalesced"] == 0


async def test_one_waiter_cancelled_does_not_cancel_the_shared_load(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    who = identity()
    load = Loader(who, delay=0.1)
    impatient = asyncio.create_task(cache.get_or_load("tok", load))
    patient = asyncio.create_task(cache.get_or_load("tok", load))
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert await patient is who
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert load.calls == 1


async def test_every_waiter_cancelled_still_completes_and_caches_the_load(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    load = Loader(identity(), delay=0.05)
    waiters = [asyncio.create_task(cache.get_or_load("tok", load)) for _ in range(3)]
    await asyncio.sleep(0.01)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await asyncio.sleep(0.1)
    assert await cache.get_or_load("tok", never_called()) == identity()
    assert load.calls == 1


# --- serve stale ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serve_stale", "expires_in", "advance", "fresh_l1", "served"),
    [
        pytest.param(60.0, 3600.0, 15.0, False, True, id="on-from-l1"),
        pytest.param(60.0, 3600.0, 15.0, True, True, id="on-from-l2-new-replica"),
        pytest.param(0.0, 3600.0, 15.0, False, False, id="off"),
        pytest.param(60.0, 3600.0, 71.0, False, False, id="past-the-stale-window"),
        pytest.param(60.0, 12.0, 13.0, False, False, id="never-past-the-token-exp"),
    ],
)
async def test_serve_stale_only_when_load_is_unavailable(
    make_cache: CacheFactory,
    serve_stale: float,
    expires_in: float,
    advance: float,
    fresh_l1: bool,
    served: bool,
) -> None:
    clocks = Clocks()
    settings = {"clocks": clocks, "max_ttl": 10.0, "serve_stale": serve_stale}
    cache = await make_cache(**settings)
    who = identity(expires_in=expires_in)
    await cache.get_or_load("tok", Loader(who))
    if fresh_l1:
        cache = await make_cache(**settings)
    clocks.elapsed = advance
    down = Loader(ServiceUnavailable("down", reason="introspection_error"))
    if served:
        assert await cache.get_or_load("tok", down) == who
        assert cache.stats["stale_served"] == 1
    else:
        with pytest.raises(ServiceUnavailable):
            await cache.get_or_load("tok", down)
    assert down.calls == 1


async def test_a_stale_entry_is_not_served_while_the_loader_works(
    make_cache: CacheFactory,
) -> None:
    clocks = Clocks()
    cache = await make_cache(clocks=clocks, max_ttl=10.0, serve_stale=60.0)
    await cache.get_or_load("tok", Loader(identity(subject="old")))
    clocks.elapsed = 11.0
    fresh = identity(subject="new")
    assert await cache.get_or_load("tok", Loader(fresh)) == fresh


# --- Redis outages -------------------------------------------------------------------------


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


async def test_redis_killed_mid_run_then_restarted(
    make_cache: CacheFactory, own_redis: RedisServer, prefix: str
) -> None:
    cache = await make_cache(url=own_redis.url, timeout=0.1)
    who = identity()
    load = Loader(who)
    await cache.get_or_load("cached", load)
    assert not cache.degraded

    own_redis.stop()
    result, elapsed = await timed(cache.get_or_load("cached", never_called()))
    assert (result, elapsed < 0.1) == (who, True)
    for _ in range(20):
        result, elapsed = await timed(cache.get_or_load(new_token(), Loader(who)))
        assert result is who
        assert elapsed < 0.3
    assert cache.degraded

    own_redis.restart()
    await eventually(lambda: not cache.degraded)  # by itself: no request needed
    # Evictions published while we were cut off are lost: L1 positives are dropped.
    await eventually(lambda: cache.stats["evictions_received"] >= 1)
    assert await cache.get_or_load("cached", load) is who
    assert load.calls == 2
    client = Redis.from_url(own_redis.url)
    try:
        assert await client.exists(prefix + digest("cached")) == 1
    finally:
        await client.aclose()


async def test_redis_unreachable_at_start_is_degraded_but_serving(
    make_cache: CacheFactory,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cache, elapsed = await timed(make_cache(url=dead, timeout=0.1))
    assert elapsed < 0.5
    assert cache.degraded
    load = Loader(identity())
    for token in ("a", "b", "a"):
        assert (await timed(cache.get_or_load(token, load)))[1] < 0.3
    assert load.calls == 2


async def test_redis_cache_breaker_probes_once_per_interval() -> None:
    redis = RedisCache(
        RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", timeout=0.1), "p:", probe_interval=0.2
    )
    try:
        await redis.start()
        assert (redis.healthy, redis.commands, redis.errors) == (False, 1, 1)
        for _ in range(10):
            assert await redis.get(b"k") is None
        assert (redis.commands, redis.errors) == (1, 1)  # skipped, not attempted
        await asyncio.sleep(0.25)
        assert await redis.get(b"k") is None
        assert (redis.commands, redis.errors) == (2, 2)
    finally:
        await redis.close()


async def test_a_redis_that_accepts_but_never_answers_costs_one_timeout() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client gives up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = RedisCache(RedisConfig(url=f"redis://127.0.0.1:{port}/0", timeout=0.1), "p:")
    try:
        elapsed = (await timed(redis.start()))[1]
        assert 0.09 < elapsed < 0.2
        assert not redis.healthy
        for _ in range(5):
            assert (await timed(redis.get(b"k")))[1] < 0.2
        assert redis.errors == 1
    finally:
        await redis.close()
        server.close()
        await server.wait_closed()


async def test_redis_cache_keys_are_prefixed_hashes(
    redis_url: str, raw_redis: Redis, prefix: str
) -> None:
    redis = RedisCache(RedisConfig(url=redis_url, timeout=0.5), prefix)
    key = hashlib.sha256(b"tok").digest()
    try:
        await redis.set(key, b"value", ttl=5.0)
        assert await raw_redis.get(prefix + digest("tok")) == b"value"
        assert await redis.get(key) == b"value"
        await redis.delete(key)
        assert await redis.get(key) is None
        assert (redis.healthy, redis.commands, redis.errors) == (True, 4, 0)
    finally:
        await redis.close()


# --- eviction across replicas --------------------------------------------------------------


async def test_evict_token_reaches_every_replica(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    first, second = await make_cache(), await make_cache()
    who = identity()
    await first.get_or_load("tok", Loader(who))
    await second.get_or_load("tok", never_called())  # now in second's L1 too

    await first.evict_token(digest("tok"))
    await eventually(lambda: second.stats["evictions_received"] == 1)
    assert await raw_redis.exists(prefix + digest("tok")) == 0
    reload = Loader(who)
    await second.get_or_load("tok", reload)  # dropped from its L1 by the message
    assert reload.calls == 1
    await first.get_or_load("tok", never_called())  # dropped from its L1, reloaded by second
    assert first.stats["l2_hits"] == 1
    assert first.stats["evictions_received"] == 0  # its own message is not reapplied


async def test_evict_subject_reaches_every_replica_and_redis(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    first, second = await make_cache(), await make_cache()
    answers = {"alice-1": identity("alice"), "alice-2": identity("alice"), "bob": identity("bob")}
    for token, who in answers.items():
        await first.get_or_load(token, Loader(who))
        await second.get_or_load(token, never_called())

    assert await first.evict_subject("alice") == 2
    await eventually(lambda: second.stats["evictions_received"] == 1)
    remaining = [await raw_redis.exists(prefix + digest(token)) for token in answers]
    assert remaining == [0, 0, 1]
    loads = {}
    for token, who in answers.items():
        load = Loader(who)
        await second.get_or_load(token, load)
        loads[token] = load.calls
    assert loads == {"alice-1": 1, "alice-2": 1, "bob": 0}
    hits_before = first.stats["l1_hits"]
    for token in answers:
        await first.get_or_load(token, never_called())
    assert (first.stats["l2_hits"], first.stats["l1_hits"] - hits_before) == (2, 1)


@pytest.mark.parametrize(
    "evict",
    [
        pytest.param(lambda cache: cache.evict_token(digest("tok")), id="token"),
        pytest.param(lambda cache: cache.evict_subject("alice"), id="subject"),
    ],
)
async def test_a_load_straddling_an_eviction_is_returned_but_not_cached(
    make_cache: CacheFactory, evict: Callable[[TieredCache], Awaitable[Any]]
) -> None:
    cache = await make_cache()
    load = Loader(identity("alice"), delay=0.05)
    pending = asyncio.create_task(cache.get_or_load("tok", load))
    await asyncio.sleep(0.01)
    await evict(cache)
    assert await pending == identity("alice")
    await cache.get_or_load("tok", load)
    assert load.calls == 2


async def test_malformed_eviction_messages_are_ignored(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    cache = await make_cache()
    await cache.get_or_load("tok", Loader(identity()))
    for payload in (b"not json", b"[1]", b'{"op":"token","key":"zz"}', b'{"op":"nope"}'):
        await raw_redis.publish(f"{prefix}evict", payload)
    await raw_redis.publish(f"{prefix}evict", b'{"op":"token","key":"%s"}' % digest("x").encode())
    await eventually(lambda: cache.stats["evictions_received"] == 1)
    assert await cache.get_or_load("tok", never_called()) == identity()


async def test_cluster_mode_shares_entries_and_evicts_across_hash_slots(
    make_cache: CacheFactory, prefix: str
) -> None:
    with RedisServer(cluster=True) as server:
        first = await make_cache(url=server.url, cluster=True)
        second = await make_cache(url=server.url, cluster=True)
        answers = {f"alice-{i}": identity("alice") for i in range(5)}  # spread over slots
        for token, who in answers.items():
            await first.get_or_load(token, Loader(who))
            assert await second.get_or_load(token, never_called()) == who

        assert await first.evict_subject("alice") == 5
        await eventually(lambda: second.stats["evictions_received"] == 1)
        load = Loader(identity("alice"))
        for token in answers:
            await second.get_or_load(token, load)
        assert load.calls == 5
        assert not (first.degraded or second.degraded)


# --- nothing secret in Redis ---------------------------------------------------------------


async def test_no_raw_token_anywhere_in_redis(
    make_cache: CacheFactory, own_redis: RedisServer
) -> None:
    first = await make_cache(url=own_redis.url)
    second = await make_cache(url=own_redis.url)
    tokens = [f"secret-token-{uuid.uuid4().hex}" for _ in range(6)]
    answers = [identity("alice"), identity("bob"), identity(None), None, identity("carol"), None]
    for token, answer in zip(tokens, answers, strict=True):
        await first.get_or_load(token, Loader(answer))
        await second.get_or_load(token, never_called())
    await first.evict_token(digest(tokens[0]))
    await second.evict_subject("carol")

    client = Redis.from_url(own_redis.url)
    try:
        dump = b"".join([await _dump(client, key) async for key in client.scan_iter()])
    finally:
        await client.aclose()
    assert dump, "the run should have left entries behind"
    for token in tokens:
        assert token.encode() not in dump
        assert token.removeprefix("secret-token-").encode() not in dump


async def _dump(client: Redis, key: bytes) -> bytes:
    kind = (await client.type(key)).decode()
    if kind == "string":
        values = [await client.get(key)]
    elif kind == "set":
        values = list(await client.smembers(key))
    else:
        raise AssertionError(f"unexpected Redis type {kind} for {key!r}")
    return key + b"\n" + b"\n".join(values) + b"\n"
