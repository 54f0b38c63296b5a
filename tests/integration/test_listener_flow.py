"""The listener alone on a socket: keep-alive, streaming both ways with backpressure,
100-continue, client disconnects, timeouts, resets and graceful shutdown (RFC 9112 §6-9,
RFC 9110 §10.1.1).

Real clients (aiohttp, raw sockets) against the real listener; each application below is
a few lines that record what it saw, so every test checks both sides.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.listener import HttpListener, ListenerLimits, Request
from gateway.problems import InvalidToken
from tests.support.listener import EchoApp, exchange, serving

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One Content-Length framed response: its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


# --- keep-alive -------------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    app = EchoApp()
    async with serving(app) as listener:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            base = f"http://127.0.0.1:{listener.port}"
            for i in range(20):
                async with session.post(f"{base}/{i}", data=b"x" * i) as r:
                    assert r.status == 200
                    assert (await r.json())["body_size"] == i
            assert listener.open_connections == 1
    assert [seen["target"] for seen in app.seen] == [f"/{i}" for i in range(20)]


async def test_http10_keep_alive_is_confirmed_in_the_response() -> None:
    async with serving(EchoApp()) as listener:
        reader, writer = await open_raw(listener.port)
        request = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        writer.write(request)
        head, _ = await read_response(reader)
        assert b"\r\nConnection: keep-alive\r\n" in head
        writer.write(request.replace(b"keep-alive", b"close"))
        head, _ = await read_response(reader)
        assert b"\r\nConnection: close\r\n" in head
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()


# --- streaming with backpressure --------------------------------------------------------------


class SlowReader:
    """Reads the body slowly and records the most the listener ever held unread."""

    async def __call__(self, request: Request) -> None:
        body, total, peak = request.body, 0, 0
        while True:
            peak = max(peak, body.received - body.consumed)
            data = await body.read()
            if not data:
                break
            total += len(data)
            await asyncio.sleep(0.002)
        request.respond(200, [], json.dumps({"total": total, "peak": peak}).encode())


async def test_a_fast_upload_to_a_slow_reader_is_held_to_the_high_water_mark() -> None:
    size, high = 8 << 20, 64 << 10

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // 65536):
            yield b"u" * 65536

    async with serving(SlowReader(), body_high_water=high, body_low_water=16 << 10) as listener:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{listener.port}/up"
            async with session.post(url, data=upload()) as response:
                result = json.loads(await response.read())
    assert result["total"] == size
    # One socket read beyond the mark at most (uvloop reads up to 256 KiB at a time).
    assert result["peak"] <= high + (256 << 10)


class Firehose:
    """Streams a large body; records how far it got."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.written = 0

    async def __call__(self, request: Request) -> None:
        stream = request.start_response(200, [], length=self.total)
        block = b"d" * 65536
        while self.written < self.total:
            await stream.write(block)
            self.written += len(block)
        stream.end()


async def test_a_streamed_response_waits_for_a_client_that_stops_reading() -> None:
    total = 128 << 20
    app = Firehose(total)
    async with serving(app) as listener:
        sock = socket.create_connection(("127.0.0.1", listener.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(GET)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await asyncio.sleep(0.5)
        stalled_at = app.written
        await asyncio.sleep(0.3)
        assert app.written == stalled_at < total // 4, "the writer did not wait for the client"
        received = 0
        while received < total:
            received += len(await asyncio.wait_for(reader.read(1 << 20), 5))
        assert received == total
        writer.close()
    assert app.written == total


class Framings:
    """One response shape per target."""

    async def __call__(self, request: Request) -> None:
        target = request.target
        if target == b"/chunked":
            stream = request.start_response(200, [(b"X-A", b"1")], body=b"ab")
            await stream.write(b"cd")
            stream.end()
        elif target == b"/length":
            request.respond(200, [], b"four")
        elif target == b"/head-length":
            request.respond(200, [], b"ignored", length=1234)
        elif target == b"/no-content":
            request.respond(204, [], b"dropped")
        elif target == b"/not-modified":
            stream = request.start_response(304, [], length=99)
            await stream.write(b"dropped")
            stream.end()
        elif target == b"/short":
            stream = request.start_response(200, [], length=100, body=b"x" * 10)
            stream.end()


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        pytest.param(
            b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n",
            id="chunked-for-http11",
        ),
        pytest.param(
            b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\nabcd",
            id="close-delimited-for-http10",
        ),
        pytest.param(
            b"HEAD /head-length HTTP/1.1\r\nHost: x\r\n\r\n" + GET.replace(b"/", b"/length", 1),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfour",
            id="head-announces-length-sends-no-body",
        ),
        pytest.param(
            b"GET /no-content HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            id="204-no-length-no-body",
        ),
        pytest.param(
            b"GET /not-modified HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
            id="304-streamed-drops-body",
        ),
    ],
)
async def test_response_framing(request_bytes: bytes, expected: bytes) -> None:
    async with serving(Framings()) as listener:
        result = await exchange(listener.port, request_bytes, quiet=0.3)
    assert result.data == expected


