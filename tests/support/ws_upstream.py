"""A WebSocket upstream on raw asyncio streams, and a raw WebSocket client (RFC 6455 §4).

The upstream records each handshake head exactly as it arrived, answers a correct ``101``
and then treats the connection as bytes: ``echo`` writes back what it reads, ``count``
counts and drops it (reading ``read_size`` bytes every ``read_pause`` seconds, to stand for
a slow consumer). No WebSocket library sits in between, so a test sees exactly what the
gateway relayed, and can send what no library would (a frame declaring 4 GiB).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Literal

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TAIL = 1024


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - RFC 6455


def field_value(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name.lower():
            return value.strip()
    return None


@dataclass
class RawWebSocketUpstream:
    mode: Literal["echo", "count"] = "echo"
    read_size: int = 65536
    read_pause: float = 0.0
    heads: list[bytes] = field(default_factory=list)
    received: int = 0  # bytes after the handshakes, over every connection
    tail: bytes = b""  # the last bytes received, over every connection
    open_connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.open_connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            key = field_value(head, b"Sec-WebSocket-Key") or b""
            answer = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(key) + b"\r\n"
            )
            protocol = field_value(head, b"Sec-WebSocket-Protocol")
            if protocol:
                answer += b"Sec-WebSocket-Protocol: " + protocol.split(b",")[0].strip() + b"\r\n"
            writer.write(answer + b"\r\n")
            while data := await reader.read(self.read_size):
                self.received += len(data)
                self.tail = (self.tail + data)[-_TAIL:]
                if self.mode == "echo":
                    writer.write(data)
                    await writer.drain()
                elif self.read_pause:
                    await asyncio.sleep(self.read_pause)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()


def handshake(path: str, *headers: str, host: str = "x") -> tuple[bytes, bytes]:
    """A client's opening handshake for ``path`` and the accept value it expects."""
    key = base64.b64encode(os.urandom(16))
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
             "Sec-WebSocket-Version: 13", *headers]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept_for(key)


def masked_frame(payload: bytes, opcode: int = 0x2, declared: int | None = None) -> bytes:
    """A client frame (masked, RFC 6455 §5.2); ``declared`` claims another payload length."""
    length = len(payload) if declared is None else declared
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


@dataclass
class RawWebSocketClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: bytes  # the gateway's answer to the handshake
    accept: bytes  # the Sec-WebSocket-Accept a 101 must carry for this client's key
    tail: bytes = b""  # the last bytes read by closed_within

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def close(self) -> None:
        self.writer.close()

    async def closed_within(self, seconds: float) -> bool:
        """Whether the gateway ends the connection within ``seconds`` (EOF or reset)."""
        try:
            async with asyncio.timeout(seconds):
                while data := await self.reader.read(65536):
                    self.tail = (self.tail + data)[-_TAIL:]
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


async def connect(port: int, path: str, *headers: str) -> RawWebSocketClient:
    """Open a WebSocket through the gateway; the answer's head is kept (101 or not)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request, accept = handshake(path, *headers)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return RawWebSocketClient(reader, writer, head, accept)
