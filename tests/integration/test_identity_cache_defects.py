"""Regression tests for the identity-cache defects of issue 11, through the real gateway.

Each test asserts what the client got and what reached the upstream and the authorization
server; each fails on the code before the identity cache had one owner and context-keyed
entries (the numbers in the names are the issue's).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth.rejections import Rejection
from gateway.compiler import compile_config
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config_text
from tests.support.gateway import running_gateway, wait_ready
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

AUDIENCE = "api://default"


@pytest.fixture
async def introspection() -> AsyncIterator[TestIntrospectionServer]:
    server = TestIntrospectionServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def second_introspection() -> AsyncIterator[TestIntrospectionServer]:
    server = TestIntrospectionServer(client_id="gateway-b", client_secret="secret-b")
    await server.start()
    yield server
    await server.close()


def issuer_entry(
    issuer: TestIssuer, introspection: TestIntrospectionServer | None, **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"issuer": issuer.url, "audiences": [AUDIENCE]}
    if introspection is not None:
        entry["introspection"] = {
            "endpoint": introspection.url,
            "client": {
                "client_id": introspection.client_id,
                "client_secret": introspection.client_secret,
            },
        }
    return entry | extra


def gateway_config(
    upstream: RecordingUpstream, issuers: list[dict[str, Any]], routes: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": issuers,
        "token_cache": {"max_ttl": "60s", "negative_ttl": "60s"},
        "cache": {"max_ttl": "60s", "negative_ttl": "60s", "l1": {"ttl": "60s"}},
        "routes": routes,
    }


def route(path: str, **extra: Any) -> dict[str, Any]:
    return {"match": {"path": {"prefix": path}}, "upstream": "app", **extra}


async def get(gw: Any, path: str, token: str | None) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.proxy_port}{path}", headers=headers) as r:
            await r.read()
            return r.status, dict(r.headers)


def opaque(server: TestIntrospectionServer, prefix: str = "", **fields: Any) -> str:
    token = prefix + secrets.token_urlsafe(24)
    answer = {"sub": "svc-user", "client_id": "svc", "scope": "read", "aud": AUDIENCE,
              "exp": int(time.time() + 300)} | fields  # fmt: skip
    server.add_token(token, **answer)
    return token


# --- 1: a route's token mode is never bypassed through the cache --------------------------------


async def test_1_a_locally_verified_jwt_is_still_introspected_on_an_introspection_route(
    tmp_path: Path, issuer: TestIssuer, introspection: TestIntrospectionServer, upstream
) -> None:
    """Revoked at the authorization server (it says inactive), valid locally: the local
    result must never stand in for the introspection the second route demands."""
    config = gateway_config(
        upstream,
        [issuer_entry(issuer, introspection)],
        [route("/local", token_mode="jwt"), route("/strict", token_mode="introspection")],
    )
    token = issuer.mint()  # never registered at the introspection server: inactive there
    async with running_gateway(tmp_path, config) as gw:
        await wait_ready(gw)
        assert (await get(gw, "/local/x", token))[0] == 200
        status, headers = await get(gw, "/strict/x", token)
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert (await get(gw, "/local/x", token))[0] == 200  # renewing the local entry...
        assert (await get(gw, "/strict/x", token))[0] == 401  # ...does not open this route
    assert introspection.calls == 1  # asked once; the inactive answer is cached for its TTL
    assert [r.raw_path for r in upstream.received] == ["/local/x", "/local/x"]


async def test_1_an_introspecting_issuer_stays_introspected_after_a_jwt_route_saw_the_token(
    tmp_path: Path, issuer: TestIssuer, introspection: TestIntrospectionServer, upstream
) -> None:
    config = gateway_config(
        upstream,
        [issuer_entry(issuer, introspection, mode="introspection")],
        [route("/local", token_mode="jwt"), route("/api")],
    )
    config["cache"]["l1"] = {"ttl": "300ms"}
    token = issuer.mint()
    introspection.add_token(token, sub="user-1", scope="read", aud=AUDIENCE,
                            exp=int(time.time() + 300))  # fmt: skip
    async with running_gateway(tmp_path, config) as gw:
        await wait_ready(gw)
        assert (await get(gw, "/api/x", token))[0] == 200
        assert (await get(gw, "/local/x", token))[0] == 200
        introspection.remove_token(token)  # revoked
        await asyncio.sleep(0.4)  # past the L1 TTL
        assert (await get(gw, "/local/x", token))[0] == 200  # a jwt route trusts the JWT
        assert (await get(gw, "/api/x", token))[0] == 401  # the introspection route does not
    assert introspection.calls == 2


# --- 4: route-caused rejections are not facts about the token ---------------------------------


async def test_4_a_token_refused_by_one_route_is_accepted_by_the_right_one(
    tmp_path: Path, issuer: TestIssuer, introspection: TestIntrospectionServer, upstream
) -> None:
    other = TestIssuer()
    await other.start()
    try:
        config = gateway_config(
            upstream,
            [issuer_entry(issuer, introspection, name="main", mode="auto"),
             issuer_entry(other, None, name="other")],
            [route("/other-only", issuers=["other"]), route("/jwt-only", token_mode="jwt"),
             route("/api", issuers=["main"])],
        )  # fmt: skip
        token = issuer.mint()
        secret = opaque(introspection)
        async with running_gateway(tmp_path, config) as gw:
            await wait_ready(gw)
            status, headers = await get(gw, "/other-only/x", token)
            assert status == 401 and "not accepted here" in headers["WWW-Authenticate"]
            assert (await get(gw, "/api/x", token))[0] == 200
            assert (await get(gw, "/jwt-only/x", secret))[0] == 401  # no introspection here
            assert (await get(gw, "/api/x", secret))[0] == 200
            assert (await get(gw, "/other-only/x", token))[0] == 401  # and still refused
    finally:
        await other.close()
    assert [r.raw_path for r in upstream.received] == ["/api/x", "/api/x"]
    assert introspection.calls == 1


# --- 5: opaque tokens go only where they belong -----------------------------------------------


async def test_5_opaque_tokens_go_only_to_the_issuer_their_prefix_names(
    tmp_path: Path,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    second_introspection: TestIntrospectionServer,
    upstream,
) -> None:
    other = TestIssuer()
    await other.start()
    try:
        first = issuer_entry(issuer, introspection, name="a", mode="auto")
        first["introspection"]["token_prefixes"] = ["a_"]
        second = issuer_entry(other, second_introspection, name="b", mode="auto")
        second["introspection"]["token_prefixes"] = ["b_"]
        config = gateway_config(upstream, [first, second], [route("/")])
        token_a = opaque(introspection, "a_", sub="from-a")
        token_b = opaque(second_introspection, "b_", sub="from-b")
        async with running_gateway(tmp_path, config) as gw:
            assert (await get(gw, "/x", token_a))[0] == 200
            assert (await get(gw, "/y", token_b))[0] == 200
            assert (await get(gw, "/z", "c_" + secrets.token_urlsafe(20)))[0] == 401
    finally:
        await other.close()
    assert [r.header("X-Auth-Subject") for r in upstream.received] == ["from-a", "from-b"]
    seen_a = [r["form"]["token"] for r in introspection.requests]
    seen_b = [r["form"]["token"] for r in second_introspection.requests]
    assert seen_a == [token_a] and seen_b == [token_b]  # never disclosed to the other server


def test_5_two_catch_all_introspecting_issuers_on_one_route_are_a_config_error() -> None:
    text = """\
