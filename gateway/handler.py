"""The request-time joint of the two cores: normalise → match → decide → forward.

The only module that calls both the auth core (``Decider.decide``) and the proxy core. It
holds no rules of its own: path handling is ``gateway.routing``'s, request shapes and
forwarding are ``gateway.proxy``'s, the decision is ``gateway.auth``'s. It fails closed: a
request reaches ``forward`` only after a route matched and the decision said allow, and
every error on the way becomes one RFC 9457 problem response, never a pass-through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from gateway.accesslog import RequestRecord
from gateway.auth.bearer import ACCESS_TOKEN_PARAM
from gateway.auth.decide import Allow, Deny
from gateway.compiler import CompiledRoute
from gateway.metrics import Metrics
from gateway.problems import AuthError, BadFraming, GatewayError
from gateway.proxy.forward import Body, forward, request_head, response_started
from gateway.proxy.headers import request_id_of, upstream_request_headers
from gateway.proxy.problem_response import (
    JWKS_PATH,
    jwks_response,
    problem_response,
    reply_response,
    resource_metadata_response,
)
from gateway.proxy.requests import (
    body_of,
    check_request_line,
    expects_continue,
    is_form,
    read_whole_body,
    upstream_target,
    wants_websocket,
    without_parameter,
)
from gateway.proxy.trust import client_address
from gateway.proxy.websocket import relay_websocket
from gateway.request_decision import decide, request_facts, route_of, target_of
from gateway.routing.paths import rewrite_path
from gateway.runtime import Runtime, RuntimeHolder

log = logging.getLogger("gateway.handler")

# RFC 6750 §2.2: form-encoded tokens only travel in bodies with defined semantics.
_FORM_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_FORM_BODY = 64 * 1024


def new_request_id() -> str:
    return os.urandom(12).hex()


@dataclass(slots=True)
class Exchange:
    """Everything one request carries through the handler."""

    request: web.BaseRequest
    runtime: Runtime
    headers: list[tuple[str, str]]
    record: RequestRecord
    route: CompiledRoute | None = None
    form_body: bytes | None = field(default=None, repr=False)
    continued: bool = False  # 100 Continue already sent

    def send_continue(self) -> None:
        """RFC 9110 §10.1.1: tell a client that waits that it may send the body, once."""
        transport = self.request.transport
        if not self.continued and transport is not None and expects_continue(self.request):
            self.continued = True
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


class ProxyHandler:
    """The proxy listener's request handler."""

    def __init__(
        self, holder: RuntimeHolder, metrics: Metrics, websockets: aiohttp.ClientSession
    ) -> None:
        self._holder = holder
        self._metrics = metrics
        self._websockets = websockets  # data plane: never the control plane's client

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._holder.current
        metrics = self._metrics
        metrics.in_flight += 1
        runtime.in_flight += 1
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        forwarding = runtime.compiled.forwarding
        request_id = request_id_of(headers, forwarding.request_id_header, new_request_id)
        record = RequestRecord(
            request_id=request_id, method=request.method, path="-", remote=request.remote
        )
        exchange = Exchange(request, runtime, headers, record)
        tracing = runtime.tracing
        span = tracing.start(record.method, headers) if tracing is not None else None
        try:
            response = await self._respond(exchange)
            record.status = response.status
            return response
        finally:
            # Also for a client that went away mid-request: 499 (nginx's "client closed").
            status = record.status = record.status or 499
            metrics.in_flight -= 1
            runtime.in_flight -= 1
            if span is not None and tracing is not None:
                tracing.end(span, record.route, status, record.decision, record.reason)
            seconds = time.perf_counter() - started
            metrics.observe_request(record.route, record.method, status, seconds)
            if record.upstream_seconds is not None and record.upstream is not None:
                metrics.observe_upstream(record.upstream, record.upstream_seconds)
            if runtime.access_log is not None:
                runtime.access_log.write(record, seconds)  # never raises

    async def _respond(self, exchange: Exchange) -> web.StreamResponse:
        """The error boundary: expected errors render themselves; the catch-all 500 is for
        the gateway's own bugs only."""
        record = exchange.record
        request = exchange.request
        try:
            return await self._handle(exchange)
        except GatewayError as error:
            record.reason = error.reason
            record.decision = "deny" if isinstance(error, AuthError) else "error"
            if isinstance(error, AuthError) or record.decision == "deny":
                self._metrics.observe_decision("deny", error.reason)
            if response_started(request):
                raise ConnectionResetError("response aborted after it started") from None
            close = isinstance(error, BadFraming)
            route = exchange.route
            challenge = route.auth.challenge if route else exchange.runtime.compiled.realm
            return problem_response(error, challenge, record.request_id, close=close)
        except (asyncio.CancelledError, ConnectionError):
            record.decision, record.reason = "error", "client_gone"
            raise
        except Exception:
            log.exception("unexpected error handling request %s", record.request_id)
            record.decision, record.reason = "error", "internal_error"
            if response_started(request):
                raise ConnectionResetError("response aborted after it started") from None
            realm = exchange.runtime.compiled.realm
            return problem_response(GatewayError(), realm, record.request_id)

    async def _handle(self, exchange: Exchange) -> web.StreamResponse:
        request, runtime, record = exchange.request, exchange.runtime, exchange.record
        compiled = runtime.compiled
        check_request_line(request)
        host = request.headers.get("Host")
        target = target_of(request.raw_path, host, record)
        document = compiled.resource_documents.get(target.path)
        if document is not None and request.method in ("GET", "HEAD"):
            # RFC 9728 §3: the gateway answers for the resource it protects (never forwarded).
            record.route, record.decision, record.reason = "-", "metadata", "ok"
            return resource_metadata_response(document, request.headers.get("If-None-Match"))
        signing = compiled.signing
        if (
            target.path == JWKS_PATH
            and signing is not None
            and signing.jwks_on_proxy
            and runtime.signer is not None
            and request.method in ("GET", "HEAD")
        ):
            # token_signing.jwks.on_proxy: upstreams that reach only this listener fetch the
            # identity-token keys here (the admin listener answers the same document).
            record.route, record.decision, record.reason = "-", "jwks", "ok"
            return jwks_response(runtime.signer.jwks())
        if target.path in runtime.logins.paths:
            # Browser login's own paths: callback, logout, back-channel logout (issue 18).
            return await self._login(exchange, target.path, target.query)
        located = route_of(compiled, target, host, request.method, record)
        route = exchange.route = located.route

        form_fields = await self._form_fields(exchange)
        authorization = request.headers.getall("Authorization", ())
        facts = request_facts(
            located, request.method, host, authorization, form_fields,
            headers=request.headers, peer=request.remote,
            client_ip=client_address(
                request.remote, request.headers.getall("X-Forwarded-For", ()),
                compiled.forwarding.trusted,
            ),
        )  # fmt: skip
        decision = await decide(runtime.decider, located, facts)
        if isinstance(decision, Deny):
            record.decision = "deny"
            raise decision.error
        self._record_allow(record, decision)

        upstream = route.upstream
        record.upstream = upstream.name
        keep_token = route.forward_authorization
        client_headers = exchange.headers
        if decision.remove:
            client_headers = [(k, v) for k, v in client_headers if k.lower() not in decision.remove]
        outbound = upstream_request_headers(
            client_headers,
            peer=request.remote,
            scheme=request.scheme,
            http_version=(request.version.major, request.version.minor),
            request_id=record.request_id,
            policy=compiled.forwarding,
            removal=route.removal,
            add=decision.headers,
            host=upstream.host_header if host is None or not upstream.preserve_host else host,
            keep_authorization=keep_token,
        )
        query, form_body = target.query, exchange.form_body
        if not keep_token:
            # The token leaves the request wherever it came from; the rest stays byte-exact.
            source = decision.token_source
            if source == "query" and query is not None:
                query = without_parameter(query, ACCESS_TOKEN_PARAM)
            elif source == "form" and form_body is not None:
                form = without_parameter(form_body.decode("latin-1"), ACCESS_TOKEN_PARAM)
                form_body = form.encode("latin-1")
        rewritten = rewrite_path(
            target.path, route.strip_prefix, route.add_prefix, route.path_semantics
        )
        upstream_path = upstream_target(upstream.base_path, rewritten, query)

        if route.websocket and wants_websocket(request):
            return await relay_websocket(
                request, upstream, upstream_path, outbound, self._websockets
            )

        if form_body is not None:
            body = Body(reader=None, length=None, buffered=form_body)
        else:
            body = body_of(request)
        # Sent only now that the request passed authentication and authorisation.
        exchange.send_continue()
        head = request_head(request.method, upstream_path, outbound, body)
        # The request id, and what the decision has for the client (RateLimit fields).
        echo_id = ((compiled.forwarding.request_id_header, record.request_id),
                   *decision.response_headers)  # fmt: skip
        pool = runtime.pools[upstream.name]
        response, upstream_seconds = await forward(request, pool, head, body, echo_id)
        record.upstream_status = response.status
        record.upstream_seconds = upstream_seconds
        record.bytes_out = response.content_length
        return response  # type: ignore[return-value]  # CompleteResponse is duck-typed

    async def _login(self, exchange: Exchange, path: str, query: str | None) -> web.Response:
        request, record = exchange.request, exchange.record

        async def read_body(limit: int) -> bytes:
            exchange.send_continue()
            return await read_whole_body(request, limit)

        reply = await exchange.runtime.logins.answer(
            request.method, path, query, request.headers, read_body, request.remote,
            record.request_id,
        )  # fmt: skip
        assert reply is not None  # the path is one of runtime.logins.paths
        record.route, record.decision, record.reason = "-", "login", reply.reason
        return reply_response(reply)

    async def _form_fields(self, exchange: Exchange) -> list[tuple[str, str]] | None:
        """Read a form-encoded body for an RFC 6750 §2.2 token, only where the route allows
        it; the whole body is kept and forwarded as read."""
        request, route = exchange.request, exchange.route
        assert route is not None
        if not route.auth.allow_form or request.method not in _FORM_METHODS:
            return None
        if not is_form(request):
            return None
        # The client holds the body back until told; the token may be in it, so the
        # decision itself needs it: the one case where 100 Continue precedes the decision.
        exchange.send_continue()
        body = exchange.form_body = await read_whole_body(request, MAX_FORM_BODY)
        return parse_qsl(body.decode("latin-1"), keep_blank_values=True)

    def _record_allow(self, record: RequestRecord, decision: Allow) -> None:
        identity = decision.identity
        if identity is not None:
            record.decision, record.reason = "allow", "ok"
            record.client_id, record.subject = identity.client_id, identity.subject
            if decision.token_type is not None:
                record.token_type = decision.token_type.lower()
        else:
            record.decision, record.reason = "anonymous", "ok"
        self._metrics.observe_decision(record.decision, record.reason)
