"""Keep-alive, timeouts, read flow control and closing of a client connection
(RFC 9112 §9.3-9.6).

The state every part of ``HttpConnection`` shares, and the half of it that decides when a
connection pauses reading, times out, lingers or closes. One timer per connection enforces
the head and keep-alive timeouts from timestamps, so a busy keep-alive connection costs no
timer work per request.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.listener.context import ListenerContext
from gateway.listener.errors import HeaderTimeout
from gateway.listener.head import refusal_bytes
from gateway.listener.output import Output
from gateway.listener.parser import RequestParser
from gateway.listener.request import Request
from gateway.problems import GatewayError


class ConnectionLifecycle:
    """The base of ``HttpConnection``: its state, and how it ends."""

    _parser: RequestParser  # made by the subclass, which is what the parser calls back

    def __init__(self, context: ListenerContext) -> None:
        limits = context.limits
        self._ctx = context
        self._handler = context.handler
        self.loop = context.loop
        self.remote: str | None = None
        self.secure = False  # the connection is TLS (the listener has ``listen.tls``)
        self.peer_certificate: bytes | None = None  # the client certificate's DER (mTLS)
        self._transport: asyncio.Transport | None = None
        output = self._output = Output(context)
        # What requests write through, bound once (no extra call per write).
        self.write = output.write
        self.write_now = output.write_now
        self.drain = output.drain
        self._current: Request | None = None
        self._backlog: deque[Request | GatewayError] = deque()
        self._start_pending = False
        self._start_on_resume = False
        self._buffered = 0
        self._reading_paused = False
        self._stopped = False  # the parser takes no more bytes
        self._tail: bytearray | None = None  # after an Upgrade head, until the app decides
        self._lingering = False
        self._closing = False
        self._closed = False
        self._idle_since = 0.0
        self._head_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._head_timeout = limits.head_timeout
        self._keepalive = limits.keepalive_timeout
        self._high = limits.body_high_water
        self._low = limits.body_low_water
        self._max_pipeline = limits.max_pipeline
        self._linger_timeout = limits.linger_timeout
        self.body_timeout = limits.body_timeout  # for a body read whole (``Request``)

    # --- closing -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The listener is stopping: close now if idle, else after the current response."""
        self._closing = True
        if not self._closed and self._current is None and not self._backlog:
            self._close()

    def reset(self) -> None:
        """The drain time is over: end the connection (its task is cancelled)."""
        if not self._closed:
            self._output.reset()

    def _refuse(self, error: GatewayError, *, linger: bool = True) -> None:
        if self._closed:
            return
        self._stopped = True
        hook = self._ctx.on_refusal
        if hook is not None:
            hook(error, self.remote)
        self.write(refusal_bytes(error, self._ctx.server_header))
        if linger:
            self._linger()
        else:
            assert self._transport is not None
            self._output.flush()
            self._transport.close()

    def _close(self) -> None:
        """Close after what was written; linger if the client may still be sending, so it
        reads the answer rather than a reset caused by unread bytes."""
        if self._closed:
            return
        parsing = self._parser.parsing
        if self._stopped or self._backlog or self._parser.in_head or parsing is not None:
            self._linger()
        else:
            assert self._transport is not None
            self._output.flush()
            self._transport.close()

    def _linger(self) -> None:
        transport = self._transport
        assert transport is not None
        self._stopped = True
        self._lingering = True
        self._tail = None
        self._backlog.clear()
        self._output.flush()
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # after the buffered response; the client sees its end
        self._sync_reading()  # keep reading, and discarding, until the client closes
        self._cancel_timer()
        self._arm(self.loop.time() + self._linger_timeout)

    # --- flow control ------------------------------------------------------------------------

    def body_buffered(self, size: int) -> None:
        self._buffered += size
        if self._buffered > self._high and not self._reading_paused:
            self._sync_reading()

    def body_released(self, size: int) -> None:
        self._buffered -= size
        if self._reading_paused:
            self._sync_reading()

    def _sync_reading(self) -> None:
        if self._closed or self._transport is None:
            return
        if self._lingering:
            pause = False
        elif self._stopped:
            pause = self._tail is None or len(self._tail) > self._high
        else:
            limit = self._low if self._reading_paused else self._high
            pause = self._buffered > limit or len(self._backlog) >= self._max_pipeline
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    # --- timers ------------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_when = when

    def _arm_before(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._arm(when)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        transport = self._transport
        if self._closed or transport is None:
            return
        if self._lingering:
            transport.abort()
            return
        now = self.loop.time()
        if self._current is None and not self._stopped and not self._backlog:
            if self._head_since is not None:
                deadline = self._head_since + self._head_timeout
                if now >= deadline:
                    self._head_timed_out()
                    return
            else:
                deadline = self._idle_since + self._keepalive
                if now >= deadline:
                    transport.close()  # RFC 9112 §9.5: an idle connection may close
                    return
        else:
            deadline = now + self._keepalive  # a request is running: nothing to enforce
        self._arm(deadline)

    def _head_timed_out(self) -> None:
        if self._parser.in_head:
            # No lingering for a client this slow: what it sends next is of no interest.
            self._refuse(HeaderTimeout("The request head was not completed in time."), linger=False)
        else:
            # Nothing of a request arrived: close quietly, since a 408 the client did not
            # ask for could be read as the answer to its next request.
            assert self._transport is not None
            self._transport.close()
