"""An upstream on raw asyncio streams: it records the exact bytes of each request it receives
and answers with exactly the bytes a test gives it, which no HTTP library would write (header
values with obs-text, odd framing) or read back unchanged.

``parts`` is the response as written: several parts are sent ``pause`` seconds apart, so the
gateway sees the head before the body (its streaming path) instead of the whole response in
one read. With ``read_body`` off it answers as soon as the head arrived (an upstream that
answers early, before the client finished its upload).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

_HEAD_END = b"\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _chunked_body(reader: asyncio.StreamReader) -> bytes:
    """The chunked body as sent (sizes and all), up to and including the last chunk."""
    body = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        body += size_line
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body + await reader.readuntil(b"\r\n")  # no trailers from the gateway
        body += await reader.readexactly(size + 2)


@dataclass
class RawUpstream:
    parts: list[bytes] = field(default_factory=lambda: [OK])
    pause: float = 0.05
    read_body: bool = True
    heads: list[bytes] = field(default_factory=list)  # each request's head, exactly as received
    bodies: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last_head(self) -> bytes:
        assert self.heads, "the upstream received no request"
        return self.heads[-1]

    def header_lines(self, name: bytes) -> list[bytes]:
        """The raw values of ``name`` in the last request, bytes exactly as received."""
        wanted = name.lower()
        values = []
        for line in self.last_head.split(b"\r\n")[1:]:
            field_name, colon, value = line.partition(b":")
            if colon and field_name.lower() == wanted:
                values.append(value.strip(b" \t"))
        return values

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(_HEAD_END)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not self.read_body:
                    body = b""
                elif b"\r\ntransfer-encoding: chunked" in head.lower():
                    body = await _chunked_body(reader)
                else:
                    body = await reader.readexactly(_content_length(head))
                self.heads.append(head)
                self.bodies.append(body)
                for index, part in enumerate(self.parts):
                    if index:
                        await asyncio.sleep(self.pause)
                    writer.write(part)
                    await writer.drain()
                if b"\r\nconnection: close" in self.parts[0].lower():
                    return
        finally:
            writer.close()


async def relayed(tmp_path: Path, parts: list[bytes], request: bytes) -> bytes:
    """What a raw client reads back for ``request`` through a gateway whose upstream
    answers ``parts`` byte for byte."""
    from tests.support.gateway import base_config, running_gateway
    from tests.support.listener import exchange

    upstream = RawUpstream(parts=parts)
    await upstream.start()
    try:
        async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
            return (await exchange(gw.proxy_port, request)).data
    finally:
        await upstream.close()
