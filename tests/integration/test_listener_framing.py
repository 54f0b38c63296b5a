"""The listener alone on a socket: framing, limits, versions, pipelining, switching protocols.

Raw bytes go to the real listener (RFC 9112 §2-3, §6-7, §9.3; RFC 9110 §7.8) in front of an
application that echoes what it was handed. The refusal tables are the gateway's own attack
suite's (tests/integration/test_attacks_http.py): each must be refused by the listener
itself, with nothing reaching the application.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.listener import HttpListener, Request
from gateway.problems import GatewayError
from tests.integration.test_attacks_http import (
    MAX_FIELD,
    MAX_HEADERS,
    MAX_LINE,
    OVERSIZED,
    REFUSED_FRAMING,
    SMUGGLED,
    TOLERATED_FRAMING,
)
from tests.support.listener import EchoApp, exchange, serving

LIMITS = {"max_request_line": MAX_LINE, "max_header_size": MAX_FIELD, "max_headers": MAX_HEADERS}
GET = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


def problem_type(data: bytes) -> str:
    return json.loads(data.partition(b"\r\n\r\n")[2])["type"]


@pytest.mark.parametrize("request_bytes", REFUSED_FRAMING)
async def test_ambiguous_framing_is_refused_by_the_listener(request_bytes: bytes) -> None:
    app = EchoApp()
    async with serving(app, **LIMITS) as listener:
        result = await exchange(listener.port, request_bytes)
    assert result.statuses == [400], result.data[:300]
    assert result.closed
    slug = problem_type(result.data).rsplit(":", 1)[1]
    assert slug in {"bad-request", "bad-framing", "malformed-body"}
    assert app.seen == []


@pytest.mark.parametrize("request_bytes", TOLERATED_FRAMING)
async def test_valid_framing_keeps_the_next_request_separate(request_bytes: bytes) -> None:
    app = EchoApp()
    async with serving(app, **LIMITS) as listener:
        result = await exchange(listener.port, request_bytes)
    assert result.statuses == [200, 200], result.data[:300]
    first, second = app.seen
    assert (first["method"], first["target"], first["body_size"]) == ("POST", "/public", 5)
    assert second["target"] == "/admin/secret"
    assert not any(name.lower() == "x-auth-subject" for name, _ in first["headers"])


@pytest.mark.parametrize(("request_bytes", "allowed"), OVERSIZED)
async def test_oversized_heads_are_refused_and_closed(request_bytes: bytes, allowed: set) -> None:
    app = EchoApp()
    async with serving(app, **LIMITS) as listener:
        result = await exchange(listener.port, request_bytes)
    assert len(result.statuses) == 1 and result.statuses[0] in allowed, result.data[:200]
    assert result.closed
    assert app.seen == []


async def test_an_oversized_head_is_refused_before_it_is_all_sent() -> None:
    """A client still sending an endless field gets 431 and a closed connection."""
    async with serving(EchoApp(), **LIMITS) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        answer = b""
        try:
            for _ in range(100):
                writer.write(b"v" * 1000)
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_http10_with_transfer_encoding_is_refused_and_nothing_behind_it_runs() -> None:
    """RFC 9112 §6.1: faulty framing; the pipelined request must never be processed."""
    app = EchoApp()
    head = b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    async with serving(app) as listener:
        result = await exchange(listener.port, data)
    assert result.statuses == [400]
    assert result.closed
    assert problem_type(result.data) == "urn:oauth-gateway:problem:bad-framing"
    assert app.seen == []


async def test_a_refused_request_behind_a_good_one_is_answered_after_it_in_order() -> None:
    app = EchoApp()
    bad = b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    async with serving(app) as listener:
        result = await exchange(listener.port, GET + bad + GET)
    assert result.statuses == [200, 400]
    assert result.closed
    assert [seen["target"] for seen in app.seen] == ["/next"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /x\r\n\r\n", id="http09"),
        pytest.param(b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", id="http20"),
        pytest.param(b"GET /x HTTP/1.2\r\nHost: x\r\n\r\n", id="http12"),
    ],
)
async def test_other_versions_get_505(request_bytes: bytes) -> None:
    app = EchoApp()
    async with serving(app) as listener:
        result = await exchange(listener.port, request_bytes)
    assert result.statuses == [505]
    assert app.seen == []


async def test_header_bytes_reach_the_application_exactly() -> None:
    """RFC 9110 §5.5: obs-text is relayable as received; nothing is re-encoded."""
    app = EchoApp()
    data = (
        b"GET /caf%C3%A9?q=%ff&a=%2F HTTP/1.1\r\n"
        b"Host: x\r\nX-Latin: \xe4\xff \r\nx-lower: A\tB\r\n\r\n"
    )
    async with serving(app) as listener:
        result = await exchange(listener.port, data)
    [seen] = app.seen
    assert seen["target"] == "/caf%C3%A9?q=%ff&a=%2F"
    assert [(k.encode("latin-1"), v.encode("latin-1")) for k, v in seen["headers"]] == [
        (b"Host", b"x"),
        (b"X-Latin", b"\xe4\xff"),
        (b"x-lower", b"A\tB"),
    ]
    assert result.statuses == [200]


async def test_trailers_never_reach_the_application() -> None:
    app = EchoApp()
    data = (
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Auth-Subject: admin\r\nX-Auth-Scopes: admin\r\n\r\n"
    )
    async with serving(app) as listener:
        await exchange(listener.port, data)
    [seen] = app.seen
    assert seen["body_size"] == 5
    assert [name for name, _ in seen["headers"]] == ["Host", "Transfer-Encoding"]


# --- pipelining -------------------------------------------------------------------------------


class OrderedApp:
    """Records when each request starts and finishes; the first one is slow."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, request: Request) -> None:
        name = request.target.decode()
        self.events.append(f"start {name}")
        await asyncio.sleep(0.2 if name == "/1" else 0)
        self.events.append(f"answer {name}")
        request.respond(200, [], name.encode())


