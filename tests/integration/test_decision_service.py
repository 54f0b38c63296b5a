"""The decision service judges exactly as the proxy does (differential), trusts only its host
proxies, and labels what it decides; every adapter, HTTP and gRPC, over real sockets."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.app import Gateway
from tests.support.dpop import ClientKey, client_key, proof
from tests.support.forward_auth import (
    CASES,
    IDENTITY,
    Case,
    RawResponse,
    bearer,
    check_request,
    forward_auth_config,
    forward_auth_world,
    grpc_check,
    raw_request,
    token_for,
)
from tests.support.gateway import running_gateway
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

SPOOFED = [("X-Auth-Subject", "evil"), ("X_Auth_Scopes", "admin"), ("X-Auth-Role", "root")]
HTTP_KINDS = ("nginx", "traefik", "caddy", "envoy-http")
EXTERNAL = "https://api.example"  # the external URL DPoP proofs are checked against
Header = tuple[str, str]
ConfigMaker = Callable[[RecordingUpstream, TestIssuer], dict[str, Any]]


def with_routes(
    *routes: dict[str, Any], decision: dict[str, Any] | None = None, **sections: Any
) -> ConfigMaker:
    """``forward_auth_config`` (its decision section given ``decision``) with ``routes``
    matched before its own, and the top-level ``sections`` set."""

    def make(upstream: RecordingUpstream, issuer: TestIssuer) -> dict[str, Any]:
        data = forward_auth_config(upstream, issuer, **(decision or {}))
        data["routes"][:0] = list(routes)
        data.update(sections)
        return data

    return make


def dpop_route(name: str, mode: str, **dpop: Any) -> dict[str, Any]:
    """A route under ``/name`` whose DPoP proofs (RFC 9449 §4.3) are checked against
    ``EXTERNAL``."""
    return {"name": name, "match": {"path": {"prefix": f"/{name}"}}, "upstream": "app",
            "dpop": {"mode": mode, "external_url": EXTERNAL, **dpop}}  # fmt: skip


def forwarded(uri: str, *extra: Header, host: str = "api.example") -> list[Header]:
    """How Traefik and Caddy describe ``GET uri`` to the decision service."""
    return [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", uri),
            ("X-Forwarded-Host", host), *extra]  # fmt: skip


def dpop_bound(issuer: TestIssuer, **mint: Any) -> tuple[ClientKey, str]:
    """A client key and an access token bound to it (RFC 9449 §6.1 ``cnf.jkt``)."""
    key = client_key("ES256")
    return key, issuer.mint({"cnf": {"jkt": key.jkt}}, **mint)


@dataclass
class World:
    gateway: Gateway
    upstream: RecordingUpstream
    issuer: TestIssuer

    @property
    def decision_port(self) -> int:
        assert self.gateway.decision is not None
        return self.gateway.decision.port

    @property
    def grpc_port(self) -> int:
        assert self.gateway.decision is not None
        return self.gateway.decision.grpc_port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("decision")
    async with forward_auth_world(tmp) as (gw, upstream, issuer):
        yield World(gw, upstream, issuer)


async def check_http(world: World, kind: str, method: str, target: str,
                     headers: list[tuple[str, str]], **kw: str) -> RawResponse:  # fmt: skip
    """Ask the decision service as ``kind`` would, describing ``method target``."""
    port = world.decision_port
    if kind == "nginx":
        described = [("X-Original-URI", target), ("X-Original-Method", method),
                     ("X-Forwarded-Host", "api.example")]  # fmt: skip
        return await raw_request(port, "GET", "/nginx", described + headers, **kw)
    if kind in ("traefik", "caddy"):
        described = [("X-Forwarded-Method", method), ("X-Forwarded-Uri", target),
                     ("X-Forwarded-Host", "api.example")]  # fmt: skip
        return await raw_request(port, "GET", f"/{kind}", described + headers, **kw)
    assert kind == "envoy-http"
    return await raw_request(port, method, "/envoy" + target, headers, **kw)


def identity_of(headers: list[tuple[str, str]]) -> dict[str, str]:
    wanted = {name.lower() for name in IDENTITY}
    return {k.lower(): v for k, v in headers if k.lower() in wanted}


async def assert_refused_as_not_normal(world: World, case: Case, headers: list[Header]) -> None:
    """The host proxy would forward the path as sent, not the normal one judged: 400."""
    for kind in HTTP_KINDS:
        answer = await check_http(world, kind, case.method, case.target, headers)
        if kind == "nginx":
            assert (answer.status, answer.header("X-Gateway-Status")) == (403, "400"), kind
        else:
            assert answer.status == 400, (kind, answer.body)
        assert b"not in normal form" in answer.body, kind
        assert identity_of(answer.headers) == {}, kind
    checked = await grpc_check(
        world.grpc_port, check_request(case.method, case.target, "api.example", headers)
    )
    assert checked.denied_response.status.code == 400


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_every_adapter_decides_as_the_proxy(world: World, case: Case) -> None:
    token = token_for(world.issuer, case.token)
    headers = bearer(token) + SPOOFED
    before = len(world.upstream.received)
    proxied = await raw_request(world.gateway.proxy_port, case.method, case.target, headers)
    reached = world.upstream.received[before:]
    allowed = proxied.status == 200
    assert len(reached) == (1 if allowed else 0)
    expected_identity = identity_of(reached[0].headers) if allowed else {}
    assert "evil" not in expected_identity.values()
    if case.not_normal:
        await assert_refused_as_not_normal(world, case, headers)
        return

    for kind in HTTP_KINDS:
        answer = await check_http(world, kind, case.method, case.target, headers)
        if kind == "nginx" and proxied.status not in (200, 401, 403, 503):
            assert (answer.status, answer.header("X-Gateway-Status")) == (
                403, str(proxied.status)), kind  # fmt: skip
        else:
            assert answer.status == proxied.status, (kind, answer.body)
        assert identity_of(answer.headers) == expected_identity, kind
        if proxied.status in (401, 403) and not (kind == "nginx" and proxied.status == 403):
            assert answer.header("WWW-Authenticate") == proxied.header("WWW-Authenticate"), kind
        if kind != "nginx" and not allowed:
            assert answer.header("Content-Type") == "application/problem+json"
            assert answer.header("Allow") == proxied.header("Allow"), kind
            assert answer.body.split(b'"request_id"')[0] == proxied.body.split(b'"request_id"')[0]
        if allowed and kind == "envoy-http":
            removed = set(answer.header("x-envoy-auth-headers-to-remove").split(","))
            assert {"x_auth_scopes", "x-auth-role"} <= removed

    checked = await grpc_check(
        world.grpc_port, check_request(case.method, case.target, "api.example", headers)
    )
    if allowed:
        assert checked.status.code == 0
        got = {h.header.key.lower(): h.header.value for h in checked.ok_response.headers}
        assert got == expected_identity
        assert {"x_auth_scopes", "x-auth-role"} <= set(checked.ok_response.headers_to_remove)
    else:
        assert checked.status.code != 0
        denied = checked.denied_response
        assert denied.status.code == proxied.status
        got_headers = {h.header.key: h.header.value for h in denied.headers}
        assert got_headers.get("WWW-Authenticate") == proxied.header("WWW-Authenticate")
        assert denied.body.split('"request_id"')[0].encode() == proxied.body.split(
            b'"request_id"')[0]  # fmt: skip
    assert len(world.upstream.received) == before + len(reached)  # checks forward nothing


async def test_an_untrusted_peer_is_refused_whatever_it_claims(world: World) -> None:
    token = token_for(world.issuer, "admin")
    for kind in HTTP_KINDS:
        answer = await check_http(world, kind, "GET", "/public/x", bearer(token),
                                  local="127.0.0.2")  # fmt: skip
        assert answer.status == (403 if kind == "nginx" else 400), kind
        assert b"untrusted-forwarder" in answer.body
        assert identity_of(answer.headers) == {}


async def test_the_check_request_itself_never_chooses_the_route(world: World) -> None:
    """The decision endpoint's own path, Host and method say nothing about the request;
    X-Forwarded-Prefix/-Port and the client's copies of the other headers are not read."""
    token = token_for(world.issuer, "read")
    extra = [("X-Forwarded-Prefix", "/public"), ("X-Forwarded-Port", "1"),
             ("X-Original-URL", "/public/x"), ("X-Envoy-Original-Path", "/public/x")]  # fmt: skip
    for kind in HTTP_KINDS:
        answer = await check_http(world, kind, "GET", "/admin/x", bearer(token) + extra)
        assert answer.status == 403, kind


