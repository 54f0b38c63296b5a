"""The gateway's duties as an HTTP intermediary (RFC 9110 §7.6.2 Max-Forwards, §15.2 1xx).

Real sockets both ways: a raw client socket reads exactly what the gateway wrote; the
upstream is a recording aiohttp app (what it received) or ``RawUpstream`` (interim
responses no HTTP library writes on request).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from tests.support.gateway import gateway_with_issuer
from tests.support.issuer import TestIssuer
from tests.support.listener import Response, exchange
from tests.support.raw_upstream import OK
from tests.support.raw_upstream import relayed as through_gateway
from tests.support.upstream import RecordingUpstream

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


def hops_config(upstream: RecordingUpstream, issuer: TestIssuer) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{"issuer": issuer.url, "keys": {"discovery": True},
                     "audiences": ["api://default"]}],
        "routes": [
            {"match": {"path": "/open/**", "methods": ["GET", "OPTIONS"]}, "upstream": "app",
             "auth": "anonymous"},
            {"match": {"path": "/open/**", "methods": ["DELETE"]}, "upstream": "app",
             "auth": "anonymous"},
            {"match": {"path": "/any/**"}, "upstream": "app", "auth": "anonymous"},
            {"match": {"path": "/get-only", "methods": ["GET"]}, "upstream": "app",
             "auth": "anonymous"},
            {"match": {"path": "/private/**", "methods": ["GET", "OPTIONS"]}, "upstream": "app",
             "require": {"scopes": {"all": ["read"]}}},
        ],
    }  # fmt: skip


@pytest.fixture
async def hops(tmp_path: Path) -> AsyncIterator[tuple[Gateway, RecordingUpstream, TestIssuer]]:
    async with gateway_with_issuer(tmp_path, hops_config) as running:
        yield running


def request(method: str, path: str, *fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *fields, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def one_response(gw: Gateway, data: bytes) -> Response:
    responses = (await exchange(gw.proxy_port, data)).responses()
    assert len(responses) == 1, responses
    return responses[0]


# --- Max-Forwards (RFC 9110 §7.6.2) ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        pytest.param("/open/x", b"DELETE, GET, HEAD, OPTIONS", id="union-of-the-path's-routes"),
        pytest.param("/any/x", b"DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT", id="any-method"),
    ],
)
async def test_options_with_no_hops_left_is_answered_by_the_gateway(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer], path: str, allow: bytes
) -> None:
    """ "If the received value is zero (0), the intermediary MUST NOT forward the request;
    instead, the intermediary MUST respond as the final recipient"."""
    gw, upstream, _ = hops
    response = await one_response(gw, request("OPTIONS", path, "Max-Forwards: 0"))
    assert response.status == 200
    assert response.header(b"Allow") == allow
    assert response.header(b"Content-Length") == b"0"  # RFC 9110 §9.3.7
    assert response.header(b"X-Request-Id")
    assert upstream.received == []


async def test_options_with_no_hops_left_is_authorised_first(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer],
) -> None:
    """Max-Forwards never skips the route's policy, a 404 or a 405."""
    gw, upstream, issuer = hops
    cases = [
        (request("OPTIONS", "/private/x", "Max-Forwards: 0"), 401),
        (request("OPTIONS", "/nowhere", "Max-Forwards: 0"), 404),
        (request("OPTIONS", "/get-only", "Max-Forwards: 0"), 405),
        (request("OPTIONS", "/private/x", "Max-Forwards: 0",
                 f"Authorization: Bearer {issuer.mint(scope='other')}"), 403),
    ]  # fmt: skip
    for data, status in cases:
        response = await one_response(gw, data)
        assert response.status == status, response
        assert response.header(b"Content-Type") == b"application/problem+json"
    token = issuer.mint(scope="read")
    allowed = await one_response(
        gw, request("OPTIONS", "/private/x", "Max-Forwards: 0", f"Authorization: Bearer {token}")
    )
    assert allowed.status == 200
    assert allowed.header(b"Allow") == b"GET, HEAD, OPTIONS"
    assert upstream.received == []


