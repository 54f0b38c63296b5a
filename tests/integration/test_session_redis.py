"""The server-side session store against a real Redis: only a random id in the cookie, only
sealed values under hashed keys in Redis, rotation at login, timeouts, back-channel logout
through the sid/sub indexes on every replica, revocations and jti replay shared by replicas,
and a Redis outage failing closed."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from gateway.auth.sessions.cookies import CookiePolicy
from gateway.auth.sessions.errors import LogoutTokenInvalid
from gateway.auth.sessions.logout import LogoutRequest, check_replay, refuse_replay
from gateway.auth.sessions.redis_store import (
    MAX_SESSIONS_PER_INDEX,
    RedisReplayGuard,
    RedisRevocations,
    RedisSessionStore,
    redis_client,
)
from gateway.auth.sessions.sealing import Sealer
from gateway.auth.sessions.store import CookieSessionStore, Lifetimes
from gateway.problems import ServiceUnavailable
from tests.support.redis import RedisServer, redis_url_or_start
from tests.support.sessions import ISSUER, SECRET, Browser, make_session

LIFETIMES = Lifetimes(idle=3600, absolute=43200)
POLICY = CookiePolicy("gw", secure=True)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_url_or_start() as url:
        yield url


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def replicas(redis_url: str, prefix: str) -> AsyncIterator[list[RedisSessionStore]]:
    """Two gateway replicas' stores, each with its own client, sharing one Redis."""
    clients = [redis_client(redis_url, 1.0) for _ in range(2)]
    yield [
        RedisSessionStore(
            client, POLICY, Sealer([SECRET]), LIFETIMES, key_prefix=prefix, timeout=1.0
        )
        for client in clients
    ]
    for client in clients:
        await client.aclose()


async def dump(raw: Redis, prefix: str) -> dict[bytes, bytes]:
    values: dict[bytes, bytes] = {}
    async for key in raw.scan_iter(match=prefix + "*"):
        if await raw.type(key) == b"string":
            values[key] = await raw.get(key)
        else:
            values[key] = b" ".join(await raw.zrange(key, 0, -1))
    return values


async def test_the_cookie_holds_only_a_random_id_and_redis_only_sealed_values(
    replicas: list[RedisSessionStore], raw: Redis, prefix: str
) -> None:
    store, now, browser = replicas[0], time.time(), Browser()
    session = make_session(now=now)
    browser.receive(await store.create(session, None, now))
    session_id = browser.jar["__Host-gw"]
    assert len(session_id) == 43
    stored = await dump(raw, prefix)
    key = f"{prefix}s:{hashlib.sha256(session_id.encode()).hexdigest()}".encode()
    assert key in stored
    everything = b" ".join(list(stored) + list(stored.values()))
    for secret in (
        session_id,
        session.access_token,
        session.refresh_token,
        session.id_token,
        session.handle,
        "alice",
    ):
        assert secret.encode() not in everything, secret
    ttl = await raw.pttl(key)
    assert 43_190_000 < ttl <= 43_200_000  # the absolute timeout


async def test_another_replica_reads_the_session(replicas: list[RedisSessionStore]) -> None:
    now, browser = time.time(), Browser()
    session = make_session(now=now)
    browser.receive(await replicas[0].create(session, None, now))
    loaded = await replicas[1].load(browser.cookie_header(), now)
    assert loaded.session == session


async def test_a_login_rotates_the_id_and_ends_the_previous_session(
    replicas: list[RedisSessionStore],
) -> None:
    store, now, browser = replicas[0], time.time(), Browser()
    browser.receive(await store.create(make_session(now=now), None, now))
    old_cookie = browser.cookie_header()
    previous = await store.load(old_cookie, now)
    browser.receive(await store.create(make_session(now=now + 1), previous, now + 1))
    assert browser.cookie_header() != old_cookie
    assert (await store.load(old_cookie, now + 2)).problem == "unknown_session"
    assert (await store.load(browser.cookie_header(), now + 2)).session is not None


@pytest.mark.parametrize(
    "cookie",
    ["__Host-gw=short", "__Host-gw=" + "A" * 43, "__Host-gw.0=1.abcdef.x", "__Host-gw=" + "!" * 43],
)
async def test_an_unknown_or_malformed_id_is_no_session(
    replicas: list[RedisSessionStore], cookie: str
) -> None:
    loaded = await replicas[0].load([cookie], time.time())
    assert loaded.session is None and loaded.problem in {"unknown_session", "malformed_id"}


