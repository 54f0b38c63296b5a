"""WebSockets as byte tunnels through the real gateway (RFC 6455 §4; issue 14 item 3).

Raw sockets on both sides (``tests/support/ws_upstream.py``), so each test sees exactly the
bytes the gateway relayed: the upstream gets the normalised path as sent, frames pass
unchanged both ways in bounded memory, a route keeps at most its ``max_connections``
tunnels, open tunnels never starve the control plane, and a tunnel ends within a second of
its token's ``exp`` and of the token's or subject's eviction, local or relayed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.proxy.ws_frames import close_frame
from tests.support.gateway import running_gateway, wait_ready
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream
from tests.support.ws_upstream import (
    RawWebSocketClient,
    RawWebSocketUpstream,
    connect,
    field_value,
    masked_frame,
)


@pytest.fixture
async def ws_upstream() -> AsyncIterator[RawWebSocketUpstream]:
    upstream = RawWebSocketUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def introspection() -> AsyncIterator[TestIntrospectionServer]:
    server = TestIntrospectionServer()
    await server.start()
    yield server
    await server.close()


def config(
    ws: RawWebSocketUpstream,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer | None = None,
    http: RecordingUpstream | None = None,
) -> dict[str, Any]:
    issuer_section: dict[str, Any] = {
        "issuer": issuer.url, "keys": {"jwks_uri": issuer.jwks_url},
        "audiences": ["api://default"],
    }  # fmt: skip
    if introspection is not None:
        issuer_section["mode"] = "auto"
        issuer_section["introspection"] = {
            "endpoint": introspection.url,
            "client": {"client_id": "gateway", "client_secret": "gateway-secret"},
        }
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {
            "ws": {"url": ws.url, "timeouts": {"connect": "1s", "read": "1s"}},
            "http": {"url": (http.url if http else ws.url)},
        },
        "issuers": [issuer_section],
        "defaults": {"auth": "anonymous"},
        "routes": [
            {"name": "limited", "match": {"path": "/limited/**"}, "upstream": "ws",
             "websocket": {"max_connections": 2}},
            {"name": "secure", "match": {"path": "/secure/**"}, "upstream": "ws",
             "websocket": True, "auth": "required", "require": {"scopes": {"all": ["read"]}}},
            {"name": "read", "match": {"path": "/read/**"}, "upstream": "http",
             "auth": "required", "require": {"scopes": {"all": ["read"]}}},
            {"name": "ws", "match": {"path": "/ws/**"}, "upstream": "ws", "websocket": True},
            {"name": "rest", "match": {"path": {"prefix": "/"}}, "upstream": "http"},
        ],
    }  # fmt: skip


@pytest.fixture
async def gateway(
    tmp_path: Path, ws_upstream: RawWebSocketUpstream, issuer: TestIssuer
) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, config(ws_upstream, issuer)) as gw:
        await wait_ready(gw)
        yield gw


def assert_switched(client: RawWebSocketClient) -> None:
    assert client.status == 101, client.head
    assert field_value(client.head, b"Sec-WebSocket-Accept") == client.accept
    assert (field_value(client.head, b"Upgrade") or b"").lower() == b"websocket"


async def test_the_upstream_receives_the_exact_path_and_query(
    gateway: Gateway, ws_upstream: RawWebSocketUpstream
) -> None:
    """Found in review: the relay re-encoded the path (``%3B`` arrived as ``;``, which a
    servlet upstream reads as a path parameter). Characters a URL library would decode —
    ``%40``, ``%2C``, ``%3A`` in the path, ``%3B`` and ``%2F`` in the query — arrive as sent."""
    target = "/ws/a%40b%2Cc%3Ad/caf%C3%A9/feed?q=%3B&r=a%2Fb&s"
    client = await connect(gateway.proxy_port, target, "Sec-WebSocket-Protocol: chat")
    try:
        assert_switched(client)
        assert field_value(client.head, b"Sec-WebSocket-Protocol") == b"chat"
        head = ws_upstream.heads[-1]
        assert head.startswith(b"GET " + target.encode() + b" HTTP/1.1\r\n"), head[:120]
        assert field_value(head, b"Via") == b"1.1 gateway"
        assert field_value(head, b"Sec-WebSocket-Protocol") == b"chat"
        assert (field_value(head, b"Connection"), field_value(head, b"Upgrade")) == (
            b"Upgrade",
            b"websocket",
        )
    finally:
        client.close()


async def test_frames_pass_both_ways_byte_for_byte(
    gateway: Gateway, ws_upstream: RawWebSocketUpstream
) -> None:
    client = await connect(gateway.proxy_port, "/ws/echo")
    try:
        assert_switched(client)
        sent = b"".join(masked_frame(os.urandom(n)) for n in (0, 1, 125, 126, 65535, 70000))
        sent += b"HTTP/1.1 200 OK\r\n\r\n"  # bytes that look like HTTP are just bytes here
        client.writer.write(sent)
        echoed = await asyncio.wait_for(client.reader.readexactly(len(sent)), 5)
        assert echoed == sent
    finally:
        client.close()


async def test_only_a_get_opens_a_websocket(tmp_path: Path, issuer: TestIssuer) -> None:
    """RFC 6455 §4.1: the handshake is a GET. A POST asking to upgrade on a WebSocket route
    is an ordinary request: forwarded with its body and without Upgrade, answered as HTTP,
    and the connection goes on with the next request."""
    upstream = RecordingUpstream(name="http")
    await upstream.start()
    ws = RawWebSocketUpstream()
    cfg = config(ws, issuer, http=upstream)
    cfg["upstreams"]["ws"]["url"] = upstream.url  # an HTTP upstream behind the WebSocket route
    body = b"hello"
    post = (b"POST /ws/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Content-Length: 5\r\n\r\n" + body)  # fmt: skip
    after = b"GET /ws/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    try:
        async with running_gateway(tmp_path, cfg) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(post + after)
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
    finally:
        await upstream.close()
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert b"HTTP/1.1 101" not in data
    assert data.count(b"HTTP/1.1 200 ") == 2
    first, second = upstream.received
    assert (first.method, first.raw_path, first.body_size) == ("POST", "/ws/x", 5)
    assert first.header("Upgrade") is None
    assert (second.method, second.raw_path) == ("GET", "/ws/after")


async def test_beyond_max_connections_a_route_answers_503(
    gateway: Gateway, ws_upstream: RawWebSocketUpstream
) -> None:
    first = await connect(gateway.proxy_port, "/limited/a")
    second = await connect(gateway.proxy_port, "/limited/b")
    third = await connect(gateway.proxy_port, "/limited/c")
    try:
        assert_switched(first)
        assert_switched(second)
        assert third.status == 503, third.head
        assert b"application/problem+json" in third.head
        assert len(ws_upstream.heads) == 2  # the third never reached the upstream
        other = await connect(gateway.proxy_port, "/ws/unlimited")  # another route's count
        assert_switched(other)
        other.close()
        first.close()
        for _ in range(40):  # the place is free once the tunnel has ended
            fourth = await connect(gateway.proxy_port, "/limited/d")
            if fourth.status == 101:
                break
            fourth.close()
            await asyncio.sleep(0.05)
        assert_switched(fourth)
        fourth.close()
    finally:
        for client in (first, second, third):
            client.close()


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_an_oversized_frame_is_relayed_without_growing_memory(
    gateway: Gateway, ws_upstream: RawWebSocketUpstream
) -> None:
    """Found in review: messages were unbounded (one unfinished frame declaring 4 GiB grew
    the gateway by 120 MB). As a byte tunnel with backpressure, a slow upstream holds the
    client back instead: 128 MiB of a 4 GiB frame pass with flat memory."""
    ws_upstream.mode, ws_upstream.read_size, ws_upstream.read_pause = "count", 1 << 18, 0.002
    client = await connect(gateway.proxy_port, "/ws/big")
    assert_switched(client)
    baseline = peak = _rss()

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _rss())
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    header = masked_frame(b"", declared=4 << 30)
    total = 128 << 20
    block = os.urandom(1 << 20)
    try:
        client.writer.write(header)
        for _ in range(total // len(block)):
            client.writer.write(block)
            await client.writer.drain()
        for _ in range(200):
            if ws_upstream.received >= total + len(header):
                break
            await asyncio.sleep(0.05)
    finally:
        sampler.cancel()
        client.close()
    assert ws_upstream.received == total + len(header)
    # The test process holds client, gateway and upstream: all of them stayed flat.
    assert peak - baseline < 32 << 20, f"memory grew by {(peak - baseline) >> 20} MiB"


async def test_150_open_tunnels_do_not_starve_introspection_or_key_fetches(
    tmp_path: Path,
    ws_upstream: RawWebSocketUpstream,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream: RecordingUpstream,
) -> None:
    """Found in review: WebSockets shared the control plane's 100-connection client, so
    100 open sockets made new opaque tokens fail with 503 and stopped key refetches."""
    cfg = config(ws_upstream, issuer, introspection, http=upstream)
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        clients = [await connect(gw.proxy_port, f"/ws/{n}") for n in range(150)]
        try:
            assert all(client.status == 101 for client in clients)
            assert ws_upstream.open_connections == 150
            opaque = secrets.token_urlsafe(32)
            introspection.add_token(opaque, sub="svc", scope="read", aud="api://default",
                                    exp=int(time.time() + 300))  # fmt: skip
            rotated = issuer.rotate()
            fresh = issuer.mint(kid=rotated)
            url = f"http://127.0.0.1:{gw.proxy_port}/read/x"
            async with aiohttp.ClientSession() as s:
                for token in (opaque, fresh):
                    headers = {"Authorization": f"Bearer {token}"}
                    async with asyncio.timeout(5), s.get(url, headers=headers) as r:
                        assert r.status == 200, await r.text()
            assert introspection.calls == 1
        finally:
            for client in clients:
                client.close()


async def _closed_at(client: RawWebSocketClient, limit: float) -> float | None:
    return time.time() if await client.closed_within(limit) else None


def unmasked_close(data: bytes) -> bytes:
    """The payload of the masked Close frame ``data`` is (what a client sends)."""
    assert data[0] == 0x88, data
    assert data[1] & 0x80, "a frame to the upstream must be masked"
    mask, payload = data[2:6], data[6:]
    assert len(payload) == data[1] & 0x7F
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


async def test_a_tunnel_closes_within_a_second_of_its_token_expiry(
    gateway: Gateway, issuer: TestIssuer, ws_upstream: RawWebSocketUpstream
) -> None:
    """Both sides are told why with a Close frame, 1008 (RFC 6455 §7.4.1), where the
    stream stands between frames; a stream in the middle of a frame is only closed."""
    token = issuer.mint(scope="read", exp_in=2.5)
    exp = int(time.time() + 2.5)
    between = await connect(gateway.proxy_port, "/secure/feed", f"Authorization: Bearer {token}")
    assert_switched(between)
    hello = masked_frame(b"hello")  # echoed by the upstream as it is
    between.writer.write(hello)
    closed = await _closed_at(between, 6)
    between.close()
    assert closed is not None, "the tunnel outlived its token"
    assert exp - 0.05 <= closed <= exp + 1.0, closed - exp
    assert between.tail == hello + close_frame(1008, "the token expired")
    assert ws_upstream.tail.startswith(hello)  # written before the gateway closed it
    assert unmasked_close(ws_upstream.tail[len(hello) :]) == b"\x03\xf0the token expired"


async def test_a_token_within_the_leeway_past_exp_opens_no_tunnel(
    gateway: Gateway, issuer: TestIssuer, ws_upstream: RawWebSocketUpstream
) -> None:
    """The leeway is clock skew for one request (a plain request passes: test_attacks_jwt's
    exp-within-leeway control); an upgrade, a connection that would outlive it and close
    at once with 1008, is 401 expired."""
    token = issuer.mint(scope="read", exp_in=-10)
    refused = await connect(gateway.proxy_port, "/secure/feed", f"Authorization: Bearer {token}")
    assert refused.status == 401, refused.head
    assert b'error="invalid_token"' in refused.head
    refused.close()


async def test_a_tunnel_in_the_middle_of_a_frame_at_expiry_is_only_closed(
    gateway: Gateway, issuer: TestIssuer, ws_upstream: RawWebSocketUpstream
) -> None:
    token = issuer.mint(scope="read", exp_in=1.5)
    client = await connect(gateway.proxy_port, "/secure/feed", f"Authorization: Bearer {token}")
    assert_switched(client)
    partial = masked_frame(b"x" * 1000)[:20]  # the upstream echoes it: both ways mid-frame
    client.writer.write(partial)
    assert await client.closed_within(5)
    client.close()
    assert client.tail == partial and ws_upstream.tail == partial


async def test_a_tunnel_closes_within_a_second_of_an_eviction(
    gateway: Gateway, issuer: TestIssuer
) -> None:
    alice = issuer.mint({"sub": "alice"}, scope="read", exp_in=300)
    alice_2 = issuer.mint({"sub": "alice"}, scope="read", exp_in=300)
    bob = issuer.mint({"sub": "bob"}, scope="read", exp_in=300)
    carol = issuer.mint({"sub": "carol"}, scope="read", exp_in=300)
    clients = {
        name: await connect(gateway.proxy_port, "/secure/feed", f"Authorization: Bearer {token}")
        for name, token in (("alice", alice), ("alice_2", alice_2), ("bob", bob), ("carol", carol))
    }
    try:
        for client in clients.values():
            assert_switched(client)
        async with aiohttp.ClientSession() as s:
            evict = f"http://127.0.0.1:{gateway.admin_port}/cache/evict"
            async with s.post(evict, json={"token": alice}) as r:  # one token
                assert r.status == 200
            assert await clients["alice"].closed_within(1.0)
            assert clients["alice"].tail == close_frame(1008, "the token was revoked")
            assert not await clients["alice_2"].closed_within(0.2)
            async with s.post(evict, json={"subject": "alice"}) as r:  # every token of alice
                assert r.status == 200
            assert await clients["alice_2"].closed_within(1.0)
        # An eviction another worker made, relayed by the supervisor.
        digest = hashlib.sha256(bob.encode()).hexdigest()
        gateway.receive_eviction({"op": "token", "digest": digest, "origin": "another"})
        assert await clients["bob"].closed_within(1.0)
        assert not await clients["carol"].closed_within(0.3)
    finally:
        for client in clients.values():
            client.close()


async def test_a_refusing_upstream_gives_502_and_a_silent_one_504(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """The client is switched only after the upstream's 101 accepted its key."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    ws = RawWebSocketUpstream()
    cfg = config(ws, issuer, http=upstream)
    cfg["upstreams"]["ws"]["url"] = upstream.url  # answers 200 JSON: no 101
    cfg["upstreams"]["quiet"] = {
        "url": f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}",
        "timeouts": {"connect": "1s", "read": "500ms"},
    }
    cfg["routes"].insert(0, {"match": {"path": "/quiet/**"}, "upstream": "quiet",
                             "websocket": True})  # fmt: skip
    try:
        async with running_gateway(tmp_path, cfg) as gw:
            refused = await connect(gw.proxy_port, "/ws/x")
            started = time.monotonic()
            quiet = await connect(gw.proxy_port, "/quiet/x")
            waited = time.monotonic() - started
    finally:
        silent.close()
    assert refused.status == 502, refused.head
    assert quiet.status == 504 and 0.4 < waited < 2.0, (quiet.head, waited)
    for client in (refused, quiet):
        client.close()


