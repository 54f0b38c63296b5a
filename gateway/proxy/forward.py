"""Stream one request to an upstream and its response back (RFC 9112 §6, RFC 9110 §9.3.2).

What the upstream receives always carries exactly one framing: the client's Content-Length
when it sent one, chunked when it sent chunked, none when it sent no body. The response is
relayed as it arrives, with backpressure both ways; a small response that arrived whole with
its head is sent in one write. Upstream failures become 502/504 only while nothing has been
sent to the client; after that the client connection is aborted, never given a made-up end.

Header field values pass byte for byte both ways (RFC 9110 §5.5): header text holds one
character per byte received (decoded as latin-1) or ASCII the gateway made, and is encoded
back as latin-1. Only the request target is UTF-8 with surrogate escapes, as aiohttp read it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import HttpVersion11, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from gateway.problems import BadGateway, BadRequest, GatewayError
from gateway.proxy.connection import ResponseHead, UpstreamConnection
from gateway.proxy.headers import downstream_response_headers
from gateway.proxy.pool import UpstreamPool

_CRLF = b"\r\n"
_CHUNK_END = b"0\r\n\r\n"
_REASON_SAFE = frozenset(range(0x20, 0x7F)) | {0x09}


@dataclass(frozen=True, slots=True)
class Body:
    """The request body to send and how it is framed upstream."""

    reader: StreamReader | None
    length: int | None  # Content-Length framing; None with a reader means chunked
    buffered: bytes | None = None  # a body the gateway already read (form-encoded tokens)


NO_BODY = Body(reader=None, length=None)


class CompleteResponse:
    """A response that arrived whole with its head, written to the client in one call.

    aiohttp's handler only needs ``prepare``, ``write_eof`` and ``keep_alive`` from what a
    handler returns. Small responses are the common case, and going through
    ``web.Response`` costs a header multidict, several writer calls and a default
    Content-Type the upstream never sent; this writes the bytes the upstream meant.
    """

    __slots__ = ("_data", "content_length", "keep_alive", "status")

    def __init__(self, status: int, data: bytes, content_length: int | None, keep_alive: bool):
        self.status = status
        self._data = data
        self.content_length = content_length
        self.keep_alive = keep_alive

    @classmethod
    def build(
        cls,
        request: web.BaseRequest,
        upstream: ResponseHead,
        headers: list[tuple[str, str]],
        payload: bytes,
    ) -> CompleteResponse:
        status = upstream.status
        keep_alive = request.keep_alive
        length: int | None = None
        if request.method == "HEAD" or status == 304:
            payload = b""  # RFC 9110 §9.3.2, §15.4.5: the upstream's length headers stand
        elif status == 204:
            payload = b""
            headers = _without_length(headers)
        else:
            # Chunked or close-delimited upstream bodies arrived whole: give them a length.
            headers = _without_length(headers)
            length = len(payload)
            headers.append(("Content-Length", str(length)))
        data = _response_head(request, upstream, headers, keep_alive) + payload
        return cls(status, data, length, keep_alive)

    async def prepare(self, request: web.BaseRequest) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(self._data)

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class StreamedResponse:
    """A response ``forward`` already relayed as it arrived, head and body.

    Like ``CompleteResponse`` it writes its own head, because aiohttp's ``StreamResponse``
    re-encodes header values as UTF-8 (``\\xff`` would leave as ``\\xc3\\xbf``); the body goes
    through the request's stream writer, which keeps its flow control.
    """

    __slots__ = ("content_length", "keep_alive", "status")

    def __init__(self, status: int, content_length: int, keep_alive: bool) -> None:
        self.status = status
        self.content_length = content_length  # body bytes relayed
        self.keep_alive = keep_alive

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _without_length(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != "content-length"]


def _response_head(
    request: web.BaseRequest,
    upstream: ResponseHead,
    headers: list[tuple[str, str]],
    keep_alive: bool,
) -> bytes:
    """The status line and header block for the client, field values as received."""
    if not any(k.lower() == "date" for k, _ in headers):
        headers.append(("Date", rfc822_formatted_time()))
    if not keep_alive:
        headers.append(("Connection", "close"))
    elif request.version < HttpVersion11:
        headers.append(("Connection", "keep-alive"))
    reason = _reason(upstream) or _phrase(upstream.status)
    lines = [f"HTTP/1.1 {upstream.status} {reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    # RFC 9110 §5.5: one character per byte received (latin-1), so the bytes go back as sent.
    return "".join(lines).encode("latin-1")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def request_head(method: str, target: str, headers: Sequence[tuple[str, str]], body: Body) -> bytes:
    """Serialise the request line and header block sent upstream."""
    parts = [f"{name}: {value}\r\n" for name, value in headers]
    if body.buffered is not None:
        parts.append(f"Content-Length: {len(body.buffered)}\r\n")
    elif body.length is not None:
        parts.append(f"Content-Length: {body.length}\r\n")
    elif body.reader is not None:
        parts.append("Transfer-Encoding: chunked\r\n")
    parts.append("\r\n")
    # The target keeps the client's bytes as aiohttp decoded them (UTF-8, surrogateescape);
    # header text came from the wire as latin-1 (or is gateway-made ASCII): encode it back
    # byte for byte (RFC 9110 §5.5).
    line = f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")
    return line + "".join(parts).encode("latin-1")


async def _send_body(conn: UpstreamConnection, body: Body) -> None:
    """Upload the body; failures end the exchange through the connection, never raise here."""
    try:
        if body.buffered is not None:
            if body.buffered:
                await conn.write(body.buffered)
            return
        reader = body.reader
        if reader is None:
            return
        chunked = body.length is None
        while True:
            data = await reader.readany()
            if not data:
                break
            if chunked:
                await conn.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                await conn.write(data)
        if chunked:
            await conn.write(_CHUNK_END)
    except (HttpProcessingError, RequestPayloadError):
        # The client's body was malformed or cut short: the upstream must not see a
        # well-formed end of it, and the client gets a 400 if nothing was sent yet.
        conn.abort(BadRequest("The request body was malformed or incomplete."))
    except (ConnectionError, GatewayError):
        # The upstream went away or answered early; the response side reports it.
        return


# RFC 9110 §9.2.2: requests a client may repeat automatically.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


async def _exchange(
    pool: UpstreamPool, head: bytes, body: Body, method: str
) -> tuple[UpstreamConnection, ResponseHead, asyncio.Task[None] | None]:
    """Send the request and wait for the response head; retry once on a stale keep-alive."""
    is_head = method == "HEAD"
    for attempt in (1, 2):
        conn, reused = await pool.acquire()
        conn.begin(head, is_head_request=is_head)
        upload: asyncio.Task[None] | None = None
        if body.reader is not None or body.buffered:
            upload = asyncio.ensure_future(_send_body(conn, body))
        try:
            response = await conn.read_head()
        except BadGateway:
            if upload is not None:
                upload.cancel()
            pool.release(conn)
            # A keep-alive connection the upstream closed while idle fails before any byte
            # comes back. The upstream may still have received the request, so only an
            # idempotent request without a body is sent again (RFC 9110 §9.2.2), and never
            # when the gateway itself closed the connection (a retired pool).
            retryable = (
                reused
                and not conn.received_any
                and body.reader is None
                and not body.buffered
                and method in _IDEMPOTENT
                and not pool.retiring
            )
            if attempt == 1 and retryable:
                continue
            raise
        except BaseException:
            if upload is not None:
                upload.cancel()
            conn.close()
            pool.release(conn)
            raise
        return conn, response, upload
    raise AssertionError("unreachable")


def _reason(head: ResponseHead) -> str | None:
    reason = head.reason
    if reason and all(ord(c) in _REASON_SAFE for c in reason):
        return reason
    return None


async def _relay_body(
    request: web.BaseRequest,
    conn: UpstreamConnection,
    upstream: ResponseHead,
    headers: list[tuple[str, str]],
) -> StreamedResponse:
    """Write the head, then the body as it arrives, framed for this client."""
    status = upstream.status
    keep_alive = request.keep_alive
    bodiless = request.method == "HEAD" or status in (204, 304)
    if status == 204:
        # RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in any
        # response with a status code of [...] 204 (No Content)".
        headers = _without_length(headers)
    chunked = False
    if not bodiless and not any(k.lower() == "content-length" for k, _ in headers):
        if request.version >= HttpVersion11:
            chunked = True
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            # RFC 9112 §6.3: an HTTP/1.0 client reads such a body until the connection closes.
            keep_alive = False
    writer = request.writer
    await writer.write(_response_head(request, upstream, headers, keep_alive))
    relayed = 0
    while chunk := await conn.read_body():
        relayed += len(chunk)
        await writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked:
        await writer.write(_CHUNK_END)
    return StreamedResponse(status, relayed, keep_alive)


async def forward(
    request: web.BaseRequest,
    pool: UpstreamPool,
    head: bytes,
    body: Body,
    extra_response_headers: Sequence[tuple[str, str]] = (),
) -> tuple[StreamedResponse | CompleteResponse, float]:
    """Relay one exchange; the caller has already decided the request may pass.

    Returns the response and the seconds from sending the request to its response head.
    """
    sent_at = pool.loop.time()
    conn, upstream, upload = await _exchange(pool, head, body, request.method)
    upstream_seconds = pool.loop.time() - sent_at
    released = False
    try:
        headers = downstream_response_headers(upstream.headers)
        headers.extend(extra_response_headers)
        if upstream.complete and (upload is None or upload.done()):
            payload = conn.take_buffered_body()
            released = True
            pool.release(conn)
            if upload is not None:
                await upload
            return CompleteResponse.build(request, upstream, headers, payload), upstream_seconds
        response = await _relay_body(request, conn, upstream, headers)
        if upload is not None:
            if upload.done():
                await upload
            else:
                # The upstream answered before reading the whole body (e.g. an early 413):
                # stop sending, and do not reuse a connection left mid-request.
                upload.cancel()
                conn.close()
        released = True
        pool.release(conn)
        await request.writer.write_eof()
        return response, upstream_seconds
    except GatewayError:
        if response_started(request):
            _abort(request)
        raise
    finally:
        if not released:
            if upload is not None and not upload.done():
                upload.cancel()
            conn.close()
            pool.release(conn)


def response_started(request: web.BaseRequest) -> bool:
    """Whether bytes of a response already went to the client (no problem body is possible)."""
    writer = request.writer
    return writer is not None and writer.output_size > 0


def _abort(request: web.BaseRequest) -> None:
    """End the client connection abruptly, so a truncated body is never taken as whole."""
    transport = request.transport
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.abort()
