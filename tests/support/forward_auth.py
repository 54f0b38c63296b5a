"""Shared material for the forward-auth tests: one gateway config (proxy listener and
decision service side by side), the requests every mode must judge alike, raw HTTP, and a
grpcio client sending the ``CheckRequest`` Envoy sends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from tests.support.gateway import running_gateway
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

IDENTITY = ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Scopes")
# An issuer whose keys never load (nothing listens there): its tokens get 503, fail closed.
DOWN_ISSUER = "http://127.0.0.1:9"


def forward_auth_config(
    upstream: RecordingUpstream, issuer: TestIssuer, **decision: Any
) -> dict[str, Any]:
    section: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "grpc": {"host": "127.0.0.1", "port": 0},
        "trusted_proxies": ["127.0.0.1/32"],
    }
    section.update(decision)
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "logging": {"access_log": False},
        "upstreams": {"app": {"url": upstream.url, "timeouts": {"connect": "1s", "read": "5s"}}},
        "issuers": [{"issuer": issuer.url, "keys": {"jwks_uri": issuer.jwks_url},
                     "audiences": [issuer.audience]},
                    {"issuer": DOWN_ISSUER, "keys": {"jwks_uri": DOWN_ISSUER + "/jwks"},
                     "audiences": [issuer.audience], "refresh": {"retry": "30s"}}],
        "routes": [
            {"name": "public", "match": {"path": {"prefix": "/public"}}, "upstream": "app",
             "auth": "anonymous"},
            {"name": "whoami", "match": {"path": "/whoami"}, "upstream": "app",
             "auth": "anonymous", "identify_anonymous": True},
            {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "upstream": "app",
             "require": {"scopes": {"all": ["admin"]}}},
            {"name": "reports", "match": {"path": "/reports", "methods": ["GET"]},
             "upstream": "app", "require": {"scopes": {"all": ["read"]}}},
            {"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "app",
             "require": {"scopes": {"all": ["read"]}}},
            {"name": "cached", "match": {"path": {"prefix": "/cached"}}, "upstream": "app",
             "require": {"scopes": {"all": ["read"]}}},
        ],
        "decision": section,
    }  # fmt: skip


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    target: str
    token: str  # none | read | admin | invalid | expired
    # Not in normal form (dot or empty segments): the proxy normalises and forwards the
    # normal path; a host proxy forwards the client's, so the decision service refuses it.
    not_normal: bool = False


CASES = [
    Case("public-anonymous", "GET", "/public/x", "none"),
    Case("api-no-token", "GET", "/api/orders", "none"),
    Case("api-read", "GET", "/api/orders?id=1&b=%2F", "read"),
    Case("api-invalid-token", "GET", "/api/orders", "invalid"),
    Case("api-expired-token", "GET", "/api/orders", "expired"),
    Case("issuer-unavailable", "GET", "/api/orders", "down"),
    Case("admin-insufficient", "GET", "/admin/users", "read"),
    Case("admin-allowed", "DELETE", "/admin/users", "admin"),
    Case("whoami-identified", "GET", "/whoami", "read"),
    Case("no-route", "GET", "/nothing/here", "read"),
    Case("method-not-allowed", "POST", "/reports", "read"),
    Case("trace-never-relayed", "TRACE", "/api/orders", "read"),
    Case("trace-no-route", "TRACE", "/nothing/here", "read"),
    # Spellings of a protected path: each must land on the route the proxy chooses.
    Case("dot-segments-to-admin", "GET", "/public/../admin/users", "read", not_normal=True),
    Case("encoded-dots-to-admin", "GET", "/public/%2e%2e/admin/users", "read", not_normal=True),
    Case("double-slash-admin", "GET", "//admin//users", "read", not_normal=True),
    Case("encoded-unreserved-admin", "GET", "/%61dmin/users", "read"),
    Case("dot-segment-public", "GET", "/public/./x", "none", not_normal=True),
    # Judged as /public/x, forwarded raw it is a request under /admin to an upstream that
    # does not resolve dot segments (Express, Werkzeug): the check must refuse it.
    Case("encoded-dots-out-of-admin", "GET", "/admin/%2e%2e/public/x", "none", not_normal=True),
    # What the normaliser refuses, the decision service refuses alike.
    Case("encoded-slash", "GET", "/public/..%2fadmin/users", "read"),
    Case("encoded-slash-upper", "GET", "/public%2F..%2Fadmin/users", "admin"),
    Case("dot-dot-semicolon", "GET", "/public/..;/admin/users", "read"),
    Case("path-parameters", "GET", "/admin;x/users", "admin"),
    Case("double-encoded", "GET", "/public/%252e%252e/admin", "read"),
    Case("backslash-encoded", "GET", "/public/..%5cadmin", "read"),
]


def token_for(issuer: TestIssuer, kind: str) -> str | None:
    if kind == "none":
        return None
    if kind == "read":
        return issuer.mint(scope="read", claims={"sub": "reader"})
    if kind == "admin":
        return issuer.mint(scope="read admin", claims={"sub": "root"})
    if kind == "expired":
        return issuer.mint(exp_in=-600)
    if kind == "down":
        return issuer.mint(scope="read", claims={"iss": DOWN_ISSUER})
    return "not-a-token"


@asynccontextmanager
async def forward_auth_world(
    directory: Path,
    make_config: Callable[[RecordingUpstream, TestIssuer], dict[str, Any]] = forward_auth_config,
) -> AsyncIterator[tuple[Gateway, RecordingUpstream, TestIssuer]]:
    """Upstream, issuer and gateway, ready once the live issuer's keys are (the down one's
    never are, so readiness as /readyz reports it never comes)."""
    upstream, issuer = RecordingUpstream(name="app"), TestIssuer()
    await upstream.start()
    await issuer.start()
    try:
        async with running_gateway(directory, make_config(upstream, issuer)) as gw:
            token = bearer(token_for(issuer, "read"))
            for _ in range(200):
                answer = await raw_request(gw.proxy_port, "GET", "/api/ready", token)
                if answer.status == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway did not load the issuer's keys")
            upstream.received.clear()
            yield gw, upstream, issuer
    finally:
        await upstream.close()
        await issuer.close()


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


async def raw_request(
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    host: str = "api.example",
    local: str | None = None,
) -> RawResponse:
    """One request written byte for byte (no client normalises the target), read whole."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        lines.append("Content-Length: 0")
    local_addr = (local, 0) if local else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local_addr)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = [(k.strip(), v.strip()) for k, _, v in (f.partition(":") for f in fields)]
    return RawResponse(int(status_line.split(" ")[1]), parsed, body)


def bearer(token: str | None) -> list[tuple[str, str]]:
    return [] if token is None else [("Authorization", f"Bearer {token}")]


def check_request(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> Any:
    """A ``CheckRequest`` as Envoy builds it for an HTTP/1.1 request: pseudo-headers and
    lowercase names in ``headers``, the path with its query, source and destination."""
    from envoy.service.auth.v3 import external_auth_pb2

    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = "203.0.113.7"
    attributes.source.address.socket_address.port_value = 51234
    attributes.destination.address.socket_address.address = "10.0.0.5"
    attributes.destination.address.socket_address.port_value = 8080
    http = attributes.request.http
    http.id = str(uuid.uuid4().int)[:19]
    http.method, http.path, http.host = method, target, host
    http.scheme, http.protocol = "http", "HTTP/1.1"
    fields = {":authority": host, ":method": method, ":path": target, ":scheme": "http",
              "user-agent": "curl/8.5.0", "accept": "*/*",
              "x-forwarded-proto": "http", "x-request-id": str(uuid.uuid4())}  # fmt: skip
    for name, value in headers:
        fields[name.lower()] = value
    http.headers.update(fields)
    return request


async def grpc_check(port: int, request: Any) -> Any:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
