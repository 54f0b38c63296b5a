"""The gateway side of the end-to-end tests: its config against the real provider, running
replicas, and the requests a client sends through it (RFC 6750 bearer tokens)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from gateway.app import Gateway, start_gateway
from gateway.config.loader import load_config
from tests.e2e.oidc import GATEWAY_AUDIENCES, OidcProvider
from tests.support.gateway import running_gateway, write_config
from tests.support.processes import free_port
from tests.support.redis import TEST_CACHE_KEY


def gateway_config(
    oidc: OidcProvider,
    upstream_url: str,
    *,
    redis: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    **issuer_extra: Any,
) -> dict[str, Any]:
    """The gateway as an operator would point it at this provider: discovery only (keys and
    the introspection endpoint come from the metadata), RFC 9068 typing required."""
    cache_section: dict[str, Any] = {
        "max_ttl": "2s", "negative_ttl": "2s", "l1": {"ttl": "2s"}, **(cache or {}),
    }  # fmt: skip
    if redis is not None:
        cache_section["redis"] = {
            "url": redis["url"],
            "timeout": redis["timeout"],
            "key": TEST_CACHE_KEY,
        }
        cache_section["key_prefix"] = redis["key_prefix"]
    issuer: dict[str, Any] = {
        "issuer": oidc.issuer,
        "keys": {"discovery": True},
        "audiences": list(GATEWAY_AUDIENCES),
        "algorithms": ["RS256", "ES256"],
        "require_at_jwt": True,
        "leeway": "1s",
        "mode": "auto",
        "introspection": {
            "client": {"client_id": "gateway", "client_secret": oidc.client_secrets["gateway"]},
        },
        **issuer_extra,
    }
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"orders": {"url": upstream_url, "timeouts": {"connect": "1s", "read": "5s"}}},
        "issuers": [issuer],
        "cache": cache_section,
        "routes": [
            {"name": "orders-read", "match": {"path": "/orders/**", "methods": ["GET"]},
             "upstream": "orders", "require": {"scopes": {"all": ["orders:read"]}}},
            {"name": "orders-write", "match": {"path": "/orders/**", "methods": ["POST"]},
             "upstream": "orders", "require": {"scopes": {"all": ["orders:write"]}}},
        ],
    }  # fmt: skip


@asynccontextmanager
async def gateways(
    directory: Path, config: dict[str, Any], replicas: int = 1
) -> AsyncIterator[list[Gateway]]:
    """``replicas`` gateways from one config (with a shared Redis they share one cache)."""
    async with AsyncExitStack() as stack:
        started = []
        for index in range(replicas):
            path = directory / f"gateway-{index}"
            path.mkdir()
            started.append(await stack.enter_async_context(running_gateway(path, config)))
        for gateway in started:
            await wait_ready(gateway)
        yield started


@asynccontextmanager
async def gateways_at(
    directory: Path, config: dict[str, Any], ports: list[int]
) -> AsyncIterator[list[Gateway]]:
    """Gateways on ports chosen before their config was written: what clients must see in
    the config (a DPoP ``external_url``, an RFC 9728 ``resource``) names the port."""
    async with AsyncExitStack() as stack:
        started = []
        for index, port in enumerate(ports):
            path = directory / f"gateway-at-{index}"
            path.mkdir()
            loaded = load_config(write_config(path, config), env={})
            gateway = await start_gateway(loaded, proxy_port=port, admin_port=0)
            stack.push_async_callback(gateway.close)
            started.append(gateway)
        for gateway in started:
            await wait_ready(gateway)
        yield started


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (each one was free a moment ago)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


async def wait_ready(gateway: Gateway, timeout: float = 10.0) -> None:
    """Discovery and the first key-set fetch happen in the background after start."""
    for _ in range(int(timeout / 0.05)):
        if gateway.holder.current.ready()[0]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gateway not ready: {gateway.holder.current.ready()[1]}")


async def call(
    gateway: Gateway, token: str | None, method: str = "GET", path: str = "/orders/42"
) -> tuple[int, dict[str, str]]:
    """One request through the proxy port with ``Authorization: Bearer``; status, headers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://127.0.0.1:{gateway.proxy_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers) as r,
    ):
        await r.read()
        return r.status, dict(r.headers)


async def evict(gateway: Gateway, body: dict[str, str]) -> None:
    """The admin action that revokes now, here and in every replica."""
    url = f"http://127.0.0.1:{gateway.admin_port}/cache/evict"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as r:
        assert r.status == 200, await r.text()
