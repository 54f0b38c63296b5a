"""``gateway demo``: the gateway on its embedded example config, with everything it needs.

A development issuer (its own fresh RSA key, discovery and JWKS on loopback) and a sample
upstream that echoes the headers it received run in the same process, so a newcomer sees a
token accepted, refused for scope, and refused for absence, within a minute. The dev issuer
exists only here: no config can enable it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from importlib import resources
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import start_gateway
from gateway.config.loader import load_config_text


class DevIssuer:
    """A throwaway authorization server: discovery, a JWKS and token minting (RFC 9068)."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex[:12]
        self.url = ""

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        public.update({"kid": self._kid, "use": "sig", "alg": "RS256"})
        return {"keys": [public]}

    def mint(self, scope: str, *, subject: str = "alice", client_id: str = "demo-client") -> str:
        now = int(time.time())
        claims = {
            "iss": self.url, "sub": subject, "client_id": client_id, "aud": "api://demo",
            "scope": scope, "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex,
        }  # fmt: skip
        headers = {"kid": self._kid, "typ": "at+jwt"}
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    def app(self) -> web.Application:
        async def metadata(_: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", metadata)
        app.router.add_get("/jwks", jwks)
        return app


async def _echo(request: web.Request) -> web.Response:
    """The sample upstream: shows what the gateway forwarded, identity headers included."""
    shown = {k: v for k, v in request.headers.items() if k.lower().startswith(("x-auth-", "x-"))}
    body: dict[str, object] = {
        "upstream": "sample",
        "method": request.method,
        "path": request.path_qs,
        "headers_received": shown,
    }
    return web.json_response(body)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _instructions(issuer: DevIssuer, base: str) -> str:
    reader = issuer.mint("orders:read")
    writer_only = issuer.mint("profile")
    return f"""
gateway demo is running: proxy {base}  (Ctrl-C to stop)

1. Allowed (scope orders:read); the upstream echoes the identity headers it received:
   curl -s {base}/orders/42 -H 'Authorization: Bearer {reader}'

2. Forbidden (token lacks orders:read) -> 403 insufficient_scope:
   curl -si {base}/orders/42 -H 'Authorization: Bearer {writer_only}'

3. No token -> 401 with a Bearer challenge:
   curl -si {base}/orders/42

4. Public route, no token needed:
   curl -s {base}/public/hello
"""


async def _demo(port: int, admin_port: int) -> None:
    issuer = DevIssuer()
    issuer_runner, issuer.url = await _serve(issuer.app())
    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", _echo)
    upstream_runner, upstream_url = await _serve(upstream_app)
    text = resources.files("gateway.defaults").joinpath("demo.yaml").read_text()
    env = {"DEMO_ISSUER": issuer.url, "DEMO_UPSTREAM": upstream_url}
    loaded = load_config_text(text, file="gateway/defaults/demo.yaml", env=env)
    gateway = await start_gateway(loaded, proxy_port=port, admin_port=admin_port)
    try:
        for _ in range(100):
            if gateway.holder.current.ready()[0]:
                break
            await asyncio.sleep(0.05)
        print(_instructions(issuer, f"http://127.0.0.1:{gateway.proxy_port}"), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await gateway.close()
        await upstream_runner.cleanup()
        await issuer_runner.cleanup()


def run_demo(port: int = 8080, admin_port: int = 9901) -> int:
    from gateway.server import install_uvloop

    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(port, admin_port))
    return 0


__all__ = ["DevIssuer", "run_demo"]
