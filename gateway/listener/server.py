"""The listening socket and its connections: start, and drain on shutdown (RFC 9112 §9.6)."""

from __future__ import annotations

import asyncio
from ssl import SSLContext

from gateway.listener.connection import HttpConnection
from gateway.listener.context import Handler, ListenerContext, RefusalHook
from gateway.listener.limits import ListenerLimits
from gateway.listener.tls_door import TlsDoor


class HttpListener:
    """An HTTP/1.1 listener serving ``handler`` (see the package docstring for the contract).

    ``server_header`` names the gateway in the listener's own refusals (the application
    sets its own headers); ``on_refusal(error, remote)`` is told of every request refused
    before it reached the application, for logs and metrics.
    """

    def __init__(
        self,
        handler: Handler,
        limits: ListenerLimits | None = None,
        *,
        server_header: bytes | None = b"oauth-gateway",
        cancel_on_disconnect: bool = True,
        on_refusal: RefusalHook | None = None,
    ) -> None:
        self._handler = handler
        self._limits = limits or ListenerLimits()
        self._server_header = server_header
        self._cancel_on_disconnect = cancel_on_disconnect
        self._on_refusal = on_refusal
        self._context: ListenerContext | None = None
        self._server: asyncio.Server | None = None
        self._door: TlsDoor | None = None

    def _make_context(self) -> ListenerContext:
        if self._context is None:
            self._context = ListenerContext(
                self._handler,
                self._limits,
                asyncio.get_running_loop(),
                server_header=self._server_header,
                cancel_on_disconnect=self._cancel_on_disconnect,
                on_refusal=self._on_refusal,
            )
        return self._context

    async def start(
        self,
        host: str | None,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
        ssl: SSLContext | None = None,
    ) -> None:
        """Listen on ``host:port``; ``reuse_port`` lets several workers share it; ``ssl``
        makes it a TLS listener (``ReloadingTls.front``, whose callback follows renewals)."""
        if self._server is not None or self._door is not None:
            raise RuntimeError("the listener is already started")
        context = self._make_context()
        if ssl is not None:
            # A handshake is bounded like a request head: a client that opens a connection
            # and never finishes the handshake holds it no longer than it could idle.
            door = TlsDoor(context, ssl, max(self._limits.head_timeout, 1.0))
            await door.start(host, port, reuse_port=reuse_port, backlog=backlog)
            self._door = door
            return

        def factory() -> HttpConnection:
            return HttpConnection(context)

        self._server = await context.loop.create_server(
            factory, host, port, reuse_port=reuse_port or None, backlog=backlog
        )

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        sockets = self._door.sockets if self._door is not None else None
        if self._server is not None:
            sockets = list(self._server.sockets)
        if not sockets:
            return 0
        return int(sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._context.connections) if self._context is not None else 0

    async def close(self, drain_timeout: float = 30.0) -> bool:
        """Graceful stop: accept no more connections, close idle ones now, let each busy one
        finish its current response (then close it) for up to ``drain_timeout`` seconds,
        then reset what is left. True when everything finished in time. Connections handed
        over after a 101 are the application's to close."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        door, self._door = self._door, None
        if door is not None:
            door.close()
        if self._context is None:
            return True
        # Not server.wait_closed(): from Python 3.12 it also waits for connections handed
        # over after a 101, which are the application's to close.
        return await self._context.drain(drain_timeout)
