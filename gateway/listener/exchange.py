"""What a request needs from its connection: the seam between ``Request`` (one exchange's
state) and ``HttpConnection`` (the socket, its order and its timers), so each can be read,
and tested, without the other."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.listener.request import Request


class Exchange(Protocol):
    """What a request needs from its connection (``HttpConnection`` implements it)."""

    @property
    def remote(self) -> str | None: ...

    @property
    def secure(self) -> bool: ...

    @property
    def peer_certificate(self) -> bytes | None: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def write_paused(self) -> bool: ...

    @property
    def body_timeout(self) -> float: ...

    def write(self, data: bytes) -> None: ...

    def write_now(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def keep_alive_for(self, request: Request) -> bool: ...

    def response_finished(self, request: Request, keep_alive: bool) -> None: ...

    def abort(self, request: Request) -> None: ...

    def cut(self, request: Request) -> None: ...

    def hand_over(self, request: Request, protocol: asyncio.Protocol) -> None: ...

    def application_done(self, request: Request, task: asyncio.Task[None]) -> None: ...
