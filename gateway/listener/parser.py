"""Request heads from bytes, at least as strict as aiohttp (RFC 9112 §2-3, §5-7; RFC 9110 §5).

llhttp (through httptools, in its strict default mode) already refuses obs-fold, whitespace
before a colon, bare CR or LF, NUL and other controls in fields, invalid tokens, CL+TE,
duplicate or malformed Content-Length, a Transfer-Encoding that does not end in chunked,
and malformed chunks. What it accepts and this module refuses on top:

- a request line that is not HTTP/1.0 or HTTP/1.1 (HTTP/0.9, HTTP/2.0): 505;
- HTTP/1.0 with Transfer-Encoding: RFC 9112 §6.1, a recipient "MUST treat the message as
  if the framing is faulty, even if a Content-Length is present, and close the connection
  after processing the message"; faulty framing is refused (400) and nothing after it read;
- Transfer-Encoding other than exactly ``chunked`` (``gzip, chunked`` would be lost when
  the body is re-chunked upstream; RFC 9112 §6.3 rule 4 for a final coding other than
  chunked);
- a second Host (RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status
  code to any HTTP/1.1 request message that lacks a Host header field and to any request
  message that contains more than one Host header field line"), or none in HTTP/1.1;
- a second field of the other singletons aiohttp refuses twice (Content-Type, …);
- a request target over ``max_request_line`` (414), a field whose name and value exceed
  ``max_header_size`` or more than ``max_headers`` fields (431), and an unfinished line
  longer than a field may be, so no line is buffered past the limit before it ends.

Trailer fields of a chunked request are dropped, never merged into the head. RFC 9110
§6.5 forbids merging a trailer field into the header section unless its definition
explicitly permits it and says how, and notes that intermediaries mostly discard trailers;
RFC 9112 §7.1.2 lets a recipient that removes the chunked coding (the gateway re-chunks
what it forwards) discard them. So a client can never send identity headers, or any other
field, as trailers the upstream might merge. They are still counted and bounded like
header fields.
"""

from __future__ import annotations

from typing import Protocol

import httptools

from gateway.listener.body import EMPTY_BODY, NO_BODY, BodyFlow, RequestBody
from gateway.listener.exchange import Exchange
from gateway.listener.limits import ListenerLimits
from gateway.listener.request import Request
from gateway.problems import (
    BadFraming,
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    UriTooLong,
    VersionNotSupported,
)

_HOST, _LENGTH, _CODING, _EXPECT, _UPGRADE, _SINGLETON, _OBSOLETE = range(7)
_SPECIAL_FIELDS = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _CODING,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    # RFC 9110 fields defined as single values, refused twice as aiohttp does.
    b"content-location": _SINGLETON,
    b"content-range": _SINGLETON,
    b"content-type": _SINGLETON,
    b"etag": _SINGLETON,
    b"max-forwards": _SINGLETON,
    b"server": _SINGLETON,
    b"user-agent": _SINGLETON,
    # The pre-RFC 6455 WebSocket handshake, refused as aiohttp does.
    b"sec-websocket-key1": _OBSOLETE,
}
_METHOD_NAMES = {
    name.encode(): name
    for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
}
_FIELD_TOO_LARGE = "A request header field is too large."
_TOO_MANY = "The request has too many header fields."
_VERSIONS = "Only HTTP/1.0 and HTTP/1.1 are served here."


class Owner(Exchange, BodyFlow, Protocol):
    """The connection: what requests answer through, and what their bodies count against."""


class ParserSink(Protocol):
    """Where parsed requests go (the connection), and whether more may be queued."""

    def request_parsed(self, request: Request) -> None: ...

    def queue_full(self) -> bool: ...


