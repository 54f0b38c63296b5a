"""RFC 6750 §2.2 form tokens and §2.3 query tokens through the real gateway (issue 13, items
2 and 3): a form arrives whole however it is sent, and with ``forward_authorization: false``
the token leaves the request wherever it was, every other byte staying as sent."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.gateway import running_gateway, status_of, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream


def config(issuer: TestIssuer, upstream: RecordingUpstream, **route: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{"issuer": issuer.url, "audiences": ["api://default"]}],
        "routes": [{"match": {"path": {"prefix": "/"}}, "upstream": "app",
                    "tokens": {"form": True, "query": True}, **route}],
    }  # fmt: skip


async def send_in_pieces(port: int, head: bytes, pieces: list[bytes]) -> bytes:
    """A request whose body leaves the client in several writes, with pauses between."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for piece in pieces:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(piece)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def get_with_header_token(port: int, target: str, token: str) -> bytes:
    """``GET target`` with ``Authorization: Bearer token``, written as sent (no client
    re-encodes the query); the raw answer."""
    request = (f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               "Connection: close\r\n\r\n")  # fmt: skip
    return await send_in_pieces(port, request.encode(), [])


def form_request(body_length: int) -> bytes:
    return (
        b"POST /submit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % body_length
    )


async def test_a_form_sent_in_pieces_reaches_the_upstream_whole(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = issuer.mint()
    body = b"note=" + b"n" * 5000 + b"&access_token=" + token.encode() + b"&tail=%FF%20x"
    half = len(body) // 2  # the token itself is split across the two pieces
    async with running_gateway(tmp_path, config(issuer, upstream)) as gw:
        await wait_ready(gw)
        response = await send_in_pieces(
            gw.proxy_port, form_request(len(body)), [body[:half], body[half:]]
        )
    assert status_of(response) == 200, response[:300]
    received = upstream.last
    assert received.body_size == len(body)
    assert received.body_sha256 == hashlib.sha256(body).hexdigest()
    assert received.header("X-Auth-Subject") == "user-1"


async def test_a_form_beyond_the_bound_is_413_and_never_forwarded(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    body = b"access_token=x&pad=" + b"p" * (64 * 1024)
    async with running_gateway(tmp_path, config(issuer, upstream)) as gw:
        response = await send_in_pieces(gw.proxy_port, form_request(len(body)), [body])
    assert status_of(response) == 413
    assert upstream.received == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("access_token={t}", "", id="alone"),
        pytest.param("a=1&access_token={t}&b=%FF%2F+x&flag", "a=1&b=%FF%2F+x&flag", id="middle"),
        pytest.param("access%5Ftoken={t}&keep=%41", "keep=%41", id="encoded-name"),
    ],
)
async def test_a_query_token_is_removed_and_the_rest_stays_byte_exact(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream, query: str, expected: str
) -> None:
    token = issuer.mint()
    cfg = config(issuer, upstream, forward_authorization=False)
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        request = f"GET /q?{query.format(t=token)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        response = await send_in_pieces(gw.proxy_port, request.encode(), [])
    assert status_of(response) == 200
    assert upstream.last.raw_path == (f"/q?{expected}" if expected else "/q?")
    assert token not in upstream.last.raw_path


async def test_a_form_token_is_removed_and_the_rest_of_the_body_stays_byte_exact(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = issuer.mint()
    body = b"a=%E9t%C3%A9&access_token=" + token.encode() + b"&b=1+2&c"
    kept = b"a=%E9t%C3%A9&b=1+2&c"
    cfg = config(issuer, upstream, forward_authorization=False)
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        response = await send_in_pieces(gw.proxy_port, form_request(len(body)), [body])
    assert status_of(response) == 200
    received = upstream.last
    assert received.body_sha256 == hashlib.sha256(kept).hexdigest()
    assert received.header("Content-Length") == str(len(kept))


async def test_a_header_token_is_removed_and_query_and_form_tokens_are_not_invented(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = issuer.mint()
    cfg = config(issuer, upstream, forward_authorization=False)
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        response = await get_with_header_token(gw.proxy_port, "/h?access_token_x=1", token)
    assert status_of(response) == 200
    assert upstream.last.header("Authorization") is None
    assert upstream.last.raw_path == "/h?access_token_x=1"


@pytest.mark.parametrize("query", ["access_token=other", "a=1&access%5Ftoken=other"])
async def test_a_header_token_beside_a_query_token_the_route_does_not_take_is_400(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream, query: str
) -> None:
    """RFC 6750 §2: one method per request. Forwarded, the query's token would reach an
    upstream that may read it, authenticated by the header's. An anonymous route checks
    neither and passes both on as sent (README)."""
    token = issuer.mint()
    cfg = config(issuer, upstream)
    cfg["routes"][0]["tokens"] = {"query": False}
    cfg["routes"].insert(0, {"match": {"path": {"prefix": "/open"}}, "upstream": "app",
                             "auth": "anonymous"})  # fmt: skip
    async with running_gateway(tmp_path, cfg) as gw:
        await wait_ready(gw)
        response = await get_with_header_token(gw.proxy_port, f"/h?{query}", token)
        assert status_of(response) == 400
        assert b'error="invalid_request"' in response
        assert upstream.received == []
        anonymous = await get_with_header_token(gw.proxy_port, f"/open?{query}", token)
    assert status_of(anonymous) == 200
    assert upstream.last.raw_path == f"/open?{query}"


async def test_an_answer_to_a_query_token_is_private_to_caches(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """RFC 6750 §2.3: success responses to query-token requests SHOULD carry private; the
    URL holding the token is what a shared cache would key them by."""
    token = issuer.mint()
    async with running_gateway(tmp_path, config(issuer, upstream)) as gw:
        await wait_ready(gw)
        base = f"http://127.0.0.1:{gw.proxy_port}/s?mode=cacheable"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}&access_token={token}") as response:
                by_query = response.status, response.headers.getall("Cache-Control")
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(base, headers=headers) as response:
                by_header = response.status, response.headers.getall("Cache-Control")
    assert by_query == (200, ["private, max-age=60"])
    assert by_header == (200, ["public, max-age=60"])
