"""Build the proxy server and the admin application, and run them on their listeners.

The proxy listener uses aiohttp's low-level server (no router, no middleware chain: the
handler is the whole request path); the admin listener is a small ``web.Application`` on
its own address, so nothing of it is reachable through the proxy port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.admin.app import build_admin_app
from gateway.auth.replay import RedisReplayStore
from gateway.compiler import compile_config
from gateway.config.errors import ConfigError
from gateway.config.loader import LoadedConfig
from gateway.decision.listeners import DecisionListeners, start_decision
from gateway.handler import ProxyHandler, new_request_id
from gateway.metrics import Metrics
from gateway.problems import BadRequest, GatewayError, HeadersTooLarge, UriTooLong
from gateway.proxy.problem_response import problem_response
from gateway.runtime import Runtime, RuntimeHolder, start_runtime

log = logging.getLogger("gateway.app")
Relay = Callable[[dict[str, Any]], None]


def _parse_error(exc: BaseException | None, max_line: int) -> GatewayError:
    """The precise answer for a request the HTTP parser refused."""
    if isinstance(exc, LineTooLong):
        # The parser reports the limit it hit; the request line's limit is distinct
        # from the header field limit by construction (see ``_server_limits``).
        if f"{max_line} bytes" in str(exc) or f"limit {max_line}" in str(exc):
            return UriTooLong("The request target is too long.")
        return HeadersTooLarge("A request header field is too large.")
    if isinstance(exc, BadHttpMessage):
        if "Too many headers" in str(exc):
            return HeadersTooLarge("The request has too many header fields.")
        return BadRequest("The request is not valid HTTP/1.1.")
    return GatewayError()


class _GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering parse errors with problem bodies."""

    max_line = 8190

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        error = _parse_error(exc, self.max_line) if status != 500 else GatewayError()
        if status == 500 and exc is not None:
            log.error("internal error", exc_info=exc)
        return problem_response(error, "gateway", new_request_id(), close=True)


class _GatewayServer(web.Server):
    def __init__(self, *args: object, max_line: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._max_line = max_line

    def __call__(self) -> RequestHandler:
        handler = _GatewayRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.max_line = self._max_line
        return handler


def _server_limits(loaded: LoadedConfig) -> dict[str, int]:
    limits = loaded.config.limits
    max_line = limits.max_request_line
    max_field = limits.max_header_size
    if max_field == max_line:
        max_field += 1  # tells the two apart in the parser's LineTooLong message
    return {
        "max_line_size": max_line,
        "max_field_size": max_field,
        "max_headers": limits.max_headers,
    }


@dataclass
class Gateway:
    """A running gateway: its listeners, its live runtime and its HTTP clients (the control
    plane's, for key sets and introspection; the data plane's, for WebSocket relays)."""

    holder: RuntimeHolder
    session: aiohttp.ClientSession
    websockets: aiohttp.ClientSession
    metrics: Metrics
    proxy_runner: web.BaseRunner
    admin_runner: web.AppRunner
    proxy_port: int = 0
    admin_port: int = 0
    relay: Relay | None = None
    decision: DecisionListeners | None = None  # the forward-auth service, when configured
    _old_runtimes: set[asyncio.Task[None]] = field(default_factory=set)

    async def reload(self, loaded: LoadedConfig, *, wait_for_keys: float = 10.0) -> None:
        """Swap in a new config; raises ConfigError and keeps the old one if it is bad."""
        try:
            runtime = await start_runtime(
                compile_config(loaded),
                self.session,
                wait_for_keys=wait_for_keys,
                previous=self.holder.current,
            )
            if self.relay is not None:
                runtime.identity_cache.add_relay(self.relay)
        except ConfigError:
            self.metrics.config_reloads.labels("rejected").inc()
            raise
        old, self.holder.current = self.holder.current, runtime
        self.metrics.config_reloads.labels("ok").inc()
        task = asyncio.ensure_future(_retire(old))
        self._old_runtimes.add(task)
        task.add_done_callback(self._old_runtimes.discard)

    async def shutdown(self, readiness_delay: float) -> None:
        """SIGTERM: unready at once, keep accepting while load balancers notice, then stop
        accepting and give in-flight requests (and WebSockets) the drain time to finish."""
        self.holder.draining = True
        await asyncio.sleep(readiness_delay)
        await self.proxy_runner.cleanup()  # waits up to shutdown_timeout for in-flight work
        await self.close()

    async def close(self) -> None:
        await self.proxy_runner.cleanup()
        await self.admin_runner.cleanup()
        if self.decision is not None:
            await self.decision.close()
        for task in list(self._old_runtimes):
            task.cancel()
        await self.holder.current.close()
        replay = self.holder.current.replay  # kept across reloads, closed with the process
        if isinstance(replay, RedisReplayStore):
            await replay.close()
        await self.session.close()
        await self.websockets.close()

    def receive_eviction(self, message: dict[str, Any]) -> None:
        """An eviction another worker made, relayed by the supervisor."""
        self.holder.current.identity_cache.receive(message)


_RETIRE_LIMIT = 3600.0


async def _retire(runtime: Runtime) -> None:
    """A replaced runtime serves its in-flight requests (and WebSockets), up to an hour,
    then releases its pools, key providers and caches."""
    runtime.retire()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _RETIRE_LIMIT
    # Polled: an Event would cost every request a check for the rare reload.
    while runtime.in_flight and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    await runtime.close()


def _listening_port(runner: web.BaseRunner) -> int:
    for site in runner.sites:
        # asyncio's and uvloop's servers both have .sockets; AbstractServer does not say so.
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            return int(sockets[0].getsockname()[1])
    return 0


def _client_session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=limit, enable_cleanup_closed=True),
    )