async def test_a_description_missing_or_repeated_is_refused(world: World) -> None:
    port = world.decision_port
    incomplete = await raw_request(port, "GET", "/traefik", [("X-Forwarded-Uri", "/api/x")])
    assert incomplete.status == 400 and b"X-Forwarded-Method" in incomplete.body
    twice = await raw_request(port, "GET", "/nginx", [
        ("X-Original-URI", "/public/x"), ("X-Original-URI", "/admin/x"),
        ("X-Original-Method", "GET"), ("X-Forwarded-Host", "h")])  # fmt: skip
    assert twice.status == 403 and twice.header("X-Gateway-Status") == "400"


async def test_grpc_refuses_a_request_without_http_attributes(world: World) -> None:
    from envoy.service.auth.v3 import external_auth_pb2

    answer = await grpc_check(world.grpc_port, external_auth_pb2.CheckRequest())
    assert answer.status.code != 0
    assert answer.denied_response.status.code == 400


async def test_decisions_are_labelled_by_mode_and_host_proxy(world: World) -> None:
    token = token_for(world.issuer, "read")
    await check_http(world, "caddy", "GET", "/api/x", bearer(token))
    await grpc_check(world.grpc_port, check_request("GET", "/api/x", "h", []))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{world.gateway.admin_port}/metrics"
        async with session.get(url) as response:
            text = await response.text()
    assert re.search(r'gateway_auth_decisions_total\{host_proxy="caddy",mode="decision",'
                     r'outcome="allow",reason="ok"\} [1-9]', text)  # fmt: skip
    assert re.search(r'gateway_auth_decisions_total\{host_proxy="envoy-grpc",mode="decision",'
                     r'outcome="deny",reason="missing"\} [1-9]', text)  # fmt: skip
    assert re.search(r'gateway_decision_checks_total\{host_proxy="caddy",status="200"\}', text)