upstreams: {app: {url: "http://127.0.0.1:9"}}
issuers:
  - {issuer: "https://a.example/", audiences: [x], mode: auto,
     introspection: {endpoint: "https://a.example/i", client: {client_id: g, client_secret: s}}}
  - {issuer: "https://b.example/", audiences: [x], mode: auto,
     introspection: {endpoint: "https://b.example/i", client: {client_id: g, client_secret: s}}}
routes:
  - upstream: app
"""
    with pytest.raises(ConfigError) as caught:
        compile_config(load_config_text(text, "gw.yaml"))
    message = str(caught.value)
    assert message.startswith("gw.yaml:8: routes[0]: opaque tokens here could belong to")
    assert "token_prefixes" in message


def test_5_overlapping_token_prefixes_are_a_config_error() -> None:
    text = """\
upstreams: {app: {url: "http://127.0.0.1:9"}}
issuers:
  - {issuer: "https://a.example/", audiences: [x], mode: introspection, introspection:
      {endpoint: "https://a.example/i", token_prefixes: [ab], client: {client_id: g,
       client_secret: s}}}
  - {issuer: "https://b.example/", audiences: [x], mode: introspection, introspection:
      {endpoint: "https://b.example/i", token_prefixes: [abc], client: {client_id: g,
       client_secret: s}}}
