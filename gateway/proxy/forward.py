"""Stream one request to an upstream and its response back (RFC 9112 §6, RFC 9110 §9.3.2).

What the upstream receives always carries exactly one framing: the client's Content-Length
when it sent one, chunked when it sent chunked, none when it sent no body. The response is
relayed as it arrives, with backpressure both ways; a small response that arrived whole with
its head is sent in one write. Interim (1xx) responses the gateway did not ask for go to the
client as they arrive, ahead of it (RFC 9110 §15.2). Upstream failures become 502/504 only
while nothing has been sent to the client; after that the client connection is reset, never
given a made-up end.

Header field values pass byte for byte both ways (RFC 9110 §5.5): header text holds one
character per byte received (decoded as latin-1) or ASCII the gateway made, and is encoded
back as latin-1. Only the request target is UTF-8 with surrogate escapes, the reading the
normaliser works on, encoded back to the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.listener import MalformedBody, Request, RequestBody, ResponseStream, http_date
from gateway.problems import BadGateway, GatewayError
from gateway.proxy.connection import UpstreamConnection
from gateway.proxy.headers import downstream_response_headers
from gateway.proxy.pool import UpstreamPool
from gateway.proxy.response_head import InterimSink, ResponseHead

_CHUNK_END = b"0\r\n\r\n"
_REASON_SAFE = frozenset(range(0x20, 0x7F)) | {0x09}
# After an upstream answered before the client finished its body: how much more of that
# body is read (and dropped) so the connection can stay open, and for how long at most.
_DISCARD_BYTES = 1 << 20
_DISCARD_SECONDS = 2.0

ByteHeaders = list[tuple[bytes, bytes]]
# Applied to the upstream's end-to-end fields before they go to the client (the gateway's
# own cookies are taken out of them, ``Logins.response_filter``).
ResponseFilter = Callable[[list[tuple[str, str]]], list[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Body:
    """The request body to send and how it is framed upstream."""

    reader: RequestBody | None
    length: int | None  # Content-Length framing; None with a reader means chunked
    buffered: bytes | None = None  # a body the gateway already read (form-encoded tokens)


NO_BODY = Body(reader=None, length=None)


@dataclass(slots=True)
class Relayed:
    """What ``forward`` sent, filled in as it goes (so a failure after the head still knows
    the status the client was given)."""

    status: int = 0
    bytes_out: int | None = None
    upstream_seconds: float | None = None


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
    # The target is the client's bytes read as UTF-8 with surrogate escapes; header text came
    # from the wire as latin-1 (or is gateway-made ASCII): both go back byte for byte
    # (RFC 9110 §5.5).
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
        while data := await reader.read():
            await conn.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if chunked:
            await conn.write(_CHUNK_END)
    except MalformedBody as error:
        # The client's body broke its framing: the upstream must not see a well-formed end
        # of it, and the client gets a 400 if nothing was sent yet.
        conn.abort(error)
    except (ConnectionError, GatewayError):
        # The client or the upstream went away, or the upstream answered early; the
        # response side reports it (a client that left cancels the whole exchange).
        return
    finally:
        conn.request_sent()


# RFC 9110 §9.2.2: requests a client may repeat automatically.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


async def _exchange(
    pool: UpstreamPool, head: bytes, body: Body, method: str, on_interim: InterimSink
) -> tuple[UpstreamConnection, ResponseHead, asyncio.Task[None] | None]:
    """Send the request and wait for the response head; retry once on a stale keep-alive."""
    is_head = method == "HEAD"
    uploads = body.reader is not None or bool(body.buffered)
    for attempt in (1, 2):
        conn, reused = await pool.acquire()
        conn.begin(head, is_head_request=is_head, sending=uploads, on_interim=on_interim)
        upload: asyncio.Task[None] | None = None
        if uploads:
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
                and not uploads
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


def _reason(reason: str) -> bytes | None:
    """The upstream's reason phrase when it is plain text, else the standard one."""
    if reason and all(ord(c) in _REASON_SAFE for c in reason):
        return reason.encode("ascii")
    return None


def _end_to_end(
    headers: list[tuple[str, str]], response_filter: ResponseFilter | None
) -> list[tuple[str, str]]:
    """The upstream's fields the client may see: hop-by-hop and Connection-named ones out
    (RFC 9110 §7.6.1), then the gateway's own cookies."""
    fields = downstream_response_headers(headers)
    return response_filter(fields) if response_filter is not None else fields


