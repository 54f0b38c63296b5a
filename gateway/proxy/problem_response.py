"""Answers the proxy listener gives itself: problems (``gateway.problems.render_problem``),
RFC 9728 protected resource metadata and (``token_signing.jwks.on_proxy``) the RFC 7517 key
set of the identity tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from gateway.problems import SERVER_NAME, Challenge, GatewayError, render_problem


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


def problem_response(
    error: GatewayError, challenge: Challenge | str, request_id: str | None, *, close: bool = False
) -> web.Response:
    """The RFC 9457 response for ``error``; ``close`` ends the connection after it (framing
    the gateway could not trust)."""
    rendered = render_problem(error, challenge, request_id)
    response = reply_response(rendered)
    if close:
        response.force_close()
    return response


class Reply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...

    @property
    def body(self) -> bytes: ...


def reply_response(reply: Reply) -> web.Response:
    """A complete answer of the gateway's own (a rendered problem, a login endpoint's reply),
    each header field as given: a name may repeat (several ``Set-Cookie``)."""
    response = web.Response(status=reply.status, body=reply.body)
    for name, value in reply.headers:
        response.headers.add(name, value)
    return response


def resource_metadata_response(document: Document, if_none_match: str | None) -> web.Response:
    """RFC 9728 §3.2: ``200`` with ``application/json``; cacheable (the document changes only
    with the config), and ``304`` when the client already holds this version."""
    headers = {
        "Server": SERVER_NAME,
        "Cache-Control": "public, max-age=3600",
        "ETag": document.etag,
    }
    tags = if_none_match.split(",") if if_none_match is not None else ()
    if document.etag in (tag.strip() for tag in tags):
        return web.Response(status=304, headers=headers)
    return web.Response(body=document.document, content_type="application/json", headers=headers)


JWKS_PATH = "/.well-known/jwks.json"


def jwks_response(document: KeySetDocument) -> web.Response:
    """The identity-token keys (RFC 7517 §5), as the admin listener serves them."""
    headers = {
        "Server": SERVER_NAME,
        "Content-Type": document.content_type,
        "Cache-Control": document.cache_control,
    }
    return web.Response(body=document.body, headers=headers)
