"""Sessions through running gateways over time and across replicas (issue 18): refresh before
expiry with exactly one call to a rotating token endpoint however many requests overlap, a
refused refresh ending the session cleanly, an unreachable endpoint tolerated while the
access token lasts; and two gateways sharing a real Redis - one session on both, one refresh
for both, logout and back-channel logout ending it on both."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.app import Gateway
from tests.support.gateway import running_gateway, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.login import (
    NAVIGATE,
    SESSION_COOKIE,
    Answer,
    LoginClient,
    login_config,
    logout_token,
    metric,
    redis_cache,
)
from tests.support.redis import redis_url_or_start
from tests.support.token_server import TokenServer
from tests.support.upstream import RecordingUpstream

API = {"Accept": "application/json"}
CONCURRENT = 10
LIFETIME = 2  # seconds an access token lives; the gateway refreshes 1 s before


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_url_or_start() as url:
        yield url


@dataclass
class Fleet:
    gateways: list[Gateway]
    issuer: TestIssuer
    server: TokenServer
    upstream: RecordingUpstream
    http: aiohttp.ClientSession
    prefix: str | None

    def client(self) -> LoginClient:
        return LoginClient(self.http)


@asynccontextmanager
async def fleet(
    tmp_path: Path,
    replicas: int = 1,
    *,
    redis_url: str | None = None,
    store: str = "cookie",
    forward: bool = False,
) -> AsyncIterator[Fleet]:
    issuer, upstream = TestIssuer(), RecordingUpstream(name="app")
    server = TokenServer(issuer, access_lifetime=LIFETIME)
    server.refresh_delay = 0.2  # wide enough for every request to overlap the refresh
    await issuer.start()
    server.advertise()
    await upstream.start()
    login: dict[str, Any] = {"refresh_margin": "1s", "store": {"type": store},
                             "forward_access_token": forward}  # fmt: skip
    cache = redis_cache(redis_url) if redis_url is not None else None
    if cache is not None:
        login["store"]["key_prefix"] = cache["key_prefix"] + "s:"
    config = login_config(upstream.url, issuer, login=login, cache=cache)
    try:
        async with AsyncExitStack() as stack:
            gateways = []
            for index in range(replicas):
                (tmp_path / str(index)).mkdir()
                gateway = await stack.enter_async_context(
                    running_gateway(tmp_path / str(index), config)
                )
                await wait_ready(gateway)
                gateways.append(gateway)
            http = await stack.enter_async_context(
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            )
            prefix = login["store"].get("key_prefix")
            yield Fleet(gateways, issuer, server, upstream, http, prefix)
    finally:
        await upstream.close()
        await issuer.close()


async def until_refresh_due() -> None:
    await asyncio.sleep(LIFETIME - 1 + 0.2)


async def burst(client: LoginClient, gateways: list[Gateway]) -> list[Answer]:
    return await asyncio.gather(
        *(client.get(gateways[i % len(gateways)], f"/app/{i}", API) for i in range(CONCURRENT))
    )


# --- refresh on one replica ----------------------------------------------------------------


async def test_ten_concurrent_requests_refresh_once(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        (gateway,) = f.gateways
        client = f.client()
        await client.log_in(gateway, f.server)
        before = dict(client.browser.jar)
        await until_refresh_due()
        answers = await burst(client, f.gateways)
        assert [a.status for a in answers] == [200] * CONCURRENT
        assert f.server.refresh_calls == 1
        # Every answer stores the refreshed session (the cookie store carries it).
        assert all(any(c.startswith(SESSION_COOKIE) for c in a.set_cookies()) for a in answers)
        assert client.browser.jar != before
        # A request still carrying the old cookie gets the refreshed tokens, not a second
        # refresh with the spent refresh token (which would revoke the grant).
        late = LoginClient(f.http)
        late.browser.jar.update(before)
        assert (await late.get(gateway, "/app/late", API)).status == 200
        assert (await client.get(gateway, "/app/after", API)).status == 200
        assert f.server.refresh_calls == 1
        samples = await metric(gateway, f.http, "gateway_session_refreshes")
        assert samples['gateway_session_refreshes_total{login="main",outcome="ok"}'] == 1


async def test_a_refused_refresh_ends_the_session_cleanly(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        (gateway,) = f.gateways
        client = f.client()
        await client.log_in(gateway, f.server)
        await until_refresh_due()
        f.server.status, f.server.body = 400, b'{"error": "invalid_grant"}'
        api = await client.get(gateway, "/app/x", API)
        assert api.status == 401 and "Location" not in api.headers
        assert any(c.startswith(SESSION_COOKIE + "=; ") for c in api.set_cookies())
        assert SESSION_COOKIE not in client.browser.jar
        # The next navigation logs in again, rather than looping on the dead session.
        assert (await client.get(gateway, "/app/x", NAVIGATE)).status == 302


async def test_an_unreachable_token_endpoint_is_tolerated_while_the_token_lasts(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path) as f:
        (gateway,) = f.gateways
        client = f.client()
        await client.log_in(gateway, f.server)
        await until_refresh_due()
        f.server.status, f.server.body = 503, b"{}"
        assert (await client.get(gateway, "/app/x", API)).status == 200
        await asyncio.sleep(1.0)  # now the access token has expired
        assert (await client.get(gateway, "/app/x", API)).status == 503
        f.server.status = None
        assert (await client.get(gateway, "/app/x", API)).status == 200


async def test_an_expired_access_token_without_a_refresh_token_ends_a_forwarding_session(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path, forward=True) as f:
        (gateway,) = f.gateways
        f.server.issue_refresh_tokens = False
        client = f.client()
        await client.log_in(gateway, f.server)
        assert (await client.get(gateway, "/app/x", API)).status == 200
        await asyncio.sleep(LIFETIME + 0.1)
        answer = await client.get(gateway, "/app/x", API)
        assert answer.status == 401 and SESSION_COOKIE not in client.browser.jar
        assert f.server.refresh_calls == 0


# --- two replicas sharing Redis --------------------------------------------------------------


async def test_the_redis_store_serves_one_session_on_every_replica(
    tmp_path: Path, redis_url: str
) -> None:
    async with fleet(tmp_path, 2, redis_url=redis_url, store="redis") as f:
        a, b = f.gateways
        client = f.client()
        await client.log_in(a, f.server)
        session_id = client.browser.jar[SESSION_COOKIE]
        assert len(session_id) == 43  # only a random id in the cookie
        assert (await client.get(b, "/app/x", API)).status == 200
        assert f.upstream.last.header("X-Auth-Subject") == "alice"
        raw = Redis.from_url(redis_url)
        try:
            keys = [key async for key in raw.scan_iter(match=f"{f.prefix}*")]
            digest = hashlib.sha256(session_id.encode()).hexdigest()
            assert f"{f.prefix}s:{digest}".encode() in keys
            for key in keys:
                assert session_id.encode() not in key
                if await raw.type(key) == b"string":
                    assert b"alice" not in await raw.get(key)  # sealed
        finally:
            await raw.aclose()
        await until_refresh_due()
        answers = await burst(client, f.gateways)
        assert [x.status for x in answers] == [200] * CONCURRENT
        assert f.server.refresh_calls == 1
        # The id stays; Redis holds the refreshed session.
        assert not any(c.startswith(SESSION_COOKIE) for x in answers for c in x.set_cookies())
        await asyncio.sleep(0.3)
        assert (await client.get(a, "/app/x", API)).status == 200
        assert f.server.refresh_calls == 1


async def test_logout_on_one_replica_ends_the_session_on_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    async with fleet(tmp_path, 2, redis_url=redis_url, store="redis") as f:
        a, b = f.gateways
        client = f.client()
        await client.log_in(a, f.server)
        copy = dict(client.browser.jar)
        assert (await client.get(b, "/oauth2/logout")).status == 302
        stale = LoginClient(f.http)
        stale.browser.jar.update(copy)
        assert (await stale.get(a, "/app/x", API)).status == 401


@pytest.mark.parametrize("store", ["redis", "cookie"])
async def test_back_channel_logout_on_one_replica_ends_the_session_on_every_one(
    tmp_path: Path, redis_url: str, store: str
) -> None:
    async with fleet(tmp_path, 2, redis_url=redis_url, store=store) as f:
        a, b = f.gateways
        alice, bob = f.client(), f.client()
        await alice.log_in(a, f.server, sid="op-A")
        await bob.log_in(a, f.server, subject="bob", sid="op-B")
        url = f"http://127.0.0.1:{b.proxy_port}/oauth2/backchannel"
        form = {"logout_token": logout_token(f.issuer, sid="op-A")}
        async with f.http.post(url, data=form) as response:
            assert response.status == 200
        for gateway in (a, b):
            assert (await alice.get(gateway, "/app/x", API)).status == 401
            assert (await bob.get(gateway, "/app/x", API)).status == 200
        # The same token on the other replica is a replay (shared through Redis).
        url = f"http://127.0.0.1:{a.proxy_port}/oauth2/backchannel"
        async with f.http.post(url, data=form) as response:
            assert response.status == 400


async def test_a_session_survives_a_reload_and_revocations_too(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        (gateway,) = f.gateways
        alice = f.client()
        await alice.log_in(gateway, f.server, sid="op-A")
        url = f"http://127.0.0.1:{gateway.proxy_port}/oauth2/backchannel"
        form = {"logout_token": logout_token(f.issuer, sid="op-A")}
        async with f.http.post(url, data=form) as response:
            assert response.status == 200
        bob = f.client()
        await bob.log_in(gateway, f.server, subject="bob", sid="op-B")
        await gateway.reload(gateway.holder.current.compiled.loaded)
        assert (await bob.get(gateway, "/app/x", API)).status == 200
        assert (await alice.get(gateway, "/app/x", API)).status == 401
        async with f.http.post(url, data=form) as response:
            assert response.status == 400  # still a replay after the reload
