"""Envoy ``ext_authz`` over gRPC: ``envoy.service.auth.v3.Authorization/Check`` (and Istio's
``CUSTOM`` authorization, which calls the same service).

A ``CheckRequest``'s ``attributes.request.http`` (method, path with query, host, headers)
becomes the same ``ForwardedRequest`` the HTTP endpoints read, and the verdict becomes:

* allow: status OK and an ``OkHttpResponse`` with the identity headers to set (overwriting
  any the client sent), the client's identity headers and aliases to remove, and a query
  token to remove where the route keeps the token from its upstream;
* deny: a non-OK status and a ``DeniedHttpResponse`` with the proxy's HTTP status, its
  RFC 6750 challenge and its RFC 9457 body.

The RPC itself never fails: a failed RPC is what Envoy's ``failure_mode_allow`` lets
through, so even an internal error is answered as a denial (fail closed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from gateway.accesslog import RequestRecord
from gateway.auth.decide import Allow, Deny
from gateway.decision.forwarded import ForwardedRequest, forwarded_request
from gateway.decision.http_service import record_verdict, refuse_untrusted
from gateway.decision.verdict import Verdict, judge
from gateway.metrics import Metrics
from gateway.problems import GatewayError, render_problem
from gateway.runtime import Runtime, RuntimeHolder

log = logging.getLogger("gateway.decision")
Header = tuple[str, str]
KIND = "envoy-grpc"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
# google.rpc.Code for a denial, by the HTTP status Envoy will send.
_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    503: code_pb2.UNAVAILABLE,
}


def peer_ip(peer: str) -> str | None:
    """The IP in a gRPC peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``); None for
    anything else (a Unix socket), which is then never trusted."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        host = rest.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") and host.endswith("]") else None
    return None


def check_headers(http: Any) -> list[Header]:
    """The original request's fields: ``header_map`` (with raw values) where Envoy sends it,
    else the ``headers`` map (names lowercase; repeated fields already joined by Envoy)."""
    header_map = getattr(http, "header_map", None)
    if header_map is not None and header_map.headers:
        return [
            (h.key, h.raw_value.decode("latin-1") if h.raw_value else h.value)
            for h in header_map.headers
        ]
    return list(getattr(http, "headers", {}).items())


def from_check_request(request: external_auth_pb2.CheckRequest) -> ForwardedRequest:
    http = request.attributes.request.http
    headers = check_headers(http)
    return forwarded_request(http.method or None, http.path or None, http.host, headers)


def _header_options(headers: Sequence[Header]) -> list[base_pb2.HeaderValueOption]:
    """Each field as Envoy should set it: the first of a name overwrites (the client's copy
    of an identity header must not survive), a repeat of it is added beside it. Overwriting
    every one would keep only the last of several ``Set-Cookie`` fields (a login's pre-login
    cookie in chunks, the deletions of a stale session's)."""
    seen: set[str] = set()
    options = []
    for name, value in headers:
        lname = name.lower()
        action = _APPEND if lname in seen else _OVERWRITE
        seen.add(lname)
        options.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=name, value=value), append_action=action
            )
        )
    return options


def check_response(
    verdict: Verdict, realm: str, request_id: str
) -> external_auth_pb2.CheckResponse:
    decision = verdict.decision
    if isinstance(decision, Allow):
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=_header_options(decision.headers),
                headers_to_remove=list(verdict.remove_headers),
                query_parameters_to_remove=list(verdict.remove_query),
            ),
        )
    error = decision.error
    rendered = render_problem(error, verdict.challenge(realm), request_id)
    headers = [(name, value) for name, value in rendered.headers if name != "Server"]
    if not any(name == "Cache-Control" for name, _ in headers):
        headers.append(("Cache-Control", "no-store"))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(
            code=_CODES.get(rendered.status, code_pb2.PERMISSION_DENIED), message=error.reason
        ),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=rendered.status),
            headers=_header_options(headers),
            body=rendered.body.decode("utf-8"),
        ),
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, holder: RuntimeHolder, metrics: Metrics) -> None:
        self._holder = holder
        self._metrics = metrics

    async def Check(  # the RPC's name, as Envoy calls it
        self,
        request: external_auth_pb2.CheckRequest,
        context: grpc.aio.ServicerContext[
            external_auth_pb2.CheckRequest, external_auth_pb2.CheckResponse
        ],
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        runtime = self._holder.current
        request_id = os.urandom(12).hex()
        peer = peer_ip(context.peer())
        record = RequestRecord(request_id=request_id, method="-", path="-", remote=peer,
                               mode="decision", host_proxy=KIND)  # fmt: skip
        runtime.in_flight += 1
        try:
            verdict = await self._verdict(runtime, request, peer, record)
            record_verdict(record, verdict, self._metrics)
            response = check_response(verdict, runtime.compiled.realm, request_id)
            record.status = response.denied_response.status.code or 200
            return response
        except Exception:
            # Fail closed without failing the RPC (see the module docstring).
            log.exception("unexpected error in ext_authz Check %s", request_id)
            record.decision, record.reason, record.status = "error", "internal_error", 500
            return check_response(Verdict(Deny(GatewayError()), None), "gateway", request_id)
        finally:
            runtime.in_flight -= 1
            seconds = time.perf_counter() - started
            self._metrics.observe_check(KIND, record.status or 499, seconds)
            if runtime.access_log is not None:
                runtime.access_log.write(record, seconds)

    async def _verdict(
        self,
        runtime: Runtime,
        request: external_auth_pb2.CheckRequest,
        peer: str | None,
        record: RequestRecord,
    ) -> Verdict:
        try:
            refuse_untrusted(runtime, peer)
            forwarded = from_check_request(request)
        except GatewayError as error:
            return Verdict(Deny(error.with_traceback(None)), None)
        record.method = forwarded.method
        # Envoy's downstream address, already resolved by its own XFF rules.
        source = request.attributes.source.address.socket_address.address or peer
        return await judge(runtime, forwarded, record, peer=peer, client_ip=source)


async def start_grpc(
    holder: RuntimeHolder, metrics: Metrics, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """Serve ``Authorization/Check`` on ``host:port``; returns the server and its port."""
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationService(holder, metrics), server
    )
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    await server.start()
    return server, bound
