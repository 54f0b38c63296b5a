"""A WebSocket relayed as a byte tunnel once both ends agreed (RFC 6455 §4; RFC 9110 §7.8).

The upstream leg is a connection of its own to the route's upstream (``open_connection``:
the pool's connect timeout and TLS settings), never the control plane's HTTP client, so no
number of open WebSockets can starve key-set fetches or introspection. The gateway sends
the upstream the request it vetted, waits (within the upstream's read timeout) for a ``101``
that really accepts the client's key, and only then switches the client. From there bytes
go both ways as they arrive, with no re-framing and no message buffering: each direction
holds at most the transport's write buffer (``_WRITE_HIGH``) before it stops reading from
the other side, so a frame declaring 4 GiB streams through in constant memory.

A tunnel ends when either side closes, or when ``close()`` is called (its token expired or
was evicted, the gateway stops): each side is sent a Close frame saying why where the
stream written to it stands between frames (``ws_frames``) and then half-closed, the others
are closed; whatever has not finished closing within a grace period is reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

import httptools

from gateway.listener import Request
from gateway.problems import BadGateway, GatewayTimeout
from gateway.proxy.headers import downstream_response_headers
from gateway.proxy.pool import open_connection
from gateway.proxy.targets import UpstreamTarget
from gateway.proxy.websocket import check_upstream_accept
from gateway.proxy.ws_frames import (
    GOING_AWAY,
    POLICY_VIOLATION,
    FrameTracker,
    close_frame,
    new_mask,
)

_HEAD_LIMIT = 16 * 1024  # the upstream's 101 head
_WRITE_HIGH = 64 * 1024  # per direction, before the other side stops being read
_CLOSE_GRACE = 5.0  # after one side ended, before what is left is reset
_FORCED_GRACE = 1.0  # after close(): a peer that reads nothing does not keep it open

Header = tuple[str, str]


class _Leg(asyncio.Protocol):
    """One side of the tunnel: what it receives is written to the other side."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.peer: _Leg | None = None
        self.lost = False
        self.received = 0
        self.frames = FrameTracker()  # of what this side is sent
        self.draining = False  # sent a Close: what it sends now is read and dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        peer = self.peer
        if peer is not None and not self.draining:
            peer.send(data)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.frames.feed(data)
            transport.write(data)

    def finish(self, code: int, reason: str, *, masked: bool) -> None:
        """Say why with a Close frame where one can go (between frames, none sent yet), then
        half-close and read on, dropping what arrives, until the peer closes or the tunnel's
        grace ends: a socket closed with unread bytes is reset by the kernel, which throws
        away the frame still in its send buffer (RFC 6455 §7.1.1: the TCP close follows the
        closing handshake). Where no frame can go, the connection just closes."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.frames.at_boundary or self.frames.closed:
            transport.close()
            return
        self.send(close_frame(code, reason, mask=new_mask() if masked else None))
        self.draining = True
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()

    # Backpressure: this side's socket is full, so stop reading from the other one.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.set_reading(False)

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.set_reading(True)

    def set_reading(self, on: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.draining:
            return
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def eof_received(self) -> bool:
        self.tunnel.end(_CLOSE_GRACE)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.leg_lost()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()


class _UpstreamLeg(_Leg):
    """The upstream side: first the handshake's answer, then bytes for the client."""

    def __init__(self, tunnel: Tunnel) -> None:
        super().__init__(tunnel)
        self.head: asyncio.Future[tuple[int, list[Header]]] = tunnel.loop.create_future()
        self._buffer = b""
        self._early: list[bytes] = []  # after the 101, before the client was switched
        self._switched = False
        self._fields: list[Header] = []

    def data_received(self, data: bytes) -> None:
        if self._switched:
            super().data_received(data)
        elif self.head.done():
            self._early.append(data)
            self.set_reading(False)
        else:
            self._read_head(data)

    def _read_head(self, data: bytes) -> None:
        buffer = self._buffer = self._buffer + data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _HEAD_LIMIT:
                self._fail(BadGateway("The upstream's WebSocket answer is too large."))
            return
        head, tail = buffer[: end + 4], buffer[end + 4 :]
        self._buffer = b""
        parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stops after a 101 head: exactly what was fed
        except httptools.HttpParserError:
            self._fail(BadGateway("The upstream sent a malformed WebSocket answer."))
            return
        if tail:
            self._early.append(tail)
        self.set_reading(False)  # until the client is switched
        self.head.set_result((parser.get_status_code(), self._fields))

    def on_header(self, name: bytes, value: bytes) -> None:
        # One character per byte, so the values reach the client as sent (RFC 9110 §5.5).
        self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def switched(self) -> None:
        """The client got its 101: what the upstream sent since goes to it, then the rest."""
        self._switched = True
        early, self._early = self._early, []
        for data in early:
            super().data_received(data)
        client = self.peer.transport if self.peer is not None else None
        # Replaying may have filled the client's buffer (pause_writing then paused this
        # side, and resume_writing will resume it): reading on regardless would not stop.
        if client is not None and client.get_write_buffer_size() <= _WRITE_HIGH:
            self.set_reading(True)

    def _fail(self, error: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(error)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(
                BadGateway("The upstream closed the connection during the handshake.")
            )
        super().connection_lost(exc)


class Tunnel:
    """The two legs of one relayed WebSocket; ``closed`` is done once both are gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed: asyncio.Future[None] = loop.create_future()
        self.upstream = _UpstreamLeg(self)
        self.client = _Leg(self)
        self.upstream.peer, self.client.peer = self.client, self.upstream
        self._reaper: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def bytes_to_client(self) -> int:
        return self.upstream.received

    def close_after(self, seconds: float) -> None:
        """End the tunnel ``seconds`` from now (the token that opened it expires then)."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(
            max(seconds, 0.0), self.close, POLICY_VIOLATION, "the token expired"
        )

    def close(self, code: int = GOING_AWAY, reason: str = "the gateway is stopping") -> None:
        """End the tunnel now: each side is told why with a Close frame (RFC 6455 §7.4.1)
        where one can go, and both connections close once their peers did, or are reset
        after a grace period."""
        if self.closed.done():
            return
        if self.client.transport is None:  # not switched yet: nothing to tell anyone
            self.end(_FORCED_GRACE)
            return
        self.client.finish(code, reason, masked=False)
        self.upstream.finish(code, reason, masked=True)
        if self._reaper is None:
            self._reaper = self.loop.call_later(_FORCED_GRACE, self.abort)

    def end(self, grace: float) -> None:
        if self.closed.done():
            return
        self.client.close()
        self.upstream.close()
        if self._reaper is None:
            self._reaper = self.loop.call_later(grace, self.abort)

    def abort(self) -> None:
        self.client.abort()
        self.upstream.abort()

    def leg_lost(self) -> None:
        if self.client.transport is None or (self.client.lost and self.upstream.lost):
            self._done()
        else:
            self.end(_CLOSE_GRACE)

    def _done(self) -> None:
        for timer in (self._reaper, self._deadline):
            if timer is not None:
                timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)


