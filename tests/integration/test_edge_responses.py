"""What an upstream's response may not make the gateway say (RFC 9110 §6.5, §15; RFC 9112 §6-7).

Each case is an upstream on raw sockets (``RawUpstream``) answering bytes no HTTP library
would write, and a raw client socket reading exactly what the gateway relayed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.raw_upstream import relayed as _relayed

GET = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n"


async def relayed(tmp_path: Path, parts: list[bytes], request: bytes = GET) -> bytes:
    return await _relayed(tmp_path, parts, request)


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
             b"0\r\nSet-Cookie: session=evil\r\nContent-Type: text/html\r\n\r\n"],
            id="whole-response",
        ),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
             b"0\r\nSet-Cookie: session=evil\r\nContent-Type: text/html\r\n\r\n"],
            id="streamed",
        ),
    ],
)  # fmt: skip
async def test_upstream_trailer_fields_never_become_response_headers(
    tmp_path: Path, parts: list[bytes]
) -> None:
    """RFC 9110 §6.5.1: a trailer field is not merged into the header section unless its
    definition allows it; Set-Cookie or Content-Type sent as trailers must not be obeyed."""
    data = await relayed(tmp_path, parts)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:200]
    assert b"set-cookie" not in head.lower() and b"content-type" not in head.lower(), head
    assert b"hello" in body


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
            id="gzip-then-chunked",
        ),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello"],
            id="gzip-close-delimited",
        ),
        pytest.param([b"HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nok"], id="status-600"),
        pytest.param([b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok"], id="status-999"),
        pytest.param([b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok"], id="status-099"),
    ],
)
async def test_a_response_the_gateway_cannot_relay_faithfully_is_a_502(
    tmp_path: Path, parts: list[bytes]
) -> None:
    """A transfer coding llhttp does not decode would reach the client still coded with
    nothing saying so (RFC 9112 §6.1); an invalid status is treated as a 5xx (RFC 9110 §15)."""
    data = await relayed(tmp_path, parts)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), data[:200]
    assert b"application/problem+json" in head
    assert b'"status":502' in body and b"hello" not in body
