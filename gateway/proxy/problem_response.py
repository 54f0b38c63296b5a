"""Answers the proxy listener gives itself, each one complete response in one write:
problems (``gateway.problems.render_problem``), a login endpoint's reply, RFC 9728 protected
resource metadata, (``token_signing.jwks.on_proxy``) the RFC 7517 key set of the identity
tokens, and an OPTIONS whose Max-Forwards ran out here (RFC 9110 §7.6.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.listener import Request, http_date
from gateway.problems import SERVER_NAME, Challenge, GatewayError, render_problem

_SERVER = SERVER_NAME.encode("ascii")
_JSON = b"application/json"

JWKS_PATH = "/.well-known/jwks.json"


class Document(Protocol):
    @property
    def document(self) -> bytes: ...

    @property
    def etag(self) -> str: ...


class KeySetDocument(Protocol):
    @property
    def body(self) -> bytes: ...

    @property
    def cache_control(self) -> str: ...

    @property
    def content_type(self) -> str: ...


class Reply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...

    @property
    def body(self) -> bytes: ...


def send_reply(request: Request, reply: Reply, *, close: bool = False) -> int:
    """A complete answer of the gateway's own (a rendered problem, a login endpoint's
    reply), each header field as given: a name may repeat (several ``Set-Cookie``). Its
    status."""
    headers = [(name.encode("latin-1"), text.encode("latin-1")) for name, text in reply.headers]
    headers.append((b"Date", http_date()))
    request.respond(reply.status, headers, reply.body, close=close)
    return reply.status


def send_problem(
    request: Request,
    error: GatewayError,
    challenge: Challenge | str,
    request_id: str | None,
    *,
    close: bool = False,
) -> int:
    """Answer ``error`` as RFC 9457 problem details; its status. ``close`` ends the
    connection after it (framing the gateway could not trust)."""
    return send_reply(request, render_problem(error, challenge, request_id), close=close)


def send_resource_metadata(request: Request, document: Document) -> int:
    """RFC 9728 §3.2: ``200`` with ``application/json``; cacheable (the document changes only
    with the config), and ``304`` when the client already holds this version. Its status."""
    etag = document.etag.encode("ascii")
    headers = [
        (b"Server", _SERVER),
        (b"Date", http_date()),
        (b"Cache-Control", b"public, max-age=3600"),
        (b"ETag", etag),
    ]
    tags = b",".join(request.header_values(b"If-None-Match")).split(b",")
    if etag in (tag.strip() for tag in tags):
        request.respond(304, headers)
        return 304
    headers.append((b"Content-Type", _JSON))
    request.respond(200, headers, document.document)
    return 200


def send_jwks(request: Request, document: KeySetDocument) -> int:
    """The identity-token keys (RFC 7517 §5), as the admin listener serves them."""
    headers = [
        (b"Server", _SERVER),
        (b"Date", http_date()),
        (b"Content-Type", document.content_type.encode("ascii")),
        (b"Cache-Control", document.cache_control.encode("ascii")),
    ]
    request.respond(200, headers, document.body)
    return 200


def send_options(request: Request, allow: str, extra: Sequence[tuple[str, str]]) -> int:
    """RFC 9110 §9.3.7: ``200`` to an OPTIONS the gateway answers as its final recipient,
    with ``Allow`` and, as "A server MUST generate a Content-Length field with a value of
    "0" if no content is to be sent", an empty body (``respond`` frames it); ``extra`` are
    the fields the decision has for the client (request id, RateLimit, a session cookie)."""
    headers = [(b"Server", _SERVER), (b"Date", http_date()), (b"Allow", allow.encode("latin-1"))]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in extra]
    request.respond(200, headers)
    return 200
