"""The TLS port's first byte (gateway/listener/tls_door.py): plain HTTP sent to it gets a 400
it can read, as from nginx; a client that says nothing, or stops mid-handshake, is closed
within the handshake bound; neither holds up a shutdown; HTTPS on the port is unchanged.

Real gateway with ``listen.tls``, raw sockets as the clients, a recording upstream that must
see nothing of the refused connections.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.certificates import TestCA
from tests.support.gateway import base_config, running_gateway
from tests.support.upstream import RecordingUpstream


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def config(ca: TestCA, upstream: RecordingUpstream) -> dict[str, object]:
    server = ca.issue("localhost", server=True)
    config = base_config(upstream.url, limits={"header_timeout": "1s"})
    config["listen"]["tls"] = {"cert_file": str(server.cert_file),
                               "key_file": str(server.key_file)}  # fmt: skip
    return config


async def https_status(port: int, context: ssl.SSLContext) -> int:
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"https://127.0.0.1:{port}/after") as response:
            await response.read()
            return response.status


def parts(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], {name.lower(): value for name, value in fields.items()}, body


async def test_plain_http_on_the_tls_port_is_answered_400_with_a_problem(
    tmp_path: Path, config: dict[str, object], ca: TestCA, upstream: RecordingUpstream
) -> None:
    async with running_gateway(tmp_path, config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # then the gateway closes
        writer.close()
        status_line, fields, body = parts(answer)
        assert status_line == "HTTP/1.1 400 Bad Request"
        assert fields["content-type"] == "application/problem+json"
        assert fields["connection"] == "close"
        problem = json.loads(body)
        assert problem["status"] == 400
        assert problem["type"].endswith("plain-http-on-tls-port")
        assert "https" in problem["detail"]
        assert await https_status(gw.proxy_port, ca.client_context()) == 200
        async with aiohttp.ClientSession() as session:
            metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
            async with session.get(metrics_url) as response:
                metrics = await response.text()
    assert 'reason="plain_http_on_tls_port"' in metrics
    assert [r.raw_path for r in upstream.received] == ["/after"]


async def test_a_plain_request_still_sending_its_body_reads_the_400_not_a_reset(
    tmp_path: Path, config: dict[str, object], upstream: RecordingUpstream
) -> None:
    """The answer leaves before the request is read; the connection then reads and drops
    what the client still sends, so closing does not reset it under the client."""
    body = b"x" * (4 * 1024 * 1024)
    async with running_gateway(tmp_path, config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        writer.write(body)
        sending = asyncio.ensure_future(writer.drain())
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await asyncio.wait_for(asyncio.gather(sending, return_exceptions=True), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.received == []


@pytest.mark.parametrize(
    "sent", [b"", b"\x16\x03\x01\x00"], ids=["nothing", "a handshake that stops"]
)
async def test_a_client_that_stalls_before_tls_is_closed_within_the_handshake_bound(
    tmp_path: Path, config: dict[str, object], ca: TestCA, sent: bytes
) -> None:
    async with running_gateway(tmp_path, config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(sent)
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 10)
        waited = time.monotonic() - started
        writer.close()
        assert answer == b""  # closed, never answered in plain text
        assert 0.5 < waited < 5.0, waited  # the bound is header_timeout (1 s)
        assert await https_status(gw.proxy_port, ca.client_context()) == 200


async def test_connections_that_said_nothing_do_not_hold_up_a_shutdown(
    tmp_path: Path, config: dict[str, object], ca: TestCA
) -> None:
    config["limits"] = {"header_timeout": "30s"}
    async with running_gateway(tmp_path, config) as gw:
        port = gw.proxy_port
        quiet = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        vanished = await asyncio.open_connection("127.0.0.1", port)
        vanished[1].close()  # connected and left at once: nothing to admit
        assert await https_status(port, ca.client_context()) == 200
        started = time.monotonic()
        await gw.close()
        assert time.monotonic() - started < 5.0
        for reader, writer in quiet:
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
