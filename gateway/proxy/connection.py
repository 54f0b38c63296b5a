"""One keep-alive HTTP/1.1 connection to an upstream, on an asyncio protocol (RFC 9112 §6, §9).

aiohttp's ``ClientSession`` costs about three times more CPU per request than a bare protocol
whose responses are parsed by httptools (llhttp), so the upstream side is built here: each
``UpstreamConnection`` carries one exchange at a time and is returned to its pool only after
a complete response on a connection both sides agreed to keep alive.

Timeouts are driven by timestamps checked from one timer per connection rather than by
``asyncio.wait_for`` around every read, which would allocate a task per chunk. The read
timeout is the upstream's silence: counted from the last byte it sent or accepted, so a
steady upload longer than the timeout is never cut; a client whose upload stalls that long
gets 408, an upstream that stops reading or answering 504.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from gateway.problems import BadGateway, GatewayError, GatewayTimeout, RequestTimeout
from gateway.proxy.response_head import (
    HEAD_FRAME,
    MAX_INTERIM,
    HeadBudget,
    InterimSink,
    ResponseHead,
    framing,
    interim_refusal,
    relays_interim,
    unrelayable,
)

if TYPE_CHECKING:
    from gateway.proxy.pool import UpstreamPool

log = logging.getLogger("gateway.upstream")

_TOO_LARGE_HEAD = "The upstream sent too large a response head or trailer section."
_HIGH_WATER = 256 * 1024  # pause reading from the upstream above this many buffered bytes
_LOW_WATER = 64 * 1024


class _Unrelayable(Exception):
    """Raised in a parser callback to stop llhttp on a response the gateway cannot relay."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream, carrying one request/response exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._reset_exchange()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

    def _reset_exchange(self) -> None:
        self._headers: list[tuple[str, str]] = []
        self._reason = ""
        self._head: ResponseHead | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._body: deque[bytes] = deque()
        self._body_size = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._interim = False
        self._on_interim: InterimSink | None = None
        self._interims_relayed = 0
        self._is_head_request = False
        self._close_delimited = False
        self._error: BaseException | None = None
        self._reading_paused = False
        self.received_any = False  # the upstream sent something: the request is not retried
        self._read_content = False  # the read being parsed carried body bytes
        self._head_budget = HeadBudget()
        self._keep_alive = False
        self._last_activity = 0.0
        self._sending = False  # the request body is still being uploaded

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        self.received_any = True
        parser = self._parser
        if parser is None or self._complete:
            # Bytes outside an exchange: the upstream is not speaking HTTP/1.1 as agreed.
            self._fail(BadGateway("The upstream sent data outside a response."))
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(BadGateway("The upstream sent a malformed response."))
        except httptools.HttpParserUpgrade:
            self._fail(BadGateway("The upstream switched protocols unasked."))
        else:
            content, self._read_content = self._read_content, False
            if not self._head_budget.fits_read(len(data), content=content):
                self._fail(BadGateway(_TOO_LARGE_HEAD))

    def eof_received(self) -> bool:
        if self._head is not None and self._close_delimited and not self._complete:
            # RFC 9112 §6.3 rule 8: a response without framing ends when the connection closes.
            self._keep_alive = False
            self.on_message_complete()
        elif not self._complete:
            self._fail(BadGateway("The upstream closed the connection before the response ended."))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if not self._complete:
            self._fail(BadGateway("The upstream connection was lost."))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("upstream connection lost"))
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks -------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))  # the reason phrase, perhaps in pieces
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head is not None:
            # A trailer field of a chunked body: llhttp reports it like a header, but RFC
            # 9110 §6.5.1 forbids merging it into the header section (a Set-Cookie sent as a
            # trailer is no header), and RFC 9112 §7.1.2 lets the de-chunking gateway drop it.
            return
        self._count_head(len(name) + len(value) + 4)  # name ": " value CRLF
        # One character per byte, so forward.py relays the field value exactly (RFC 9110 §5.5).
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _count_head(self, size: int) -> None:
        if not self._head_budget.fits_parsed(size):
            self._fail(BadGateway(_TOO_LARGE_HEAD))
            raise _Unrelayable

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._count_head(HEAD_FRAME)
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # RFC 9110 §15.2: interim responses precede the final one; those the gateway
            # did not ask for go to the client (``relays_interim``), up to MAX_INTERIM.
            self._interim = True
            refusal = interim_refusal(self._headers)
            if refusal is not None:
                self._fail(BadGateway(refusal))
                raise _Unrelayable
            sink = self._on_interim
            if sink and relays_interim(status) and self._interims_relayed < MAX_INTERIM:
                self._interims_relayed += 1
                sink(status, self._reason, self._headers)
            self._headers = []
            self._reason = ""
            return
        self._on_interim = None  # none follows a final head; an idle connection holds no client
        version = self._parser.get_http_version()
        major, _, minor = version.partition(".")
        framed, codings = framing(self._headers)
        refusal = unrelayable(status, codings)
        if refusal is not None:
            self._fail(BadGateway(refusal))
            raise _Unrelayable  # stops llhttp; the exchange already failed with ``refusal``
        no_body = self._is_head_request or status in (204, 304)
        self._close_delimited = not framed and not no_body
        self._head = ResponseHead(
            status=status,
            reason=self._reason,
            version=(int(major or 1), int(minor or 1)),
            headers=self._headers,
            complete=False,
        )
        if self._is_head_request:
            # llhttp cannot be told the request was HEAD, so it would wait for a body that
            # never comes (RFC 9110 §9.3.2). End the exchange here; a fresh parser is made
            # for the next one.
            self._keep_alive = self._parser.should_keep_alive()
            self._finish()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._head)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._fail(BadGateway("The upstream sent a body where none was allowed."))
            return
        self._body.append(body)
        self._body_size += len(body)
        self._read_content = True
        if self._body_size > _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        if self._parser is not None and not self._close_delimited:
            self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    # --- exchange ------------------------------------------------------------------------

    def _finish(self) -> None:
        self._complete = True
        if self._head is not None:
            self._head.complete = True
        # The timer stays armed: the next exchange on this connection reuses it.
        self._wake_body()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._keep_alive = False
        for waiter in (self._head_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def abort(self, error: GatewayError) -> None:
        """End the exchange with ``error``: whoever waits on the response receives it."""
        self._fail(error)

    def begin(
        self,
        head: bytes,
        *,
        is_head_request: bool,
        sending: bool = False,
        on_interim: InterimSink | None = None,
    ) -> None:
        """Start an exchange: write the request head and arm the timers. ``sending``: a body
        follows (``write`` calls, then ``request_sent``). ``on_interim`` is given each 1xx
        to relay, as it is parsed (it must not raise)."""
        assert self.transport is not None
        self._reset_exchange()
        self._parser = httptools.HttpResponseParser(self)
        self._is_head_request = is_head_request
        self._sending = sending
        self._on_interim = on_interim
        now = self._loop.time()
        self._last_activity = now
        target = self._pool.target
        self._deadline = now + target.total_timeout if target.total_timeout else None
        self._arm_timer(now)
        self.transport.write(head)

    async def write(self, data: bytes) -> None:
        """Write part of the request body, waiting while the upstream's socket is full."""
        if self._error is not None:
            raise self._error
        assert self.transport is not None
        self.transport.write(data)
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        # The upstream took these bytes: it is not silent.
        self._last_activity = self._loop.time()

    def request_sent(self) -> None:
        """The request body is complete (or will not be completed): from now on only the
        upstream's silence counts."""
        self._sending = False
        self._last_activity = self._loop.time()

    async def read_head(self) -> ResponseHead:
        if self._error is not None:
            raise self._error
        if self._head is not None:
            return self._head
        self._head_waiter = self._loop.create_future()
        self._last_activity = self._loop.time()
        try:
            return await self._head_waiter
        finally:
            self._head_waiter = None

    def take_buffered_body(self) -> bytes:
        """Everything received so far: the whole body once ``ResponseHead.complete`` is set."""
        data = b"".join(self._body)
        self._body.clear()
        self._body_size = 0
        return data

    async def read_body(self) -> bytes:
        """The next piece of the response body; ``b""`` once it is complete."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._body_waiter = self._loop.create_future()
            self._last_activity = self._loop.time()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None
        chunk = self._body.popleft()
        self._body_size -= len(chunk)
        if self._reading_paused and self._body_size < _LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and self._error is None and not self.closed

    # --- timers --------------------------------------------------------------------------

    def _arm_timer(self, now: float) -> None:
        """Make sure a timer will look at this exchange in time.

        A timer left from an earlier exchange is kept when it fires early enough: when it
        fires it re-arms from the last activity. This saves a schedule and a cancel per
        request on a busy keep-alive connection.
        """
        when = now + self._pool.target.read_timeout
        if self._deadline is not None:
            when = min(when, self._deadline)
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._complete or self.closed:
            return  # idle in the pool: the next exchange arms a timer again
        now = self._loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._fail(GatewayTimeout("The upstream did not complete the response in time."))
            return
        waiting = self._head_waiter is not None or self._body_waiter is not None
        idle_for = now - self._last_activity
        if waiting and idle_for >= self._pool.target.read_timeout:
            if self._sending and not self._write_paused:
                # Nothing moved because the client stopped sending its body, not because
                # the upstream is slow (RFC 9110 §15.5.9).
                self._fail(RequestTimeout("The request body stopped arriving."))
            else:
                self._fail(GatewayTimeout("The upstream did not answer in time."))
            return
        # Re-arm relative to the last activity, so a steady stream never times out.
        when = self._last_activity + self._pool.target.read_timeout
        if not waiting or when <= now:
            when = now + self._pool.target.read_timeout
        if self._deadline is not None:
            when = min(when, self._deadline)
        self._timer = self._loop.call_at(when, self._on_timer)

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()