class ParseFailure(Exception):
    """Parsing stopped for good. ``error`` is the answer to give (None: stop quietly, for
    bytes after a request that closes the connection or past the pipelining bound);
    ``in_body`` says it broke a request body rather than a new head."""

    def __init__(self, error: GatewayError | None, *, in_body: bool) -> None:
        super().__init__(error)
        self.error = error
        self.in_body = in_body


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp; the reason is kept on the parser."""


class RequestParser:
    """Feeds bytes to llhttp and turns its callbacks into validated ``Request`` objects."""

    def __init__(self, owner: Owner, limits: ListenerLimits, sink: ParserSink) -> None:
        self._owner = owner
        self._sink = sink
        self._max_target = limits.max_request_line
        self._max_field = limits.max_header_size
        self._max_fields = limits.max_headers
        self._max_line = limits.max_line
        self._parser = httptools.HttpRequestParser(self)
        self.in_head = False
        self.parsing: Request | None = None  # the request whose body is being received
        self.upgrade_request: Request | None = None
        self._stop_reason: ParseFailure | None = None
        self._previous_closes = False
        self._raw_remaining = 0  # body bytes after an Upgrade head, counted here
        self._line = 0
        self._non_data = 0
        self._trailers = 0
        self._reset_head()

    def _reset_head(self) -> None:
        self._target = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._length: bytes | None = None
        self._coding: bytes | None = None
        self._expect = False
        self._upgrade: bytes | None = None
        self._singletons: set[bytes] | None = None

    # --- feeding -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes | None:
        """Parse ``data``; returns the bytes after a head that asked to switch protocols
        (``upgrade_request`` says which), or None. Raises ``ParseFailure``."""
        if self._raw_remaining or self.parsing is not None:
            return self._feed_in_body(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return self._after_upgrade(data[int(upgrade.args[0]) :])
        except httptools.HttpParserError as exc:
            raise self._failure(exc) from None
        if self.in_head:
            self._bound_partial_line(data)
        return None

    def _feed_in_body(self, data: bytes) -> bytes | None:
        """``feed`` while a body is arriving: also bound what is not body data."""
        if self._raw_remaining:
            data = self._feed_raw_body(data)
            if not data:
                return None
        request = self.parsing
        body = request.body if request is not None else None
        received = body.received if body is not None else -1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return self._after_upgrade(data[int(upgrade.args[0]) :])
        except httptools.HttpParserError as exc:
            raise self._failure(exc) from None
        if self.in_head:
            self._bound_partial_line(data)
        elif body is not None and body.chunked and self.parsing is request:
            # Chunk-size lines, extensions and trailers between data: bounded like a line.
            self._non_data = 0 if body.received != received else self._non_data + len(data)
            if self._non_data > self._max_line:
                error = BadFraming("A chunk header or trailer is too long.")
                raise ParseFailure(error, in_body=True)
        return None

    def _bound_partial_line(self, data: bytes) -> None:
        """An unfinished field line is held by the parser until its end: bound it. Once a
        field of this head ended, the last LF of this read lies inside this head, so the
        bytes after it are exactly the unfinished line (the request line is bounded by the
        target length as it arrives)."""
        if not self._fields:
            return
        end = data.rfind(b"\n")
        self._line = len(data) - end - 1 if end >= 0 else self._line + len(data)
        if self._line > self._max_line:
            raise ParseFailure(HeadersTooLarge(_FIELD_TOO_LARGE), in_body=False)

    def _failure(self, exc: Exception) -> ParseFailure:
        if self._stop_reason is not None:
            return self._stop_reason
        if self.parsing is not None:
            return ParseFailure(BadFraming("The request framing is malformed."), in_body=True)
        if self._previous_closes:
            # RFC 9112 §9.6: nothing after a request that closes the connection is read.
            return ParseFailure(None, in_body=False)
        message = str(exc)
        if "HTTP version" in message or "PRI" in message:
            return ParseFailure(VersionNotSupported(_VERSIONS), in_body=False)
        return ParseFailure(BadRequest("The request is not valid HTTP/1.1."), in_body=False)

    def _stop(self, error: GatewayError | None, *, in_body: bool = False) -> _Stop:
        self._stop_reason = ParseFailure(error, in_body=in_body)
        return _Stop()

    def _after_upgrade(self, tail: bytes) -> bytes | None:
        """llhttp stops after a head with Upgrade (or CONNECT), whatever follows."""
        request = self.upgrade_request
        self._parser = httptools.HttpRequestParser(self)
        if request is None:  # pragma: no cover - llhttp only stops after such a head
            raise ParseFailure(BadRequest("The request is not valid HTTP/1.1."), in_body=False)
        if request.upgrade is not None or request.method == "CONNECT":
            return tail  # the application decides: switch, or answer and go on (or close)
        self.upgrade_request = None
        if request.body.length:
            # httptools makes llhttp skip the body of an Upgrade request: count it here.
            self._raw_remaining = request.body.length
        return self.feed(tail) if tail else None

    def _feed_raw_body(self, data: bytes) -> bytes:
        request = self.parsing
        assert request is not None
        take = min(len(data), self._raw_remaining)
        request.body.feed(data[:take])
        self._raw_remaining -= take
        if not self._raw_remaining:
            self.parsing = None
            request.body.finish()
        return data[take:]

    # --- llhttp callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._sink.queue_full():
            raise self._stop(None)
        self.in_head = True
        self._line = 0
        self._reset_head()

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > self._max_target:
            # The line is refused as soon as it is known to be too long, never buffered whole.
            raise self._stop(UriTooLong("The request target is too long."))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            self._trailer(name, value)
            return
        fields = self._fields
        if len(name) + len(value) > self._max_field or len(fields) >= self._max_fields:
            many = len(fields) >= self._max_fields
            raise self._stop(HeadersTooLarge(_TOO_MANY if many else _FIELD_TOO_LARGE))
        # llhttp drops the whitespace before a value, not after it (RFC 9110 §5.5).
        value = value.rstrip(b" \t")
        fields.append((name, value))
        lname = name.lower()
        kind = _SPECIAL_FIELDS.get(lname)
        if kind is None:
            return
        if kind == _HOST and self._host is None:
            self._host = value
        else:
            self._special(kind, lname, value)

    def _special(self, kind: int, lname: bytes, value: bytes) -> None:
        if kind == _HOST:
            if self._host is not None:
                raise self._stop(BadRequest("A request must not have two Host fields."))
            self._host = value
        elif kind == _LENGTH:
            if self._length is not None:
                raise self._stop(BadFraming("A request must not have two Content-Length fields."))
            self._length = value
        elif kind == _CODING:
            if self._coding is not None:
                raise self._stop(BadFraming("Only Transfer-Encoding: chunked is accepted."))
            self._coding = value
        elif kind == _EXPECT:
            self._expect = self._expect or value.lower() == b"100-continue"
        elif kind == _UPGRADE:
            self._upgrade = value
        elif kind == _SINGLETON:
            seen = self._singletons
            if seen is None:
                seen = self._singletons = set()
            elif lname in seen:
                error = BadRequest(f"A request must not have two {lname.decode()} fields.")
                raise self._stop(error)
            seen.add(lname)
        else:
            raise self._stop(BadRequest("The pre-RFC 6455 WebSocket handshake is refused."))

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field: counted, bounded, dropped (see the module docstring)."""
        self._trailers += 1
        if self._trailers > self._max_fields or len(name) + len(value) > self._max_field:
            raise self._stop(BadFraming("The request trailer is too large."), in_body=True)

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            if self._host is None:
                raise self._stop(BadRequest("An HTTP/1.1 request must have a Host field."))
        elif version != "1.0":
            # An HTTP/0.9 or HTTP/2.0 request line would be relayed as HTTP/1.1, and a front
            # proxy might have framed it differently: refuse rather than guess.
            raise self._stop(VersionNotSupported(_VERSIONS))
        raw_method = parser.get_method()
        method = _METHOD_NAMES.get(raw_method) or raw_method.decode("ascii")
        upgrading = parser.should_upgrade()
        if self._coding is None and self._length is None:
            body = NO_BODY
        else:
            body = self._body(version, upgrading)
        keep_alive = parser.should_keep_alive() and method != "CONNECT"
        self._previous_closes = not keep_alive
        framed = body is not NO_BODY and body is not EMPTY_BODY
        # RFC 9110 §7.8: "A server MUST ignore an Upgrade header field that is received in
        # an HTTP/1.0 request"; only a GET without a body may open a tunnel (RFC 6455 §4.1).
        upgrade = self._upgrade if upgrading and method == "GET" and version == "1.1" else None
        if framed:
            upgrade = None
        request = Request(
            self._owner,
            method,
            self._target,
            version,
            self._fields,
            self._host,
            keep_alive,
            body,
            # RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an
            # HTTP/1.0 request MUST ignore that expectation."
            self._expect and version == "1.1" and framed,
            upgrade,
        )
        if framed:
            self.parsing = request
            self._trailers = 0
            self._non_data = 0
        if upgrading:
            self.upgrade_request = request
        self._sink.request_parsed(request)

    def _body(self, version: str, upgrading: bool) -> RequestBody:
        """The body the framing fields announce (at least one of them is present)."""
        coding = self._coding
        if coding is not None:
            if version == "1.0":
                # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding MUST be treated
                # "as if the framing is faulty": refused, and the connection closed.
                raise self._stop(BadFraming("HTTP/1.0 requests cannot use Transfer-Encoding."))
            if coding.lower() != b"chunked":
                # RFC 9112 §6.3 rule 4: "If a Transfer-Encoding header field is present in a
                # request and the chunked transfer coding is not the final encoding, ... the
                # server MUST respond with the 400 (Bad Request) status code and then close
                # the connection"; any other coding before chunked is refused too.
                raise self._stop(BadFraming("Only Transfer-Encoding: chunked is accepted."))
            if upgrading:
                # llhttp would hand the chunked body to the new protocol unparsed.
                raise self._stop(BadFraming("A chunked request cannot ask to switch protocols."))
            return RequestBody(self._owner, None, True)
        if self._length is not None:
            length = int(self._length)  # llhttp accepted only digits
            return RequestBody(self._owner, length, False) if length else EMPTY_BODY
        return NO_BODY  # pragma: no cover - only called with a framing field

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        if request is not None:
            request.body.feed(data)

    def on_message_complete(self) -> None:
        request = self.parsing
        if request is None or request is self.upgrade_request:
            # No body, or the body of an Upgrade request that follows its head unparsed.
            return
        self.parsing = None
        request.body.finish()
