"""What an upstream's response may not make the gateway say (RFC 9110 §6.5, §15; RFC 9112 §6-7).

Each case is an upstream on raw sockets (``RawUpstream``) answering bytes no HTTP library
would write, and a raw client socket reading exactly what the gateway relayed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.proxy.response_head import MAX_HEAD_BYTES, MAX_INTERIM
from tests.support.raw_upstream import OK
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


def _field_parts(total: int, *, piece: int = 16 * 1024) -> list[bytes]:
    """A 200 head with one field of ``total`` bytes of value, written in pieces."""
    value = b"v" * total
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + value + b"\r\n\r\nok"
    return [head[i : i + piece] for i in range(0, len(head), piece)]


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(_field_parts(MAX_HEAD_BYTES), id="one-field-in-pieces"),
        pytest.param(_field_parts(1024 * 1024, piece=64 * 1024), id="one-megabyte-field"),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\n" + b"X-Many: v\r\n" * 7000 + b"Content-Length: 2\r\n\r\nok"],
            id="many-fields",
        ),
        pytest.param(
            [b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" * 3000 + OK],
            id="interim-flood",
        ),
        pytest.param([b"HTTP/1.1 102 \r\n\r\n" * 5000 + OK], id="bare-interim-flood"),
    ],
)
async def test_a_response_head_beyond_the_bound_is_a_502(
    tmp_path: Path, parts: list[bytes]
) -> None:
    """llhttp bounds no head and httptools gathers a field in memory until it ends: the
    gateway counts what arrives before the final head (interim heads included) and answers
    502 past MAX_HEAD_BYTES rather than growing with the upstream."""
    data = await relayed(tmp_path, parts)
    # The relayed interim heads (at most MAX_INTERIM) come first; the final answer is a 502.
    assert b"HTTP/1.1 502 " in data and b"HTTP/1.1 200 " not in data, data[:200]
    body = data[data.rindex(b"HTTP/1.1 502 ") :].partition(b"\r\n\r\n")[2]
    assert b'"status":502' in body and b"vvvv" not in data and b"X-Many" not in data
    assert data.count(b"HTTP/1.1 10") <= MAX_INTERIM


async def test_an_endless_trailer_field_ends_the_exchange(tmp_path: Path) -> None:
    """httptools gathers a trailer field in memory until it ends, like a head's: the reads
    that carry no body bytes are bounded too. The head and first chunk were already relayed,
    so the client's response is cut short rather than completed."""
    trailer = b"0\r\nX-T: " + b"v" * (256 * 1024) + b"\r\n\r\n"
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"]
    parts += [trailer[i : i + 64 * 1024] for i in range(0, len(trailer), 64 * 1024)]
    data = await relayed(tmp_path, parts)
    assert data.startswith(b"HTTP/1.1 200 ") and b"ok" in data, data[:200]
    assert not data.endswith(b"0\r\n\r\n")


async def test_a_large_response_head_within_the_bound_is_relayed(tmp_path: Path) -> None:
    data = await relayed(tmp_path, _field_parts(MAX_HEAD_BYTES - 1024))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:200]
    assert b"x-big: " + b"v" * (MAX_HEAD_BYTES - 1024) in head.lower() and body == b"ok"
