"""The write side of a client connection: batched writes, backpressure and resets
(RFC 9112 §9.6)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from gateway.listener.context import ListenerContext

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, zero seconds: close() sends RST


class Output:
    """Bytes for one client, in order: queued until the end of the loop iteration (heads,
    complete responses), or written at once after what is queued (stream bodies, whose
    backpressure needs the transport's real buffer size)."""

    __slots__ = ("_context", "_queue", "_waiter", "closed", "paused", "transport")

    def __init__(self, context: ListenerContext) -> None:
        self._context = context
        self.transport: asyncio.Transport | None = None
        self._queue: list[bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False  # the transport's buffer is above its high-water mark
        self.closed = False  # nothing more goes out through this object

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        queue = self._queue
        if queue is None:
            self._queue = [data]
            self._context.cork(self)
        else:
            queue.append(data)

    def write_now(self, data: bytes) -> None:
        if self.closed:
            return
        if self._queue is not None:
            self.flush()
        assert self.transport is not None
        self.transport.write(data)

    def flush(self) -> None:
        queue, self._queue = self._queue, None
        if queue and not self.closed:
            assert self.transport is not None
            self.transport.write(queue[0] if len(queue) == 1 else b"".join(queue))

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full."""
        if self.closed:
            raise ConnectionResetError("the client went away")
        if not self.paused:
            return
        waiter = self._waiter = self._context.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reset(self) -> None:
        """End the connection with RST: what was queued must not look like a whole answer."""
        self._queue = None
        transport = self.transport
        if self.closed or transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        transport.abort()

    def lost(self) -> None:
        """The connection is gone (or handed over): fail a writer waiting to drain."""
        self.closed = True
        self._queue = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client went away"))