async def test_allows_carry_a_bounded_max_age_only_when_enabled(tmp_path: Path) -> None:
    config = with_routes(decision={"cache": {"max_age": "60s"}})
    async with forward_auth_world(tmp_path, config) as (gw, _upstream, issuer):
        assert gw.decision is not None
        port = gw.decision.port
        described = forwarded("/api/x", host="h")
        long_lived = bearer(issuer.mint(scope="read", exp_in=3600))
        short = bearer(issuer.mint(scope="read", exp_in=20))
        answer = await raw_request(port, "GET", "/traefik", described + long_lived)
        assert answer.header("Cache-Control") == "private, max-age=60"
        answer = await raw_request(port, "GET", "/traefik", described + short)
        max_age = int(answer.header("Cache-Control").rsplit("=", 1)[1])
        assert 15 <= max_age <= 20  # never past exp
        denied = await raw_request(port, "GET", "/traefik", described)
        assert denied.header("Cache-Control") == "no-store"


async def test_trust_follows_a_reload(tmp_path: Path) -> None:
    """Whom the service believes is config, applied at reload; gRPC peers too."""
    from gateway.config.loader import load_config
    from tests.support.gateway import write_config

    upstream, issuer = RecordingUpstream(), TestIssuer()
    await upstream.start()
    await issuer.start()
    try:
        config = forward_auth_config(upstream, issuer, trusted_proxies=["127.0.0.2/32"])
        config["issuers"] = config["issuers"][:1]  # a reload waits for every issuer's keys
        async with running_gateway(tmp_path, config) as gw:
            assert gw.decision is not None
            port = gw.decision.port
            described = forwarded("/public/x", host="h")
            assert (await raw_request(port, "GET", "/caddy", described)).status == 400
            ok = await raw_request(port, "GET", "/caddy", described, local="127.0.0.2")
            assert ok.status == 200
            grpc_answer = await grpc_check(
                gw.decision.grpc_port, check_request("GET", "/public/x", "h", [])
            )
            assert grpc_answer.denied_response.status.code == 400  # 127.0.0.1 is not trusted
            config["decision"]["trusted_proxies"] = ["127.0.0.1/32"]
            await gw.reload(load_config(write_config(tmp_path, config), env={}))
            assert (await raw_request(port, "GET", "/caddy", described)).status == 200
            config["decision"]["trusted_proxies"] = []
            await gw.reload(load_config(write_config(tmp_path, config), env={}))
            assert (await raw_request(port, "GET", "/caddy", described)).status == 400
    finally:
        await upstream.close()
        await issuer.close()


