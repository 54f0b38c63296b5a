"""A hanging authorization server must not slow every client (issue 13, circuit breaking).

A real introspection server that hangs: after the configured consecutive timeouts the
gateway answers uncached opaque tokens with 503 at once, JWT routes never notice, /readyz
and /metrics say the breaker is open, and one probe after the open period closes it again.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.gateway import running_gateway, wait_ready
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream


def config(issuer: TestIssuer, introspection: TestIntrospectionServer, upstream) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{
            "name": "main", "issuer": issuer.url, "audiences": ["api://default"], "mode": "auto",
            "http": {"breaker": {"failures": 3, "open_for": "600ms"}},
            "introspection": {"endpoint": introspection.url, "timeout": "300ms", "client": {
                "client_id": "gateway", "client_secret": "gateway-secret"}},
        }],
        "routes": [{"match": {"path": {"prefix": "/"}}, "upstream": "app"}],
    }  # fmt: skip


async def timed_get(session: aiohttp.ClientSession, url: str, token: str) -> tuple[int, float]:
    started = time.perf_counter()
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        await r.read()
        return r.status, time.perf_counter() - started


async def admin_json(gw: Any, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.admin_port}{path}") as r:
            return await (r.json() if path == "/readyz" else r.text())


async def test_a_hanging_introspection_endpoint_opens_the_breaker_and_it_recovers(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    introspection = TestIntrospectionServer()
    await introspection.start()
    try:
        introspection.mode = "hang"
        async with running_gateway(tmp_path, config(issuer, introspection, upstream)) as gw:
            await wait_ready(gw)
            url = f"http://127.0.0.1:{gw.proxy_port}/x"
            async with aiohttp.ClientSession() as session:
                # Three distinct tokens time out (the breaker's threshold)...
                first = await asyncio.gather(
                    *(timed_get(session, url, secrets.token_urlsafe(20)) for _ in range(3))
                )
                assert [status for status, _ in first] == [503] * 3
                calls = introspection.calls
                # ...then new tokens are refused at once, without asking the server.
                fast = [await timed_get(session, url, secrets.token_urlsafe(20)) for _ in range(20)]
                assert {status for status, _ in fast} == {503}
                assert max(seconds for _, seconds in fast) < 0.2
                assert introspection.calls == calls
                # JWTs are validated locally and never notice.
                assert (await timed_get(session, url, issuer.mint()))[0] == 200
                ready = await admin_json(gw, "/readyz")
                assert ready["status"] == "ready"
                assert ready["notes"]["breaker:introspection:main"] == "open"
                metrics = await admin_json(gw, "/metrics")
                opened = (
                    'gateway_circuit_breaker_opens_total{endpoint="introspection",issuer="main"}'
                )
                assert f"{opened} 1.0" in metrics
                # The 503s the decision gave are counted as its error outcome, not lost.
                errors = re.findall(
                    r'gateway_auth_decisions_total\{host_proxy="none",mode="proxy",'
                    r'outcome="error",reason="[a-z_]+"\} ([0-9.]+)', metrics
                )  # fmt: skip
                assert sum(float(count) for count in errors) >= 23, metrics
                # The server recovers; after the open period one probe closes the breaker.
                introspection.mode = "ok"
                token = secrets.token_urlsafe(20)
                introspection.add_token(token, sub="u", aud="api://default",
                                        exp=int(time.time() + 60))  # fmt: skip
                await asyncio.sleep(1.0)
                assert (await timed_get(session, url, token))[0] == 200
                ready = await admin_json(gw, "/readyz")
                assert "breaker:introspection:main" not in ready["notes"]
    finally:
        await introspection.close()
    assert [r.header("X-Auth-Subject") for r in upstream.received] == ["user-1", "u"]
