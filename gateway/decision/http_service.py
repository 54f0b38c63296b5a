"""The decision service's HTTP listener: one endpoint per host-proxy protocol.

    /nginx                 nginx ``auth_request``
    /traefik               Traefik ``ForwardAuth``
    /caddy                 Caddy ``forward_auth``
    {envoy_path_prefix}/…  Envoy ``ext_authz`` ``http_service`` (the original path follows)

Each endpoint is three steps: refuse a peer outside ``decision.trusted_proxies`` (400,
before any header is read), read the forwarded request (``forwarded``), and answer the
verdict (``verdict``, ``answers``). It runs on its own address, like the admin listener,
and forwards nothing. Every check is counted and access-logged with ``mode: decision``
and the kind of host proxy that asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from multidict import CIMultiDict

from gateway.accesslog import RequestRecord, new_request_id
from gateway.auth.decide import Allow, Deny
from gateway.decision.answers import http_answer
from gateway.decision.forwarded import (
    ForwardedRequest,
    HostProxy,
    UntrustedPeer,
    from_envoy_http,
    from_forward_auth,
    from_nginx,
    values_of,
)
from gateway.decision.verdict import Verdict, judge
from gateway.metrics import Metrics
from gateway.problems import AuthError, GatewayError, ServiceUnavailable
from gateway.proxy.headers import request_id_of
from gateway.proxy.trust import client_address
from gateway.runtime import Runtime, RuntimeHolder

log = logging.getLogger("gateway.decision")
Header = tuple[str, str]
Reader = Callable[[web.BaseRequest, Sequence[Header], str], ForwardedRequest]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _nginx(request: web.BaseRequest, headers: Sequence[Header], prefix: str) -> ForwardedRequest:
    return from_nginx(headers)


def _forward_auth(
    request: web.BaseRequest, headers: Sequence[Header], prefix: str
) -> ForwardedRequest:
    return from_forward_auth(headers)


def _envoy(request: web.BaseRequest, headers: Sequence[Header], prefix: str) -> ForwardedRequest:
    return from_envoy_http(request.method, request.raw_path, headers, prefix)


def record_verdict(record: RequestRecord, verdict: Verdict, metrics: Metrics) -> None:
    """Log and count a verdict as the proxy does, labelled with the decision mode."""
    decision = verdict.decision
    if isinstance(decision, Allow):
        identity = decision.identity
        record.decision = "anonymous" if identity is None else "allow"
        record.reason = "ok"
        if identity is not None:
            record.client_id, record.subject = identity.client_id, identity.subject
            if decision.token_type is not None:  # as the proxy logs it (issue 16)
                record.token_type = decision.token_type.lower()
    else:
        error = decision.error
        record.reason = error.reason
        # As on the proxy: a refusal before the decision (400, 404, 405) is no auth decision.
        decided = verdict.route is not None or isinstance(error, AuthError)
        record.decision = "deny" if decided else "error"
        if not decided:
            return
    metrics.observe_decision(record.decision, record.reason, "decision", record.host_proxy or "-")


def refuse_untrusted(runtime: Runtime, peer: str | None) -> None:
    """Only a host proxy may describe a request to us; anyone else is answered 400."""
    settings = runtime.compiled.decision
    if settings is None:
        raise ServiceUnavailable("The decision service is off in the live config.")
    if not settings.trusted.is_trusted(peer):
        raise UntrustedPeer("This peer is not a trusted host proxy (decision.trusted_proxies).")


class DecisionEndpoints:
    """The request handlers; each reads the live runtime once per check."""

    def __init__(self, holder: RuntimeHolder, metrics: Metrics) -> None:
        self._holder = holder
        self._metrics = metrics

    def handler(self, kind: HostProxy, read: Reader) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            return await self._check(request, kind, read)

        return check

    async def _check(self, request: web.Request, kind: HostProxy, read: Reader) -> web.Response:
        started = time.perf_counter()
        runtime = self._holder.current
        compiled = runtime.compiled
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        request_id = request_id_of(headers, compiled.forwarding.request_id_header, new_request_id)
        record = RequestRecord(request_id=request_id, method="-", path="-",
                               remote=request.remote, mode="decision", host_proxy=kind)  # fmt: skip
        runtime.in_flight += 1
        try:
            verdict = await self._verdict(runtime, request, kind, read, headers, record)
            record_verdict(record, verdict, self._metrics)
            answer = http_answer(kind, verdict, compiled.realm, request_id)
            record.status = answer.status
            return web.Response(
                status=answer.status, body=answer.body, headers=CIMultiDict(answer.headers)
            )
        finally:
            runtime.in_flight -= 1
            seconds = time.perf_counter() - started
            self._metrics.observe_check(kind, record.status or 499, seconds)
            if runtime.access_log is not None:
                runtime.access_log.write(record, seconds)

    async def _verdict(
        self,
        runtime: Runtime,
        request: web.Request,
        kind: HostProxy,
        read: Reader,
        headers: Sequence[Header],
        record: RequestRecord,
    ) -> Verdict:
        try:
            refuse_untrusted(runtime, request.remote)
            settings = runtime.compiled.decision
            assert settings is not None
            forwarded = read(request, headers, settings.envoy_path_prefix)
        except GatewayError as error:
            return Verdict(Deny(error.with_traceback(None)), None)
        record.method = forwarded.method
        # The host proxy appended the client it received from (Traefik and Caddy always,
        # nginx as README "Forward auth" configures it).
        chain = values_of(headers, "X-Forwarded-For")
        client_ip = client_address(request.remote, chain, settings.forwarders)
        return await judge(runtime, forwarded, record, peer=request.remote, client_ip=client_ip)


def build_decision_app(
    holder: RuntimeHolder, metrics: Metrics, envoy_prefix: str
) -> web.Application:
    """The HTTP endpoints (``envoy_prefix`` is fixed for the listener's life)."""
    endpoints = DecisionEndpoints(holder, metrics)
    app = web.Application(client_max_size=1024)  # a check has no body worth reading
    app.router.add_route("*", "/nginx", endpoints.handler("nginx", _nginx))
    app.router.add_route("*", "/traefik", endpoints.handler("traefik", _forward_auth))
    app.router.add_route("*", "/caddy", endpoints.handler("caddy", _forward_auth))
    envoy = endpoints.handler("envoy-http", _envoy)
    app.router.add_route("*", envoy_prefix, envoy)
    app.router.add_route("*", envoy_prefix + "/{tail:.*}", envoy)
    return app
