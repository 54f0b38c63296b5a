"""The gateway's duties as an HTTP intermediary (RFC 9110 §7.6.2 Max-Forwards).

Real sockets both ways: a raw client socket reads exactly what the gateway wrote; the
upstream is a recording aiohttp app (what it received).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from tests.support.gateway import gateway_with_issuer
from tests.support.issuer import TestIssuer
from tests.support.listener import Response, exchange
from tests.support.upstream import RecordingUpstream


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


async def test_trace_is_never_echoed_whatever_its_hops(
    hops: tuple[Gateway, RecordingUpstream, TestIssuer],
) -> None:
    """RFC 9110 §9.3.8: the final recipient of a TRACE "SHOULD exclude any request fields
    that are likely to contain sensitive data"; the gateway echoes nothing (405)."""
    gw, upstream, issuer = hops
    token = issuer.mint(scope="read")
    for hops_left in ("0", "5"):
        response = await one_response(
            gw,
            request("TRACE", "/open/x", f"Max-Forwards: {hops_left}",
                    f"Authorization: Bearer {token}", "Cookie: session=secret"),
        )  # fmt: skip
        assert response.status == 405
        assert response.header(b"Allow") is not None
        assert response.header(b"Content-Type") == b"application/problem+json"
        assert token.encode() not in response.body and b"secret" not in response.body
    assert upstream.received == []
