"""One request on a client connection and the ways to answer it (RFC 9110 §15, RFC 9112 §6-9).

A ``Request`` carries what the client sent, byte for byte, and is answered exactly once:
``respond`` (a complete response, one write), ``start_response`` (a streamed one, with
backpressure), ``switch_protocols`` (101 and a hand-over of the raw connection) or ``abort`` (a
reset, for a response that failed after it started). Interim responses may come first
(``send_continue``, ``send_interim``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.listener.body import RequestBody
from gateway.listener.head import (
    CHUNKED,
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    CONTINUE,
    CRLF,
    LAST_CHUNK,
    Headers,
    chunk,
    status_line,
)

if TYPE_CHECKING:
    from gateway.listener.exchange import Exchange

_NOT_STARTED, _STREAMING, _FINISHED = 0, 1, 2
# How a streamed body is delimited on the wire.
_NO_CONTENT, _BY_LENGTH, _BY_CHUNKS, _BY_CLOSE = 0, 1, 2, 3


class Request:
    """A parsed request head, its body reader, and its response state.

    ``target`` is the request-target exactly as sent; ``headers`` the fields in order as
    ``(name, value)`` bytes, values without surrounding whitespace (RFC 9110 §5.5) and
    otherwise as received, obs-text included; ``host`` the one Host value (None without).
    """

    __slots__ = (
        "_continue_sent",
        "_exchange",
        "_framed",
        "_gone",
        "_gone_waiter",
        "_state",
        "_task",
        "body",
        "expects_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        exchange: Exchange,
        method: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        host: bytes | None,
        keep_alive: bool,
        body: RequestBody,
        expects_continue: bool,
        upgrade: bytes | None,
    ) -> None:
        self._exchange = exchange
        self.method = method
        self.target = target
        self.version = version  # "1.1" or "1.0": the listener refuses anything else (505)
        self.headers = headers
        self.host = host
        self.keep_alive = keep_alive  # what the client asked for (RFC 9112 §9.3)
        self.body = body
        self.expects_continue = expects_continue
        # The Upgrade field's value on a GET that may switch protocols (RFC 9110 §7.8),
        # else None: only then may ``switch_protocols()`` be called.
        self.upgrade = upgrade
        self._state = _NOT_STARTED
        self._framed = False  # a started body whose framing shows where it ends
        self._continue_sent = False
        self._gone = False
        self._gone_waiter: asyncio.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- what the client sent ----------------------------------------------------------------

    @property
    def remote(self) -> str | None:
        """The peer's IP address."""
        return self._exchange.remote

    @property
    def secure(self) -> bool:
        """The request came over TLS: its scheme is ``https`` (RFC 9110 §4.2.2)."""
        return self._exchange.secure

    @property
    def peer_certificate(self) -> bytes | None:
        """The client certificate's DER, when the TLS client sent one and it verified."""
        return self._exchange.peer_certificate

    @property
    def body_timeout(self) -> float:
        """Seconds a body read whole may take from when it is asked for (``ListenerLimits``)."""
        return self._exchange.body_timeout

    def header(self, name: bytes) -> bytes | None:
        """The first value of a field, by case-insensitive name."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of a field, in order, by case-insensitive name."""
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]

    # --- the client's presence ---------------------------------------------------------------

    @property
    def disconnected(self) -> bool:
        """The client went away before this request's response was finished."""
        return self._gone

    def wait_disconnected(self) -> asyncio.Future[bool]:
        """Resolves True when the client goes away before the response is finished, False
        once the response is finished: await it beside an upstream exchange to cancel one."""
        waiter = self._gone_waiter
        if waiter is None:
            waiter = self._gone_waiter = self._exchange.loop.create_future()
            if self._gone or self._state == _FINISHED:
                waiter.set_result(self._gone)
        return waiter

    def client_gone(self, cancel: bool) -> None:
        """Called by the connection when the client is lost."""
        if self._state == _FINISHED:
            return
        self._gone = True
        self._state = _FINISHED
        task = self._task
        if cancel and task is not None and not task.done():
            # Before the waiter resolves: code that awaits it (through wait_for) must see the
            # cancellation, not a result that lets it carry on.
            task.cancel()
        waiter = self._gone_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # --- answering ----------------------------------------------------------------------------

    @property
    def response_started(self) -> bool:
        """Bytes of the final response (or a reset) went out: no other answer is possible."""
        return self._state != _NOT_STARTED

    def send_continue(self) -> bool:
        """Send ``100 Continue`` if the client waits for it (RFC 9110 §10.1.1) and nothing
        else was sent; True if it was sent. Call it only once the request may proceed."""
        if (
            not self.expects_continue
            or self._continue_sent
            or self._state != _NOT_STARTED
            or self.body.received
        ):
            return False
        self._continue_sent = True
        self._exchange.write(CONTINUE)
        return True

    def send_interim(
        self, status: int, headers: Headers = (), *, reason: bytes | None = None
    ) -> bool:
        """Send an interim response (a 102, a 103 Early Hints, RFC 9110 §15.2) before the
        final one, ``headers`` as given; True if it was sent. Not to an HTTP/1.0 client ("a
        server MUST NOT send a 1xx response to an HTTP/1.0 client"), nor once the final
        response started. 100 and 101 have their own calls."""
        if not 102 <= status <= 199:
            raise ValueError("100 goes through send_continue, 101 through switch_protocols")
        if self.version != "1.1" or self._state != _NOT_STARTED:
            return False
        self._exchange.write(_message(status, reason, headers, b"", b""))
        return True

    def _begin(self, status: int, close: bool) -> bytes:
        """Check the response may start; its Connection field (empty for a kept HTTP/1.1
        connection), from the connection's keep-alive decision."""
        if self._state != _NOT_STARTED or status < 200:
            if self._gone:
                raise ConnectionResetError("the client went away")
            if self._state != _NOT_STARTED:
                raise RuntimeError("this request was already answered")
            raise ValueError("interim responses go through send_continue or switch_protocols")
        if close or not self._exchange.keep_alive_for(self):
            return CONNECTION_CLOSE
        return CONNECTION_KEEP_ALIVE if self.version == "1.0" else b""

    def respond(
        self,
        status: int,
        headers: Headers = (),
        body: bytes = b"",
        *,
        reason: bytes | None = None,
        length: int | None = None,
        close: bool = False,
    ) -> None:
        """A complete response in one write. ``headers`` must not hold framing fields
        (Content-Length, Transfer-Encoding, Connection): the listener writes them. A HEAD
        or 304 answer sends no body; ``length`` is the Content-Length it announces, if any
        (RFC 9110 §8.6: the length a GET would have had). A 204 never has one. ``close``
        ends the connection after it, whatever the client asked."""
        connection = self._begin(status, close)
        if self.method == "HEAD" or status == 304 or status == 204:
            body = b""
            framing = b"" if length is None or status == 204 else b"Content-Length: %d\r\n" % length
        else:
            framing = b"Content-Length: %d\r\n" % len(body)
        exchange = self._exchange
        exchange.write(_message(status, reason, headers, framing + connection, body))
        self._state = _FINISHED
        if self._gone_waiter is not None:
            self._settle(False)
        exchange.response_finished(self, connection is not CONNECTION_CLOSE)

    def start_response(
        self,
        status: int,
        headers: Headers = (),
        *,
        length: int | None = None,
        chunked: bool = True,
        reason: bytes | None = None,
        body: bytes = b"",
        close: bool = False,
    ) -> ResponseStream:
        """Send the head (and ``body``, if given, in the same write) and return the stream
        for the rest. Framing: ``length`` gives Content-Length; without it the body is
        chunked for an HTTP/1.1 client (``chunked=True``), otherwise delimited by closing
        the connection (RFC 9112 §6.3). HEAD, 204 and 304 answers carry no body: what is
        written to their stream is dropped, and ``length`` is announced as for ``respond``."""
        connection = self._begin(status, close)
        if self.method == "HEAD" or status == 304 or status == 204:
            mode = _NO_CONTENT
            framing = b"" if length is None or status == 204 else b"Content-Length: %d\r\n" % length
            body = b""
        elif length is not None:
            mode, framing = _BY_LENGTH, b"Content-Length: %d\r\n" % length
            if len(body) > length:
                raise ValueError("the body is longer than its Content-Length")
        elif chunked and self.version == "1.1":
            mode, framing = _BY_CHUNKS, CHUNKED
            body = chunk(body) if body else b""
        else:
            mode, framing, connection = _BY_CLOSE, b"", CONNECTION_CLOSE
        self._exchange.write(_message(status, reason, headers, framing + connection, body))
        self._state = _STREAMING
        self._framed = mode in (_BY_LENGTH, _BY_CHUNKS)
        remaining = length - len(body) if mode == _BY_LENGTH and length is not None else 0
        return ResponseStream(self, mode, remaining, connection is not CONNECTION_CLOSE)

    def abort(self, *, reset: bool = True) -> None:
        """End the connection of a response that cannot be finished, so the client never
        takes a truncated body for a whole one: a reset (RST), or with ``reset=False`` a close
        after what was written when the framing (length, chunks) shows the body unfinished."""
        if self._state == _FINISHED:
            return
        self._state = _FINISHED
        self._settle(False)
        if not reset and self._framed:
            self._exchange.cut(self)
        else:
            self._exchange.abort(self)

    def switch_protocols(self, protocol: asyncio.Protocol, headers: Headers = ()) -> None:
        """Answer ``101 Switching Protocols`` with ``headers`` (the application gives
        ``Connection``/``Upgrade`` and the protocol's own fields) and hand the connection to
        ``protocol``: the listener calls its ``connection_made(transport)``, then
        ``data_received`` with any bytes the client sent after the head, and forgets it."""
        if self.upgrade is None:
            raise RuntimeError("this request did not ask to switch protocols")
        if self._gone:
            raise ConnectionResetError("the client went away")
        if self._state != _NOT_STARTED:
            raise RuntimeError("this request was already answered")
        self._exchange.write(
            b"".join(
                [
                    status_line(101),
                    *[b"%s: %s\r\n" % field for field in headers],
                    CRLF,
                ]
            )
        )
        self._state = _FINISHED
        self._settle(False)
        self._exchange.hand_over(self, protocol)

    def _finish(self, keep_alive: bool) -> None:
        self._state = _FINISHED
        self._settle(False)
        self._exchange.response_finished(self, keep_alive)

    def _settle(self, gone: bool) -> None:
        waiter = self._gone_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(gone)

    # --- the application's task ------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._state == _FINISHED

    def track(self, task: asyncio.Task[None]) -> None:
        """The task running the application for this request (cancelled if the client
        goes away, when the listener is configured so)."""
        self._task = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._exchange.application_done(self, task)