async def start_gateway(
    loaded: LoadedConfig,
    *,
    reuse_port: bool = False,
    proxy_port: int | None = None,
    admin_port: int | None = None,
    relay: Relay | None = None,
) -> Gateway:
    """Compile and start the runtime and open both listeners (ports from config unless
    overridden). ``relay`` carries this process's evictions to its sibling workers."""
    config = loaded.config
    compiled = compile_config(loaded)
    # The control plane (key sets, discovery, introspection) has a client of its own, so
    # no amount of proxied traffic (WebSockets included) can starve it.
    session = _client_session(limit=100)
    websockets = _client_session(limit=0)
    try:
        runtime = await start_runtime(compiled, session)
    except BaseException:
        await session.close()
        await websockets.close()
        raise
    if relay is not None:
        runtime.identity_cache.add_relay(relay)
    holder = RuntimeHolder(current=runtime)
    metrics = Metrics()
    metrics.add_source(lambda: holder.current.metric_families(holder.draining))
    server = _GatewayServer(
        ProxyHandler(holder, metrics, websockets),
        handler_cancellation=True,
        auto_decompress=False,
        access_log=None,
        keepalive_timeout=config.limits.keepalive_timeout,
        max_line=config.limits.max_request_line,
        **_server_limits(loaded),
    )
    proxy_runner = web.ServerRunner(
        server, handle_signals=False, shutdown_timeout=config.shutdown.drain_timeout
    )
    await proxy_runner.setup()
    admin_app = build_admin_app(holder, metrics)
    admin_runner = web.AppRunner(admin_app, handle_signals=False, access_log=None)
    await admin_runner.setup()
    gateway = Gateway(holder, session, websockets, metrics, proxy_runner, admin_runner, relay=relay)
    try:
        listen = config.listen
        port = listen.port if proxy_port is None else proxy_port
        await web.TCPSite(
            proxy_runner, listen.host, port, reuse_port=reuse_port, backlog=1024
        ).start()
        admin = config.admin
        port = admin.port if admin_port is None else admin_port
        await web.TCPSite(admin_runner, admin.host, port, reuse_port=reuse_port).start()
        if config.decision is not None:
            gateway.decision = await start_decision(
                holder, metrics, config.decision, reuse_port=reuse_port,
                limits=_server_limits(loaded),
            )  # fmt: skip
    except BaseException:
        await gateway.close()
        raise
    gateway.proxy_port = _listening_port(proxy_runner)
    gateway.admin_port = _listening_port(admin_runner)
    return gateway