async def test_options_is_forwarded_with_one_hop_less(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer],
) -> None:
    gw, upstream, _ = hops
    response = await one_response(gw, request("OPTIONS", "/open/x", "Max-Forwards: 3"))
    assert response.status == 200
    assert upstream.last.headers_named("Max-Forwards") == ["2"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_other_methods_pass_max_forwards_unchanged(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer], method: str
) -> None:
    """ "A recipient MAY ignore a Max-Forwards header field received with any other request
    methods": forwarded as sent, zero included."""
    gw, upstream, _ = hops
    response = await one_response(gw, request(method, "/open/x", "Max-Forwards: 0"))
    assert response.status == 200
    assert upstream.last.headers_named("Max-Forwards") == ["0"]


async def test_an_invalid_max_forwards_on_options_is_a_400(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer],
) -> None:
    gw, upstream, _ = hops
    response = await one_response(gw, request("OPTIONS", "/open/x", "Max-Forwards: -1"))
    assert response.status == 400
    assert response.json()["status"] == 400
    assert upstream.received == []


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        pytest.param("/open/x", b"DELETE, GET, HEAD, OPTIONS", id="union-of-the-path's-routes"),
        pytest.param("/any/x", b"DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT", id="any-method"),
    ],
)
async def test_trace_is_never_echoed_whatever_its_hops(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer], path: str, allow: bytes
) -> None:
    """RFC 9110 §9.3.8: the final recipient of a TRACE "SHOULD exclude any request fields
    that are likely to contain sensitive data"; the gateway echoes nothing (405), and the
    405's Allow lists what the resource accepts (§15.5.6), TRACE never among them."""
    gw, upstream, issuer = hops
    token = issuer.mint(scope="read")
    for hops_left in ("0", "5"):
        response = await one_response(
            gw,
            request("TRACE", path, f"Max-Forwards: {hops_left}",
                    f"Authorization: Bearer {token}", "Cookie: session=secret"),
        )  # fmt: skip
        assert response.status == 405
        assert response.header(b"Allow") == allow
        assert response.header(b"Content-Type") == b"application/problem+json"
        assert token.encode() not in response.body and b"secret" not in response.body
    assert upstream.received == []


async def test_trace_and_connect_on_no_resource(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer],
) -> None:
    """A TRACE to a path no route serves is a 404 like any other method; a CONNECT (the
    gateway is no open proxy) is a 405 that can list nothing."""
    gw, upstream, _ = hops
    assert (await one_response(gw, request("TRACE", "/nowhere"))).status == 404
    connect = await one_response(gw, request("CONNECT", "example.com:443"))
    assert connect.status == 405 and connect.header(b"Allow") == b""
    assert upstream.received == []


# --- interim responses (RFC 9110 §15.2) ------------------------------------------------------


def messages(data: bytes) -> list[tuple[bytes, list[bytes], bytes]]:
    """Each response on the wire: status line, field lines, body (Content-Length framed)."""
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status, *fields = head.split(b"\r\n")
        length = 0
        if not status.startswith(b"HTTP/1.1 1"):
            length = next(
                (int(f.split(b":")[1]) for f in fields if f.lower().startswith(b"content-length:")),
                0,
            )
        found.append((status, fields, data[:length]))
        data = data[length:]
    return found


GET = b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
SHAPES = [
    pytest.param([EARLY_HINTS + FINAL], id="in-one-read"),
    pytest.param([EARLY_HINTS, FINAL], id="hints-first"),
    pytest.param([EARLY_HINTS, FINAL[:-5], b"hello"], id="final-streamed"),
]


