"""One client connection: parse, answer strictly in order, keep alive or close (RFC 9112 §9).

An ``asyncio.Protocol`` per connection on uvloop: the parser turns bytes into requests;
the first is handed to the application at once, later (pipelined) ones wait, parsed and
bounded, until the response before them is finished (RFC 9112 §9.3.2: "A server MAY
process a sequence of pipelined requests in parallel if they all have safe methods, but it
MUST send the corresponding responses in the same order that the requests were received").
One timer per connection enforces the head and keep-alive timeouts from timestamps, so a
busy keep-alive connection costs no timer work per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

from gateway.listener.errors import MalformedBody, RequestTimeout
from gateway.listener.head import problem_parts, refusal_bytes
from gateway.listener.limits import ListenerLimits
from gateway.listener.parser import ParseFailure, RequestParser
from gateway.listener.request import Request
from gateway.problems import GatewayError

log = logging.getLogger("gateway.listener")

# The application: called once per request, in order. It answers through the request, now
# or later; a coroutine it returns is run as a task (cancelled if the client goes away).
Handler = Callable[[Request], Coroutine[Any, Any, None] | None]
RefusalHook = Callable[[GatewayError, str | None], None]
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, zero seconds: close() sends RST


class ListenerContext:
    """What every connection of one listener shares."""

    __slots__ = (
        "_corked",
        "_drained",
        "cancel_on_disconnect",
        "closing",
        "connections",
        "handler",
        "limits",
        "loop",
        "on_refusal",
        "server_header",
    )

    def __init__(
        self,
        handler: Handler,
        limits: ListenerLimits,
        loop: asyncio.AbstractEventLoop,
        *,
        server_header: bytes | None,
        cancel_on_disconnect: bool,
        on_refusal: RefusalHook | None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = loop
        self.server_header = server_header
        self.cancel_on_disconnect = cancel_on_disconnect
        self.on_refusal = on_refusal
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self._drained: asyncio.Event | None = None
        self._corked: list[HttpConnection] = []

    def cork(self, connection: HttpConnection) -> None:
        """Flush ``connection`` at the end of this loop iteration (one callback for all)."""
        corked = self._corked
        corked.append(connection)
        if len(corked) == 1:
            self.loop.call_soon(self._flush_corked)

    def _flush_corked(self) -> None:
        corked, self._corked = self._corked, []
        for connection in corked:
            connection.flush()

    def forget(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        if self._drained is not None and not self.connections:
            self._drained.set()

    async def drain(self, deadline: float) -> bool:
        """Stop every connection once its current response is finished; True when all
        closed within ``deadline`` seconds, else the rest are reset."""
        self.closing = True
        self._drained = asyncio.Event()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            try:
                async with asyncio.timeout(deadline):
                    await self._drained.wait()
            except TimeoutError:
                for connection in list(self.connections):
                    connection.reset()
                return False
        return True


class HttpConnection(asyncio.Protocol):
    """The listener side of one TCP connection."""

    def __init__(self, context: ListenerContext) -> None:
        limits = context.limits
        self._ctx = context
        self._handler = context.handler
        self.loop = context.loop
        self.remote: str | None = None
        self.write_paused = False
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] | None = None  # written, waiting for the end of the iteration
        self._parser = RequestParser(self, limits, self)
        self._current: Request | None = None
        self._backlog: deque[Request | GatewayError] = deque()
        self._start_pending = False
        self._start_on_resume = False
        self._buffered = 0
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
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

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        now = self.loop.time()
        self._head_since = now  # a new connection owes its first head from the accept
        self._arm(now + self._head_timeout)
        self._ctx.connections.add(self)
        if self._ctx.closing:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            if self._tail is not None:
                self._tail += data
                self._sync_reading()
            return  # refused, lingering or switching: nothing more is parsed
        parser = self._parser
        try:
            tail = parser.feed(data)
        except ParseFailure as failure:
            self._parse_failed(failure)
        else:
            if tail is not None:
                self._hold_tail()
                if self._tail is not None:
                    self._tail += tail
            elif parser.in_head and self._head_since is None:
                now = self.loop.time()
                self._head_since = now
                self._arm_before(now + self._head_timeout)
        if self._start_pending:
            self._start_pending = False
            assert self._current is not None
            self._start_request(self._current)
        elif self._backlog:
            self._sync_reading()

    def eof_received(self) -> bool | None:
        # The client closed its side: as nginx does, a response not yet finished is for a
        # client that is gone (499); an idle connection simply closes.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        self._ctx.forget(self)
        parsing = self._parser.parsing
        if parsing is not None:
            parsing.body.fail(ConnectionResetError("the client went away before the body ended"))
        current, self._current = self._current, None
        if current is not None:
            current.client_gone(cancel=self._ctx.cancel_on_disconnect)
        for item in self._backlog:
            if isinstance(item, Request):
                item.client_gone(cancel=False)
        self._backlog.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client went away"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._start_on_resume:
            self._start_on_resume = False
            self.loop.call_soon(self._start_next)

    # --- parsing and dispatch ----------------------------------------------------------------

    def request_parsed(self, request: Request) -> None:
        self._head_since = None
        if self._current is None:
            self._current = request
            self._start_pending = True
        else:
            self._backlog.append(request)

    def queue_full(self) -> bool:
        return self._closing or len(self._backlog) >= self._max_pipeline

    def _parse_failed(self, failure: ParseFailure) -> None:
        self._stopped = True
        self._sync_reading()
        if failure.in_body:
            request = self._parser.parsing
            if request is None:
                return
            error = MalformedBody(failure.error.detail if failure.error else None)
            if request is self._current and self._start_pending:
                # Broken within the read that brought its head: refuse it before it starts.
                self._current, self._start_pending = None, False
                self._refuse(error)
            elif request in self._backlog:
                self._backlog[self._backlog.index(request)] = error
            else:
                request.body.fail(error)
            return
        if failure.error is None:
            if self._current is None and not self._start_pending:
                self._close()
            return
        if self._current is None:
            self._refuse(failure.error)
        else:
            self._backlog.append(failure.error)

    def _hold_tail(self) -> None:
        """The parser stopped after a head asking to switch protocols: keep what follows
        for the new protocol until the application decides (a CONNECT's is dropped)."""
        self._stopped = True
        request = self._parser.upgrade_request
        if request is not None and request.upgrade is not None:
            self._tail = bytearray()
        self._sync_reading()

    def _start(self, item: Request | GatewayError) -> None:
        if isinstance(item, GatewayError):
            self._refuse(item)
        else:
            self._start_request(item)

    def _start_request(self, request: Request) -> None:
        try:
            result = self._handler(request)
        except Exception as error:
            if not isinstance(error, GatewayError):
                log.exception("request handler failed")
            self._application_ended(request, error)
            return
        if result is not None:
            request.track(self.loop.create_task(result))

    def _start_next(self) -> None:
        if self._closed or self._current is not None or not self._backlog:
            return
        item = self._backlog.popleft()
        if isinstance(item, Request):
            self._current = item
        self._sync_reading()
        self._start(item)

    def application_done(self, request: Request, task: asyncio.Task[None]) -> None:
        """The application's task for ``request`` ended (``Request.track`` calls this)."""
        error = None if task.cancelled() else task.exception()
        if error is not None and not request.disconnected and not isinstance(error, GatewayError):
            log.error("request handler failed", exc_info=error)
        self._application_ended(request, error)

    def _application_ended(self, request: Request, error: BaseException | None = None) -> None:
        """The application is done with ``request``: finish what it left unanswered (its
        own ``GatewayError`` as a problem, anything else as a 500), or reset a response
        it started and did not end, so a truncated body is never taken for a whole one."""
        if request.finished or request is not self._current:
            return
        if request.response_started:
            request.abort()
            return
        if not isinstance(error, GatewayError):
            error = GatewayError()
        status, headers, body = problem_parts(error, server=self._ctx.server_header)
        request.respond(status, headers, body)

    # --- what requests call ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the end of this loop iteration: every response a batch of
        reads produced leaves in one system call per connection after the batch, rather
        than one in the middle of it (measured: about a sixth less CPU per request)."""
        if self._closed:
            return
        out = self._out
        if out is None:
            self._out = [data]
            self._ctx.cork(self)
        else:
            out.append(data)

    def write_now(self, data: bytes) -> None:
        """Write at once, after anything queued (stream bodies, whose drain needs the
        transport's real buffer size)."""
        if self._closed:
            return
        if self._out is not None:
            self.flush()
        assert self._transport is not None
        self._transport.write(data)

    def flush(self) -> None:
        out, self._out = self._out, None
        if out and not self._closed:
            assert self._transport is not None
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("the client went away")
        if not self.write_paused:
            return
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def keep_alive_for(self, request: Request) -> bool:
        """Whether the response now starting may leave the connection open."""
        if not request.keep_alive or self._closing or self._closed:
            return False
        if self._stopped and not self._backlog and self._tail is None:
            return False
        body = request.body
        # A body the application has not started to read when it answers: the client may
        # still be sending it (or waiting for a 100 that will never come). Close after.
        return body.complete or body.consumed > 0

    def response_finished(self, request: Request, keep_alive: bool) -> None:
        if request is not self._current:
            return
        self._current = None
        body = request.body
        if not body.complete:
            keep_alive = False
        if body.received != body.consumed:
            body.discard()
        if not keep_alive or self._closed:
            self._close()
            return
        if self._tail is not None:
            tail, self._tail = bytes(self._tail), None
            self._stopped = False
            self._sync_reading()
            self.loop.call_soon(self._resume_after, tail)
        elif self._backlog:
            if self.write_paused:
                self._start_on_resume = True
            else:
                self.loop.call_soon(self._start_next)
            return
        now = self.loop.time()
        self._idle_since = now
        if self._parser.in_head:
            self._head_since = now  # a pipelined head waited: its time starts now
            self._arm_before(now + self._head_timeout)
        if self._reading_paused:
            self._sync_reading()

    def _resume_after(self, tail: bytes) -> None:
        """An upgrade request was answered without switching: parse what followed it."""
        if self._closed:
            return
        self._parser.upgrade_request = None
        if tail:
            self.data_received(tail)

    def abort(self, request: Request) -> None:
        transport = self._transport
        self._out = None  # a reset: what was queued must not look like a whole answer
        if self._closed or transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        transport.abort()

    def hand_over(self, request: Request, protocol: asyncio.Protocol) -> None:
        """After a 101: the connection belongs to ``protocol`` from now on."""
        transport = self._transport
        assert transport is not None
        self.flush()  # the 101 goes before anything of the new protocol
        tail = bytes(self._tail) if self._tail else b""
        self._tail = None
        self._closed = True  # for this protocol: nothing more is parsed, timed or answered
        self._current = None
        self._cancel_timer()
        self._ctx.forget(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if tail:
            protocol.data_received(tail)
        if self._reading_paused:
            transport.resume_reading()

    # --- closing -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The listener is stopping: close now if idle, else after the current response."""
        self._closing = True
        if not self._closed and self._current is None and not self._backlog:
            self._close()

    def reset(self) -> None:
        """The drain time is over: end the connection (its task is cancelled)."""
        if not self._closed and self._transport is not None:
            self._transport.abort()

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
            self.flush()
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
            self.flush()
            self._transport.close()

    def _linger(self) -> None:
        transport = self._transport
        assert transport is not None
        self._stopped = True
        self._lingering = True
        self._tail = None
        self._backlog.clear()
        self.flush()
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
            self._refuse(
                RequestTimeout("The request head was not completed in time."), linger=False
            )
        else:
            # Nothing of a request arrived: close quietly, since a 408 the client did not
            # ask for could be read as the answer to its next request.
            assert self._transport is not None
            self._transport.close()
