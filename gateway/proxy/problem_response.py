"""Answers the proxy listener gives itself: problems (``gateway.problems.render_problem``)
and RFC 9728 protected resource metadata, each one complete response in one write."""

from __future__ import annotations

from typing import Protocol

from gateway.listener import Request, http_date
from gateway.problems import SERVER_NAME, Challenge, GatewayError, render_problem

_SERVER = SERVER_NAME.encode("ascii")
_JSON = b"application/json"


class Document(Protocol):
    @property
    def document(self) -> bytes: ...

    @property
    def etag(self) -> str: ...


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
    rendered = render_problem(error, challenge, request_id)
    headers = [(name.encode("latin-1"), text.encode("latin-1")) for name, text in rendered.headers]
    headers.append((b"Date", http_date()))
    request.respond(rendered.status, headers, rendered.body, close=close)
    return rendered.status


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
