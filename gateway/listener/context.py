"""What the connections of one listener share: the application, limits, batched writes and
the shutdown drain (RFC 9112 §9.6)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from gateway.listener.limits import ListenerLimits
from gateway.listener.request import Request
from gateway.problems import GatewayError

# The application: called once per request, in order. It answers through the request, now
# or later; a coroutine it returns is run as a task (cancelled if the client goes away).
Handler = Callable[[Request], Coroutine[Any, Any, None] | None]
RefusalHook = Callable[[GatewayError, str | None], None]


class Flushable(Protocol):
    def flush(self) -> None: ...


class Connection(Protocol):
    def shutdown(self) -> None: ...

    def reset(self) -> None: ...


class ListenerContext:
    """What every connection of one listener shares."""

    __slots__ = (
        "_corked",
        "_drained",
        "cancel_on_disconnect",
        "closing",
        "connections",
        "handler",
        "limits",
        "loop",
        "on_refusal",
        "server_header",
    )

    def __init__(
        self,
        handler: Handler,
        limits: ListenerLimits,
        loop: asyncio.AbstractEventLoop,
        *,
        server_header: bytes | None,
        cancel_on_disconnect: bool,
        on_refusal: RefusalHook | None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = loop
        self.server_header = server_header
        self.cancel_on_disconnect = cancel_on_disconnect
        self.on_refusal = on_refusal
        self.connections: set[Connection] = set()
        self.closing = False
        self._drained: asyncio.Event | None = None
        self._corked: list[Flushable] = []

    def cork(self, output: Flushable) -> None:
        """Flush ``output`` at the end of this loop iteration (one callback for all).

        Every response a batch of reads produced leaves in one system call per connection
        after the batch, rather than one in the middle of it: measured on the bench, about
        a sixth less CPU per request than writing inside ``data_received``."""
        corked = self._corked
        corked.append(output)
        if len(corked) == 1:
            self.loop.call_soon(self._flush_corked)

    def _flush_corked(self) -> None:
        corked, self._corked = self._corked, []
        for output in corked:
            output.flush()

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if self._drained is not None and not self.connections:
            self._drained.set()

    async def drain(self, deadline: float) -> bool:
        """Stop every connection once its current response is finished; True when all
        closed within ``deadline`` seconds, else the rest are reset."""
        self.closing = True
        self._drained = asyncio.Event()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            try:
                async with asyncio.timeout(deadline):
                    await self._drained.wait()
            except TimeoutError:
                for connection in list(self.connections):
                    connection.reset()
                return False
        return True