def _message(
    status: int, reason: bytes | None, headers: Headers, framing: bytes, body: bytes
) -> bytes:
    """A response head (and the start of its body) in one piece: one write."""
    return b"".join(
        [status_line(status, reason), *[b"%s: %s\r\n" % field for field in headers],
         framing, CRLF, body]
    )  # fmt: skip


class ResponseStream:
    """The body of a streamed response: ``await write(data)`` as pieces come, then
    ``end()``. ``write`` waits while the client's socket buffer is full."""

    __slots__ = ("_exchange", "_keep_alive", "_mode", "_remaining", "_request")

    def __init__(self, request: Request, mode: int, remaining: int, keep_alive: bool) -> None:
        self._request = request
        self._exchange = request._exchange
        self._mode = mode
        self._remaining = remaining
        self._keep_alive = keep_alive

    async def write(self, data: bytes) -> None:
        request = self._request
        if request._state != _STREAMING:
            if request._gone:
                raise ConnectionResetError("the client went away")
            raise RuntimeError("the response is already finished")
        if not data or self._mode == _NO_CONTENT:
            return
        if self._mode == _BY_CHUNKS:
            self._exchange.write_now(chunk(data))
        elif self._mode == _BY_LENGTH:
            if len(data) > self._remaining:
                request.abort()
                raise ValueError("the body is longer than its Content-Length")
            self._remaining -= len(data)
            self._exchange.write_now(data)
        else:
            self._exchange.write_now(data)
        if self._exchange.write_paused:
            await self._exchange.drain()

    def end(self) -> None:
        """Finish the response; one shorter than its Content-Length is aborted instead."""
        request = self._request
        if request._state != _STREAMING:
            if request._gone:
                raise ConnectionResetError("the client went away")
            return
        if self._mode == _BY_LENGTH and self._remaining:
            request.abort()
            raise ConnectionResetError("the response ended before its Content-Length")
        if self._mode == _BY_CHUNKS:
            self._exchange.write(LAST_CHUNK)
        request._finish(self._keep_alive)