async def test_limits_are_the_proxy_listeners(tmp_path: Path) -> None:
    """A target the proxy's parser refuses as too long (414), and a header field over its
    bound, are refused by the decision service too (the latter by aiohttp's parser, 400)."""
    config = with_routes(limits={"max_request_line": 1024, "max_header_size": 2048})
    async with forward_auth_world(tmp_path, config) as (gw, _upstream, _issuer):
        assert gw.decision is not None
        long_target = "/public/" + "a" * 1100
        proxied = await raw_request(gw.proxy_port, "GET", long_target)
        assert proxied.status == 414
        described = forwarded(long_target, host="h")
        checked = await raw_request(gw.decision.port, "GET", "/traefik", described)
        assert checked.status == 414
        huge = forwarded("/public/x", ("X-Big", "b" * 3000), host="h")
        assert (await raw_request(gw.decision.port, "GET", "/traefik", huge)).status == 400


async def test_dpop_proofs_and_client_addresses_reach_the_decision(tmp_path: Path) -> None:
    """A forward-auth check sees the original request's DPoP proof (RFC 9449 §4.3 checked
    against the external URL, as on the proxy) and counts the client the host proxy reports
    in X-Forwarded-For, not the host proxy itself, for a per-IP limit."""
    config = with_routes(
        dpop_route("bound", "required"),
        {"name": "open", "match": {"path": {"prefix": "/open"}}, "upstream": "app",
         "auth": "anonymous", "rate_limits": {"anonymous": [
             {"name": "per-ip", "key": ["ip"], "limit": 1, "window": 60}]}},
    )  # fmt: skip
    async with forward_auth_world(tmp_path, config) as (gw, _upstream, issuer):
        assert gw.decision is not None
        port = gw.decision.port
        key, token = dpop_bound(issuer)
        dpop = proof(key, htu=f"{EXTERNAL}/bound/x", token=token)
        with_proof = forwarded("/bound/x", ("Authorization", f"DPoP {token}"), ("DPoP", dpop))
        assert (await raw_request(port, "GET", "/traefik", with_proof)).status == 200
        no_proof = forwarded("/bound/x", ("Authorization", f"DPoP {token}"))
        assert (await raw_request(port, "GET", "/traefik", no_proof)).status == 401

        def client(ip: str) -> list[Header]:
            return forwarded("/open/x", ("X-Forwarded-For", ip))

        first = [(await raw_request(port, "GET", "/caddy", client("203.0.113.1"))).status
                 for _ in range(2)]  # fmt: skip
        other = (await raw_request(port, "GET", "/caddy", client("203.0.113.2"))).status
        assert first == [200, 429] and other == 200


async def test_a_cached_allow_is_never_offered_for_a_bound_token_or_a_limited_route(
    tmp_path: Path,
) -> None:
    """nginx's cache key is method, host, URI and Authorization: a DPoP-bound token's allow
    reused from it would let the token pass again without a fresh proof (or with none), a
    rate-limited route's would let requests through that no limit counted, and one naming
    the request's cookies would give them to another request."""
    config = with_routes(
        dpop_route("bound", "optional"),
        {"name": "limited", "match": {"path": {"prefix": "/limited"}}, "upstream": "app",
         "rate_limits": {"limits": [
             {"name": "per-client", "key": ["client_id"], "limit": 100, "window": 1}]}},
        decision={"cache": {"max_age": "60s"}},
    )  # fmt: skip
    async with forward_auth_world(tmp_path, config) as (gw, _upstream, issuer):
        assert gw.decision is not None
        port = gw.decision.port
        key, token = dpop_bound(issuer, exp_in=3600)

        def described(uri: str, *extra: Header) -> list[Header]:
            return [("X-Original-Method", "GET"), ("X-Original-URI", uri),
                    ("X-Forwarded-Host", "api.example"), *extra]  # fmt: skip

        dpop = proof(key, htu=f"{EXTERNAL}/bound/x", token=token)
        answer = await raw_request(port, "GET", "/nginx", described(
            "/bound/x", ("Authorization", f"DPoP {token}"), ("DPoP", dpop)))  # fmt: skip
        assert answer.status == 200
        assert answer.header("Cache-Control") == "no-store"
        assert answer.header("X-Accel-Expires") == "0"
        plain = bearer(issuer.mint(scope="read", exp_in=3600))
        unbound = await raw_request(port, "GET", "/nginx", described("/bound/x", *plain))
        assert unbound.header("Cache-Control") == "private, max-age=60"  # still cacheable
        limited = await raw_request(port, "GET", "/nginx", described("/limited/x", *plain))
        assert limited.status == 200
        assert limited.header("Cache-Control") == "no-store"
        # The allow names the Cookie the upstream gets: reused from a key without it, it
        # would hand one request's cookies to the next.
        cookied = described("/bound/x", *plain, ("Cookie", "csrf=1"))
        with_cookie = await raw_request(port, "GET", "/nginx", cookied)
        assert with_cookie.header("Cookie") == "csrf=1"
        assert with_cookie.header("Cache-Control") == "no-store"