async def test_a_value_moved_to_another_sessions_key_does_not_open(
    replicas: list[RedisSessionStore], raw: Redis, prefix: str
) -> None:
    store, now = replicas[0], time.time()
    mallory, alice = Browser(), Browser()
    mallory.receive(await store.create(make_session(now=now, subject="mallory"), None, now))
    alice.receive(await store.create(make_session(now=now, subject="alice"), None, now))

    def key(browser: Browser) -> str:
        return f"{prefix}s:{hashlib.sha256(browser.jar['__Host-gw'].encode()).hexdigest()}"

    # Someone with write access to Redis copies alice's sealed value under mallory's key.
    await raw.set(key(mallory), await raw.get(key(alice)))
    assert (await store.load(mallory.cookie_header(), now)).problem == "tampered"
    await raw.set(key(alice), b"garbage")
    assert (await store.load(alice.cookie_header(), now)).problem == "malformed"


async def test_idle_sessions_end_and_touches_keep_them(replicas: list[RedisSessionStore]) -> None:
    store, now, browser = replicas[0], time.time(), Browser()
    session = make_session(now=now)
    browser.receive(await store.create(session, None, now))
    loaded = await store.load(browser.cookie_header(), now + 3000)
    assert loaded.session is not None
    assert await store.update(loaded.session.touched(now + 3000), loaded, now + 3000) == []
    assert (await store.load(browser.cookie_header(), now + 6000)).session is not None
    assert (await store.load(browser.cookie_header(), now + 6600 + 1)).problem == "idle"


async def test_an_update_never_resurrects_a_deleted_session(
    replicas: list[RedisSessionStore],
) -> None:
    store, now, browser = replicas[0], time.time(), Browser()
    browser.receive(await store.create(make_session(now=now), None, now))
    loaded = await store.load(browser.cookie_header(), now)
    assert loaded.session is not None
    await replicas[1].end_sessions(ISSUER, sid="op-1", subject=None, now=now)
    cleared = await store.update(loaded.session.touched(now + 1), loaded, now + 1)
    browser.receive(cleared)
    assert browser.jar == {}
    assert (await store.load(loaded_cookie(loaded.session_id), now + 2)).problem == (
        "unknown_session"
    )


def loaded_cookie(session_id: str | None) -> list[str]:
    return [f"__Host-gw={session_id}"]


async def test_logout_deletes_the_session_and_clears_the_cookie(
    replicas: list[RedisSessionStore], raw: Redis, prefix: str
) -> None:
    store, now, browser = replicas[0], time.time(), Browser()
    browser.receive(await store.create(make_session(now=now), None, now))
    cookie = browser.cookie_header()
    browser.receive(await store.delete(await store.load(cookie, now)))
    assert browser.jar == {}
    assert (await replicas[1].load(cookie, now)).problem == "unknown_session"
    assert not [k for k in await dump(raw, prefix) if b":s:" in k]


async def test_backchannel_logout_by_sid_ends_exactly_that_session_on_every_replica(
    replicas: list[RedisSessionStore],
) -> None:
    now = time.time()
    first, second, other = Browser(), Browser(), Browser()
    first.receive(await replicas[0].create(make_session(now=now, sid="op-A"), None, now))
    second.receive(await replicas[1].create(make_session(now=now, sid="op-A"), None, now))
    other.receive(await replicas[0].create(make_session(now=now, sid="op-B"), None, now))
    assert await replicas[1].end_sessions(ISSUER, sid="op-A", subject=None, now=now) == 2
    for store in replicas:
        assert (await store.load(first.cookie_header(), now)).problem == "unknown_session"
        assert (await store.load(second.cookie_header(), now)).problem == "unknown_session"
        assert (await store.load(other.cookie_header(), now)).session is not None


async def test_backchannel_logout_by_subject_ends_all_their_sessions(
    replicas: list[RedisSessionStore],
) -> None:
    now = time.time()
    browsers = [Browser() for _ in range(3)]
    for index, browser in enumerate(browsers):
        subject = "bob" if index < 2 else "carol"
        browser.receive(
            await replicas[index % 2].create(
                make_session(now=now, subject=subject, sid=f"s{index}"), None, now
            )
        )
    assert await replicas[0].end_sessions(ISSUER, sid=None, subject="bob", now=now) == 2
    assert (await replicas[1].load(browsers[2].cookie_header(), now)).session is not None
    assert (
        await replicas[0].end_sessions("https://other.example", sid=None, subject="carol", now=now)
        == 0
    )


async def test_the_indexes_are_bounded_and_expire(
    replicas: list[RedisSessionStore], raw: Redis, prefix: str
) -> None:
    now = time.time()
    for _ in range(MAX_SESSIONS_PER_INDEX + 10):
        await replicas[0].create(make_session(now=now, subject="dave", sid=None), None, now)
    index = next(k for k in await dump(raw, prefix) if b":sub:" in k)
    assert await raw.zcard(index) == MAX_SESSIONS_PER_INDEX
    assert 0 < await raw.pttl(index) <= 43_200_000