routes:
  - {upstream: app, issuers: ["https://a.example/", "https://b.example/"]}
"""
    with pytest.raises(ConfigError, match=r"routes\[0\]\.issuers: token prefixes 'ab'.*overlap"):
        compile_config(load_config_text(text, "gw.yaml"))


# --- 9: introspection answers by meaning; anonymous routes validate nothing ------------------


async def test_9_unsupported_token_type_is_an_invalid_token_not_an_outage(
    tmp_path: Path, issuer: TestIssuer, introspection: TestIntrospectionServer, upstream
) -> None:
    introspection.mode = "unsupported"
    config = gateway_config(
        upstream, [issuer_entry(issuer, introspection, mode="introspection")], [route("/")]
    )
    token = opaque(introspection)
    async with running_gateway(tmp_path, config) as gw:
        for _ in range(3):
            status, headers = await get(gw, "/x", token)
            assert status == 401
            assert 'error="invalid_token"' in headers["WWW-Authenticate"]
            assert headers["Cache-Control"] == "no-store"
    assert introspection.calls == 1  # cached like any inactive answer
    assert upstream.received == []


async def test_9_refused_client_credentials_are_an_outage_with_a_note_and_an_error_log(
    tmp_path: Path,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    introspection.mode = "forbidden"
    config = gateway_config(
        upstream,
        [issuer_entry(issuer, introspection, mode="introspection", name="main")],
        [route("/")],
    )
    token = opaque(introspection)
    with caplog.at_level(logging.ERROR, logger="gateway.auth.introspection"):
        async with running_gateway(tmp_path, config) as gw:
            for _ in range(2):
                status, headers = await get(gw, "/x", token)
                assert status == 503 and "WWW-Authenticate" not in headers
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{gw.admin_port}/readyz"
                async with session.get(url) as r:
                    ready = await r.json()
    assert introspection.calls == 2  # an outage is never cached
    assert ready["notes"]["introspection:main"] == "client credentials refused"
    assert any("main" in record.getMessage() for record in caplog.records)
    assert all(token not in record.getMessage() for record in caplog.records)
    assert upstream.received == []


async def test_9_anonymous_routes_do_not_validate_tokens_they_will_not_use(
    tmp_path: Path, issuer: TestIssuer, introspection: TestIntrospectionServer, upstream
) -> None:
    config = gateway_config(
        upstream,
        [issuer_entry(issuer, introspection, mode="introspection")],
        [route("/health", auth="anonymous"),
         route("/who", auth="anonymous", identify_anonymous=True), route("/")],
    )  # fmt: skip
    async with running_gateway(tmp_path, config) as gw:
        for _ in range(100):
            assert (await get(gw, "/health", secrets.token_urlsafe(16)))[0] == 200
        assert introspection.calls == 0
        assert (await get(gw, "/who", secrets.token_urlsafe(16)))[0] == 200
        assert introspection.calls == 1  # identify_anonymous does validate
    assert len(upstream.received) == 101
    assert upstream.last.header("X-Auth-Subject") is None


# --- 2: cached rejections are small ------------------------------------------------------------


async def test_2_cached_rejections_hold_no_request(
    tmp_path: Path, issuer: TestIssuer, upstream
) -> None:
    """Bad signatures from a trusted issuer are remembered; what is remembered is a shared
    reason, not the exception (whose traceback held the request and all its headers)."""
    config = gateway_config(upstream, [issuer_entry(issuer, None)], [route("/")])
    config["token_cache"]["max_entries"] = 500
    config["limits"] = {"max_header_size": 65536}
    padding = "p" * 60_000
    async with running_gateway(tmp_path, config) as gw:
        await wait_ready(gw)
        cache = gw.holder.current.identity_cache
        async with aiohttp.ClientSession() as session:
            for index in range(800):
                good = issuer.mint(claims={"jti": str(index)})
                forged = good[: good.rindex(".") + 1] + "A" * 342
                headers = {"Authorization": f"Bearer {forged}", "X-Padding": padding}
                url = f"http://127.0.0.1:{gw.proxy_port}/x"
                async with session.get(url, headers=headers) as r:
                    assert r.status == 401
        rejected = cache._rejected  # the negative tier itself
        values = [entry.value for entry in rejected._entries.values()]
    assert len(values) == 500  # bounded by token_cache.max_entries
    assert all(type(value) is Rejection for value in values)
    assert len({id(value) for value in values}) == 1  # one interned reason for all of them
    assert upstream.received == []
