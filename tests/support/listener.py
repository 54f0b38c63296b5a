"""The listener alone on a loopback port, with a trivial application that echoes requests.

The echo application answers each request with a JSON description of what it received
(method, target, version, headers and body, as the listener handed them over) and records
it, so tests assert both what the client got and what the application saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from gateway.listener import HttpListener, ListenerLimits, Request

_STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3}) ")


def describe(request: Request, body: bytes) -> dict[str, Any]:
    return {
        "method": request.method,
        "target": request.target.decode("latin-1"),
        "version": request.version,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
        "body_size": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "keep_alive": request.keep_alive,
    }


@dataclass
class EchoApp:
    """Reads each body whole and answers 200 with what it saw."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: Request) -> Coroutine[Any, Any, None]:
        return self.handle(request)

    async def handle(self, request: Request) -> None:
        request.send_continue()
        body = await request.body.read_all(64 << 20)
        seen = describe(request, body)
        self.seen.append(seen)
        request.respond(200, [(b"Content-Type", b"application/json")], json.dumps(seen).encode())


@asynccontextmanager
async def serving(handler: Any, **limits: Any) -> AsyncIterator[HttpListener]:
    names = ("cancel_on_disconnect", "on_refusal")
    options = {key: limits.pop(key) for key in names if key in limits}
    listener = HttpListener(handler, ListenerLimits(**limits), **options)
    await listener.start("127.0.0.1", 0)
    try:
        yield listener
    finally:
        await listener.close(drain_timeout=1.0)


@dataclass
class Exchange:
    data: bytes
    closed: bool  # the listener closed the connection (rather than going quiet)
    reset: bool = False

    @property
    def statuses(self) -> list[int]:
        return [int(code) for code in _STATUS_LINE.findall(self.data)]

    def responses(self) -> list[Response]:
        """Every Content-Length framed response on the connection, in order."""
        found, rest = [], self.data
        while rest.startswith(b"HTTP/1.1 "):
            head, _, rest = rest.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            fields = [tuple(line.split(b": ", 1)) for line in lines[1:]]
            length = next((int(v) for k, v in fields if k.lower() == b"content-length"), 0)
            status = int(lines[0].split(b" ")[1])
            if status == 100:
                found.append(Response(status, fields, b""))
                continue
            found.append(Response(status, fields, rest[:length]))
            rest = rest[length:]
        return found


@dataclass
class Response:
    status: int
    fields: list[tuple[bytes, ...]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.fields if k.lower() == name.lower()), None)

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


async def exchange(port: int, data: bytes, *, quiet: float = 0.5) -> Exchange:
    """Send raw bytes; read until the listener closes or stays quiet for ``quiet`` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks: list[bytes] = []
    closed = reset = False
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), quiet)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    except ConnectionResetError:
        closed = reset = True
    finally:
        writer.close()
    return Exchange(b"".join(chunks), closed, reset)
