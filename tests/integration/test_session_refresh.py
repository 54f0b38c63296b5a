"""Race-free refresh against a real token endpoint that rotates refresh tokens and refuses a
reused one (revoking the grant), on one replica and on two sharing a real Redis."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions.cookies import CookiePolicy
from gateway.auth.sessions.errors import TokenEndpointRefused, TokenEndpointUnavailable
from gateway.auth.sessions.id_token import IdTokenRules
from gateway.auth.sessions.redis_store import RedisRefreshShare, RedisSessionStore, redis_client
from gateway.auth.sessions.refresh import (
    SessionEnded,
    SessionRefresher,
    refresh_key,
    refresh_tokens,
)
from gateway.auth.sessions.sealing import Sealer
from gateway.auth.sessions.session import Session
from gateway.auth.sessions.store import Lifetimes
from gateway.auth.sessions.token_endpoint import TokenEndpoint
from gateway.compiler.auth import client_credentials
from gateway.config.models import ClientAuth
from tests.support.issuer import TestIssuer
from tests.support.redis import RedisServer, redis_url_or_start
from tests.support.sessions import SECRET, Browser, make_session
from tests.support.token_server import TokenServer

CONCURRENT = 10


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_url_or_start() as url:
        yield url


@dataclass
class Provider:
    issuer: TestIssuer
    server: TokenServer
    refresh: functools.partial[object]

    def session(self) -> Session:
        """A session whose refresh token the server knows and whose access token is due."""
        return make_session(refresh_token=self.server.issue_refresh_token(), expires_in=5)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    issuer = TestIssuer()
    server = TokenServer(issuer)
    await issuer.start()
    async with aiohttp.ClientSession() as http:
        keys = KeySetProvider(issuer.config(), http)
        await keys.start()
        endpoint = TokenEndpoint(
            http,
            server.endpoint,
            client_credentials(ClientAuth(client_id="web-app", client_secret="web-secret")),
            timeout=3.0,
        )
        rules = IdTokenRules(
            issuer=issuer.url, client_id="web-app", algorithms=frozenset({"RS256"})
        )
        server.refresh_delay = 0.2  # a window wide enough for every request to overlap
        yield Provider(
            issuer,
            server,
            functools.partial(refresh_tokens, endpoint=endpoint, keys=keys, rules=rules),
        )
        await keys.close()
    await issuer.close()


@pytest.fixture
async def shares(redis_url: str) -> AsyncIterator[list[RedisRefreshShare]]:
    """Two replicas' refresh shares: separate clients on one Redis."""
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    clients = [redis_client(redis_url, 1.0) for _ in range(2)]
    yield [
        RedisRefreshShare(c, Sealer([SECRET]), key_prefix=prefix, timeout=1.0, clock=time.time)
        for c in clients
    ]
    for client in clients:
        await client.aclose()


async def all_outcomes(calls: list[asyncio.Future[Session]]) -> list[Session | BaseException]:
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_without_coordination_concurrent_refreshes_log_the_user_out(
    provider: Provider,
) -> None:
    """The control: the race this module prevents is real against this server."""
    session = provider.session()
    results = await asyncio.gather(
        *(provider.refresh(session) for _ in range(CONCURRENT)), return_exceptions=True
    )
    assert provider.server.refresh_calls == CONCURRENT
    refused = [r for r in results if isinstance(r, TokenEndpointRefused)]
    assert len(refused) == CONCURRENT - 1 and refused[0].error == "invalid_grant"


async def test_ten_concurrent_refreshes_on_one_replica_make_one_call(provider: Provider) -> None:
    refresher = SessionRefresher(provider.refresh)
    session = provider.session()
    results = await asyncio.gather(*(refresher.refresh(session) for _ in range(CONCURRENT)))
    assert provider.server.refresh_calls == 1 and refresher.refreshes == 1
    assert len({r.access_token for r in results}) == 1
    assert results[0].refresh_token != session.refresh_token
    # The new refresh token works: the grant was not revoked by a reuse.
    assert (await refresher.refresh(results[0])).access_token != results[0].access_token
    assert provider.server.refresh_calls == 2


