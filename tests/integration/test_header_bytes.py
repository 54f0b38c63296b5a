"""Header field values pass through byte for byte, both ways (RFC 9110 §5.5, obs-text).

A proxy that re-encodes ``\\xff`` as ``\\xc3\\xbf`` changes what a signed or hashed header
says (and lets two parsers disagree about it). Every case speaks raw bytes on both sides:
the client is a socket and the upstream is ``RawUpstream``, so nothing in between decodes or
re-encodes what the test wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from tests.support.gateway import base_config, raw_exchange, running_gateway
from tests.support.raw_upstream import RawUpstream

OBS_TEXT = bytes(range(0x80, 0x100))  # every byte RFC 9110 §5.5 calls obs-text
VALUES = [
    pytest.param(OBS_TEXT, id="all-obs-text"),
    pytest.param(b"caf\xe9 \xff", id="latin-1"),
    pytest.param("café ☃".encode(), id="utf-8"),
    pytest.param(b"a\xc3", id="truncated-utf-8"),
    pytest.param(b"\xff" + OBS_TEXT[::-1] + b" x", id="obs-text-around-ascii"),
]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def gateway(tmp_path: Path, raw_upstream: RawUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, base_config(raw_upstream.url)) as gw:
        yield gw


def head_of(response: bytes) -> bytes:
    head, sep, _ = response.partition(b"\r\n\r\n")
    assert sep, response[:200]
    return head


def values_in(head: bytes, name: bytes) -> list[bytes]:
    wanted = name.lower()
    return [
        line.partition(b":")[2].strip(b" \t")
        for line in head.split(b"\r\n")[1:]
        if line.partition(b":")[0].lower() == wanted
    ]


@pytest.mark.parametrize("value", VALUES)
async def test_request_header_reaches_the_upstream_byte_identical(
    gateway: Gateway, raw_upstream: RawUpstream, value: bytes
) -> None:
    request = b"GET /r HTTP/1.1\r\nHost: x\r\nX-Obs: " + value + b"\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(gateway.proxy_port, request)
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert raw_upstream.header_lines(b"X-Obs") == [value]


async def test_authorization_and_forwarding_values_stay_byte_identical(
    tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    """Headers the gateway rebuilds from client text (X-Forwarded-Host from a trusted proxy's
    chain, Authorization kept) carry the client's bytes too."""
    config = base_config(raw_upstream.url, forwarding={"trusted_proxies": ["127.0.0.1"]})
    request = (b"GET /r HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: h\xe9\r\n"
               b"Authorization: Basic \xff\r\nConnection: close\r\n\r\n")  # fmt: skip
    async with running_gateway(tmp_path, config) as gw:
        response = await raw_exchange(gw.proxy_port, request)
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert raw_upstream.header_lines(b"X-Forwarded-Host") == [b"h\xe9"]
    assert raw_upstream.header_lines(b"Authorization") == [b"Basic \xff"]


def complete(value: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\nX-Obs: " + value + b"\r\nContent-Length: 4\r\n\r\nbody"]


def streamed_with_length(value: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\nX-Obs: " + value + b"\r\nContent-Length: 8\r\n\r\nbody", b"-end"]


def streamed_chunked(value: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\nX-Obs: " + value + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nbody\r\n", b"0\r\n\r\n"]  # fmt: skip


SHAPES = [
    pytest.param(complete, b"body", id="complete"),
    pytest.param(streamed_with_length, b"body-end", id="streamed-content-length"),
    pytest.param(streamed_chunked, b"body", id="streamed-chunked"),
]


@pytest.mark.parametrize(("shape", "body"), SHAPES)
@pytest.mark.parametrize("value", VALUES)
async def test_response_header_reaches_the_client_byte_identical(
    gateway: Gateway, raw_upstream: RawUpstream, shape: object, body: bytes, value: bytes
) -> None:
    raw_upstream.parts = shape(value)  # type: ignore[operator]
    response = await raw_exchange(
        gateway.proxy_port, b"GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head = head_of(response)
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert values_in(head, b"X-Obs") == [value]
    rest = response[len(head) + 4 :]
    if b"Transfer-Encoding: chunked" in head:
        assert rest == b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    else:
        assert rest == body


async def test_streamed_response_to_http10_client_ends_with_the_connection(
    gateway: Gateway, raw_upstream: RawUpstream
) -> None:
    raw_upstream.parts = streamed_chunked(b"\xff")
    response = await raw_exchange(gateway.proxy_port, b"GET /r HTTP/1.0\r\nHost: x\r\n\r\n")
    head = head_of(response)
    assert values_in(head, b"X-Obs") == [b"\xff"]
    assert values_in(head, b"Connection") == [b"close"]
    assert values_in(head, b"Transfer-Encoding") == [] and values_in(head, b"Content-Length") == []
    assert response[len(head) + 4 :] == b"body"


async def test_streamed_responses_keep_the_connection_usable(
    gateway: Gateway, raw_upstream: RawUpstream
) -> None:
    """Two streamed responses on one keep-alive connection: the framing the gateway wrote
    ends each exactly where it should."""
    raw_upstream.parts = streamed_chunked(b"\xe9")
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
    try:
        for _ in range(2):
            writer.write(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert values_in(head, b"X-Obs") == [b"\xe9"]
            assert values_in(head, b"Transfer-Encoding") == [b"chunked"]
            assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 3) == (
                b"4\r\nbody\r\n0\r\n\r\n"
            )
    finally:
        writer.close()
    assert len(raw_upstream.heads) == 2


@pytest.mark.parametrize(
    ("status", "method"),
    [pytest.param(204, b"GET", id="204"), pytest.param(304, b"GET", id="304"),
     pytest.param(200, b"HEAD", id="head")],
)  # fmt: skip
async def test_bodiless_streamed_responses_get_no_body_framing(
    gateway: Gateway, raw_upstream: RawUpstream, status: int, method: bytes
) -> None:
    # The upstream answers while the client has not sent its body yet: the streaming path.
    # An upstream's Content-Length on a 204 must not reach the client (RFC 9110 §8.6).
    length = b"Content-Length: 0\r\n" if status == 204 else b""
    raw_upstream.parts = [b"HTTP/1.1 %d X\r\nX-Obs: \xff\r\n%b\r\n" % (status, length)]
    raw_upstream.read_body = False
    request = method + b" /r HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        writer.write(b"ab")
        assert values_in(head, b"X-Obs") == [b"\xff"]
        assert values_in(head, b"Transfer-Encoding") == []
        if status == 204:
            assert values_in(head, b"Content-Length") == []
        writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 3)
        assert rest.startswith(b"HTTP/1.1 "), rest[:100]  # nothing between the two responses
    finally:
        writer.close()
