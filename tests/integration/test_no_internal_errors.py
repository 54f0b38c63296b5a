"""Client input never reaches the catch-all 500 (issue 12): each case below used to.

Every refusal is a precise 4xx problem from the layer that found it; the upstream receives
nothing it should not.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp

from tests.support.gateway import raw_exchange, running_gateway, status_of, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def nested_token(issuer: TestIssuer, depth: int = 1000) -> str:
    """A JWT from the trusted issuer whose claims nest ``depth`` arrays deep."""
    payload = b'{"iss": %s, "deep": %s%s}' % (
        json.dumps(issuer.url).encode(),
        b"[" * depth,
        b"]" * depth,
    )
    header = _b64(b'{"alg":"RS256"}')
    return f"{header}.{_b64(payload)}.{_b64(b'sig')}"


def config(issuer: TestIssuer, upstream: RecordingUpstream) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{"issuer": issuer.url, "audiences": ["api://default"]}],
        "routes": [
            {"match": {"path": {"prefix": "/open"}}, "upstream": "app", "auth": "anonymous",
             "identify_anonymous": True},
            {"match": {"path": {"prefix": "/ws"}}, "upstream": "app", "websocket": True,
             "auth": "anonymous"},
            {"match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
    }  # fmt: skip


async def test_a_token_nested_a_thousand_levels_deep_is_refused_not_a_500(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    token = nested_token(issuer)
    async with running_gateway(tmp_path, config(issuer, upstream)) as gw:
        await wait_ready(gw)
        base = f"http://127.0.0.1:{gw.proxy_port}"
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api", headers=headers) as r:
                assert r.status == 401
                assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
            async with session.get(f"{base}/open", headers=headers) as r:
                assert r.status == 200  # an anonymous route: no identity, no error
    assert [r.raw_path for r in upstream.received] == ["/open"]
    assert upstream.last.header("X-Auth-Subject") is None


async def test_a_malformed_websocket_handshake_is_400_before_the_upstream_is_asked(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    async with running_gateway(tmp_path, config(issuer, upstream)) as gw:
        response = await raw_exchange(
            gw.proxy_port,
            b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",  # no Sec-WebSocket-Key
            timeout=1.0,
        )
    assert status_of(response) == 400
    assert b"application/problem+json" in response
    assert upstream.received == []


async def test_only_a_get_opens_a_websocket(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """RFC 6455 §4.1: the opening handshake is a GET; a POST with Upgrade is a POST."""
    async with running_gateway(tmp_path, config(issuer, upstream)) as gw:
        response = await raw_exchange(
            gw.proxy_port,
            b"POST /ws/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Content-Length: 2\r\n\r\nhi",
            timeout=1.0,
        )
    assert status_of(response) == 200
    received = upstream.last
    assert received.method == "POST" and received.header("Upgrade") is None
