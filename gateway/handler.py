"""normalise → match → authenticate/authorize → set identity headers → forward.

The only module that imports both the auth pipeline and the proxy. It fails closed: a
request reaches ``forward`` only after a route matched and the route's policy said yes, and
every error on the way becomes an RFC 9457 problem response, never a pass-through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import HttpVersion10, HttpVersion11, web

from gateway.accesslog import RequestRecord
from gateway.auth.pipeline import AuthRequest, Decision
from gateway.metrics import Metrics
from gateway.problems import (
    PROBLEM_CONTENT_TYPE,
    AuthError,
    BadFraming,
    BadRequest,
    GatewayError,
    InvalidPath,
    MethodNotAllowed,
    VersionNotSupported,
)
from gateway.proxy.forward import (
    NO_BODY,
    Body,
    forward,
    request_head,
    response_started,
)
from gateway.proxy.headers import request_id_of, upstream_request_headers
from gateway.proxy.websocket import relay_websocket
from gateway.routing.paths import normalise_target, rewrite_path
from gateway.state import CompiledRoute, Runtime, RuntimeHolder

log = logging.getLogger("gateway.handler")

# RFC 6750 §2.2: form-encoded tokens only travel in bodies with defined semantics.
_FORM_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MAX_FORM_BODY = 64 * 1024
_NO_STORE = "no-store"
# aiohttp would otherwise announce its own name and version on what the gateway answers.
SERVER_NAME = "oauth-gateway"


_VERSIONS = frozenset({HttpVersion10, HttpVersion11})


def without_path_parameters(path: str) -> str:
    """``/a;x=1/b;y`` → ``/a/b``: the path a servlet container routes on (RFC 3986 §3.3)."""
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def new_request_id() -> str:
    return os.urandom(12).hex()


def problem_response(
    error: GatewayError, realm: str, request_id: str | None, *, close: bool = False
) -> web.Response:
    """Render an error as ``application/problem+json`` with its challenge, if any."""
    response = web.Response(
        status=error.status,
        body=error.problem_bytes(request_id),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    response.headers["Server"] = SERVER_NAME
    challenge = error.challenge(realm)
    if challenge is not None:
        response.headers["WWW-Authenticate"] = challenge
    if isinstance(error, AuthError):
        # RFC 6750 §5.3 / RFC 9111: answers about credentials must not be cached.
        response.headers["Cache-Control"] = _NO_STORE
    for name, value in error.extra_headers().items():
        response.headers[name] = value
    if close:
        response.force_close()
    return response


def _origin_target(request: web.BaseRequest) -> str:
    """The origin-form target; an absolute-form one is reduced to it (RFC 9112 §3.2.2).

    The authority of an absolute-form target never chooses a route or an upstream: it must
    agree with Host, or the request is refused, so the gateway is not an open proxy.
    """
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    lowered = raw[:8].lower()
    if not (lowered.startswith("http://") or lowered.startswith("https://")):
        raise BadRequest("The request target must be a path.")
    try:
        parts = urlsplit(raw)
        authority = (parts.netloc or "").lower()
    except ValueError:
        raise BadRequest("The request target is not a valid URI.") from None
    host = (request.headers.get("Host") or "").lower()
    if not authority or parts.username or parts.password or authority != host:
        raise BadRequest("An absolute-form target must name the same authority as Host.")
    path = parts.path or "/"
    return f"{path}?{parts.query}" if "?" in raw[len(parts.scheme) + 3 :] else path


def _body_of(request: web.BaseRequest) -> Body:
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


async def _form_fields(
    request: web.BaseRequest, route: CompiledRoute
) -> tuple[Sequence[tuple[str, str]] | None, bytes | None]:
    """Read a form-encoded body for an RFC 6750 §2.2 token, only where the route allows it."""
    if not route.auth.allow_form or request.method not in _FORM_METHODS:
        return None, None
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/x-www-form-urlencoded":
        return None, None
    length = request.content_length
    if length is not None and length > _MAX_FORM_BODY:
        raise BadRequest("The form body is too large to read a token from.")
    body = await request.content.read(_MAX_FORM_BODY + 1)
    if len(body) > _MAX_FORM_BODY:
        raise BadRequest("The form body is too large to read a token from.")
    text = body.decode("latin-1")
    return parse_qsl(text, keep_blank_values=True), body


class ProxyHandler:
    """The proxy listener's request handler."""

    def __init__(
        self, holder: RuntimeHolder, session: aiohttp.ClientSession, metrics: Metrics
    ) -> None:
        self._holder = holder
        self._session = session
        self._metrics = metrics

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._holder.current
        metrics = self._metrics
        metrics.in_flight += 1
        runtime.in_flight += 1
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        request_id = request_id_of(headers, runtime.forwarding.request_id_header, new_request_id)
        record = RequestRecord(
            request_id=request_id, method=request.method, path="-", remote=request.remote
        )
        tracing = runtime.tracing
        span = tracing.start(record.method, headers) if tracing is not None else None
        try:
            response = await self._respond(request, runtime, headers, record)
            record.status = response.status
            return response
        finally:
            # Also for a client that went away mid-request: 499 (nginx's "client closed").
            status = record.status = record.status or 499
            metrics.in_flight -= 1
            runtime.in_flight -= 1
            if span is not None:
                tracing.end(span, record.route, status, record.decision, record.reason)
            seconds = time.perf_counter() - started
            metrics.observe_request(record.route, record.method, status, seconds)
            if record.upstream_seconds is not None and record.upstream is not None:
                metrics.observe_upstream(record.upstream, record.upstream_seconds)
            if runtime.access_log is not None:
                runtime.access_log.write(record, seconds)  # never raises

    async def _respond(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        headers: list[tuple[str, str]],
        record: RequestRecord,
    ) -> web.StreamResponse:
        try:
            return await self._handle(request, runtime, headers, record)
        except GatewayError as error:
            record.reason = error.reason
            record.decision = "deny" if isinstance(error, AuthError) else "error"
            if isinstance(error, AuthError):
                self._metrics.observe_decision("deny", error.reason)
            if response_started(request):
                raise ConnectionResetError("response aborted after it started") from None
            close = isinstance(error, BadFraming)
            return problem_response(error, runtime.realm, record.request_id, close=close)
        except (asyncio.CancelledError, ConnectionError):
            record.decision, record.reason = "error", "client_gone"
            raise
        except Exception:
            log.exception("unexpected error handling request %s", record.request_id)
            record.decision, record.reason = "error", "internal_error"
            if response_started(request):
                raise ConnectionResetError("response aborted after it started") from None
            return problem_response(GatewayError(), runtime.realm, record.request_id)

    async def _handle(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        headers: list[tuple[str, str]],
        record: RequestRecord,
    ) -> web.StreamResponse:
        method = request.method
        if request.version not in _VERSIONS:
            # An HTTP/0.9-style or HTTP/2.0 request line would be relayed as HTTP/1.1, and a
            # front proxy might have framed it differently: refuse rather than guess.
            raise VersionNotSupported("Only HTTP/1.0 and HTTP/1.1 are served here.")
        if method in ("CONNECT", "TRACE"):
            # Not an open proxy (CONNECT), and no reflection of credentials (TRACE).
            raise MethodNotAllowed(())
        target = normalise_target(_origin_target(request))
        match_path = target.path
        if ";" in match_path:
            if not runtime.path_parameters:
                raise InvalidPath("Path parameters (';') are not accepted here.")
            # Servlet-style upstreams read /admin;x/y as /admin/y: choose the route by that.
            match_path = without_path_parameters(match_path)
        record.path = target.path
        # The table normalises Host itself (and answers 400 for one that is no host).
        route = runtime.table.match(request.headers.get("Host"), match_path, method)
        record.route = route.name

        form_fields, form_body = await _form_fields(request, route)
        decision: Decision = await runtime.pipeline.run(
            route.auth,
            AuthRequest(
                authorization=request.headers.getall("Authorization", ()),
                query=target.query,
                form_fields=form_fields,
            ),
        )
        identity = decision.identity
        if identity is not None:
            record.decision, record.reason = "allow", "ok"
            record.client_id, record.subject = identity.client_id, identity.subject
        else:
            record.decision = "allow" if route.auth.required else "anonymous"
            record.reason = "ok"
        self._metrics.observe_decision(record.decision, record.reason)

        upstream = route.upstream
        record.upstream = upstream.name
        outbound = upstream_request_headers(
            headers,
            peer=request.remote,
            scheme=request.scheme,
            http_version=(request.version.major, request.version.minor),
            request_id=record.request_id,
            policy=runtime.forwarding,
            removal=route.removal,
            add=decision.headers,
            host=request.headers.get("Host", upstream.host_header)
            if upstream.preserve_host
            else upstream.host_header,
            keep_authorization=route.forward_authorization,
        )
        path = rewrite_path(target.path, route.strip_prefix, route.add_prefix)
        path = upstream.base_path + path
        if target.query is not None:
            path = f"{path}?{target.query}"

        if route.websocket and request.headers.get("Upgrade", "").lower() == "websocket":
            return await relay_websocket(request, upstream, path, outbound, self._session)

        if form_body is not None:
            body = Body(reader=None, length=None, buffered=form_body)
        else:
            body = _body_of(request)
        if request.headers.get("Expect", "").lower() == "100-continue" and request.transport:
            # RFC 9110 §10.1.1: the client waits for this before sending the body; it is
            # sent only now that the request passed authentication and authorisation.
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = request_head(method, path, outbound, body)
        echo_id = ((runtime.forwarding.request_id_header, record.request_id),)
        response, upstream_seconds = await forward(request, route.pool, head, body, echo_id)
        record.upstream_status = response.status
        record.upstream_seconds = upstream_seconds
        record.bytes_out = response.content_length
        return response  # type: ignore[return-value]  # CompleteResponse is duck-typed
