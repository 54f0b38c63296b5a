"""A real upstream for tests: records what reached it and misbehaves on request.

Behaviour is chosen by query parameters so that a test states it in the URL it sends:
``mode=slow&delay=S``, ``mode=reset``, ``mode=huge&size=N``, ``mode=echo``,
``mode=status&code=N``, ``mode=chunked``, ``mode=ws`` (WebSocket echo). Every request that
reached it is recorded, so tests assert on what the upstream received, not only on what the
client got back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from aiohttp import WSMsgType, web


@dataclass
class Received:
    method: str
    raw_path: str
    version: str
    headers: list[tuple[str, str]]
    body_size: int
    body_sha256: str

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


@dataclass
class RecordingUpstream:
    name: str = "upstream"
    received: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last(self) -> Received:
        assert self.received, "the upstream received no request"
        return self.received[-1]

    async def start(self) -> None:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        params = {k: v[0] for k, v in parse_qs(request.query_string).items()}
        mode = params.get("mode", "")
        if mode == "ws":
            return await self._websocket(request)
        digest = hashlib.sha256()
        size = 0
        if mode == "echo":
            response = web.StreamResponse(status=200)
            response.headers["Content-Type"] = "application/octet-stream"
            await response.prepare(request)
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
                await response.write(chunk)
            self._record(request, size, digest)
            await response.write_eof()
            return response
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        self._record(request, size, digest)
        if mode == "slow":
            await asyncio.sleep(float(params.get("delay", "5")))
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if mode == "status":
            return web.Response(status=int(params.get("code", "200")), text="status\n")
        if mode == "cacheable":  # a static asset any cache may keep
            return web.Response(text="static\n", headers={"Cache-Control": "public, max-age=60"})
        if mode == "huge":
            total = int(params.get("size", str(1 << 20)))
            response = web.StreamResponse(status=200)
            response.content_length = total
            response.headers["Content-Type"] = "application/octet-stream"
            await response.prepare(request)
            block = b"x" * 65536
            sent = 0
            while sent < total:
                part = block[: min(len(block), total - sent)]
                await response.write(part)
                sent += len(part)
            await response.write_eof()
            return response
        if mode == "chunked":
            response = web.StreamResponse(status=200)
            response.enable_chunked_encoding()
            response.headers["Content-Type"] = "text/plain"
            await response.prepare(request)
            for i in range(3):
                await response.write(f"part{i}\n".encode())
            await response.write_eof()
            return response
        body = {
            "upstream": self.name,
            "method": request.method,
            "path": request.raw_path,
            "body_size": size,
        }
        response = web.Response(
            text=json.dumps(body),
            content_type="application/json",
            headers={"X-Upstream": self.name},
        )
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    def _record(self, request: web.Request, size: int, digest: hashlib._Hash) -> None:
        self.received.append(
            Received(
                method=request.method,
                raw_path=request.raw_path,
                version=f"{request.version.major}.{request.version.minor}",
                headers=[
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
                ],
                body_size=size,
                body_sha256=digest.hexdigest(),
            )
        )

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        self._record(request, 0, hashlib.sha256())
        ws = web.WebSocketResponse(protocols=("chat", "superchat"))
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws
