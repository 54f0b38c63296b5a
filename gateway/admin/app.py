"""The admin listener: liveness, readiness, metrics and admin actions.

It runs on its own address (default 127.0.0.1:9901) and is never reachable through the
proxy listener, whose handler has no route to any of this. Admin actions (evictions) need
the configured ``admin.token``; the compile step refuses a config whose admin listener
leaves loopback without one, and an empty token.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__, boundedjson
from gateway.auth.digests import token_digest
from gateway.auth.identity_cache import EvictionReport
from gateway.metrics import Metrics
from gateway.problems import (
    SERVER_NAME,
    BadRequest,
    Challenge,
    ContentTooLarge,
    GatewayError,
    NotFound,
    ServiceUnavailable,
    render_problem,
)
from gateway.runtime import RuntimeHolder

HOLDER = web.AppKey("holder", RuntimeHolder)
METRICS = web.AppKey("metrics", Metrics)
_MAX_BODY = 64 * 1024
_ONE_OF = 'Send exactly one of "token", "token_sha256" or "subject".'


class AdminUnauthorized(GatewayError):
    status = 401
    title = "Unauthorized"
    slug = "admin-unauthorized"
    reason = "admin_unauthorized"

    def challenge(self, context: Challenge | str) -> str:
        return 'Bearer realm="gateway-admin"'


class EvictionIncomplete(ServiceUnavailable):
    """Part of an eviction could not be done (Redis down or too slow): say what was."""

    slug = "eviction-incomplete"
    reason = "eviction_incomplete"

    def __init__(self, report: EvictionReport) -> None:
        super().__init__("The eviction could not be completed everywhere; retry it.")
        self.report = report

    def problem(self, request_id: str | None = None) -> dict[str, object]:
        body = super().problem(request_id)
        body.update(_report(self.report))
        return body


def _report(report: EvictionReport) -> dict[str, Any]:
    return {
        "local": "done",
        "shared": report.shared,
        "broadcast": report.broadcast,
        "workers": report.workers,
        "errors": list(report.errors),
    }


def problem(error: GatewayError) -> web.Response:
    rendered = render_problem(error)
    return web.Response(status=rendered.status, body=rendered.body, headers=rendered.headers)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: a config is live, every issuer's keys loaded, and not draining."""
    holder = request.app[HOLDER]
    ready, checks = holder.current.ready()
    if holder.draining:
        ready = False
        checks["draining"] = False
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "notes": holder.current.notes(),
    }
    return web.json_response(body, status=200 if ready else 503)


def _authorised(request: web.Request, expected: str | None) -> bool:
    if expected is None:  # only ever on a loopback listener (the compile step says so)
        return True
    given = request.headers.get("Authorization", "")
    wanted = f"Bearer {expected}"
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), wanted.encode("utf-8", "surrogateescape")
    )


async def _json_body(request: web.Request) -> Any:
    if (request.content_length or 0) > _MAX_BODY:
        raise ContentTooLarge(f"Admin requests are limited to {_MAX_BODY} bytes.")
    data = await request.content.read(_MAX_BODY + 1)
    if len(data) > _MAX_BODY:
        raise ContentTooLarge(f"Admin requests are limited to {_MAX_BODY} bytes.")
    try:
        return boundedjson.loads(data, max_bytes=_MAX_BODY, max_depth=4)
    except ValueError:
        raise BadRequest("Send a JSON object.") from None


async def evict(request: web.Request) -> web.Response:
    """Revoke now: drop a token (raw or by SHA-256) or every token of a subject, here and in
    every replica (through Redis pub/sub and the ``--workers`` supervisor)."""
    expected = request.app[HOLDER].current.compiled.admin_token
    try:
        if not _authorised(request, expected):
            raise AdminUnauthorized("The admin token is missing or wrong.")
        body = await _json_body(request)
        kind, value = _eviction(body)
        runtime = request.app[HOLDER].current
        if kind == "subject":
            report = await runtime.evict_subject(value)
        else:
            digest = token_digest(value) if kind == "token" else _hex(value)
            report = await runtime.evict_token(digest)
        if not report.complete:
            raise EvictionIncomplete(report)
    except GatewayError as error:
        return problem(error)
    answer: dict[str, Any] = {"evicted": "subject" if kind == "subject" else "token"}
    answer.update(_report(report))
    if expected is not None and kind == "subject":
        # Only an authenticated caller may learn whether a subject had live entries here.
        answer["local_entries"] = report.local_entries
    return web.json_response(answer)


def _eviction(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict) or len(body) != 1:
        raise BadRequest(_ONE_OF)
    ((kind, value),) = body.items()
    if kind not in ("token", "token_sha256", "subject"):
        raise BadRequest(_ONE_OF)
    if not isinstance(value, str) or not value:
        raise BadRequest(f'"{kind}" must be a non-empty string.')
    return kind, value


def _hex(value: str) -> bytes:
    try:
        digest = bytes.fromhex(value)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise BadRequest('"token_sha256" must be 64 hex digits.')
    return digest


async def jwks(request: web.Request) -> web.Response:
    """The public keys of the signed identity tokens (RFC 7517), for upstreams to verify them
    with; retired keys stay published while tokens they signed may still be in flight."""
    signer = request.app[HOLDER].current.signer
    if signer is None:
        return problem(NotFound("No identity-token keys are configured."))
    document = signer.jwks()
    headers = {"Content-Type": document.content_type, "Cache-Control": document.cache_control}
    return web.Response(body=document.body, headers=headers)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME  # not aiohttp's name and version
    # With --workers N each worker answers on the shared admin port: say which one did.
    response.headers["X-Worker-Pid"] = str(os.getpid())


def build_admin_app(holder: RuntimeHolder, gateway_metrics: Metrics) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY)
    app.on_response_prepare.append(_server_header)
    app[HOLDER] = holder
    app[METRICS] = gateway_metrics
    app.router.add_post("/cache/evict", evict)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/.well-known/jwks.json", jwks)
    return app