def _interim_relay(request: Request, response_filter: ResponseFilter | None) -> InterimSink:
    """Where the upstream connection sends the 1xx it relays (RFC 9110 §15.2): to the client
    at once, its fields filtered as a final response's are (``Request.send_interim`` leaves
    out an HTTP/1.0 client, and a client whose final response started)."""

    def relay(status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        fields = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in _end_to_end(headers, response_filter)
        ]
        request.send_interim(status, fields, reason=_reason(reason))

    return relay


def _client_headers(
    headers: list[tuple[str, str]], extra: Sequence[tuple[str, str]]
) -> tuple[ByteHeaders, int | None]:
    """The response fields for the client as bytes, without Content-Length (the listener
    frames the body), and the upstream's Content-Length if it sent one."""
    out: ByteHeaders = []
    length: int | None = None
    dated = False
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadGateway("The upstream sent an invalid Content-Length.") from None
            continue
        dated = dated or lname == "date"
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    if not dated:
        out.append((b"Date", http_date()))
    for name, value in extra:
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    return out, length


async def _discard_rest(body: RequestBody) -> None:
    """Read what is left of a body nobody needs any more, within bounds, so the connection
    can carry the client's next request; past the bounds the listener closes it."""
    with contextlib.suppress(TimeoutError, ConnectionError, GatewayError):
        async with asyncio.timeout(_DISCARD_SECONDS):
            dropped = 0
            while dropped <= _DISCARD_BYTES and (data := await body.read()):
                dropped += len(data)


async def _relay_body(stream: ResponseStream, conn: UpstreamConnection, relayed: Relayed) -> None:
    relayed.bytes_out = 0
    while chunk := await conn.read_body():
        relayed.bytes_out += len(chunk)
        await stream.write(chunk)


async def forward(
    request: Request,
    pool: UpstreamPool,
    head: bytes,
    body: Body,
    relayed: Relayed,
    extra_response_headers: Sequence[tuple[str, str]] = (),
    response_filter: ResponseFilter | None = None,
) -> None:
    """Relay one exchange; the caller has already decided the request may pass. ``relayed``
    gets the status sent, the body bytes relayed and the seconds from sending the request to
    its response head."""
    sent_at = pool.loop.time()
    relay = _interim_relay(request, response_filter)
    conn, upstream, upload = await _exchange(pool, head, body, request.method, relay)
    relayed.upstream_seconds = pool.loop.time() - sent_at
    released = False
    try:
        fields = _end_to_end(upstream.headers, response_filter)
        headers, length = _client_headers(fields, extra_response_headers)
        status, reason = upstream.status, _reason(upstream.reason)
        if upstream.complete and (upload is None or upload.done()):
            payload = conn.take_buffered_body()
            released = True
            pool.release(conn)
            if upload is not None:
                await upload
            relayed.status, relayed.bytes_out = status, len(payload)
            # RFC 9110 §9.3.2, §15.4.5: a HEAD or 304 answer keeps the upstream's length;
            # a chunked or close-delimited body that arrived whole is given one.
            request.respond(status, headers, payload, reason=reason, length=length)
            return
        # HEAD, 204 and 304 answers get no body framing from the listener (RFC 9110 §8.6:
        # "A server MUST NOT send a Content-Length header field in any response with a
        # status code of [...] 204 (No Content)").
        stream = request.start_response(status, headers, length=length, reason=reason)
        relayed.status = status
        await _relay_body(stream, conn, relayed)
        if upload is not None and not upload.done():
            # The upstream answered before reading the whole body (e.g. an early 413):
            # stop sending, do not reuse a connection left mid-request, and drop the rest
            # of the client's body so its connection can be kept.
            upload.cancel()
            await asyncio.wait((upload,))  # its read of the body is over before ours starts
            conn.close()
            released = True
            pool.release(conn)
            if body.reader is not None:
                await _discard_rest(body.reader)
        elif upload is not None:
            await upload
        if not released:
            released = True
            pool.release(conn)
        stream.end()
    except GatewayError:
        if request.response_started:
            # As nginx does: the connection ends where the relay failed; the missing end of
            # the chunks or of the Content-Length shows the client it is incomplete.
            request.abort(reset=False)
        raise
    finally:
        if not released:
            if upload is not None and not upload.done():
                upload.cancel()
            conn.close()
            pool.release(conn)
