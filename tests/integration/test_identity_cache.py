"""``IdentityCache``'s introspection tiers against a real Redis: lifetimes capped by exp,
max_ttl and the L1 TTL; negative caching in both tiers; keys bound to the validation
context; sealed values re-checked on read; evictions reaching every replica and worker; and
negative entries that stay small and bounded.

Built as ``gateway.runtime._identity_cache`` builds it, with clocks a test can move; the
few behaviours that live in the authenticator (exp re-checked on the wall clock after stale
serving) run through ``Authenticator`` against a real introspection endpoint.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import struct
import time
import tracemalloc
import types
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.auth import identity_codec
from gateway.auth.answer_policy import still_valid, subject_hash
from gateway.auth.authenticate import Authenticator, IssuerPlan, OpaquePlan, TokenRules
from gateway.auth.contexts import ValidationContext, context_for
from gateway.auth.identity import Identity
from gateway.auth.identity_cache import IdentityCache, Value
from gateway.auth.introspection import IssuerIntrospection
from gateway.auth.rejections import Rejection
from gateway.auth.settings import CacheSettings, IssuerSettings
from gateway.cache.memory import MemoryCache
from gateway.cache.redis import RedisCache
from gateway.cache.sealing import Sealer
from gateway.cache.settings import RedisSettings
from gateway.cache.tiered import TieredCache
from gateway.problems import InvalidToken, ServiceUnavailable
from tests.support.introspection import TestIntrospectionServer
from tests.support.redis import RedisServer, free_port, redis_url_or_start
from tests.support.settings import Issuer

WALL_START = 1_700_000_000.0
ISSUER = "https://as.example/"
ORDERS, BILLING = "api://orders", "api://billing"
KEY_A, KEY_B = b"A" * 32, b"B" * 32
STAMP = struct.Struct(">Q")  # the tiered cache's freshness stamp (ms since the epoch)
HOURS = 3600.0


def issuer_settings(audiences: tuple[str, ...] = (ORDERS,), **changes: Any) -> IssuerSettings:
    fields: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": list(audiences),
        "mode": "introspection",
        "introspection": {
            "endpoint": "https://as.example/introspect",
            "client": {"client_id": "gateway", "client_secret": "gateway-secret"},
        },
        **changes,
    }
    return Issuer(**fields)


CONTEXT = context_for(issuer_settings(), "introspection")
OTHER_AUDIENCE = context_for(issuer_settings((BILLING,)), "introspection")


class RealClocks:
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


class Clocks:
    """Monotonic and wall clocks that advance together (Redis's own clock is real time)."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 50.0 + self.elapsed

    def wall(self) -> float:
        return WALL_START + self.elapsed


def identity(
    subject: str | None = "alice",
    expires_in: float | None = HOURS,
    *,
    issuer: str = ISSUER,
    audiences: tuple[str, ...] = (ORDERS,),
    claims: dict[str, Any] | None = None,
) -> Identity:
    return Identity(
        issuer=issuer,
        subject=subject,
        client_id="app",
        scopes=frozenset({"orders:read"}),
        audiences=audiences,
        expires_at=None if expires_in is None else WALL_START + expires_in,
        token_kind="opaque",
        claims=MappingProxyType(claims or {}),
    )


INACTIVE = Rejection.of("inactive", "The access token is not active.")


class Loader:
    """Counts loads; answers ``result`` (a value or an exception) after ``delay``."""

    def __init__(self, result: Value | BaseException, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> Value:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def never_called() -> Loader:
    return Loader(AssertionError("the loader must not run"))


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return f"opaque-{uuid.uuid4().hex}"


async def lookup(
    cache: IdentityCache, token: str, load: Loader, context: ValidationContext = CONTEXT
) -> Value:
    return await cache.introspected(context, digest(token), load)


def shared_key(prefix: str, token: str, context: ValidationContext = CONTEXT) -> str:
    """The documented Redis key: ``{key_prefix}{context tag hex}:{sha256 hex}``."""
    return f"{prefix}{context.tag_hex}:{hashlib.sha256(token.encode()).hexdigest()}"


def stats(cache: IdentityCache) -> dict[str, int]:
    return cache.shared.stats


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


def build(
    prefix: str,
    *,
    url: str | None,
    contexts: tuple[ValidationContext, ...] = (CONTEXT,),
    keys: tuple[bytes, ...] = (KEY_A,),
    clocks: Clocks | RealClocks | None = None,
    probe_interval: float = 0.1,
    timeout: float = 0.5,
    cluster: bool = False,
    **changes: Any,
) -> IdentityCache:
    """As ``gateway.runtime._identity_cache`` builds it (negative L1: 512 bytes an entry)."""
    settings = CacheSettings(key_prefix=prefix, **changes)
    clocks = clocks or Clocks()
    redis = sealer = None
    if url is not None:
        redis_settings = RedisSettings(
            url=url, timeout=timeout, admin_timeout=max(timeout, 1.0), cluster=cluster
        )
        redis = RedisCache(redis_settings, f"{prefix}evict", probe_interval=probe_interval)
        sealer = Sealer(keys)
    shared: TieredCache[Value] = TieredCache(
        MemoryCache(settings.l1_max_entries, settings.l1_max_bytes, clocks.monotonic),
        MemoryCache(settings.l1_max_entries, settings.l1_max_entries * 512, clocks.monotonic),
        redis,
        sealer,
        serve_stale=settings.serve_stale,
        group_ttl=settings.max_ttl + settings.serve_stale,
        clock=clocks.monotonic,
        wall=clocks.wall,
    )
    return IdentityCache(settings, shared, contexts, 1, clock=clocks.monotonic, wall=clocks.wall)


CacheFactory = Callable[..., Awaitable[IdentityCache]]


@pytest.fixture
async def make_cache(redis_url: str, prefix: str) -> AsyncIterator[CacheFactory]:
    caches: list[IdentityCache] = []

    async def make(*, url: str | None = redis_url, **options: Any) -> IdentityCache:
        cache = build(prefix, url=url, **options)
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


async def settled(cache: IdentityCache) -> None:
    """Wait for the L2 deletions a replica starts when it hears a token eviction."""
    await eventually(lambda: not cache._pending)


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


# --- hits and lifetimes --------------------------------------------------------------------


async def test_l1_hit_returns_the_loaded_identity_without_loading(make_cache: CacheFactory) -> None:
    cache = await make_cache()
    who = identity()
    load = Loader(who)
    assert await lookup(cache, "tok-1", load) is who
    assert await lookup(cache, "tok-1", load) is who
    assert load.calls == 1
    assert (stats(cache)["l1_hits"], stats(cache)["l1_misses"], stats(cache)["loads"]) == (1, 1, 1)


async def test_l2_hit_is_shared_by_a_second_instance(make_cache: CacheFactory) -> None:
    first, second = await make_cache(), await make_cache()
    who = identity()
    await lookup(first, "tok-shared", Loader(who))
    assert await lookup(second, "tok-shared", never_called()) == who
    assert await lookup(second, "tok-shared", never_called()) == who
    assert (stats(second)["l2_hits"], stats(second)["l1_hits"], stats(second)["loads"]) == (1, 1, 0)


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
    cache = await make_cache(clocks=clocks, max_ttl=300.0, l1_ttl=30.0)
    load = Loader(identity(expires_in=expires_in))
    await lookup(cache, "tok", load)
    pttl = await raw_redis.pttl(shared_key(prefix, "tok"))
    assert l2_ttl * 1000 - 1000 < pttl <= l2_ttl * 1000

    clocks.elapsed = l1_ttl - 0.01
    await lookup(cache, "tok", load)
    assert (load.calls, stats(cache)["l1_hits"]) == (1, 1)
    clocks.elapsed = l1_ttl
    await lookup(cache, "tok", load)
    if l1_ttl < l2_ttl:
        assert (load.calls, stats(cache)["l2_hits"]) == (1, 1)
        clocks.elapsed = l2_ttl - 0.01
        await lookup(cache, "tok", load)
        assert load.calls == 1
        clocks.elapsed = l2_ttl
        await lookup(cache, "tok", load)
    assert load.calls == 2


async def test_an_already_expired_identity_is_not_cached(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    cache = await make_cache()
    load = Loader(identity(expires_in=-1.0))
    await lookup(cache, "tok", load)
    await lookup(cache, "tok", load)
    assert load.calls == 2
    assert await raw_redis.exists(shared_key(prefix, "tok")) == 0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(INACTIVE, id="inactive"),
        pytest.param(
            Rejection.from_error(
                InvalidToken("The access token is not meant for us.", reason="audience")
            ),
            id="invalid-token",
        ),
    ],
)
async def test_negative_answers_are_cached_for_negative_ttl_in_both_tiers(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str, answer: Rejection
) -> None:
    clocks = Clocks()
    cache = await make_cache(clocks=clocks, negative_ttl=5.0)
    load = Loader(answer)
    assert await lookup(cache, "bad", load) is answer
    assert await lookup(cache, "bad", load) is answer
    assert load.calls == 1
    assert 4000 < await raw_redis.pttl(shared_key(prefix, "bad")) <= 5000

    other = await make_cache(clocks=clocks, negative_ttl=5.0)
    assert await lookup(other, "bad", never_called()) is answer, "interned on the way back"
    clocks.elapsed = 5.0
    assert await lookup(cache, "bad", load) is answer
    assert load.calls == 2


async def test_unavailable_is_never_cached(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    cache = await make_cache()
    load = Loader(ServiceUnavailable("down", reason="introspection_error"))
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await lookup(cache, "tok", load)
    assert (load.calls, stats(cache)["load_errors"]) == (2, 2)
    assert await raw_redis.exists(shared_key(prefix, "tok")) == 0


async def test_without_redis_l1_alone_serves(make_cache: CacheFactory) -> None:
    cache = await make_cache(url=None)
    load = Loader(identity())
    await lookup(cache, "tok", load)
    await lookup(cache, "tok", load)
    assert load.calls == 1
    assert not cache.shared.degraded


# --- keys and what Redis holds -------------------------------------------------------------


async def test_redis_keys_are_the_prefix_the_context_tag_and_the_token_hash(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    cache = await make_cache()
    await lookup(cache, "tok", Loader(identity("alice")))
    await lookup(cache, "junk", Loader(INACTIVE))
    keys = {key.decode() async for key in raw_redis.scan_iter(f"{prefix}*")}
    group = f"{prefix}sub:{hashlib.sha256(b'alice').hexdigest()}"
    assert keys == {shared_key(prefix, "tok"), shared_key(prefix, "junk"), group}
    assert group == f"{prefix}sub:{subject_hash('alice')}"
    assert await raw_redis.zrange(group, 0, -1) == [shared_key(prefix, "tok").encode()]


async def test_no_raw_token_or_identity_anywhere_in_redis(
    make_cache: CacheFactory, own_redis: RedisServer
) -> None:
    first = await make_cache(url=own_redis.url)
    second = await make_cache(url=own_redis.url)
    tokens = [f"secret-token-{uuid.uuid4().hex}" for _ in range(6)]
    answers = [identity("alice"), identity("bob"), identity(None), INACTIVE,
               identity("carol"), INACTIVE]  # fmt: skip
    for token, answer in zip(tokens, answers, strict=True):
        await lookup(first, token, Loader(answer))
        await lookup(second, token, never_called())
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
    for plaintext in (b"alice", b"bob", ISSUER.encode(), ORDERS.encode(), b"inactive"):
        assert plaintext not in dump, "values are sealed, subjects hashed"


async def _dump(client: Redis, key: bytes) -> bytes:
    kind = (await client.type(key)).decode()
    if kind == "string":
        values = [await client.get(key)]
    elif kind == "zset":
        values = list(await client.zrange(key, 0, -1))
    else:
        raise AssertionError(f"unexpected Redis type {kind} for {key!r}")
    return key + b"\n" + b"\n".join(values) + b"\n"


# --- values written into Redis by hand -----------------------------------------------------


def sealed_entry(
    redis_key: str,
    value: Value | bytes,
    *,
    fresh_for: float = 300.0,
    keys: tuple[bytes, ...] = (KEY_A,),
) -> bytes:
    """A value as a gateway holding ``keys`` would write it under ``redis_key``."""
    payload = value if isinstance(value, bytes) else identity_codec.encode(value)
    stamp = STAMP.pack(round((WALL_START + fresh_for) * 1000))
    return Sealer(keys).seal(stamp + payload, redis_key.encode())


def old_format_identity() -> bytes:
    """What the previous release wrote: ``{fresh_until} [1, issuer, …]``, unsealed."""
    fields = [1, ISSUER, "mallory", "app", ["admin"], [ORDERS], WALL_START + HOURS, "opaque", {}]
    return f"{WALL_START + 300:.3f} ".encode() + json.dumps(fields).encode()


NESTED = b"[" * 1000 + b"]" * 1000
FORGERIES: dict[str, Callable[[str], bytes]] = {
    "random-bytes": lambda key: os.urandom(100),
    "old-format-json-identity": lambda key: old_format_identity(),
    "plaintext-current-format": lambda key: (
        STAMP.pack(round((WALL_START + 300) * 1000)) + identity_codec.encode(identity("mallory"))
    ),
    "nested-json-1000": lambda key: NESTED,
    "sealed-nested-json-1000": lambda key: sealed_entry(key, NESTED),
    "sealed-old-version": lambda key: sealed_entry(key, old_format_identity()),
    "sealed-future-version": lambda key: sealed_entry(
        key, identity_codec.encode(identity("mallory")).replace(b"[2,", b"[3,", 1)
    ),
    "sealed-with-another-key": lambda key: sealed_entry(key, identity("mallory"), keys=(KEY_B,)),
    "sealed-for-another-redis-key": lambda key: sealed_entry(key + "x", identity("mallory")),
    "sealed-another-issuer": lambda key: sealed_entry(
        key, identity("mallory", issuer="https://evil.example/")
    ),
    "sealed-another-audience": lambda key: sealed_entry(
        key, identity("mallory", audiences=(BILLING,))
    ),
    "sealed-no-audience": lambda key: sealed_entry(key, identity("mallory", audiences=())),
    "sealed-expired": lambda key: sealed_entry(key, identity("mallory", expires_in=-HOURS)),
    "sealed-not-yet-valid": lambda key: sealed_entry(
        key, identity("mallory", claims={"nbf": WALL_START + HOURS})
    ),
    "sealed-no-stamp": lambda key: Sealer([KEY_A]).seal(b"", key.encode()),
}


@pytest.mark.parametrize("forge", list(FORGERIES.values()), ids=list(FORGERIES))
async def test_a_value_written_by_hand_is_a_counted_miss_never_an_identity(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str, forge: Callable[[str], bytes]
) -> None:
    """Issue 11 defect 3: Redis is outside the trust boundary. Whatever is planted under a
    token's key, the loader runs and its answer is what the caller gets."""
    cache = await make_cache()
    key = shared_key(prefix, "tok")
    await raw_redis.set(key, forge(key), ex=60)
    load = Loader(identity("alice"))
    assert await lookup(cache, "tok", load) == identity("alice")
    assert load.calls == 1
    assert (stats(cache)["l2_rejected"], stats(cache)["l2_hits"]) == (1, 0)
    other = await make_cache()  # the planted value was replaced by the loaded one
    assert await lookup(other, "tok", never_called()) == identity("alice")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="ours"),
        pytest.param({"audiences": (BILLING, ORDERS)}, id="one-of-several-audiences"),
        pytest.param({"expires_in": None}, id="no-exp"),
    ],
)
async def test_a_sealed_value_that_passes_the_recheck_is_served(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str, fields: dict[str, Any]
) -> None:
    """The control: the forgery test fails for the right reason, not because every hand
    written value is refused."""
    cache = await make_cache()
    key = shared_key(prefix, "tok")
    await raw_redis.set(key, sealed_entry(key, identity("alice", **fields)), ex=60)
    assert await lookup(cache, "tok", never_called()) == identity("alice", **fields)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    planted=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda data: ("sealed", data)),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=4), inner),
            max_leaves=20,
        ).map(lambda value: ("sealed", json.dumps(value).encode())),
    )
)
def test_any_planted_value_is_never_an_identity_and_never_an_exception(
    redis_url: str, planted: bytes | tuple[str, bytes]
) -> None:
    """Raw bytes, or any bytes and any JSON sealed with the right key for the right Redis
    key (the worst an insider with the key's help could do short of a full identity)."""

    async def check() -> None:
        prefix = f"test:{uuid.uuid4().hex[:8]}:"
        cache = build(prefix, url=redis_url)
        await cache.start()
        client = Redis.from_url(redis_url)
        try:
            key = shared_key(prefix, "tok")
            data = planted if isinstance(planted, bytes) else sealed_entry(key, planted[1])
            await client.set(key, data, ex=60)
            load = Loader(identity("alice"))
            result = await lookup(cache, "tok", load)
            if load.calls == 1:
                assert result == identity("alice")
                assert stats(cache)["l2_rejected"] == 1
            else:  # only a well-formed value of this version that passes the re-check
                assert isinstance(result, Rejection) or still_valid(result, CONTEXT, WALL_START)
        finally:
            await client.aclose()
            await cache.close()

    asyncio.run(check())


