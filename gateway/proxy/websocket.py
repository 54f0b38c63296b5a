"""Relay a WebSocket (RFC 6455) between the client and the upstream, both ways.

Only routes with ``websocket: true`` upgrade. The upstream leg is opened first, with the
same vetted headers a plain request would carry (identity headers included), so the client
is told "101 Switching Protocols" only once the upstream has accepted; the subprotocol the
upstream chose is the one offered back to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp
from aiohttp import WSMsgType, web

from gateway.problems import BadGateway, BadRequest, GatewayTimeout
from gateway.proxy.targets import UpstreamTarget

log = logging.getLogger("gateway.websocket")

# Handshake headers aiohttp's client generates itself; the client's copies must not pass.
_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept"}
)  # fmt: skip


def _upstream_url(upstream: UpstreamTarget, path: str) -> str:
    scheme = "wss" if upstream.ssl is not None else "ws"
    host = upstream.host or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{upstream.port}{path}"


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == WSMsgType.ERROR:
            break
    await sink.close()


async def relay_websocket(
    request: web.BaseRequest,
    upstream: UpstreamTarget,
    path: str,
    headers: Sequence[tuple[str, str]],
    session: aiohttp.ClientSession,
) -> web.StreamResponse:
    if upstream.unix_path is not None:
        raise BadGateway("WebSocket relay to a unix-socket upstream is not supported.")
    # RFC 6455 §4.2.1: check the client's handshake before the upstream is asked anything.
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise BadRequest("The request is not a valid WebSocket handshake (RFC 6455 §4.1).")
    protocols = [
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in value.split(",")
        if p.strip()
    ]
    forwarded = [(k, v) for k, v in headers if k.lower() not in _HANDSHAKE and k.lower() != "host"]
    try:
        upstream_ws = await session.ws_connect(
            _upstream_url(upstream, path),
            headers=forwarded,
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            ssl=upstream.ssl if upstream.ssl is not None else True,
            server_hostname=upstream.server_hostname,
            autoping=True,
            max_msg_size=0,
        )
    except TimeoutError:
        raise GatewayTimeout("The upstream did not accept the WebSocket in time.") from None
    except (aiohttp.ClientError, OSError):
        raise BadGateway("The upstream refused the WebSocket.") from None

    client_ws = web.WebSocketResponse(
        protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
        autoping=True,
        max_msg_size=0,
    )
    try:
        await client_ws.prepare(request)
        tasks = [
            asyncio.ensure_future(_pump(client_ws, upstream_ws)),
            asyncio.ensure_future(_pump(upstream_ws, client_ws)),
        ]
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # One side ended: give the other a moment to deliver the close, then stop.
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
    finally:
        await upstream_ws.close()
    return client_ws
