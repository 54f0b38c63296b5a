"""Bodies the gateway reads whole before it can answer: a form that may carry an RFC 6750
§2.2 token and a back-channel logout (OIDC Back-Channel Logout §2.5).

Raw sockets against the real gateway and a recording upstream. Such a body must be all there
within ``limits.header_timeout`` of being asked for, like a head: a client that trickles it,
stalls, or never sends it after ``100 Continue`` gets 408 and a close, and the upstream sees
nothing (the gateway waited for ever before). A declared Content-Length over the body limit
gets 413 from the head alone, with no ``100 Continue`` before it (RFC 9110 §10.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from tests.support.gateway import base_config, running_gateway, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.login import login_config
from tests.support.token_server import TokenServer
from tests.support.upstream import RecordingUpstream

LIMITS = {"header_timeout": "1s", "keepalive_timeout": "30s"}
FORM_PATH, LOGOUT_PATH = b"/form/x", b"/oauth2/backchannel"
HEAD = (b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n%b\r\n")  # fmt: skip
EXPECT = b"Expect: 100-continue\r\n"


def form_route(upstream: RecordingUpstream, issuer: TestIssuer) -> dict[str, Any]:
    config = base_config(upstream.url, limits=LIMITS)
    config["issuers"] = [{"name": "main", "issuer": issuer.url, "keys": {"discovery": True},
                          "audiences": ["api://default"]}]  # fmt: skip
    config["routes"] = [{"match": {"path": "/form/**"}, "upstream": "app", "auth": "required",
                         "tokens": {"form": True}}]  # fmt: skip
    return config


def login(upstream: RecordingUpstream, issuer: TestIssuer) -> dict[str, Any]:
    return login_config(upstream.url, issuer, limits=LIMITS)


@pytest.fixture(params=[FORM_PATH, LOGOUT_PATH], ids=["form-token", "backchannel-logout"])
async def site(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, RecordingUpstream, bytes]]:
    """A gateway with a form-token route or a back-channel logout, and the path to POST."""
    path: bytes = request.param
    upstream, issuer = RecordingUpstream(name="app"), TestIssuer()
    server = TokenServer(issuer)  # its routes go in before the issuer starts
    await upstream.start()
    await issuer.start()
    server.advertise()
    make = form_route if path == FORM_PATH else login
    try:
        async with running_gateway(tmp_path, make(upstream, issuer)) as gw:
            await wait_ready(gw)
            yield gw, upstream, path
    finally:
        await upstream.close()
        await issuer.close()


async def until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float | None]:
    """What the gateway sent, and the seconds until it closed (None: still open at ``limit``)."""
    started, chunks = time.monotonic(), []
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), None
    except ConnectionError:
        pass
    return b"".join(chunks), time.monotonic() - started


async def trickle(writer: asyncio.StreamWriter) -> None:
    """One byte every 200 ms: never silent for long, never done."""
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("client", ["stalled", "trickled", "silent-after-100"])
async def test_a_body_that_does_not_arrive_in_time_gets_408(
    site: tuple[Gateway, RecordingUpstream, bytes], client: str
) -> None:
    gw, upstream, path = site
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
    dripping: asyncio.Task[None] | None = None
    if client == "stalled":
        writer.write(HEAD % (path, 100, b"") + b"logout_token=ab")
    elif client == "trickled":
        writer.write(HEAD % (path, 100, b""))
        dripping = asyncio.ensure_future(trickle(writer))
    else:
        writer.write(HEAD % (path, 100, EXPECT))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
    data, waited = await until_closed(reader, 4.0)
    if dripping is not None:
        dripping.cancel()
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Type: application/problem+json" in head
    assert b"Connection: close" in head
    assert json.loads(body)["status"] == 408
    # Counted from the ask (the 100, or the head without an expectation): 1 s, not for ever.
    assert waited is not None and 0.8 < waited < 2.0, waited
    assert upstream.received == []


async def test_a_declared_length_over_the_limit_gets_413_without_100_continue(
    site: tuple[Gateway, RecordingUpstream, bytes],
) -> None:
    """RFC 9110 §10.1.1: the server knows from the head that it will refuse, so it answers
    the final status rather than invite a body it would throw away; the body is unread, so
    the connection closes."""
    gw, upstream, path = site
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
    writer.write(HEAD % (path, 70 * 1024, EXPECT))
    data, waited = await until_closed(reader, 3.0)
    writer.close()
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"HTTP/1.1 100" not in data
    head = data.partition(b"\r\n\r\n")[0]
    assert b"Content-Type: application/problem+json" in head
    assert b"Connection: close" in head
    assert waited is not None  # closed, not left waiting for a body nobody will read
    assert upstream.received == []
