"""The shape of a client request as the upstream will get it (RFC 9112 §6, RFC 9110 §10.1.1).

Pure decisions about framing and bodies, taken once per request, plus the one place a body
is read in full before forwarding or answering (a form that may carry an RFC 6750 §2.2
token, a back-channel logout): all of it HTTP-level, none of it about OAuth. The listener
already refused every framing the gateway will not relay (CL+TE, a coding other than
chunked, HTTP/1.0 with Transfer-Encoding).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import unquote_plus

from gateway.listener import Request
from gateway.problems import MethodNotAllowed, RequestTimeout
from gateway.proxy.forward import NO_BODY, Body

FORM_TYPE = b"application/x-www-form-urlencoded"

Header = tuple[str, str]


def refuse_connect(method: str) -> None:
    """A CONNECT names no resource (RFC 9110 §9.3.6) and the gateway is no open proxy: 405,
    before any routing, with nothing to list. (A TRACE is refused once routed:
    ``request_decision.route_of``.)"""
    if method == "CONNECT":
        raise MethodNotAllowed(())


def body_of(request: Request) -> Body:
    """The body's framing as the client sent it."""
    body = request.body
    if body.chunked:
        return Body(reader=body, length=None)
    length = body.length
    if length is None:
        return NO_BODY
    return Body(reader=body if length else None, length=length)


def is_form(request: Request) -> bool:
    content_type = request.header(b"Content-Type") or b""
    return content_type.split(b";", 1)[0].strip().lower() == FORM_TYPE


async def read_whole_body(request: Request, limit: int) -> bytes:
    """The whole body, however many pieces it arrives in: 413 past ``limit`` bytes, 408 if
    it is not all there within the listener's ``body_timeout``.

    A client that sent ``Expect: 100-continue`` holds the body back until told, and the
    gateway needs the body (a form token, a logout token) before it can answer: the one case
    where ``100 Continue`` precedes the decision. A declared Content-Length over ``limit``
    gets its 413 instead of the 100 (RFC 9110 §10.1.1: a server that already knows it will
    refuse answers the final status; the 100 would only make the client send a body that is
    then thrown away), and the connection closes with the body unread. The time is counted
    from here, the 100 when one is sent: before it, a client that expects one sends nothing.
    """
    body = request.body
    try:
        body.check_length(limit)
        request.send_continue()
        async with asyncio.timeout(request.body_timeout):
            return await body.read_all(limit)
    except TimeoutError:
        # RFC 9110 §15.5.9: not "a complete request message within the time that it
        # [the server] was prepared to wait".
        raise RequestTimeout("The request body did not arrive in time.") from None


def wants_websocket(request: Request) -> bool:
    """RFC 6455 §4.1: only a GET opens a WebSocket (the listener offers ``upgrade`` on
    nothing else)."""
    upgrade = request.upgrade
    return upgrade is not None and upgrade.lower() == b"websocket"


class FieldLookup:
    """Every value of a request field by case-insensitive name, over the decoded header list
    (the ``getall`` the decision reads DPoP proofs and certificate headers with)."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Sequence[Header]) -> None:
        self._headers = headers

    def getall(self, key: str, default: Sequence[str] = (), /) -> Sequence[str]:
        wanted = key.lower()
        found = [value for name, value in self._headers if name.lower() == wanted]
        return found or default


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