async def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    app = OrderedApp()
    data = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in (1, 2, 3))
    async with serving(app) as listener:
        result = await exchange(listener.port, data)
    assert [r.body for r in result.responses()] == [b"/1", b"/2", b"/3"]
    assert app.events == ["start /1", "answer /1", "start /2", "answer /2", "start /3", "answer /3"]


async def test_a_deep_pipeline_is_bounded_then_closed() -> None:
    """More pipelined requests than the bound in one read: the queued ones are answered in
    order, then the connection closes (RFC 9112 §9.3.2: the client retries the rest)."""
    app = OrderedApp()
    data = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(200))
    async with serving(app, max_pipeline=8) as listener:
        result = await exchange(listener.port, data)
    bodies = [r.body for r in result.responses()]
    assert 1 <= len(bodies) <= 9
    assert bodies == [b"/p%d" % i for i in range(len(bodies))]
    assert result.closed


# --- switching protocols ----------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    """The new protocol after a 101: echoes raw bytes back, upper-cased."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())  # type: ignore[attr-defined]


class UpgradingApp:
    def __init__(self, allow: bool) -> None:
        self.allow = allow
        self.seen: list[tuple[str, bytes | None]] = []

    def __call__(self, request: Request) -> None:
        self.seen.append((request.target.decode(), request.upgrade))
        if request.upgrade is not None and self.allow:
            request.switch_protocols(
                EchoProtocol(), [(b"Connection", b"Upgrade"), (b"Upgrade", request.upgrade)]
            )
        else:
            request.respond(401 if request.upgrade else 200, [], b"no")


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


async def test_switching_protocols_hands_over_the_raw_connection_with_early_bytes() -> None:
    app = UpgradingApp(allow=True)
    async with serving(app) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(UPGRADE + b"early bytes ")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert (
            head
            == b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.readexactly(12), 2) == b"EARLY BYTES "
        writer.write(b"GET / HTTP/1.1\r\n")  # now just bytes of the new protocol
        assert await asyncio.wait_for(reader.readexactly(16), 2) == b"GET / HTTP/1.1\r\n"
        assert listener.open_connections == 0  # handed over: no longer the listener's
        writer.close()
    assert app.seen == [("/ws", b"echo")]


async def test_an_upgrade_refused_by_the_application_keeps_http_going() -> None:
    app = UpgradingApp(allow=False)
    async with serving(app) as listener:
        result = await exchange(listener.port, UPGRADE + GET)
    assert result.statuses == [401, 200]
    assert app.seen == [("/ws", b"echo"), ("/next", None)]


async def test_a_post_with_upgrade_is_an_ordinary_request() -> None:
    """RFC 6455 §4.1: only a GET opens a WebSocket; a POST keeps its body and its place."""
    app = EchoApp()
    post = (
        b"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    async with serving(app) as listener:
        result = await exchange(listener.port, post + GET)
    assert result.statuses == [200, 200]
    assert [(s["target"], s["body_size"]) for s in app.seen] == [("/ws", 5), ("/next", 0)]


# --- refusals are reported ------------------------------------------------------------------


async def test_refusals_are_reported_to_the_hook() -> None:
    reported: list[tuple[int, str | None]] = []

    def hook(error: GatewayError, remote: str | None) -> None:
        reported.append((error.status, remote))

    async with serving(EchoApp(), on_refusal=hook) as listener:
        await exchange(listener.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert reported == [(400, "127.0.0.1")]


async def test_shutdown_does_not_wait_for_connections_handed_over() -> None:
    """A tunnel belongs to the application after the 101: the listener's drain must not
    wait for it (the application closes its tunnels on shutdown)."""
    listener = HttpListener(UpgradingApp(allow=True))
    await listener.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(UPGRADE)
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert await asyncio.wait_for(listener.close(drain_timeout=5), 1) is True
    writer.write(b"still here")
    assert await asyncio.wait_for(reader.readexactly(10), 2) == b"STILL HERE"
    writer.close()
