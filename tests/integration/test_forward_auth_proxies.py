"""Real host proxies asking the decision service: nginx ``auth_request``, Traefik
``ForwardAuth``, Caddy ``forward_auth`` (the README recipes), each in front of the recording
upstream. Every request is also sent to the gateway's own proxy listener, and the two must
agree: allowed or refused, the status and challenge the client gets, and what (if anything)
the upstream receives. Missing binaries skip these tests, except under CI, where they fail.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio

from gateway.app import Gateway
from tests.support import host_proxies
from tests.support.forward_auth import (
    CASES,
    IDENTITY,
    Case,
    bearer,
    forward_auth_config,
    forward_auth_world,
    raw_request,
    token_for,
)
from tests.support.host_proxies import HostProxy, ProxyUnavailable
from tests.support.issuer import TestIssuer
from tests.support.processes import Children
from tests.support.upstream import Received, RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")
KINDS = ("nginx", "traefik", "caddy")


@dataclass
class World:
    gateway: Gateway
    upstream: RecordingUpstream
    issuer: TestIssuer
    children: Children


EXTERNAL = "https://api.example"


def _config(upstream: RecordingUpstream, issuer: TestIssuer) -> dict:
    data = forward_auth_config(upstream, issuer, cache={"max_age": "30s"})
    bound = {"name": "cached-bound", "match": {"path": {"prefix": "/cached/bound"}},
             "upstream": "app", "dpop": {"mode": "optional", "external_url": EXTERNAL}}  # fmt: skip
    data["routes"].insert(0, bound)
    nonce = {"secret": "n" * 32}
    data["routes"].insert(0, {"name": "nonce", "match": {"path": {"prefix": "/nonce"}},
                              "upstream": "app", "dpop": {"mode": "required",
                              "external_url": EXTERNAL, "nonce": nonce}})  # fmt: skip
    # A browser login: its cookies are the gateway's, which no upstream may see.
    data["logins"] = [{"issuer": issuer.url, "external_url": EXTERNAL, "secrets": ["s" * 32],
                       "client": {"client_id": "web", "client_secret": "web-secret"},
                       "endpoints": {"authorization": f"{issuer.url}/authorize",
                                     "token": f"{issuer.url}/token"}}]  # fmt: skip
    return data


@pytest.fixture(scope="module")
def children() -> Iterator[Children]:
    procs = Children()
    yield procs
    procs.stop_all()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, children: Children
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("forward-auth")
    async with forward_auth_world(tmp, _config) as (gw, upstream, issuer):
        yield World(gw, upstream, issuer, children)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=KINDS)
async def proxy(
    request: pytest.FixtureRequest, world: World, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HostProxy]:
    kind = request.param
    assert world.gateway.decision is not None
    try:
        started = host_proxies.start(
            kind, world.children, tmp_path_factory.mktemp(kind),
            world.upstream.port, world.gateway.decision.port,
        )  # fmt: skip
    except ProxyUnavailable as exc:
        reason = str(exc)
    else:
        reason = None
    if reason is not None:
        if host_proxies.in_ci():
            pytest.fail(f"{kind}: {reason}; CI must run the real-proxy tests", pytrace=False)
        pytest.skip(f"{kind}: {reason}")
    await host_proxies.wait_serving(started)
    yield started
    world.children.stop(started.proc)  # type: ignore[arg-type]


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def identity_like(received: Received) -> dict[str, list[str]]:
    """Every header an upstream (CGI/WSGI folding included) could read as an identity."""
    found: dict[str, list[str]] = {}
    for name, value in received.headers:
        if canonical(name).startswith("x-auth-"):
            found.setdefault(canonical(name), []).append(value)
    return found


async def through(world: World, port: int, case: Case, extra: list[tuple[str, str]]):
    before = len(world.upstream.received)
    token = token_for(world.issuer, case.token)
    answer = await raw_request(port, case.method, case.target, bearer(token) + extra)
    return answer, world.upstream.received[before:]


SPOOFED = [("X-Auth-Subject", "evil"), ("X-Auth-Scopes", "admin")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_the_host_proxy_decides_as_the_gateway(
    world: World, proxy: HostProxy, case: Case
) -> None:
    direct, direct_reached = await through(world, world.gateway.proxy_port, case, SPOOFED)
    hosted, hosted_reached = await through(world, proxy.port, case, SPOOFED)
    why = f"{proxy.kind} {case.id}: {hosted.status} {hosted.body[:300]!r}\n{proxy.log_tail()}"
    if case.not_normal and proxy.kind != "traefik":
        # nginx and Caddy forward the path as the client sent it, not the normal one the
        # check would judge: refused, never forwarded. Traefik v3 cleans the path first
        # (sanitizePath), for the check and the upstream alike, so it is decided as usual.
        assert hosted.status == (403 if proxy.kind == "nginx" else 400), why
        assert hosted_reached == [], why
        return
    if direct.status == 200:
        assert hosted.status == 200, why
        assert len(hosted_reached) == 1, why
        expected = {canonical(n): v for n, v in identity_like(direct_reached[0]).items()}
        assert identity_like(hosted_reached[0]) == expected, why
        assert "evil" not in str(identity_like(hosted_reached[0]))
        return
    assert hosted_reached == [], why  # refused: the upstream receives nothing
    if direct.status in (401, 403, 503):
        assert hosted.status == direct.status, why
        if direct.status == 401 or proxy.kind != "nginx":
            assert hosted.header("WWW-Authenticate") == direct.header("WWW-Authenticate"), why
    elif proxy.kind == "nginx":
        # nginx relays only 401/403 from a check; a refusal is 403 (or nginx's own 400, or
        # its own 405 for a TRACE, which it refuses before asking).
        assert hosted.status in ((400, 403, 405) if case.method == "TRACE" else (400, 403)), why
    else:
        assert hosted.status == direct.status, why


async def test_spoofed_forwarding_headers_do_not_move_the_request(
    world: World, proxy: HostProxy
) -> None:
    """A client claiming another original request through the host proxy: the host proxy
    writes these headers itself, so the check still describes /admin/users."""
    spoofed = [("X-Original-URI", "/public/x"), ("X-Original-Method", "GET"),
               ("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "GET"),
               ("X-Forwarded-Host", "other.example"), ("X-Forwarded-Prefix", "/public"),
               ("X-Forwarded-Port", "1")]  # fmt: skip
    answer, reached = await through(world, proxy.port, Case("spoof", "GET", "/admin/users",
                                                            "read"), spoofed)  # fmt: skip
    assert answer.status == 403
    assert reached == []
    answer, reached = await through(world, proxy.port, Case("spoof", "GET", "/api/x", "none"),
                                    spoofed)  # fmt: skip
    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == 'Bearer realm="gateway"'
    assert reached == []


async def test_a_client_cannot_supply_identity_headers(world: World, proxy: HostProxy) -> None:
    """Names the routes set, in any case and with '_', never reach the upstream from the
    client, on an anonymous route (nothing set) or an authenticated one (ours set)."""
    spoofed = [("X-Auth-Subject", "evil"), ("x-auth-client-id", "evil"),
               ("X_Auth_Scopes", "evil"), ("X_AUTH_SUBJECT", "evil")]  # fmt: skip
    if proxy.kind != "nginx":  # nginx cannot remove by prefix: list every name (README)
        spoofed.append(("X-Auth-Role", "evil"))
    for case in (Case("anon", "GET", "/public/x", "none"), Case("read", "GET", "/api/x", "read")):
        answer, reached = await through(world, proxy.port, case, spoofed)
        assert answer.status == 200
        assert "evil" not in str(identity_like(reached[0])), (proxy.kind, reached[0].headers)
    anonymous = identity_like(world.upstream.received[-2])
    assert anonymous == {}


async def test_the_identity_reaches_the_upstream(world: World, proxy: HostProxy) -> None:
    answer, reached = await through(world, proxy.port, Case("who", "GET", "/whoami", "read"), [])
    assert answer.status == 200
    assert identity_like(reached[0]) == {
        "x-auth-subject": ["reader"], "x-auth-client-id": ["client-1"], "x-auth-scopes": ["read"],
    }  # fmt: skip
    assert {canonical(n) for n in IDENTITY} == set(identity_like(reached[0]))


async def test_an_untrusted_peer_cannot_ask(world: World, proxy: HostProxy) -> None:
    """Straight to the decision service from an address that is no host proxy."""
    assert world.gateway.decision is not None
    port = world.gateway.decision.port
    path = "/nginx" if proxy.kind == "nginx" else f"/{proxy.kind}"
    described = [("X-Original-URI", "/public/x"), ("X-Original-Method", "GET"),
                 ("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "GET"),
                 ("X-Forwarded-Host", "api.example")]  # fmt: skip
    answer = await raw_request(port, "GET", path, described, local="127.0.0.2")
    assert answer.status == (403 if proxy.kind == "nginx" else 400)
    assert answer.header("X-Auth-Subject") is None


async def _checks(world: World, kind: str) -> float:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{world.gateway.admin_port}/metrics"
        async with session.get(url) as response:
            text = await response.text()
    pattern = rf'gateway_decision_checks_total\{{host_proxy="{kind}",status="\d+"\}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)  # the others cache no checks
async def test_nginx_proxy_cache_reuses_an_allow_per_token(world: World, proxy: HostProxy) -> None:
    """The README recipe: allows cached by method, host, URI and Authorization for at most
    max-age; refusals never."""
    start = await _checks(world, "nginx")
    read = Case("cached", "GET", "/cached/api/x", "read")
    token = bearer(token_for(world.issuer, "read"))
    for _ in range(3):
        answer = await raw_request(proxy.port, "GET", read.target, token)
        assert answer.status == 200
    assert await _checks(world, "nginx") == start + 1
    other = bearer(token_for(world.issuer, "read"))
    assert (await raw_request(proxy.port, "GET", read.target, other)).status == 200
    assert (await raw_request(proxy.port, "GET", "/cached/api/y", token)).status == 200
    assert await _checks(world, "nginx") == start + 3  # another token, another URI: asked
    for _ in range(2):
        assert (await raw_request(proxy.port, "GET", read.target)).status == 401
    assert await _checks(world, "nginx") == start + 5  # a refusal is asked again each time
    # The allow cached from a request without cookies must not strip a later one's.
    before = len(world.upstream.received)
    cookie = [("Cookie", "csrftoken=x")]
    assert (await raw_request(proxy.port, "GET", read.target, token + cookie)).status == 200
    assert world.upstream.received[before].header("Cookie") == "csrftoken=x"


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)
async def test_nginx_never_reuses_an_allow_for_a_dpop_bound_token(
    world: World, proxy: HostProxy
) -> None:
    """nginx keys its cache on method, host, URI and Authorization. A DPoP-bound token's
    allow reused from it would let the token through again with no proof at all: each
    request is asked, and the one without a proof is refused."""
    from tests.support.dpop import client_key, proof

    key = client_key("ES256")
    token = world.issuer.mint({"cnf": {"jkt": key.jkt}}, exp_in=3600)
    target = "/cached/bound/x"
    dpop = proof(key, htu=EXTERNAL + target, token=token)
    before = len(world.upstream.received)
    with_proof = [("Authorization", f"DPoP {token}"), ("DPoP", dpop)]
    assert (await raw_request(proxy.port, "GET", target, with_proof)).status == 200
    stolen = [("Authorization", f"DPoP {token}")]
    assert (await raw_request(proxy.port, "GET", target, stolen)).status == 401
    assert (await raw_request(proxy.port, "GET", target, with_proof)).status == 401  # replayed
    assert len(world.upstream.received) == before + 1


@pytest.mark.parametrize("proxy", KINDS, indirect=True)
async def test_a_dpop_nonce_reaches_the_client_through_the_host_proxy(
    world: World, proxy: HostProxy
) -> None:
    """RFC 9449 §9: the 401 use_dpop_nonce is useless without its DPoP-Nonce header, and
    nginx relays only WWW-Authenticate from a check (the README recipe adds the nonce)."""
    from tests.support.dpop import client_key, proof

    key = client_key("ES256")
    token = world.issuer.mint({"cnf": {"jkt": key.jkt}})
    target = "/nonce/x"
    first = proof(key, htu=EXTERNAL + target, token=token)
    sent = [("Authorization", f"DPoP {token}"), ("DPoP", first)]
    asked = await raw_request(proxy.port, "GET", target, sent)
    assert asked.status == 401 and 'error="use_dpop_nonce"' in asked.header("WWW-Authenticate")
    nonce = asked.header("DPoP-Nonce")
    assert nonce, proxy.log_tail()
    retry = proof(key, htu=EXTERNAL + target, token=token, claims={"nonce": nonce})
    sent = [("Authorization", f"DPoP {token}"), ("DPoP", retry)]
    assert (await raw_request(proxy.port, "GET", target, sent)).status == 200


@pytest.mark.parametrize(
    ("cookies", "reaching"),
    [
        pytest.param("__Host-gw_session=stolen; app=1; __Host-gw_session.0=c", "app=1",
                     id="the-apps-cookies-stay"),
        pytest.param("__Host-gw_session=stolen", None, id="only-the-gateways"),
        pytest.param("app=1; theme=dark", "app=1; theme=dark", id="none-of-the-gateways"),
    ],
)  # fmt: skip
async def test_the_gateways_cookies_never_reach_the_upstream(
    world: World, proxy: HostProxy, cookies: str, reaching: str | None
) -> None:
    """As through the proxy listener, on every route (a browser sends the session cookie
    to every path of the host): a session id, or a cookie-store session with its tokens,
    in the upstream's hands (or its logs) is the session. The host proxy copies the
    check's ``Cookie`` (the client's without the gateway's) over the client's."""
    for port in (world.gateway.proxy_port, proxy.port):
        before = len(world.upstream.received)
        answer = await raw_request(port, "GET", "/public/x", [("Cookie", cookies)])
        assert answer.status == 200, (proxy.kind, answer.body, proxy.log_tail())
        received = world.upstream.received[before:]
        assert len(received) == 1
        assert received[0].header("Cookie") == reaching, (proxy.kind, port)