async def test_ten_concurrent_refreshes_across_two_replicas_make_one_call(
    provider: Provider, shares: list[RedisRefreshShare]
) -> None:
    replicas = [SessionRefresher(provider.refresh, share=share) for share in shares]
    session = provider.session()
    calls = [replicas[i % 2].refresh(session) for i in range(CONCURRENT)]
    results = await asyncio.gather(*calls)
    assert provider.server.refresh_calls == 1
    assert sum(r.refreshes for r in replicas) == 1
    assert (
        len({r.access_token for r in results}) == 1 and len({r.refresh_token for r in results}) == 1
    )


async def test_a_straggler_with_the_old_cookie_gets_the_result_not_a_second_refresh(
    provider: Provider, shares: list[RedisRefreshShare]
) -> None:
    first = SessionRefresher(provider.refresh, share=shares[0])
    session = provider.session()
    refreshed = await first.refresh(session)
    again_here = await first.refresh(session)  # local memory
    restarted = SessionRefresher(provider.refresh, share=shares[1])  # another replica
    again_there = await restarted.refresh(session)
    assert provider.server.refresh_calls == 1
    assert again_here.access_token == again_there.access_token == refreshed.access_token


async def test_a_refused_refresh_ends_the_session_for_every_waiter(
    provider: Provider, shares: list[RedisRefreshShare]
) -> None:
    replicas = [SessionRefresher(provider.refresh, share=share) for share in shares]
    revoked = make_session(refresh_token="never-issued", expires_in=5)
    results = await all_outcomes([replicas[i % 2].refresh(revoked) for i in range(CONCURRENT)])
    assert all(isinstance(r, SessionEnded) for r in results), results
    assert provider.server.refresh_calls == 1
    with pytest.raises(SessionEnded):  # remembered: no second call for a dead grant
        await replicas[1].refresh(revoked)
    assert provider.server.refresh_calls == 1


async def test_a_session_without_a_refresh_token_ends_without_a_call(provider: Provider) -> None:
    session = replace(provider.session(), refresh_token=None)
    with pytest.raises(SessionEnded):
        await SessionRefresher(provider.refresh).refresh(session)
    assert provider.server.refresh_calls == 0


async def test_when_the_lock_holder_dies_its_lease_runs_out_and_another_refreshes(
    provider: Provider, shares: list[RedisRefreshShare], redis_url: str
) -> None:
    session = provider.session()
    assert session.refresh_token is not None
    dead = SessionRefresher(provider.refresh, share=shares[0], lease=0.3)
    # A replica took the lease and crashed before refreshing: nothing will publish.
    assert await shares[0].acquire(refresh_key(session.refresh_token), "crashed", 0.4)
    survivor = SessionRefresher(provider.refresh, share=shares[1], lease=5.0, wait=5.0)
    started = time.monotonic()
    refreshed = await survivor.refresh(session)
    assert time.monotonic() - started >= 0.35
    assert provider.server.refresh_calls == 1 and refreshed.refresh_token != session.refresh_token
    assert dead.refreshes == 0


async def test_a_waiter_gives_up_with_a_503_when_the_holder_never_finishes(
    provider: Provider, shares: list[RedisRefreshShare]
) -> None:
    session = provider.session()
    assert session.refresh_token is not None
    assert await shares[0].acquire(refresh_key(session.refresh_token), "stuck", 10.0)
    waiter = SessionRefresher(provider.refresh, share=shares[1], wait=0.3)
    with pytest.raises(TokenEndpointUnavailable) as caught:
        await waiter.refresh(session)
    assert caught.value.reason == "refresh_wait_timeout"
    assert provider.server.refresh_calls == 0


async def test_a_token_endpoint_outage_is_shared_but_not_remembered(
    provider: Provider, shares: list[RedisRefreshShare]
) -> None:
    replicas = [SessionRefresher(provider.refresh, share=share) for share in shares]
    session = provider.session()
    provider.server.status = 500
    results = await all_outcomes([replicas[i % 2].refresh(session) for i in range(CONCURRENT)])
    assert all(isinstance(r, TokenEndpointUnavailable) for r in results)
    assert provider.server.refresh_calls == 0 and len(provider.server.requests) <= 2
    provider.server.status = None
    refreshed = await replicas[0].refresh(session)  # the same refresh token is still good
    assert provider.server.refresh_calls == 1 and refreshed.access_token != session.access_token


async def test_a_client_that_disconnects_does_not_cancel_the_refresh(provider: Provider) -> None:
    refresher = SessionRefresher(provider.refresh)
    session = provider.session()
    leaving = asyncio.ensure_future(refresher.refresh(session))
    staying = [asyncio.ensure_future(refresher.refresh(session)) for _ in range(3)]
    await asyncio.sleep(0.05)
    leaving.cancel()
    results = await asyncio.gather(*staying)
    assert len({r.access_token for r in results}) == 1
    assert provider.server.refresh_calls == 1


async def test_with_redis_down_a_replica_still_refreshes_once_locally(
    provider: Provider,
) -> None:
    with RedisServer() as server:
        client = redis_client(server.url, 0.2)
        share = RedisRefreshShare(
            client, Sealer([SECRET]), key_prefix="t:", timeout=0.2, clock=time.time
        )
        server.stop()
        refresher = SessionRefresher(provider.refresh, share=share)
        session = provider.session()
        results = await asyncio.gather(*(refresher.refresh(session) for _ in range(CONCURRENT)))
        assert provider.server.refresh_calls == 1 and len({r.access_token for r in results}) == 1
        await client.aclose()


async def test_the_winner_persists_the_refreshed_session_for_every_replica(
    provider: Provider, shares: list[RedisRefreshShare], redis_url: str
) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    client = redis_client(redis_url, 1.0)
    lifetimes = Lifetimes(idle=3600, absolute=43200)
    stores = [
        RedisSessionStore(
            client,
            CookiePolicy("gw", secure=True),
            Sealer([SECRET]),
            lifetimes,
            key_prefix=prefix,
            timeout=1.0,
        )
        for _ in range(2)
    ]
    browser, now = Browser(), time.time()
    browser.receive(await stores[0].create(provider.session(), None, now))
    replicas = [SessionRefresher(provider.refresh, share=share) for share in shares]

    async def request(index: int) -> Session:
        store = stores[index % 2]
        loaded = await store.load(browser.cookie_header(), time.time())
        assert loaded.session is not None
        return await replicas[index % 2].refresh(loaded.session, persist=store.persist(loaded))

    results = await asyncio.gather(*(request(i) for i in range(CONCURRENT)))
    assert provider.server.refresh_calls == 1
    stored = await stores[1].load(browser.cookie_header(), time.time())
    assert stored.session is not None and stored.session.access_token == results[0].access_token
    raw = Redis.from_url(redis_url)
    assert not [k async for k in raw.scan_iter(match=prefix + "*") if b"rl:" in k]  # released
    await raw.aclose()
    await client.aclose()


async def test_redis_failing_after_the_call_never_causes_a_second_call(
    provider: Provider,
) -> None:
    """The refresh token is spent once the server answered: losing Redis before the result
    is published must not make this replica fall back to refreshing again."""
    with RedisServer() as server:
        client = redis_client(server.url, 0.2)
        share = RedisRefreshShare(
            client, Sealer([SECRET]), key_prefix="t:", timeout=0.2, clock=time.time
        )
        provider.server.refresh_delay = 0.5
        refresher = SessionRefresher(provider.refresh, share=share)
        session = provider.session()
        pending = asyncio.ensure_future(refresher.refresh(session))
        await asyncio.sleep(0.2)
        server.stop()
        refreshed = await pending
        assert provider.server.refresh_calls == 1
        assert refreshed.refresh_token != session.refresh_token
        await client.aclose()