async def test_a_streamed_response_shorter_than_its_length_is_reset() -> None:
    async with serving(Framings()) as listener:
        result = await exchange(listener.port, b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
    assert result.closed
    assert result.data.endswith(b"\r\n\r\n" + b"x" * 10) or result.reset


# --- 100-continue -----------------------------------------------------------------------------

EXPECT = b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"


async def test_100_continue_is_sent_only_when_the_application_asks() -> None:
    async with serving(EchoApp()) as listener:
        reader, writer = await open_raw(listener.port)
        writer.write(EXPECT)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body)["body_size"] == 5
        writer.close()


async def test_a_refusal_without_100_continue_closes_the_connection() -> None:
    """RFC 9110 §10.1.1: the client may or may not send the body now, so the listener says
    it will close rather than guess where the next request starts."""
    seen: list[bytes] = []

    def refuse(request: Request) -> None:
        seen.append(request.target)
        request.respond(401, [(b"WWW-Authenticate", b"Bearer")], b"no")

    async with serving(refuse) as listener:
        reader, writer = await open_raw(listener.port)
        writer.write(EXPECT)
        head, _ = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 401 ")
        assert b"\r\nConnection: close\r\n" in head
        writer.write(b"hello" + GET)  # the body after all, and a request behind it
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
    assert seen == [b"/e"]


async def test_aiohttp_expect_100_continue_round_trip() -> None:
    async with serving(EchoApp()) as listener, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{listener.port}/e"
        async with session.post(url, data=b"x" * 1000, expect100=True) as response:
            assert (await response.json())["body_size"] == 1000


# --- client gone ------------------------------------------------------------------------------


class Waiting:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.gone: asyncio.Future[bool] | None = None
        self.observed: list[bool] = []

    async def __call__(self, request: Request) -> None:
        self.gone = request.wait_disconnected()
        try:
            self.observed.append(await asyncio.wait_for(asyncio.shield(self.gone), 10))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_that_leaves_cancels_the_application_task(how: str) -> None:
    app = Waiting()
    async with serving(app) as listener:
        _, writer = await open_raw(listener.port)
        writer.write(GET)
        await asyncio.sleep(0.1)
        if how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        await asyncio.wait_for(app.cancelled.wait(), 2)
    assert app.gone is not None and app.gone.result() is True


async def test_without_cancellation_the_application_is_told_the_client_left() -> None:
    app = Waiting()
    async with serving(app, cancel_on_disconnect=False) as listener:
        _, writer = await open_raw(listener.port)
        writer.write(GET)
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(100):
            if app.observed:
                break
            await asyncio.sleep(0.02)
    assert app.observed == [True]
    assert not app.cancelled.is_set()


async def test_wait_disconnected_says_false_once_the_response_is_finished() -> None:
    futures: list[asyncio.Future[bool]] = []

    def answer(request: Request) -> None:
        request.respond(200, [], b"ok")
        futures.append(request.wait_disconnected())

    async with serving(answer) as listener:
        await exchange(listener.port, GET, quiet=0.2)
    assert [f.result() for f in futures] == [False]


# --- timeouts ---------------------------------------------------------------------------------


async def test_an_unfinished_head_gets_408_at_the_header_timeout() -> None:
    async with serving(EchoApp(), header_timeout=0.5, keepalive_timeout=5) as listener:
        reader, writer = await open_raw(listener.port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = await asyncio.wait_for(reader.read(), 5)
        elapsed = time.monotonic() - started
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert 0.4 <= elapsed < 1.5


async def test_a_trickled_head_is_cut_off_counting_from_the_accept() -> None:
    async with serving(EchoApp(), header_timeout=0.6, keepalive_timeout=5) as listener:
        reader, writer = await open_raw(listener.port)
        started = time.monotonic()
        closed_after = None
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            if reader.at_eof():
                closed_after = time.monotonic() - started
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
            await asyncio.sleep(0.05)
        writer.close()
    assert closed_after is not None and closed_after < 1.5


async def test_a_silent_new_connection_is_closed_quietly_at_the_header_timeout() -> None:
    async with serving(EchoApp(), header_timeout=0.4, keepalive_timeout=5) as listener:
        reader, writer = await open_raw(listener.port)
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 5)
        elapsed = time.monotonic() - started
        writer.close()
    assert answer == b""  # no 408 nobody asked for
    assert 0.3 <= elapsed < 1.5


async def test_an_idle_keep_alive_connection_waits_for_the_keepalive_timeout() -> None:
    async with serving(EchoApp(), header_timeout=0.3, keepalive_timeout=1.2) as listener:
        reader, writer = await open_raw(listener.port)
        writer.write(GET)
        await read_response(reader)
        await asyncio.sleep(0.7)  # longer than the header timeout, within keep-alive
        writer.write(GET)
        head, _ = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        elapsed = time.monotonic() - started
        writer.close()
    assert 0.9 <= elapsed < 2.0


