"""The request-time joint of the two cores: normalise → match → decide → forward.

The only module that calls both the auth core (``Decider.decide``) and the proxy core. It
holds no rules of its own: path handling is ``gateway.routing``'s, request shapes and
forwarding are ``gateway.proxy``'s, the decision is ``gateway.auth``'s. It fails closed: a
request reaches ``forward`` only after a route matched and the decision said allow, and
every error on the way becomes one RFC 9457 problem response, never a pass-through.

It serves ``gateway.listener``: each request arrives with its fields as bytes, and its answer
goes out through the request (``respond``, ``start_response``, ``switch_protocols``). Field
values are read as latin-1 (one character per byte) for the header rules and written back
the same way, so no byte changes on the way (RFC 9110 §5.5).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from gateway.accesslog import RequestRecord, new_request_id
from gateway.auth.bearer import ACCESS_TOKEN_PARAM
from gateway.auth.decide import Allow, Deny
from gateway.auth.ratelimit import RateLimited
from gateway.compiler import CompiledRoute
from gateway.listener import Request
from gateway.metrics import Metrics
from gateway.problems import AuthError, BadFraming, GatewayError, InvalidToken
from gateway.proxy.forward import Body, Relayed, forward, request_head
from gateway.proxy.headers import request_id_of, upstream_request_headers
from gateway.proxy.max_forwards import allow_value, next_hop_fields
from gateway.proxy.private_responses import must_stay_private, private_after
from gateway.proxy.problem_response import (
    JWKS_PATH,
    send_jwks,
    send_options,
    send_problem,
    send_reply,
    send_resource_metadata,
)
from gateway.proxy.requests import (
    FieldLookup,
    body_of,
    is_form,
    read_whole_body,
    refuse_connect,
    upstream_target,
    wants_websocket,
    without_parameter,
)
from gateway.proxy.trust import client_address
from gateway.proxy.tunnel import open_tunnel
from gateway.proxy.websocket import client_key
from gateway.request_decision import decide, request_facts, route_of, target_of
from gateway.routing.paths import rewrite_path
from gateway.runtime import Runtime, RuntimeHolder
from gateway.tunnels import TunnelRegistry

log = logging.getLogger("gateway.handler")

# RFC 6750 §2.2: form-encoded tokens only travel in bodies with defined semantics.
_FORM_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_FORM_BODY = 64 * 1024
_UPGRADE = (("Connection", "Upgrade"), ("Upgrade", "websocket"))

Header = tuple[str, str]


@dataclass(slots=True)
class Exchange:
    """Everything one request carries through the handler."""

    request: Request
    runtime: Runtime
    headers: list[Header]  # the client's fields, decoded one character per byte
    host: str | None
    record: RequestRecord
    route: CompiledRoute | None = None
    form_body: bytes | None = field(default=None, repr=False)
    relayed: Relayed | None = None


class ProxyHandler:
    """The proxy listener's application: one coroutine per request."""

    def __init__(self, holder: RuntimeHolder, metrics: Metrics, tunnels: TunnelRegistry) -> None:
        self._holder = holder
        self._metrics = metrics
        self._tunnels = tunnels

    def __call__(self, request: Request) -> Coroutine[Any, Any, None]:
        return self._serve(request)

    def refused(self, error: GatewayError, remote: str | None) -> None:
        """The listener's ``on_refusal``: a request it answered itself (bad framing, limits,
        a head that took too long) is counted and logged like any other."""
        status = error.status
        self._metrics.observe_request("-", "-", status, 0.0)
        self._metrics.observe_decision("error", error.reason)
        access_log = self._holder.current.access_log
        if access_log is not None:
            record = RequestRecord(
                request_id=new_request_id(), method="-", path="-", remote=remote,
                status=status, decision="error", reason=error.reason,
            )  # fmt: skip
            access_log.write(record, 0.0)

    async def _serve(self, request: Request) -> None:
        started = time.perf_counter()
        runtime = self._holder.current
        metrics = self._metrics
        metrics.in_flight += 1
        runtime.in_flight += 1
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
        raw_host = request.host
        forwarding = runtime.compiled.forwarding
        request_id = request_id_of(headers, forwarding.request_id_header, new_request_id)
        record = RequestRecord(
            request_id=request_id, method=request.method, path="-", remote=request.remote
        )
        host = raw_host.decode("latin-1") if raw_host is not None else None
        exchange = Exchange(request, runtime, headers, host, record)
        tracing = runtime.tracing
        span = tracing.start(record.method, headers) if tracing is not None else None
        try:
            await self._respond(exchange)
        finally:
            # A client that went away mid-request: 499 (nginx's "client closed request").
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

    async def _respond(self, exchange: Exchange) -> None:
        """The error boundary: expected errors render themselves; the catch-all 500 is for
        the gateway's own bugs only."""
        record = exchange.record
        request = exchange.request
        try:
            await self._handle(exchange)
        except GatewayError as error:
            decided = record.decision == "deny"  # the decision refused (not routing, framing)
            denied = isinstance(error, (AuthError, RateLimited))
            record.reason = error.reason
            record.decision = "deny" if denied else "error"
            if decided or denied:
                # A 503 from the decision (keys not loaded, introspection or Redis down) is
                # counted as an error outcome, not lost.
                self._metrics.observe_decision(record.decision, error.reason)
            self._answer_error(exchange, error)
        except asyncio.CancelledError:
            record.decision, record.reason, record.status = "error", "client_gone", 499
            raise
        except Exception as error:
            if isinstance(error, ConnectionError) and request.disconnected:
                record.decision, record.reason, record.status = "error", "client_gone", 499
                return
            log.exception("unexpected error handling request %s", record.request_id)
            record.decision, record.reason = "error", "internal_error"
            self._answer_error(exchange, GatewayError())

    def _answer_error(self, exchange: Exchange, error: GatewayError) -> None:
        request, record = exchange.request, exchange.record
        if request.disconnected:
            record.status = 499
            return
        if request.response_started:
            # Part of a response went out: the connection ends unfinished (see forward).
            request.abort(reset=False)
            relayed = exchange.relayed
            record.status = relayed.status if relayed is not None and relayed.status else 499
            return
        # Framing the gateway could not trust, or a body the client may still be sending.
        close = isinstance(error, BadFraming) or not request.body.complete
        route = exchange.route
        challenge = route.auth.challenge if route else exchange.runtime.compiled.realm
        record.status = send_problem(request, error, challenge, record.request_id, close=close)

    async def _handle(self, exchange: Exchange) -> None:
        request, runtime, record = exchange.request, exchange.runtime, exchange.record
        compiled = runtime.compiled
        refuse_connect(request.method)
        host = exchange.host
        # The target as the normaliser reads it: UTF-8, undecodable bytes kept as escapes.
        target = target_of(request.target.decode("utf-8", "surrogateescape"), host, record)
        document = compiled.resource_documents.get(target.path)
        if document is not None and request.method in ("GET", "HEAD"):
            # RFC 9728 §3: the gateway answers for the resource it protects (never forwarded).
            record.route, record.decision, record.reason = "-", "metadata", "ok"
            record.status = send_resource_metadata(request, document)
            return
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
            record.status = send_jwks(request, runtime.signer.jwks())
            return
        if target.path in runtime.logins.paths:
            # Browser login's own paths: callback, logout, back-channel logout (issue 18).
            await self._login(exchange, target.path, target.query)
            return
        located = route_of(compiled, target, host, request.method, record)  # 405 for a TRACE
        route = exchange.route = located.route

        form_fields = await self._form_fields(exchange)
        headers = exchange.headers
        authorization = [v for k, v in headers if k.lower() == "authorization"]
        facts = request_facts(
            located, request.method, host, authorization, form_fields,
            headers=FieldLookup(headers), peer=request.remote,
            tls_certificate=request.peer_certificate,
            client_ip=client_address(
                request.remote, [v for k, v in headers if k.lower() == "x-forwarded-for"],
                compiled.forwarding.trusted,
            ),
        )  # fmt: skip
        decision = await decide(runtime.decider, located, facts)
        if isinstance(decision, Deny):
            record.decision = "deny"
            raise decision.error
        self._record_allow(record, decision)
        # The request id, and what the decision has for the client (RateLimit fields).
        echo_id = ((compiled.forwarding.request_id_header, record.request_id),
                   *decision.response_headers)  # fmt: skip
        hop_fields = next_hop_fields(request.method, headers)  # RFC 9110 §7.6.2
        if hop_fields is None:
            allow = allow_value(compiled.table.allowed(host, located.path))
            record.status = send_options(request, allow, echo_id)
            return
        headers = hop_fields

        upstream = route.upstream
        record.upstream = upstream.name
        keep_token = route.forward_authorization
        if decision.remove:
            headers = [(k, v) for k, v in headers if k.lower() not in decision.remove]
        outbound = upstream_request_headers(
            headers,
            peer=request.remote,
            scheme="https" if request.secure else "http",
            http_version=(1, 1) if request.version == "1.1" else (1, 0),
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

        if route.websocket is not None and wants_websocket(request):
            # RFC 6455 §4.2.1: the client's handshake is checked before the upstream is asked.
            key = client_key(headers)
            head = request_head("GET", upstream_path, [*outbound, *_UPGRADE], Body(None, None))
            try:
                await self._tunnel(exchange, decision, head, key, route.websocket.max_connections)
            except GatewayError as error:
                error.carry_cookies(decision.response_headers)  # a refreshed session
                raise
            return

        if form_body is not None:
            body = Body(reader=None, length=None, buffered=form_body)
        else:
            body = body_of(request)
        # Sent only now that the request passed authentication and authorisation.
        request.send_continue()
        head = request_head(request.method, upstream_path, outbound, body)
        relayed = exchange.relayed = Relayed()
        pool = runtime.pools[upstream.name]
        response_filter = runtime.logins.response_filter(upstream.name)
        if must_stay_private(decision.token_source, decision.response_headers):
            response_filter = private_after(response_filter)
        try:
            await forward(
                request, pool, head, body, relayed, echo_id, response_filter
            )  # fmt: skip
        except GatewayError as error:
            # 502/504 before anything was sent: a session this request refreshed is stored
            # all the same (the cookie store would lose its new tokens otherwise).
            error.carry_cookies(decision.response_headers)
            raise
        record.status = record.upstream_status = relayed.status
        record.upstream_seconds = relayed.upstream_seconds
        record.bytes_out = relayed.bytes_out

    async def _tunnel(
        self, exchange: Exchange, decision: Allow, head: bytes, key: str, limit: int
    ) -> None:
        """Open the route's upstream WebSocket, switch the client, and keep the tunnel
        counted (and closable by its token's expiry or eviction) until it ends."""
        request, record, route = exchange.request, exchange.record, exchange.route
        assert route is not None
        expires_at = decision.identity.expires_at if decision.identity is not None else None
        if expires_at is not None and expires_at <= time.time():
            # Accepted within its issuer's leeway: clock skew for one request, not a
            # connection that outlives it (the tunnel would close at once, 1008).
            raise InvalidToken("The token has expired.", reason="expired")
        # The request id, and what the decision has for the client: RateLimit fields and a
        # session's Set-Cookie (a refresh made by this upgrade is lost without it).
        echo_id = ((exchange.runtime.compiled.forwarding.request_id_header, record.request_id),
                   *decision.response_headers)  # fmt: skip
        self._tunnels.reserve(route.name, limit)
        started = time.perf_counter()
        try:
            tunnel = await open_tunnel(
                request, route.upstream, head, key, echo_id,
                exchange.runtime.logins.response_filter(route.upstream.name),
            )  # fmt: skip
        except BaseException:
            self._tunnels.release(route.name)
            raise
        record.status = record.upstream_status = 101
        record.upstream_seconds = time.perf_counter() - started
        self._tunnels.track(route.name, tunnel, decision.identity, decision.token_digest)
        try:
            await asyncio.shield(tunnel.closed)
        finally:
            tunnel.close()
            record.bytes_out = tunnel.bytes_to_client

    async def _login(self, exchange: Exchange, path: str, query: str | None) -> None:
        request, record = exchange.request, exchange.record
        reply = await exchange.runtime.logins.answer(
            request.method, path, query, FieldLookup(exchange.headers),
            partial(read_whole_body, request), request.remote, record.request_id,
        )  # fmt: skip
        assert reply is not None  # the path is one of runtime.logins.paths
        record.route, record.decision, record.reason = "-", "login", reply.reason
        # A body refused unread (413) or that stopped arriving (408): as ``_answer_error``.
        close = not request.body.complete
        record.status = send_reply(request, reply, close=close)

    async def _form_fields(self, exchange: Exchange) -> list[tuple[str, str]] | None:
        """Read a form-encoded body for an RFC 6750 §2.2 token, only where the route allows
        it; the whole body is kept and forwarded as read."""
        request, route = exchange.request, exchange.route
        assert route is not None
        if not route.auth.allow_form or request.method not in _FORM_METHODS:
            return None
        if not is_form(request):
            return None
        # The token may be in the body, so the decision itself needs it (and 100 Continue
        # precedes the decision: see read_whole_body).
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
