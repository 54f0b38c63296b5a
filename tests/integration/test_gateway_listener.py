"""The proxy port on the gateway's own listener: what the aiohttp listener got wrong, and the
joint's duties the listener leaves to it (RFC 9112 §6.1, §9; RFC 9110 §10.1.1; issue 14).

Raw sockets against the real gateway and a recording upstream: HTTP/1.0 with
Transfer-Encoding is refused and nothing behind it runs; a steady upload longer than the
upstream read timeout completes (the timeout is the upstream's silence), a stalled one gets
408; a head that never ends gets 408 at ``limits.header_timeout``; ``100 Continue`` goes out
only after the decision; the listener's own refusals are counted and logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.gateway import base_config, gateway_with_issuer, running_gateway
from tests.support.issuer import TestIssuer
from tests.support.raw_upstream import RawUpstream
from tests.support.upstream import RecordingUpstream


async def read_all(reader: asyncio.StreamReader, limit: float = 5.0) -> tuple[bytes, bool]:
    """Everything until the gateway closes (True) or ``limit`` passes (False)."""
    chunks = []
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionError:
        pass
    return b"".join(chunks), True


async def test_http10_with_transfer_encoding_is_refused_and_nothing_behind_it_runs(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    """RFC 9112 §6.1: such a message MUST be treated "as if the framing is faulty" and the
    connection closed; the aiohttp listener processed it, and the request pipelined behind."""
    request = (b"POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n"
               b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
    async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(request)
        data, closed = await read_all(reader)
        writer.close()
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    assert data.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in data
    assert closed
    assert upstream.received == []


async def test_a_steady_upload_longer_than_the_read_timeout_is_not_cut(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    """The read timeout is the upstream's silence after the request was sent: an upload that
    keeps coming for 2.4 s under a 1 s read timeout reaches the upstream whole (the aiohttp
    listener answered 504 while the client was still sending)."""
    config = base_config(upstream.url)
    config["upstreams"]["app"]["timeouts"] = {"connect": "1s", "read": "1s"}
    pieces, piece = 8, b"x" * 1000
    async with running_gateway(tmp_path, config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % (pieces * len(piece)))  # fmt: skip
        for _ in range(pieces):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.3)
        data, _ = await read_all(reader)
        writer.close()
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert upstream.last.body_size == pieces * len(piece)


async def test_an_upload_that_stalls_past_the_read_timeout_gets_408(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    """The other half: nothing moved for the read timeout because the client stopped
    sending. That is the client's silence (408), not the upstream's (504)."""
    config = base_config(upstream.url)
    config["upstreams"]["app"]["timeouts"] = {"connect": "1s", "read": "500ms"}
    async with running_gateway(tmp_path, config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        started = time.monotonic()
        data, closed = await read_all(reader, 3.0)
        waited = time.monotonic() - started
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"application/problem+json" in data
    assert closed and 0.4 < waited < 2.0, waited
    assert upstream.received == []  # the upstream never saw a whole request


async def test_a_head_that_never_ends_gets_408_at_the_header_timeout(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    """``limits.header_timeout`` closes a client that never finishes its head (the aiohttp
    listener kept it to the 75 s keep-alive timer)."""
    config = base_config(upstream.url, limits={"header_timeout": "1s", "keepalive_timeout": "30s"})
    async with running_gateway(tmp_path, config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Never: ")
        started = time.monotonic()
        data, closed = await read_all(reader, 4.0)
        waited = time.monotonic() - started
        writer.close()
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        quiet, quiet_closed = await read_all(silent_reader, 4.0)
        silent.close()
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert closed and 0.8 < waited < 2.0, waited
    assert (quiet, quiet_closed) == (b"", True)  # nothing of a request: closed without a word
    assert upstream.received == []


def protected(upstream: RecordingUpstream, issuer: TestIssuer) -> dict:
    config = base_config(upstream.url)
    config["issuers"] = [{"issuer": issuer.url, "keys": {"jwks": issuer.jwks()},
                          "audiences": ["api://default"]}]  # fmt: skip
    config["routes"] = [
        {"match": {"path": "/form/**"}, "upstream": "app", "auth": "required",
         "tokens": {"form": True}, "forward_authorization": False},
        {"match": {"path": {"prefix": "/"}}, "upstream": "app", "auth": "required"},
    ]  # fmt: skip
    return config


async def test_100_continue_goes_out_only_after_the_decision(tmp_path: Path) -> None:
    async with gateway_with_issuer(tmp_path, protected) as (gw, upstream, issuer):
        token = issuer.mint()
        head = (b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\n%b\r\n")  # fmt: skip
        # Refused: no 100, the client never sends its body, and the connection closes.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(head % b"")
        refused, closed = await read_all(reader, 3.0)
        writer.close()
        # Allowed: 100 first, then the body goes through.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(head % b"Connection: close\r\nAuthorization: Bearer %b\r\n" % token.encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        writer.write(b"body")
        final, _ = await read_all(reader)
        writer.close()
    assert refused.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in refused
    assert closed
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 "), final[:200]
    assert [(r.method, r.body_size) for r in upstream.received] == [("PUT", 4)]


async def test_a_form_token_route_sends_100_before_reading_the_form(tmp_path: Path) -> None:
    """RFC 6750 §2.2: the token may be in the body, so the decision needs the body first."""
    async with gateway_with_issuer(tmp_path, protected) as (gw, upstream, issuer):
        form = b"a=1&access_token=" + issuer.mint().encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"POST /form/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(form))  # fmt: skip
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        writer.write(form)
        final, _ = await read_all(reader)
        writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 "), final[:200]
    assert upstream.last.body_size == len(b"a=1")  # the token left the form


async def test_listener_refusals_are_counted_and_logged(
    tmp_path: Path, upstream: RecordingUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
        for bad in (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):  # fmt: skip
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(bad)
            await read_all(reader, 2.0)
            writer.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
        await asyncio.sleep(0.6)  # the access log flushes within half a second
    assert 'gateway_requests_total{method="OTHER",route="-",status="400"} 1.0' in metrics
    assert 'gateway_requests_total{method="OTHER",route="-",status="414"} 1.0' in metrics
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert [(line["status"], line["reason"], line["decision"]) for line in lines] == [
        (400, "bad_request", "error"),
        (414, "uri_too_long", "error"),
    ]


async def test_a_body_that_breaks_its_framing_mid_stream_never_ends_well_upstream(
    tmp_path: Path,
) -> None:
    """The upload already streams upstream when a malformed chunk arrives: the upstream
    connection is aborted (it never sees a last chunk), the client gets 400 and a close."""
    upstream = RawUpstream()
    await upstream.start()
    try:
        async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n")  # fmt: skip
            await asyncio.sleep(0.3)  # the head and the first chunk are upstream by now
            writer.write(b"zz\r\nnot a chunk\r\n0\r\n\r\n")
            data, closed = await read_all(reader)
            writer.close()
    finally:
        await upstream.close()
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    assert closed
    assert upstream.bodies == []  # no complete request ever reached it
