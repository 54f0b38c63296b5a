"""A request body as the client frames it, read with backpressure (RFC 9112 §6).

The parser feeds each piece of the body in as it arrives; the application reads it with
``await body.read()``. Bytes waiting to be read count against the connection's buffer
budget: above its high-water mark the connection stops reading from the socket, so a
client can never make the gateway hold more than that, and resumes below the low-water
mark. A body the application never reads is discarded when its response is finished.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.problems import ContentTooLarge


class BodyFlow(Protocol):
    """What a body needs from its connection: a loop and a shared buffer budget."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def body_buffered(self, size: int) -> None: ...

    def body_released(self, size: int) -> None: ...


class RequestBody:
    """One request's body: its framing, and its bytes as they arrive.

    ``length`` is the Content-Length when the client sent one; ``chunked`` says the body is
    chunked (RFC 9112 §7.1; its trailer fields are dropped, see the package docstring).
    With neither, there is no body. ``read`` raises ``MalformedBody`` when the client broke
    the framing and ``ConnectionResetError`` when it went away before the end.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_error",
        "_flow",
        "_waiter",
        "chunked",
        "consumed",
        "length",
        "received",
        "started",
    )

    def __init__(self, flow: BodyFlow | None, length: int | None, chunked: bool) -> None:
        self.length = length
        self.chunked = chunked
        self.received = 0  # bytes of content the client sent so far
        self.consumed = 0  # bytes the application has read
        self.started = False  # the application has begun reading (it answers for the rest)
        self._flow = flow
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._complete = flow is None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def framing(self) -> str:
        """``"none"``, ``"length"`` or ``"chunked"``: how the client delimited the body."""
        if self.chunked:
            return "chunked"
        return "none" if self.length is None else "length"

    @property
    def complete(self) -> bool:
        """Every byte of the body has arrived (it may not all have been read yet)."""
        return self._complete

    @property
    def exhausted(self) -> bool:
        """Every byte has arrived and been read: ``read`` would return ``b""``."""
        return self._complete and not self._chunks

    # --- the connection's side ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._complete or self._error is not None:
            return
        size = len(data)
        self._chunks.append(data)
        self._buffered += size
        self.received += size
        assert self._flow is not None
        self._flow.body_buffered(size)
        self._wake()

    def finish(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The body will never complete: the next read raises ``error``."""
        if self._complete or self._error is not None:
            return
        self._error = error
        self.discard()
        self._wake()

    def discard(self) -> None:
        """Drop what was received and not read, giving its budget back to the connection."""
        if self._buffered and self._flow is not None:
            self._flow.body_released(self._buffered)
        self._chunks.clear()
        self._buffered = 0

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the application's side --------------------------------------------------------------

    async def read(self) -> bytes:
        """Everything received and not yet read, waiting for more if there is none;
        ``b""`` once the body is complete and read."""
        self.started = True
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            assert self._flow is not None
            waiter = self._waiter = self._flow.loop.create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:  # a reader cancelled late must not drop a new one
                    self._waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        size = self._buffered
        self._buffered = 0
        self.consumed += size
        assert self._flow is not None
        self._flow.body_released(size)
        return data

    def check_length(self, limit: int) -> None:
        """``ContentTooLarge`` when the declared Content-Length exceeds ``limit``: the one
        place that decides it from the head, so a caller can refuse before it asks for the
        body with ``100 Continue`` (RFC 9110 §10.1.1)."""
        if self.length is not None and self.length > limit:
            raise ContentTooLarge(f"The request body is larger than {limit} bytes.")

    async def read_all(self, limit: int) -> bytes:
        """The whole body, or ``ContentTooLarge`` once it is known to exceed ``limit``."""
        self.check_length(limit)
        parts: list[bytes] = []
        size = 0
        while data := await self.read():
            size += len(data)
            if size > limit:
                raise ContentTooLarge(f"The request body is larger than {limit} bytes.")
            parts.append(data)
        return b"".join(parts)


# Shared by every request without a body (no framing) or with ``Content-Length: 0``: both
# are complete from the start and never hold a byte.
NO_BODY = RequestBody(None, None, False)
EMPTY_BODY = RequestBody(None, 0, False)