async def test_envoy_is_told_to_remove_the_dpop_proof_it_relays(tmp_path: Path) -> None:
    """RFC 9449 proofs are for the gateway: the proxy listener drops the DPoP header unless
    forward_proof, and Envoy (HTTP and gRPC), which can remove headers, is told the same."""
    config = with_routes(
        dpop_route("bound", "required"), dpop_route("kept", "required", forward_proof=True)
    )
    async with forward_auth_world(tmp_path, config) as (gw, _upstream, issuer):
        assert gw.decision is not None
        key, token = dpop_bound(issuer)

        def with_proof(path: str) -> list[Header]:
            dpop = proof(key, htu=f"{EXTERNAL}{path}", token=token)
            return [("Authorization", f"DPoP {token}"), ("DPoP", dpop)]

        port = gw.decision.port
        answer = await raw_request(port, "GET", "/envoy/bound/x", with_proof("/bound/x"))
        assert answer.status == 200
        assert "dpop" in answer.header("x-envoy-auth-headers-to-remove").split(",")
        checked = await grpc_check(gw.decision.grpc_port, check_request(
            "GET", "/bound/y", "api.example", with_proof("/bound/y")))  # fmt: skip
        assert checked.status.code == 0
        assert "dpop" in checked.ok_response.headers_to_remove
        kept = await grpc_check(gw.decision.grpc_port, check_request(
            "GET", "/kept/y", "api.example", with_proof("/kept/y")))  # fmt: skip
        assert kept.status.code == 0
        assert "dpop" not in kept.ok_response.headers_to_remove


async def test_the_access_log_says_how_a_checked_token_was_presented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As on the proxy listener: token_type (bearer, dpop, mtls), never the token or proof."""
    config = with_routes(dpop_route("bound", "optional"), logging={"access_log": True})
    async with forward_auth_world(tmp_path, config) as (gw, _upstream, issuer):
        assert gw.decision is not None
        key, token = dpop_bound(issuer)
        dpop = proof(key, htu=f"{EXTERNAL}/bound/x", token=token)
        described = forwarded("/bound/x", ("Authorization", f"DPoP {token}"), ("DPoP", dpop))
        assert (await raw_request(gw.decision.port, "GET", "/traefik", described)).status == 200
        plain = bearer(issuer.mint(scope="read"))
        described = [*described[:3], *plain]
        assert (await raw_request(gw.decision.port, "GET", "/traefik", described)).status == 200
        await asyncio.sleep(1.0)  # the access log flushes within half a second
    logged = capsys.readouterr().out
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    checks = [line for line in lines if line.get("mode") == "decision" and line["status"] == 200]
    assert [line["token_type"] for line in checks] == ["dpop", "bearer"]
    assert token not in logged and dpop not in logged


async def test_a_cached_allow_never_outlives_the_identity_token_it_carries(
    tmp_path: Path,
) -> None:
    """An allow with a signed identity token (60 s, renewed 10 s before exp) reused for the
    full max_age would hand the upstream an expired token; it is reusable only as long as
    the token handed out is certain to live."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "id.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    config = with_routes(
        {"name": "signed", "match": {"path": {"prefix": "/signed"}}, "upstream": "app",
         "identity_token": {"header": "X-Identity-Token"}},
        decision={"cache": {"max_age": "60s"}},
        token_signing={"issuer": "https://gateway.example/",
                       "keys": [{"file": str(key), "kid": "gw-1"}]},
    )  # fmt: skip
    async with forward_auth_world(tmp_path, config) as (gw, _upstream, issuer):
        assert gw.decision is not None
        described = forwarded("/signed/x", *bearer(issuer.mint(scope="read", exp_in=3600)))
        answer = await raw_request(gw.decision.port, "GET", "/traefik", described)
        assert answer.status == 200 and answer.header("X-Identity-Token")
        assert answer.header("Cache-Control") == "private, max-age=10"