async def test_a_slow_steady_upload_is_not_timed_out_by_the_listener() -> None:
    app = EchoApp()
    async with serving(app, header_timeout=0.3, keepalive_timeout=0.5) as listener:
        reader, writer = await open_raw(listener.port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):  # two seconds: longer than both timeouts
            await asyncio.sleep(0.2)
            writer.write(b"s")
        head, body = await read_response(reader)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["body_size"] == 10


# --- the application's failures ---------------------------------------------------------------


class Failing:
    async def __call__(self, request: Request) -> None:
        if request.target == b"/gateway-error":
            raise InvalidToken("The token is not valid.")
        if request.target == b"/bug":
            raise ValueError("bug")
        if request.target == b"/after-start":
            stream = request.start_response(200, [])
            await stream.write(b"partial")
            raise ValueError("failed mid-response")
        if request.target == b"/abort":
            request.start_response(200, [], length=100, body=b"x" * 10)
            request.abort()
        # "/silent": returns without answering


@pytest.mark.parametrize(
    ("target", "status"),
    [("/gateway-error", 401), ("/bug", 500), ("/silent", 500)],
)
async def test_an_application_that_does_not_answer_gets_a_problem(target: str, status: int) -> None:
    async with serving(Failing()) as listener:
        result = await exchange(listener.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    [response] = result.responses()
    assert response.status == status
    assert response.header(b"Content-Type") == b"application/problem+json"


@pytest.mark.parametrize("target", ["/after-start", "/abort"])
async def test_a_response_that_fails_after_it_started_is_reset(target: str) -> None:
    async with serving(Failing()) as listener:
        result = await exchange(listener.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert result.reset, result.data


async def test_a_response_sent_before_the_body_is_read_lingers_instead_of_resetting() -> None:
    """The client keeps sending a body nobody reads: it still gets the whole answer and a
    clean end of the connection, not a reset that could destroy the answer."""

    def refuse(request: Request) -> None:
        request.respond(413, [], b"too big")

    async with serving(refuse) as listener:
        reader, writer = await open_raw(listener.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n")
        sent = 0
        try:
            while sent < 4_000_000:
                writer.write(b"b" * 100_000)
                await writer.drain()
                sent += 100_000
        except ConnectionError:
            pass
        head, body = await read_response(reader)
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nConnection: close\r\n" in head
    assert body == b"too big"


# --- graceful shutdown ------------------------------------------------------------------------


class Sleepy:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled = False

    async def __call__(self, request: Request) -> None:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        request.respond(200, [], b"done")


async def test_shutdown_lets_in_flight_requests_finish_and_closes_idle_connections() -> None:
    listener = HttpListener(Sleepy(0.4), ListenerLimits())
    await listener.start("127.0.0.1", 0)
    idle_reader, idle_writer = await open_raw(listener.port)
    busy_reader, busy_writer = await open_raw(listener.port)
    busy_writer.write(GET)
    await asyncio.sleep(0.1)
    closing = asyncio.ensure_future(listener.close(drain_timeout=3))
    assert await asyncio.wait_for(idle_reader.read(), 1) == b""  # idle: closed at once
    head, body = await read_response(busy_reader)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"done"
    assert b"\r\nConnection: close\r\n" in head
    assert await asyncio.wait_for(closing, 3) is True
    with pytest.raises(OSError):
        await open_raw(listener.port)
    idle_writer.close()
    busy_writer.close()


async def test_shutdown_resets_what_outlives_the_drain_timeout() -> None:
    app = Sleepy(30)
    listener = HttpListener(app, ListenerLimits())
    await listener.start("127.0.0.1", 0)
    reader, writer = await open_raw(listener.port)
    writer.write(GET)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await listener.close(drain_timeout=0.3) is False
    assert time.monotonic() - started < 1.5
    await asyncio.sleep(0.05)
    assert app.cancelled
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        data = await asyncio.wait_for(reader.read(), 2)
        if not data:
            raise ConnectionResetError
    writer.close()


async def test_workers_share_a_port_with_reuse_port() -> None:
    first = HttpListener(EchoApp())
    await first.start("127.0.0.1", 0, reuse_port=True)
    second = HttpListener(EchoApp())
    try:
        await second.start("127.0.0.1", first.port, reuse_port=True)
        assert second.port == first.port
    finally:
        await second.close(1)
        await first.close(1)


async def test_the_application_may_close_the_connection_after_its_answer() -> None:
    def answer(request: Request) -> None:
        request.respond(400, [], b"bye", close=request.target == b"/close")

    async with serving(answer) as listener:
        kept = await exchange(listener.port, GET.replace(b"/", b"/keep", 1), quiet=0.3)
        closed = await exchange(listener.port, GET.replace(b"/", b"/close", 1) + GET)
    assert (kept.statuses, kept.closed) == ([400], False)
    assert (closed.statuses, closed.closed) == ([400], True)
    assert b"\r\nConnection: close\r\n" in closed.data
