"""Forwarding-family headers through the real gateway: what the upstream receives from a
client that is not a trusted proxy (none of them) and from one that is (all, as sent).

Upstream frameworks read these for IP allow-lists, redirects and routing, so a client that
reaches the gateway directly must not be able to choose them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.forwarding import NEVER_FORWARDED_TABLE, PROXY_ONLY_TABLE
from tests.support.gateway import base_config, raw_exchange, running_gateway, status_of
from tests.support.upstream import RecordingUpstream

PEER = "127.0.0.1"  # the test client's address, as the gateway sees it
SITE_HEADER = ("X-Corp-Client-IP", "10.9.8.7")


def request_with(headers: list[tuple[str, str]]) -> bytes:
    lines = ["GET /f HTTP/1.1", "Host: app.example", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


SENT = [*PROXY_ONLY_TABLE, *NEVER_FORWARDED_TABLE, SITE_HEADER, ("X-Kept", "yes")]
FAMILY = {name.lower() for name, _ in [*PROXY_ONLY_TABLE, *NEVER_FORWARDED_TABLE]}


async def exchange(tmp_path: Path, upstream: RecordingUpstream, **config: Any) -> None:
    async with running_gateway(tmp_path, base_config(upstream.url, **config)) as gw:
        response = await raw_exchange(gw.proxy_port, request_with(SENT))
    assert status_of(response) == 200, response[:300]


async def test_untrusted_client_cannot_send_any_of_them(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    await exchange(tmp_path, upstream)
    received = upstream.last
    assert [(n, v) for n, v in received.headers if n.lower() in FAMILY] == []
    assert received.header("X-Kept") == "yes"
    # The gateway's own view replaces the client's claims.
    assert received.headers_named("X-Forwarded-For") == [PEER]
    assert received.headers_named("X-Forwarded-Proto") == ["http"]
    assert received.headers_named("X-Forwarded-Host") == ["app.example"]


async def test_trusted_proxy_passes_them_as_sent(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    await exchange(tmp_path, upstream, forwarding={"trusted_proxies": [PEER]})
    received = upstream.last
    assert [(n, v) for n, v in received.headers if n.lower() in FAMILY] == PROXY_ONLY_TABLE
    assert received.header("X-Kept") == "yes"
    assert received.header(SITE_HEADER[0]) == SITE_HEADER[1]


async def test_a_trusted_proxy_on_another_address_does_not_make_the_client_trusted(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    await exchange(tmp_path, upstream, forwarding={"trusted_proxies": ["10.0.0.0/8"]})
    assert [n for n, _ in upstream.last.headers if n.lower() in FAMILY] == []


async def test_site_specific_names_are_removed_from_untrusted_clients(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    forwarding = {"proxy_only_headers": [SITE_HEADER[0]]}
    await exchange(tmp_path, upstream, forwarding=forwarding)
    assert upstream.last.header(SITE_HEADER[0]) is None
    assert upstream.last.header("X-Kept") == "yes"


async def test_site_specific_names_pass_from_trusted_proxies(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    forwarding = {"trusted_proxies": [PEER], "proxy_only_headers": [SITE_HEADER[0]]}
    await exchange(tmp_path, upstream, forwarding=forwarding)
    assert upstream.last.header(SITE_HEADER[0]) == SITE_HEADER[1]
