"""The admin listener: liveness, readiness, metrics and admin actions.

It runs on its own address (default 127.0.0.1:9901) and is never reachable through the
proxy listener, whose handler has no route to any of this.
"""

from __future__ import annotations

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
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_admin_app(holder: RuntimeHolder, gateway_metrics: Metrics) -> web.Application:
    app = web.Application()
    app[HOLDER] = holder
    app[METRICS] = gateway_metrics
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