async def open_tunnel(
    request: Request,
    target: UpstreamTarget,
    head: bytes,
    key: str,
    extra_response_headers: Sequence[Header] = (),
    response_filter: Callable[[list[Header]], list[Header]] | None = None,
) -> Tunnel:
    """Send ``head`` (the vetted ``GET`` with ``Connection: Upgrade``) to ``target``, check its
    ``101`` against ``key``, switch the client and start relaying. 502/504 (nothing sent to
    the client) when the upstream refuses, fails the handshake or takes too long."""
    tunnel = Tunnel(asyncio.get_running_loop())
    leg = tunnel.upstream
    await open_connection(tunnel.loop, target, leg)
    try:
        assert leg.transport is not None
        leg.transport.write(head)
        try:
            async with asyncio.timeout(target.read_timeout):
                status, fields = await leg.head
        except TimeoutError:
            raise GatewayTimeout("The upstream did not accept the WebSocket in time.") from None
        check_upstream_accept(status, fields, key)
        kept = downstream_response_headers(fields)
        if response_filter is not None:
            kept = response_filter(kept)
        headers = [
            *kept,
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            *extra_response_headers,
        ]
        request.switch_protocols(
            tunnel.client, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        )
        leg.switched()
    except BaseException:
        tunnel.abort()
        tunnel._done()
        raise
    return tunnel