@pytest.mark.parametrize("parts", SHAPES)
async def test_early_hints_reach_an_http11_client_before_the_response(
    tmp_path: Path, parts: list[bytes]
) -> None:
    """ "A proxy MUST forward 1xx responses unless the proxy itself requested the generation
    of the 1xx response"."""
    relayed = messages(await through_gateway(tmp_path, parts, GET))
    assert [status for status, _, _ in relayed] == [b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"]
    assert relayed[0][1] == [b"Link: </s.css>; rel=preload"]
    assert relayed[1][2] == b"hello"


@pytest.mark.parametrize("parts", SHAPES)
async def test_an_http10_client_gets_no_interim_response(
    tmp_path: Path, parts: list[bytes]
) -> None:
    """ "A server MUST NOT send a 1xx response to an HTTP/1.0 client"."""
    data = await through_gateway(tmp_path, parts, b"GET /p HTTP/1.0\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
    assert b"HTTP/1.1 103" not in data and b"Link" not in data
    assert data.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize(
    ("interim", "relayed"),
    [
        pytest.param(b"HTTP/1.1 102 Processing\r\n\r\n", b"HTTP/1.1 102 Processing", id="102"),
        pytest.param(b"HTTP/1.1 150 Not Yet Defined\r\nX-A: 1\r\n\r\n",
                     b"HTTP/1.1 150 Not Yet Defined", id="unknown-1xx"),
    ],
)  # fmt: skip
async def test_every_1xx_the_gateway_did_not_ask_for_is_relayed(
    tmp_path: Path, interim: bytes, relayed: bytes
) -> None:
    found = messages(await through_gateway(tmp_path, [interim, FINAL], GET))
    assert [status for status, _, _ in found] == [relayed, b"HTTP/1.1 200 OK"]


async def test_a_relayed_1xx_loses_its_hop_by_hop_fields(tmp_path: Path) -> None:
    """RFC 9110 §7.6.1, as for a final response: Connection, the fields it names and the
    other hop-by-hop fields stay on the upstream's connection."""
    hints = (
        b"HTTP/1.1 103 Early Hints\r\nConnection: X-Hop\r\nX-Hop: private\r\n"
        b"Keep-Alive: timeout=5\r\nLink: </s.css>; rel=preload\r\n\r\n"
    )
    found = messages(await through_gateway(tmp_path, [hints, FINAL], GET))
    assert found[0][0] == b"HTTP/1.1 103 Early Hints"
    assert found[0][1] == [b"Link: </s.css>; rel=preload"]


async def test_interim_responses_relayed_are_bounded(tmp_path: Path) -> None:
    """An upstream cannot make the gateway write without bound before its answer: eight
    interim responses go on, the rest are read and dropped, the final one still arrives."""
    found = messages(await through_gateway(tmp_path, [EARLY_HINTS * 20 + FINAL], GET))
    statuses = [status for status, _, _ in found]
    assert statuses == [b"HTTP/1.1 103 Early Hints"] * 8 + [b"HTTP/1.1 200 OK"]
    assert found[-1][2] == b"hello"


async def test_a_100_from_the_upstream_is_not_relayed(tmp_path: Path) -> None:
    """The gateway never forwards Expect and answers the client's itself: a 100 from the
    upstream is about the gateway's own leg."""
    data = await through_gateway(tmp_path, [b"HTTP/1.1 100 Continue\r\n\r\n", FINAL], GET)
    assert [status for status, _, _ in messages(data)] == [b"HTTP/1.1 200 OK"]


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([b"HTTP/1.1 150 Odd\r\nContent-Length: 5\r\n\r\nhello" + OK],
                     id="content-length"),
        pytest.param([b"HTTP/1.1 150 Odd\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n0\r\n\r\n" + OK], id="chunked"),
        pytest.param([b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                      b"Upgrade: other\r\n\r\n"], id="unasked-101"),
    ],
)  # fmt: skip
async def test_an_interim_response_that_cannot_be_relayed_is_a_502(
    tmp_path: Path, parts: list[bytes]
) -> None:
    """RFC 9110 §8.6 and RFC 9112 §6.1: no 1xx carries Content-Length or Transfer-Encoding;
    a parser that read content after one would relay bytes of no response. A 101 nobody
    asked for is no interim response to relay."""
    data = await through_gateway(tmp_path, parts, GET)
    found = messages(data)
    assert [status.split(b" ")[1] for status, _, _ in found] == [b"502"], data[:300]
    assert json.loads(found[0][2])["status"] == 502
    assert b"hello" not in data
