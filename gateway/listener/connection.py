"""One client connection: parse, answer strictly in order, keep alive or close (RFC 9112 §9).

An ``asyncio.Protocol`` per connection on uvloop: the parser turns bytes into requests;
the first is handed to the application at once, later (pipelined) ones wait, parsed and
bounded, until the response before them is finished (RFC 9112 §9.3.2: "A server MAY
process a sequence of pipelined requests in parallel if they all have safe methods, but it
MUST send the corresponding responses in the same order that the requests were received").
Timeouts, flow control and closing are in ``lifecycle``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from gateway.listener.context import ListenerContext
from gateway.listener.errors import MalformedBody
from gateway.listener.head import problem_parts
from gateway.listener.lifecycle import ConnectionLifecycle
from gateway.listener.parser import ParseFailure, RequestParser
from gateway.listener.request import Request
from gateway.listener.tls import peer_certificate
from gateway.problems import GatewayError

log = logging.getLogger("gateway.listener")


class HttpConnection(ConnectionLifecycle, asyncio.Protocol):
    """The listener side of one TCP connection."""

    def __init__(self, context: ListenerContext) -> None:
        super().__init__(context)
        self._parser = RequestParser(self, context.limits, self)

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = self._output.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        # asyncio and uvloop call this once the TLS handshake is complete.
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.secure = True
            self.peer_certificate = peer_certificate(ssl_object)
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
        self._output.lost()
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

    def pause_writing(self) -> None:
        self._output.pause()

    def resume_writing(self) -> None:
        self._output.resume()
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

    @property
    def write_paused(self) -> bool:
        return self._output.paused

    def keep_alive_for(self, request: Request) -> bool:
        """Whether the response now starting may leave the connection open."""
        if not request.keep_alive or self._closing or self._closed:
            return False
        if self._stopped and not self._backlog and self._tail is None:
            return False
        body = request.body
        # A body the application has not started to read when it answers: the client may
        # still be sending it (or waiting for a 100 that will never come). Close after.
        return body.complete or body.started

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
            if self._output.paused:
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
        self._output.reset()

    def cut(self, request: Request) -> None:
        """End the connection after what was written, unfinished: nothing more is read."""
        self._stopped = self._closing = True
        self._output.flush()
        if self._transport is not None:
            self._transport.close()

    def hand_over(self, request: Request, protocol: asyncio.Protocol) -> None:
        """After a 101: the connection belongs to ``protocol`` from now on."""
        transport = self._transport
        assert transport is not None
        self._output.flush()  # the 101 goes before anything of the new protocol
        self._output.lost()
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
