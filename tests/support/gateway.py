"""Run the real gateway in-process on free loopback ports, from a config dict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from gateway.app import Gateway, start_gateway
from gateway.config.loader import load_config
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream


def write_config(directory: Path, config: dict[str, Any], name: str = "gateway.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@asynccontextmanager
async def running_gateway(
    directory: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> AsyncIterator[Gateway]:
    path = write_config(directory, config)
    loaded = load_config(path, env=env or {})
    gateway = await start_gateway(loaded, proxy_port=0, admin_port=0)
    try:
        yield gateway
    finally:
        await gateway.close()


def base_config(
    upstream_url: str, routes: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """A minimal anonymous config in front of one upstream; tests add what they need."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream_url, "timeouts": {"connect": "1s", "read": "2s"}}},
        "defaults": {"auth": "anonymous"},
        "routes": routes or [{"match": {"path": {"prefix": "/"}}, "upstream": "app"}],
    }
    config.update(extra)
    return config


async def raw_exchange(port: int, data: bytes, *, timeout: float = 3.0) -> bytes:
    """Send raw bytes and read everything until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0]
    return int(line.split(b" ")[1])


async def wait_ready(gw: Gateway, timeout: float = 5.0) -> None:
    """Until every issuer's keys are loaded (what /readyz reports)."""
    for _ in range(int(timeout / 0.05)):
        if gw.holder.current.ready()[0]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("gateway did not become ready")


@asynccontextmanager
async def ready_gateway(
    directory: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> AsyncIterator[Gateway]:
    """``running_gateway``, once every issuer's keys are loaded (``wait_ready``)."""
    async with running_gateway(directory, config, env) as gw:
        await wait_ready(gw)
        yield gw


@asynccontextmanager
async def gateway_with_issuer(
    directory: Path,
    make_config: Callable[[RecordingUpstream, TestIssuer], dict[str, Any]],
) -> AsyncIterator[tuple[Gateway, RecordingUpstream, TestIssuer]]:
    """A recording upstream, a test issuer and a ready gateway configured for both."""
    upstream, issuer = RecordingUpstream(name="app"), TestIssuer()
    await upstream.start()
    await issuer.start()
    try:
        async with ready_gateway(directory, make_config(upstream, issuer)) as gw:
            yield gw, upstream, issuer
    finally:
        await upstream.close()
        await issuer.close()
