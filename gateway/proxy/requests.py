"""The shape of a client request as the upstream will get it (RFC 9112 §6, RFC 9110 §10.1.1).

Pure decisions about framing and bodies, taken once per request, plus the one place a body
is read in full before forwarding (a form that may carry an RFC 6750 §2.2 token): all of it
HTTP-level, none of it about OAuth.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from aiohttp import HttpVersion10, HttpVersion11, web

from gateway.problems import BadFraming, MethodNotAllowed, PayloadTooLarge, VersionNotSupported
from gateway.proxy.forward import NO_BODY, Body

_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
FORM_TYPE = "application/x-www-form-urlencoded"


def check_request_line(request: web.BaseRequest) -> None:
    """Versions and methods the gateway will not relay."""
    if request.version not in _VERSIONS:
        # An HTTP/0.9-style or HTTP/2.0 request line would be relayed as HTTP/1.1, and a
        # front proxy might have framed it differently: refuse rather than guess.
        raise VersionNotSupported("Only HTTP/1.0 and HTTP/1.1 are served here.")
    check_method(request.method)


def check_method(method: str) -> None:
    """Methods never relayed, however a request arrived (the forward-auth service asks too)."""
    if method in ("CONNECT", "TRACE"):
        # Not an open proxy (CONNECT), and no reflection of credentials (TRACE).
        raise MethodNotAllowed(())


def body_of(request: web.BaseRequest) -> Body:
    """The body's framing as the client sent it (the parser already refused bad framing)."""
    codings = request.headers.getall("Transfer-Encoding", ())
    if codings:
        # RFC 9112 §6.1: chunked is the only coding the gateway relays; anything layered
        # under it (gzip, chunked) would be lost when the body is re-chunked upstream.
        if len(codings) != 1 or codings[0].strip().lower() != "chunked":
            raise BadFraming("Only Transfer-Encoding: chunked is accepted.")
        return Body(reader=request.content, length=None)
    length = request.content_length
    if length is None:
        return NO_BODY
    return Body(reader=request.content if length else None, length=length)


def is_form(request: web.BaseRequest) -> bool:
    content_type = request.headers.get("Content-Type", "")
    return content_type.split(";", 1)[0].strip().lower() == FORM_TYPE


async def read_whole_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, however many pieces it arrives in, or 413 past ``limit`` bytes.

    A single ``read()`` returns what has arrived so far: a form sent in two pieces would be
    cut, and the rest silently dropped upstream.
    """
    too_large = PayloadTooLarge(f"A form body that may carry a token is limited to {limit} bytes.")
    length = request.content_length
    if length is not None and length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def expects_continue(request: web.BaseRequest) -> bool:
    """RFC 9110 §10.1.1: the client waits for ``100 Continue`` before it sends the body."""
    return request.headers.get("Expect", "").lower() == "100-continue"


def wants_websocket(request: web.BaseRequest) -> bool:
    """RFC 6455 §4.1: only a GET opens a WebSocket."""
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def without_parameter(encoded: str, name: str) -> str:
    """An ``application/x-www-form-urlencoded`` string (a query or a form body) without the
    pairs named ``name``; every other byte stays as sent (signed URLs, upstream parsers)."""
    kept = [
        pair
        for pair in encoded.split("&")
        if unquote_plus(pair.split("=", 1)[0], errors="surrogateescape") != name
    ]
    return "&".join(kept)


def upstream_target(base_path: str, path: str, query: str | None) -> str:
    """The request target sent upstream: the upstream's base path, the (rewritten) path and
    the query exactly as the client sent it."""
    path = base_path + path
    return path if query is None else f"{path}?{query}"
