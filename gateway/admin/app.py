"""The admin listener: liveness, readiness, metrics and admin actions.

It runs on its own address (default 127.0.0.1:9901) and is never reachable through the
proxy listener, whose handler has no route to any of this.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__
from gateway.metrics import Metrics
from gateway.state import HOLDER, METRICS, RuntimeHolder


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
    notes = dict(note() for note in holder.current.notes)
    body = {"status": "ready" if ready else "not_ready", "checks": checks, "notes": notes}
    return web.json_response(body, status=200 if ready else 503)


def _problem(status: int, detail: str) -> web.Response:
    body = {"type": "about:blank", "status": status, "detail": detail}
    return web.json_response(body, status=status, content_type="application/problem+json")


async def evict(request: web.Request) -> web.Response:
    """Revoke now: drop a token (raw or by SHA-256) or every token of a subject, here and in
    every replica (through Redis pub/sub when a shared cache is configured)."""
    expected = request.app[ADMIN_TOKEN]
    if expected is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return _problem(401, "The admin token is missing or wrong.")
    try:
        body = await request.json()
    except ValueError:
        return _problem(400, "Send a JSON object.")
    if not isinstance(body, dict) or len(body) != 1:
        return _problem(400, 'Send exactly one of "token", "token_sha256" or "subject".')
    runtime = request.app[HOLDER].current
    ((kind, value),) = body.items()
    if not isinstance(value, str) or not value:
        return _problem(400, f'"{kind}" must be a non-empty string.')
    if kind == "token":
        await runtime.evict_token(hashlib.sha256(value.encode()).digest())
        return web.json_response({"evicted": "token"})
    if kind == "token_sha256":
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            return _problem(400, '"token_sha256" must be 64 hex digits.')
        await runtime.evict_token(digest)
        return web.json_response({"evicted": "token"})
    if kind == "subject":
        dropped = await runtime.evict_subject(value)
        return web.json_response({"evicted": "subject", "local_entries": dropped})
    return _problem(400, 'Send exactly one of "token", "token_sha256" or "subject".')


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "oauth-gateway"  # not aiohttp's name and version
    # With --workers N each worker answers on the shared admin port: say which one did.
    response.headers["X-Worker-Pid"] = str(os.getpid())


ADMIN_TOKEN = web.AppKey("admin_token", str | None)


def build_admin_app(
    holder: RuntimeHolder, gateway_metrics: Metrics, admin_token: str | None = None
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app.on_response_prepare.append(_server_header)
    app[HOLDER] = holder
    app[METRICS] = gateway_metrics
    app[ADMIN_TOKEN] = admin_token
    app.router.add_post("/cache/evict", evict)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
