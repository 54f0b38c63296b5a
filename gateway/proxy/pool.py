"""A bounded pool of keep-alive connections per upstream (LIFO, so warm ones are reused).

Past ``max_connections`` a request waits for a connection at most the connect timeout, then
gets a 503: an upstream's slowness bounds its own routes' queue, not the gateway's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque

from gateway.problems import BadGateway, GatewayTimeout, ServiceUnavailable
from gateway.proxy.connection import UpstreamConnection
from gateway.proxy.targets import UpstreamTarget

log = logging.getLogger("gateway.upstream")


async def open_connection(
    loop: asyncio.AbstractEventLoop, target: UpstreamTarget, protocol: asyncio.Protocol
) -> None:
    """Connect ``protocol`` to ``target`` (TCP, TLS or a unix socket) within its connect
    timeout: 504 when that passes, 502 when the upstream refuses. The pool's keep-alive
    connections and WebSocket tunnels both open this way."""
    try:
        async with asyncio.timeout(target.connect_timeout):
            if target.unix_path is not None:
                await loop.create_unix_connection(lambda: protocol, target.unix_path)
            else:
                assert target.host is not None and target.port is not None
                await loop.create_connection(
                    lambda: protocol,
                    target.host,
                    target.port,
                    ssl=target.ssl,
                    server_hostname=target.server_hostname,
                )
    except TimeoutError:
        raise GatewayTimeout("Connecting to the upstream timed out.") from None
    except (OSError, ssl.SSLError) as exc:
        log.debug("connect to upstream %s failed: %s", target.name, exc)
        raise BadGateway("The upstream refused the connection.") from None


class UpstreamPool:
    """A bounded set of keep-alive connections to one upstream (LIFO, so warm ones are reused)."""

    def __init__(self, target: UpstreamTarget, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.loop = loop
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection ready for an exchange, and whether it was reused from the pool."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
            self._open.discard(conn)
        while len(self._open) >= self.target.max_connections:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.target.connect_timeout):
                    await waiter
            except TimeoutError:
                raise ServiceUnavailable(
                    "The upstream connection pool is exhausted.", reason="upstream_pool_full"
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn, True
                self._open.discard(conn)
        return await self._connect(), False

    async def _connect(self) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        self._open.add(conn)
        try:
            await open_connection(self.loop, self.target, conn)
        except BaseException:
            self._discard(conn)
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after an exchange: kept only if the response was complete."""
        if conn.reusable and not self._closing:
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
            self._schedule_sweep()
        else:
            conn.close()
            self._discard(conn)
        self._wake_waiter()

    def forget(self, conn: UpstreamConnection) -> None:
        """Called by a connection that closed: it no longer counts against the limit."""
        if conn in self._open:
            self._discard(conn)
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
            self._wake_waiter()

    def _discard(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _schedule_sweep(self) -> None:
        if self._sweeper is None:
            delay = max(self.target.idle_timeout / 2, 0.05)
            self._sweeper = self.loop.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.target.idle_timeout
        keep = []
        for conn in self._idle:
            if conn.idle_since < cutoff or conn.closed:
                conn.close()
                self._discard(conn)
            else:
                keep.append(conn)
        self._idle = keep
        if keep:
            self._schedule_sweep()

    @property
    def retiring(self) -> bool:
        return self._closing

    def retire(self) -> None:
        """After a reload: close idle connections now and every active one once its
        exchange ends; exchanges under way are not interrupted."""
        self._closing = True
        for conn in self._idle:
            conn.close()
            self._discard(conn)
        self._idle.clear()

    async def close(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        self._open.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