# --- contexts sharing one Redis ------------------------------------------------------------


async def test_gateways_with_different_audiences_never_read_each_others_entries(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    """Issue 11 defect 3: two gateways, one Redis, one prefix, one sealing key, different
    audiences. Neither accepts the other's answer, neither is blocked by the other's
    rejection."""
    orders = await make_cache(contexts=(CONTEXT,))
    billing = await make_cache(contexts=(OTHER_AUDIENCE,))
    assert CONTEXT.tag != OTHER_AUDIENCE.tag

    await lookup(orders, "for-orders", Loader(identity(audiences=(ORDERS,))))
    refused = Rejection.of("audience", "The access token is not meant for us.")
    load = Loader(refused)
    assert await lookup(billing, "for-orders", load, OTHER_AUDIENCE) is refused
    assert load.calls == 1

    await lookup(billing, "for-billing", Loader(INACTIVE), OTHER_AUDIENCE)
    valid = Loader(identity(audiences=(ORDERS,)))
    assert await lookup(orders, "for-billing", valid) == identity(audiences=(ORDERS,))
    assert valid.calls == 1

    for cache in (orders, billing):
        assert (stats(cache)["l2_hits"], stats(cache)["l2_rejected"]) == (0, 0)
    for token in ("for-orders", "for-billing"):
        assert await raw_redis.exists(shared_key(prefix, token, CONTEXT)) == 1
        assert await raw_redis.exists(shared_key(prefix, token, OTHER_AUDIENCE)) == 1


async def test_an_entry_copied_to_another_contexts_key_is_refused(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    orders = await make_cache(contexts=(CONTEXT,))
    billing = await make_cache(contexts=(OTHER_AUDIENCE,))
    await lookup(orders, "tok", Loader(identity(audiences=(ORDERS,))))
    genuine = await raw_redis.get(shared_key(prefix, "tok", CONTEXT))
    assert genuine is not None
    target = shared_key(prefix, "tok", OTHER_AUDIENCE)
    await raw_redis.set(target, genuine, ex=60)
    load = Loader(INACTIVE)
    assert await lookup(billing, "tok", load, OTHER_AUDIENCE) is INACTIVE
    assert (load.calls, stats(billing)["l2_rejected"]) == (1, 1)


@pytest.mark.parametrize(
    ("changes", "same"),
    [
        pytest.param({}, True, id="same-config-same-tag"),
        pytest.param({"audiences": (ORDERS, BILLING)}, False, id="audiences"),
        pytest.param({"issuer": "https://other.example/"}, False, id="issuer"),
        pytest.param({"leeway": 5.0}, False, id="leeway"),
        pytest.param(
            {
                "introspection": {
                    "endpoint": "https://as.example/other-introspect",
                    "client": {"client_id": "gateway", "client_secret": "gateway-secret"},
                }
            },
            False,
            id="endpoint",
        ),
        pytest.param(
            {
                "introspection": {
                    "endpoint": "https://as.example/introspect",
                    "client": {"client_id": "another", "client_secret": "gateway-secret"},
                }
            },
            False,
            id="client",
        ),
    ],
)
def test_the_context_tag_names_every_rule_that_decides_the_answer(
    changes: dict[str, Any], same: bool
) -> None:
    # The parameter's dict is shared by every run of the test in a process (mutmut runs it
    # again after collecting stats): read it, never pop from it.
    rest = {name: value for name, value in changes.items() if name != "audiences"}
    audiences = changes.get("audiences", (ORDERS,))
    other = context_for(issuer_settings(audiences, **rest), "introspection")
    assert (other.tag == CONTEXT.tag) is same
    assert context_for(issuer_settings(), "jwt+introspection").tag != CONTEXT.tag


# --- negative entries are small ------------------------------------------------------------


class Request:
    """Stands in for what a rejected request carried: big, and weakly referencable."""

    def __init__(self) -> None:
        self.headers = "x" * 700_000


def reachable(root: object) -> Iterator[object]:
    """Every object the cache's data reaches (not code, classes or modules)."""
    skip = (type, types.ModuleType, types.FunctionType, types.MethodType,
            types.BuiltinFunctionType, types.CodeType)  # fmt: skip
    seen = {id(root)}
    queue = deque([root])
    while queue:
        item = queue.popleft()
        yield item
        for child in gc.get_referents(item):
            if id(child) not in seen and not isinstance(child, skip):
                seen.add(id(child))
                queue.append(child)


async def test_a_negative_entry_holds_a_reason_and_nothing_of_the_request(
    make_cache: CacheFactory,
) -> None:
    """Issue 11 defect 2: the cached exception's traceback pinned the request's headers."""
    cache = await make_cache(url=None)
    seen: list[weakref.ref[Request]] = []

    async def load() -> Value:
        request = Request()
        seen.append(weakref.ref(request))
        try:
            raise InvalidToken("The access token is not active.", reason="inactive")
        except InvalidToken as error:
            return Rejection.from_error(error)

    for n in range(20):
        assert await lookup(cache, f"junk-{n}", load) is INACTIVE
    gc.collect()
    assert all(ref() is None for ref in seen), "a rejected request outlived its rejection"
    assert cache.shared.peek(CONTEXT.key(digest("junk-0"))) is INACTIVE
    kinds = (BaseException, types.TracebackType, types.FrameType, Request)
    assert not [item for item in reachable(cache) if isinstance(item, kinds)]


async def test_a_flood_of_distinct_rejections_stays_bounded_and_evicts_no_identity(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache(url=None, l1_max_entries=1000)
    hot = {f"hot-{n}": identity(f"user-{n}") for n in range(10)}
    for token, who in hot.items():
        await lookup(cache, token, Loader(who))
    refused = Loader(Rejection.of("inactive", "The access token is not active."))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(20_000):
        await lookup(cache, f"junk-{n}", refused)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert refused.calls == 20_000
    assert cache.memory_entries()["introspected"] <= 1000 + len(hot)
    assert grown < 1000 * 1024, f"{grown} bytes for at most 1,000 negative entries"
    for token, who in hot.items():
        assert await lookup(cache, token, never_called()) is who


# --- sealing key rotation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reader_keys", "read"),
    [
        pytest.param((KEY_B, KEY_A), True, id="new-key-first-old-still-opens"),
        pytest.param((KEY_B,), False, id="old-key-dropped"),
    ],
)
async def test_a_value_sealed_with_the_old_key_is_read_until_that_key_is_dropped(
    make_cache: CacheFactory, reader_keys: tuple[bytes, ...], read: bool
) -> None:
    writer = await make_cache(keys=(KEY_A,))
    await lookup(writer, "tok", Loader(identity()))
    reader = await make_cache(keys=reader_keys)
    load = Loader(identity("reloaded"))
    expected = identity() if read else identity("reloaded")
    assert await lookup(reader, "tok", load) == expected
    assert (load.calls, stats(reader)["l2_rejected"]) == (int(not read), int(not read))


# --- single flight -------------------------------------------------------------------------


async def test_200_concurrent_callers_for_one_token_share_one_load(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    who = identity()
    load = Loader(who, delay=0.05)
    results = await asyncio.gather(*(lookup(cache, "hot", load) for _ in range(200)))
    assert load.calls == 1
    assert all(result == who for result in results)
    # The others joined the load, or (a Redis read slower than the load) found its copy.
    joined = stats(cache)["coalesced"]
    assert joined + stats(cache)["l2_hits"] == 199
    assert sum(result is who for result in results) == 1 + joined


async def test_one_waiter_cancelled_does_not_cancel_the_shared_load(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    who = identity()
    load = Loader(who, delay=0.1)
    impatient = asyncio.create_task(lookup(cache, "tok", load))
    patient = asyncio.create_task(lookup(cache, "tok", load))
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert await patient is who
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert load.calls == 1


# --- through the authenticator, against a real authorization server -----------------------


@pytest.fixture
async def authorization_server() -> AsyncIterator[TestIntrospectionServer]:
    server = TestIntrospectionServer()
    server.default_fields = {"aud": ORDERS}
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def authenticator(
    server: TestIntrospectionServer,
    session: aiohttp.ClientSession,
    cache_for: Callable[..., IdentityCache],
) -> tuple[Authenticator, TokenRules]:
    settings = issuer_settings(
        introspection={
            "endpoint": server.url,
            "client": {"client_id": server.client_id, "client_secret": server.client_secret},
            "timeout": 0.5,
        },
        leeway=0,  # on real clocks: exp is the moment these tests wait for
    )
    context = context_for(settings, "introspection")
    cache = cache_for(contexts=(context,))
    introspectors = {settings.key: IssuerIntrospection(settings, session, lambda: None)}
    rules = TokenRules(jwt={}, opaque=(OpaquePlan((), IssuerPlan(context, False, True)),))
    return Authenticator(None, introspectors, cache), rules


async def test_serve_stale_never_serves_past_the_tokens_exp(
    authorization_server: TestIntrospectionServer,
    session: aiohttp.ClientSession,
    prefix: str,
) -> None:
    """On real clocks: a tier may keep a stale identity past exp, the authenticator re-checks
    exp on the wall clock before it is used (RFC 7519 §4.1.4)."""
    made: list[IdentityCache] = []

    def cache_for(**options: Any) -> IdentityCache:
        made.append(
            build(prefix, url=None, clocks=RealClocks(), max_ttl=0.3, serve_stale=60.0, **options)
        )
        return made[-1]

    auth, rules = authenticator(authorization_server, session, cache_for)
    token = new_token()
    expires = int(time.time()) + 2
    authorization_server.add_token(token, sub="alice", exp=expires)
    try:
        assert (await auth.authenticate(rules, token, digest(token))).identity.subject == "alice"
        await asyncio.sleep(0.4)  # past freshness (max_ttl 0.3 s), before exp
        authorization_server.mode = "error"
        stale = await auth.authenticate(rules, token, digest(token))
        assert stale.identity.subject == "alice"
        assert made[0].shared.stats["stale_served"] == 1

        await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
        with pytest.raises(InvalidToken) as refused:
            await auth.authenticate(rules, token, digest(token))
        assert refused.value.reason == "expired"
        assert authorization_server.calls == 3
    finally:
        await made[0].close()


async def test_an_answer_with_a_lone_surrogate_is_served_not_an_error(
    authorization_server: TestIntrospectionServer, session: aiohttp.ClientSession, prefix: str
) -> None:
    auth, rules = authenticator(
        authorization_server, session, lambda **options: build(prefix, url=None, **options)
    )
    token = new_token()
    authorization_server.add_token(token, sub="alice", name="\ud800")
    assert (await auth.authenticate(rules, token, digest(token))).identity.subject == "alice"


async def test_every_answer_the_authorization_server_may_give_is_shared(
    authorization_server: TestIntrospectionServer,
    session: aiohttp.ClientSession,
    redis_url: str,
    prefix: str,
) -> None:
    """Found while porting: an answer nested to the introspection parser's limit was cached
    one level deeper than the codec read back, so every other replica counted it as
    ``l2_rejected``, logged a tampering warning and introspected again."""
    made: list[IdentityCache] = []

    def cache_for(**options: Any) -> IdentityCache:
        made.append(build(prefix, url=redis_url, **options))
        return made[-1]

    first, rules = authenticator(authorization_server, session, cache_for)
    second, _ = authenticator(authorization_server, session, cache_for)
    for cache in made:
        await cache.start()
    deep: Any = "x"
    for _ in range(31):
        deep = [deep]
    token = new_token()
    authorization_server.add_token(token, sub="alice", deep=deep)
    try:
        await first.authenticate(rules, token, digest(token))
        await second.authenticate(rules, token, digest(token))
        assert (made[1].shared.stats["l2_rejected"], authorization_server.calls) == (0, 1)
    finally:
        for cache in made:
            await cache.close()


# --- Redis outages -------------------------------------------------------------------------


async def test_redis_killed_mid_run_then_restarted(
    make_cache: CacheFactory, own_redis: RedisServer, prefix: str
) -> None:
    cache = await make_cache(url=own_redis.url, timeout=0.1)
    who = identity()
    load = Loader(who)
    await lookup(cache, "cached", load)
    assert not cache.shared.degraded

    own_redis.stop()
    result, elapsed = await timed(lookup(cache, "cached", never_called()))
    assert (result, elapsed < 0.1) == (who, True)
    for _ in range(20):
        result, elapsed = await timed(lookup(cache, new_token(), Loader(who)))
        assert result is who
        assert elapsed < 0.3
    assert cache.shared.degraded

    own_redis.restart()
    await eventually(lambda: not cache.shared.degraded)  # by itself: no request needed
    # Evictions published while we were cut off are lost: L1 positives are dropped.
    await eventually(lambda: cache.evictions_received >= 1)
    assert await lookup(cache, "cached", load) is who
    assert load.calls == 2
    client = Redis.from_url(own_redis.url)
    try:
        assert await client.exists(shared_key(prefix, "cached")) == 1
    finally:
        await client.aclose()


async def test_redis_unreachable_at_start_is_degraded_but_serving(
    make_cache: CacheFactory,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cache, elapsed = await timed(make_cache(url=dead, timeout=0.1))
    assert elapsed < 0.5
    assert cache.shared.degraded
    load = Loader(identity())
    for token in ("a", "b", "a"):
        assert (await timed(lookup(cache, token, load)))[1] < 0.3
    assert load.calls == 2


# --- eviction across replicas and workers --------------------------------------------------


async def test_evict_token_reaches_every_replica(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    first, second = await make_cache(), await make_cache()
    who = identity()
    await lookup(first, "tok", Loader(who))
    await lookup(second, "tok", never_called())  # now in second's L1 too

    report = await first.evict_token(digest("tok"))
    assert (report.shared, report.broadcast, report.complete) == ("done", "sent", True)
    await eventually(lambda: second.evictions_received == 1)
    await settled(second)
    assert await raw_redis.exists(shared_key(prefix, "tok")) == 0
    reload = Loader(who)
    await lookup(second, "tok", reload)  # dropped from its L1 by the message
    assert reload.calls == 1
    await lookup(first, "tok", never_called())  # dropped from its L1, reloaded by second
    assert stats(first)["l2_hits"] == 1
    assert first.evictions_received == 0  # its own message is not reapplied


async def test_evict_token_reaches_a_replica_with_another_context_and_its_redis_keys(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    """A gateway cannot name another context's keys; the one that hears deletes its own."""
    orders = await make_cache(contexts=(CONTEXT,))
    billing = await make_cache(contexts=(OTHER_AUDIENCE,))
    await lookup(orders, "tok", Loader(identity(audiences=(ORDERS,))))
    await lookup(billing, "tok", Loader(identity(audiences=(BILLING,))), OTHER_AUDIENCE)
    await orders.evict_token(digest("tok"))
    await eventually(lambda: billing.evictions_received == 1)
    await settled(billing)
    assert await raw_redis.exists(shared_key(prefix, "tok", CONTEXT)) == 0
    assert await raw_redis.exists(shared_key(prefix, "tok", OTHER_AUDIENCE)) == 0
    reload = Loader(identity(audiences=(BILLING,)))
    await lookup(billing, "tok", reload, OTHER_AUDIENCE)
    assert reload.calls == 1


async def test_evict_subject_reaches_every_replica_and_redis(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    first, second = await make_cache(), await make_cache()
    answers = {"alice-1": identity("alice"), "alice-2": identity("alice"), "bob": identity("bob")}
    for token, who in answers.items():
        await lookup(first, token, Loader(who))
        await lookup(second, token, never_called())

    report = await first.evict_subject("alice")
    assert (report.local_entries, report.shared_deleted, report.shared) == (2, 2, "done")
    assert report.complete
    await eventually(lambda: second.evictions_received == 1)
    remaining = [await raw_redis.exists(shared_key(prefix, token)) for token in answers]
    assert remaining == [0, 0, 1]
    loads = {}
    for token, who in answers.items():
        load = Loader(who)
        await lookup(second, token, load)
        loads[token] = load.calls
    assert loads == {"alice-1": 1, "alice-2": 1, "bob": 0}
    hits_before = stats(first)["l1_hits"]
    for token in answers:
        await lookup(first, token, never_called())
    assert (stats(first)["l2_hits"], stats(first)["l1_hits"] - hits_before) == (2, 1)


async def test_evict_subject_with_thousands_of_entries_reports_what_it_did(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    cache = await make_cache()
    tokens = [f"alice-{n}" for n in range(3_000)]
    for token in tokens:
        await lookup(cache, token, Loader(identity("alice")))
    report = await cache.evict_subject("alice")
    assert (report.shared_deleted, report.shared, report.complete) == (3_000, "done", True)
    assert report.local_entries == 3_000
    assert not [key async for key in raw_redis.scan_iter(f"{prefix}{CONTEXT.tag_hex}:*")]


async def test_evict_subject_with_redis_down_says_it_is_incomplete(
    make_cache: CacheFactory, own_redis: RedisServer
) -> None:
    cache = await make_cache(url=own_redis.url, timeout=0.1)
    await lookup(cache, "tok", Loader(identity("alice")))
    own_redis.stop()
    report = await cache.evict_subject("alice")
    assert not report.complete
    assert (report.local_entries, report.shared, report.broadcast) == (1, "incomplete", "failed")
    assert report.errors == ["shared cache: redis unavailable"]
    token_report = await cache.evict_token(digest("tok"))
    assert (token_report.shared, token_report.complete) == ("failed", False)


async def test_the_subject_index_only_holds_entries_that_have_not_expired(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    """Issue 11 defect 6: the index grew forever. Now expired members go on each write."""
    cache = await make_cache()
    group = f"{prefix}sub:{subject_hash('alice')}"
    for n in range(50):
        await lookup(cache, f"short-{n}", Loader(identity("alice", expires_in=0.5)))
    assert await raw_redis.zcard(group) == 50
    await asyncio.sleep(0.55)
    await lookup(cache, "long", Loader(identity("alice")))
    assert await raw_redis.zcard(group) == 1


@pytest.mark.parametrize(
    "evict",
    [
        pytest.param(lambda cache: cache.evict_token(digest("tok")), id="token"),
        pytest.param(lambda cache: cache.evict_subject("alice"), id="subject"),
    ],
)
async def test_a_load_straddling_an_eviction_is_returned_but_not_cached(
    make_cache: CacheFactory,
    raw_redis: Redis,
    prefix: str,
    evict: Callable[[IdentityCache], Awaitable[Any]],
) -> None:
    cache = await make_cache()
    load = Loader(identity("alice"), delay=0.05)
    pending = asyncio.create_task(lookup(cache, "tok", load))
    await asyncio.sleep(0.01)
    await evict(cache)
    assert await pending == identity("alice")
    assert await raw_redis.exists(shared_key(prefix, "tok")) == 0
    await lookup(cache, "tok", load)
    assert load.calls == 2


async def test_malformed_eviction_messages_are_ignored(
    make_cache: CacheFactory, raw_redis: Redis, prefix: str
) -> None:
    cache = await make_cache()
    await lookup(cache, "tok", Loader(identity()))
    junk = [
        b"not json", b"[1]", b"\xff\xfe", b"[" * 1000 + b"]" * 1000, b"{" + b" " * 5000 + b"}",
        b'{"op":"token","digest":"zz"}', b'{"op":"token","digest":"abcd"}',
        b'{"op":"token","digest":5}', b'{"op":"subject","subject_sha256":["x"]}',
        b'{"op":"nope"}', b'{"op":{"nested":{"deeper":1}}}',
    ]  # fmt: skip
    for payload in junk:
        await raw_redis.publish(f"{prefix}evict", payload)
    valid = json.dumps({"op": "token", "digest": digest("x").hex()})
    await raw_redis.publish(f"{prefix}evict", valid)
    await eventually(lambda: cache.evictions_received == 1)
    assert await lookup(cache, "tok", never_called()) == identity()


message_values = st.none() | st.booleans() | st.integers() | st.text(max_size=70)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["op", "digest", "subject_sha256", "origin", "x"]),
        st.sampled_from(["token", "subject", "resync"]) | message_values | st.lists(message_values),
    )
)
def test_receive_never_raises_on_any_message(message: dict[str, Any]) -> None:
    cache = build("p:", url=None)
    before = cache.evictions_received
    cache.receive(message)
    assert cache.evictions_received - before in (0, 1)


async def test_an_eviction_reaches_every_worker_without_redis(make_cache: CacheFactory) -> None:
    """Issue 11 defect 7: with ``--workers 2`` and no Redis, the supervisor relays."""
    first, second = await make_cache(url=None), await make_cache(url=None)
    first.add_relay(second.receive)
    second.add_relay(first.receive)
    for cache in (first, second):
        await lookup(cache, "tok", Loader(identity("alice")))
        await lookup(cache, "tok-2", Loader(identity("alice")))
    report = await first.evict_token(digest("tok"))
    assert (report.workers, report.broadcast, report.complete) == ("sent", "none", True)
    assert (first.evictions_received, second.evictions_received) == (0, 1)
    reload = Loader(identity("alice"))
    await lookup(second, "tok", reload)
    assert reload.calls == 1
    await second.evict_subject("alice")
    assert first.evictions_received == 1
    await lookup(first, "tok-2", reload)
    assert reload.calls == 2


async def test_an_eviction_whose_worker_relay_failed_is_not_complete(
    make_cache: CacheFactory,
) -> None:
    """Found while porting: a failed relay was only an entry in ``errors``, and the admin
    answered 200 while the other workers kept the revoked token."""
    cache = await make_cache(url=None)

    def broken(message: dict[str, Any]) -> None:
        raise BrokenPipeError("the supervisor went away")

    cache.add_relay(broken)
    report = await cache.evict_token(digest("tok"))
    assert (report.workers, report.errors) == ("failed", ["worker relay failed"])
    assert not report.complete
    assert not (await cache.evict_subject("alice")).complete


async def test_evict_token_counts_the_introspected_entry_it_dropped(
    make_cache: CacheFactory,
) -> None:
    """Found while porting: only the verified-JWT tier was counted (evict_subject counted
    both)."""
    cache = await make_cache(url=None)
    await lookup(cache, "tok", Loader(identity("alice")))
    await lookup(cache, "junk", Loader(INACTIVE))
    assert (await cache.evict_token(digest("tok"))).local_entries == 1
    assert (await cache.evict_token(digest("tok"))).local_entries == 0


async def test_cluster_mode_shares_entries_and_evicts_across_hash_slots(
    make_cache: CacheFactory,
) -> None:
    with RedisServer(cluster=True) as server:
        first = await make_cache(url=server.url, cluster=True)
        second = await make_cache(url=server.url, cluster=True)
        answers = {f"alice-{i}": identity("alice") for i in range(5)}  # spread over slots
        for token, who in answers.items():
            await lookup(first, token, Loader(who))
            assert await lookup(second, token, never_called()) == who

        report = await first.evict_subject("alice")
        assert (report.shared_deleted, report.complete) == (5, True)
        await eventually(lambda: second.evictions_received == 1)
        load = Loader(identity("alice"))
        for token in answers:
            await lookup(second, token, load)
        assert load.calls == 5

        token_report = await second.evict_token(digest("alice-0"))
        assert (token_report.shared, token_report.broadcast) == ("done", "sent")
        await eventually(lambda: first.evictions_received == 1)
        assert not (first.shared.degraded or second.shared.degraded)