async def test_redis_down_is_a_503_not_a_session_or_a_miss(prefix: str) -> None:
    with RedisServer() as server:
        client = redis_client(server.url, 0.3)
        store = RedisSessionStore(
            client, POLICY, Sealer([SECRET]), LIFETIMES, key_prefix=prefix, timeout=0.3
        )
        browser, now = Browser(), time.time()
        browser.receive(await store.create(make_session(now=now), None, now))
        server.stop()
        with pytest.raises(ServiceUnavailable) as caught:
            await store.load(browser.cookie_header(), now)
        assert caught.value.reason == "session_store"
        server.start()
        assert (await store.load(browser.cookie_header(), now)).problem == "unknown_session"
        await client.aclose()


async def test_cookie_store_revocations_reach_every_replica(redis_url: str, prefix: str) -> None:
    clients = [redis_client(redis_url, 1.0) for _ in range(2)]
    stores = [
        CookieSessionStore(
            POLICY, Sealer([SECRET]), LIFETIMES, RedisRevocations(c, key_prefix=prefix, timeout=1.0)
        )
        for c in clients
    ]
    now, alice, bob = time.time(), Browser(), Browser()
    alice.receive(await stores[0].create(make_session(now=now, sid="op-A"), None, now))
    bob.receive(await stores[0].create(make_session(now=now, subject="bob", sid=None), None, now))
    await stores[1].end_sessions(ISSUER, sid="op-A", subject=None, now=now + 1)
    await stores[1].end_sessions(ISSUER, sid=None, subject="bob", now=now + 1)
    assert (await stores[0].load(alice.cookie_header(), now + 2)).problem == "revoked"
    assert (await stores[0].load(bob.cookie_header(), now + 2)).problem == "revoked"
    relogin = Browser()
    relogin.receive(
        await stores[0].create(make_session(now=now + 3, subject="bob", sid=None), None, now + 3)
    )
    assert (await stores[1].load(relogin.cookie_header(), now + 4)).session is not None
    same_sid = Browser()
    same_sid.receive(await stores[0].create(make_session(now=now + 3, sid="op-A"), None, now + 3))
    assert (await stores[1].load(same_sid.cookie_header(), now + 4)).session is not None
    for client in clients:
        await client.aclose()


async def test_a_logout_token_replayed_at_another_replica_is_refused(
    redis_url: str, prefix: str
) -> None:
    clients = [redis_client(redis_url, 1.0) for _ in range(2)]
    guards = [RedisReplayGuard(c, key_prefix=prefix, timeout=1.0, clock=time.time) for c in clients]
    request = LogoutRequest(ISSUER, "alice", "op-1", uuid.uuid4().hex, time.time() + 60)
    await refuse_replay(request, guards[1])  # looking does not record
    await check_replay(request, guards[0])
    with pytest.raises(LogoutTokenInvalid):
        await refuse_replay(request, guards[1])
    with pytest.raises(LogoutTokenInvalid):
        await check_replay(request, guards[1])
    for client in clients:
        await client.aclose()


async def test_a_value_sealed_with_a_retired_key_opens_and_is_marked_for_resealing(
    redis_url: str, prefix: str
) -> None:
    client = redis_client(redis_url, 1.0)
    old, new = Sealer([b"o" * 32]), Sealer([SECRET, b"o" * 32])
    before = RedisSessionStore(client, POLICY, old, LIFETIMES, key_prefix=prefix, timeout=1.0)
    after = RedisSessionStore(client, POLICY, new, LIFETIMES, key_prefix=prefix, timeout=1.0)
    now, browser = time.time(), Browser()
    browser.receive(await before.create(make_session(now=now), None, now))
    loaded = await after.load(browser.cookie_header(), now)
    assert loaded.session is not None and loaded.reseal
    await after.update(loaded.session, loaded, now)
    assert not (await after.load(browser.cookie_header(), now)).reseal
    await client.aclose()


async def test_a_deleted_cookie_store_session_is_refused_on_every_replica(
    redis_url: str, prefix: str
) -> None:
    """Regression: a logout (or a new login) in the cookie store only cleared the browser's
    cookies; a copy of the cookie - of a session without a ``sid`` - stayed good."""
    clients = [redis_client(redis_url, 1.0) for _ in range(2)]
    stores = [
        CookieSessionStore(
            POLICY, Sealer([SECRET]), LIFETIMES, RedisRevocations(c, key_prefix=prefix, timeout=1.0)
        )
        for c in clients
    ]
    now, browser, other = time.time(), Browser(), Browser()
    browser.receive(await stores[0].create(make_session(now=now, sid=None), None, now))
    other.receive(await stores[0].create(make_session(now=now, sid=None), None, now))
    copy = browser.cookie_header()
    loaded = await stores[0].load(copy, now + 1)
    assert loaded.session is not None
    await stores[0].delete(loaded)
    assert (await stores[1].load(copy, now + 2)).problem == "revoked"
    # Only that session: the same user's other session lives on.
    assert (await stores[1].load(other.cookie_header(), now + 2)).session is not None
    for client in clients:
        await client.aclose()