async def test_an_invalid_client_handshake_is_refused_before_the_upstream_is_asked(
    gateway: Gateway, ws_upstream: RawWebSocketUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
    writer.write(b"GET /ws/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")  # fmt: skip
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert ws_upstream.heads == []


async def test_a_stopping_gateway_says_it_is_going_away(
    tmp_path: Path, ws_upstream: RawWebSocketUpstream, issuer: TestIssuer
) -> None:
    """Shutdown closes the tunnels still open after the drain with 1001 (going away)."""
    settings = config(ws_upstream, issuer) | {"shutdown": {"drain_timeout": "0.2s"}}
    async with running_gateway(tmp_path, settings) as gw:
        await wait_ready(gw)
        client = await connect(gw.proxy_port, "/ws/feed")
        assert_switched(client)
    assert await client.closed_within(5)
    client.close()
    assert client.tail == close_frame(1001, "the gateway is stopping")


async def test_the_close_frame_reaches_a_client_that_is_still_sending(
    gateway: Gateway, issuer: TestIssuer, ws_upstream: RawWebSocketUpstream
) -> None:
    """A client whose frames back up behind a slow upstream has unread bytes at the
    gateway when its token expires: closing that socket at once would make the kernel
    reset it and throw the Close frame away. The gateway half-closes and reads on."""
    ws_upstream.mode, ws_upstream.read_size, ws_upstream.read_pause = "count", 4096, 0.05
    token = issuer.mint(scope="read", exp_in=1.5)
    client = await connect(gateway.proxy_port, "/secure/feed", f"Authorization: Bearer {token}")
    assert_switched(client)
    client.writer.write(masked_frame(b"x" * 65536) * 32)  # 2 MiB the upstream reads slowly
    assert await client.closed_within(6)
    client.close()
    assert client.tail == close_frame(1008, "the token expired")