async def test_refusals_carry_the_routes_challenge_as_the_proxy_does(tmp_path: Path) -> None:
    """A DPoP route's challenge (the DPoP scheme, algs) and a protected resource's
    (resource_metadata, the scope to ask for: RFC 9728 §5.1, MCP) are the route's, not the
    bare realm: behind Traefik, Caddy or Envoy an MCP client finds its authorization server
    only through them. Every adapter answers what the proxy answers."""
    config = with_routes(
        dpop_route("bound", "required"),
        {"name": "mcp", "match": {"path": {"prefix": "/mcp"}}, "upstream": "app",
         "require": {"scopes": {"all": ["mcp:tools"]}}},
        resources=[{"resource": f"{EXTERNAL}/mcp", "routes": ["mcp"]}],
    )  # fmt: skip
    async with forward_auth_world(tmp_path, config) as (gw, upstream, issuer):
        world = World(gw, upstream, issuer)
        weak = bearer(token_for(issuer, "read"))
        for target, headers in (("/bound/x", []), ("/mcp/x", []), ("/mcp/x", weak)):
            proxied = await raw_request(gw.proxy_port, "GET", target, headers)
            expected = proxied.header("WWW-Authenticate")
            assert expected is not None and expected != 'Bearer realm="gateway"', target
            for kind in HTTP_KINDS:
                answer = await check_http(world, kind, "GET", target, headers)
                assert answer.header("WWW-Authenticate") == expected, (kind, target)
            checked = await grpc_check(
                world.grpc_port, check_request("GET", target, "api.example", headers)
            )
            denied = {h.header.key: h.header.value for h in checked.denied_response.headers}
            assert denied.get("WWW-Authenticate") == expected, ("grpc", target)


async def test_a_cross_site_request_on_a_session_route_is_refused_by_every_adapter(
    tmp_path: Path,
) -> None:
    """The proxy listener's cross-site check holds in forward auth, from the Origin and
    Sec-Fetch-Site the host proxy passes on (README: the Envoy HTTP recipe sends both)."""
    config = with_routes(
        {"name": "web", "match": {"path": {"prefix": "/web"}}, "upstream": "app",
         "auth": "session"},
    )  # fmt: skip

    def with_login(upstream: RecordingUpstream, issuer: TestIssuer) -> dict[str, Any]:
        data = config(upstream, issuer)
        data["logins"] = [{"issuer": issuer.url, "external_url": EXTERNAL,
                           "secrets": ["s" * 32],
                           "client": {"client_id": "web", "client_secret": "web-secret"},
                           "endpoints": {"authorization": f"{issuer.url}/authorize",
                                         "token": f"{issuer.url}/token"}}]  # fmt: skip
        return data

    async with forward_auth_world(tmp_path, with_login) as (gw, upstream, issuer):
        world = World(gw, upstream, issuer)
        api = [("Accept", "application/json")]
        for kind in HTTP_KINDS:
            sibling = await check_http(world, kind, "POST", "/web/x",
                                       [*api, ("Sec-Fetch-Site", "same-site")])  # fmt: skip
            assert sibling.status == 403, (kind, sibling.body)
            if kind != "nginx":
                assert b"cross-site-request" in sibling.body
            foreign = await check_http(world, kind, "POST", "/web/x",
                                       [*api, ("Origin", "https://evil.example")])  # fmt: skip
            assert foreign.status == 403, kind
            plain = await check_http(world, kind, "POST", "/web/x", api)
            assert plain.status == 401, kind  # judged as usual: no session
        assert upstream.received == []
