"""Build the proxy listener and the admin application, and run them on their addresses.

The proxy port is the gateway's own HTTP/1.1 listener (``gateway.listener``: no router, no
middleware chain, the handler is the whole request path); the admin listener is a small
aiohttp ``web.Application`` on its own address, so nothing of it is reachable through the
proxy port. aiohttp also serves the decision service and is the control plane's client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.admin.app import build_admin_app
from gateway.auth.replay import RedisReplayStore
from gateway.compiler import CompiledConfig, compile_config
from gateway.config.errors import ConfigError
from gateway.config.loader import LoadedConfig
from gateway.decision.listeners import DecisionListeners, start_decision
from gateway.handler import ProxyHandler
from gateway.listener import HttpListener, ListenerLimits
from gateway.listener.tls import TlsError
from gateway.metrics import Metrics
from gateway.problems import SERVER_NAME
from gateway.runtime import Runtime, RuntimeHolder, start_runtime
from gateway.tls_watch import TlsWatch, refuse_turning_tls_on
from gateway.tunnels import TunnelRegistry

log = logging.getLogger("gateway.app")
Relay = Callable[[dict[str, Any]], None]


def _parser_limits(loaded: LoadedConfig) -> dict[str, int]:
    """The proxy's limits in aiohttp's terms, for the decision service's listener: a
    forwarded header the proxy would refuse (431) is refused there too."""
    limits = loaded.config.limits
    return {
        "max_line_size": limits.max_request_line,
        "max_field_size": limits.max_header_size,
        "max_headers": limits.max_headers,
    }


@dataclass
class Gateway:
    """A running gateway: its listeners, its live runtime, its open WebSocket tunnels and
    the control plane's HTTP client (key sets, discovery, introspection)."""

    holder: RuntimeHolder
    session: aiohttp.ClientSession
    metrics: Metrics
    listener: HttpListener
    admin_runner: web.AppRunner
    tunnels: TunnelRegistry
    proxy_port: int = 0
    admin_port: int = 0
    relay: Relay | None = None
    decision: DecisionListeners | None = None  # the forward-auth service, when configured
    tls: TlsWatch | None = None  # the proxy listener's certificate, with ``listen.tls``
    _old_runtimes: set[asyncio.Task[None]] = field(default_factory=set)

    def _attach(self, runtime: Runtime) -> None:
        """What every runtime's identity cache tells: sibling workers, and the tunnels."""
        if self.relay is not None:
            runtime.identity_cache.add_relay(self.relay)
        runtime.identity_cache.add_eviction_listener(self.tunnels.evicted)

    async def reload(self, loaded: LoadedConfig, *, wait_for_keys: float = 10.0) -> None:
        """Swap in a new config; raises ConfigError and keeps the old one if it is bad."""
        try:
            compiled = compile_config(loaded)
            if self.tls is None and compiled.listen_tls is not None:
                raise refuse_turning_tls_on(loaded)
            runtime = await start_runtime(
                compiled, self.session, wait_for_keys=wait_for_keys, previous=self.holder.current
            )
            if self.tls is not None:
                try:
                    self.tls.follow(loaded, compiled.listen_tls, _watch_interval(loaded))
                except ConfigError:
                    await runtime.close()
                    raise
            self._attach(runtime)
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
        drain = self.holder.current.compiled.config.shutdown.drain_timeout
        await asyncio.gather(self.listener.close(drain), self.tunnels.drain(drain))
        await self.close()

    async def close(self) -> None:
        drain = self.holder.current.compiled.config.shutdown.drain_timeout
        await self.listener.close(drain)
        if self.tls is not None:
            await self.tls.close()
        await self.tunnels.close()
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


def _watch_interval(loaded: LoadedConfig) -> float:
    tls = loaded.config.listen.tls
    return 0.0 if tls is None else tls.watch_interval


def _listener_tls(loaded: LoadedConfig, compiled: CompiledConfig) -> TlsWatch | None:
    """The listener's TLS, loaded again now: a file replaced since the compile that no
    longer loads is a config error with its line, like any other, not a crash."""
    files = compiled.listen_tls
    if files is None:
        return None
    try:
        return TlsWatch(files, _watch_interval(loaded))
    except TlsError as exc:
        raise loaded.source.error(("listen", "tls", *exc.where.split(".")), str(exc)) from None


def _listening_port(runner: web.BaseRunner) -> int:
    for site in runner.sites:
        # asyncio's and uvloop's servers both have .sockets; AbstractServer does not say so.
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            return int(sockets[0].getsockname()[1])
    return 0


def _control_plane_client() -> aiohttp.ClientSession:
    """The control plane's one client (key sets, discovery, introspection): bounded, and
    never used for proxied traffic, WebSockets included, so none can starve it."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=100, enable_cleanup_closed=True),
    )


async def start_gateway(
    loaded: LoadedConfig,
    *,
    reuse_port: bool = False,
    proxy_port: int | None = None,
    admin_port: int | None = None,
    relay: Relay | None = None,
    compiled: CompiledConfig | None = None,
) -> Gateway:
    """Compile (unless ``compiled`` is given) and start the runtime and open both listeners
    (ports from config unless overridden). ``relay`` carries this process's evictions to its
    sibling workers."""
    config = loaded.config
    compiled = compile_config(loaded) if compiled is None else compiled
    tls = _listener_tls(loaded, compiled)
    session = _control_plane_client()
    try:
        runtime = await start_runtime(compiled, session)
    except BaseException:
        await session.close()
        raise
    holder = RuntimeHolder(current=runtime)
    metrics = Metrics()
    metrics.add_source(lambda: holder.current.metric_families(holder.draining))
    tunnels = TunnelRegistry()
    handler = ProxyHandler(holder, metrics, tunnels)
    listener = HttpListener(
        handler,
        ListenerLimits.from_config(config.limits),
        server_header=SERVER_NAME.encode("ascii"),
        cancel_on_disconnect=True,
        on_refusal=handler.refused,
    )
    admin_app = build_admin_app(holder, metrics)
    admin_runner = web.AppRunner(admin_app, handle_signals=False, access_log=None)
    await admin_runner.setup()
    gateway = Gateway(
        holder, session, metrics, listener, admin_runner, tunnels, relay=relay, tls=tls
    )
    gateway._attach(runtime)
    try:
        listen = config.listen
        port = listen.port if proxy_port is None else proxy_port
        await listener.start(
            listen.host, port, reuse_port=reuse_port, backlog=1024,
            ssl=None if tls is None else tls.tls.front,
        )  # fmt: skip
        if tls is not None:
            metrics.add_source(tls.metric_families)
            tls.start()
        admin = config.admin
        port = admin.port if admin_port is None else admin_port
        await web.TCPSite(admin_runner, admin.host, port, reuse_port=reuse_port).start()
        if config.decision is not None:
            gateway.decision = await start_decision(
                holder, metrics, config.decision, reuse_port=reuse_port,
                limits=_parser_limits(loaded),
            )  # fmt: skip
    except BaseException:
        await gateway.close()
        raise
    gateway.proxy_port = listener.port
    gateway.admin_port = _listening_port(admin_runner)
    return gateway
