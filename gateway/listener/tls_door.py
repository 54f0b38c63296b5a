"""The TLS port's own accept loop: a connection's first byte says whether it is TLS.

A client that speaks plain HTTP to the TLS port (``http://`` where ``https://`` was meant,
a health check pointed at the wrong scheme) must get an answer it can read, as nginx gives
one ("The plain HTTP request was sent to HTTPS port"), not a dropped connection that looks
like a network fault. A TLS connection opens with a handshake record (RFC 8446 §5.1:
content type 22), and no HTTP request starts with that byte (a method is a token, RFC 9110
§9.1), so the first byte decides. asyncio's ``create_server(ssl=...)`` starts TLS before
any byte is seen, and a protocol cannot give back bytes it was handed, so this listener
accepts the sockets itself, peeks at the first byte (``MSG_PEEK``: it stays in the kernel
for the TLS layer) and only then hands the socket to ``connect_accepted_socket``: with the
TLS context for a handshake record, plain for anything else, where the connection answers
400 at once and lingers so the client reads it rather than a reset.

The wait for the first byte and the handshake share one bound (``handshake_timeout``), as
the handshake alone did before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import Any, Final

from gateway.listener.connection import HttpConnection
from gateway.listener.context import ListenerContext
from gateway.listener.errors import PlainHttpOnTlsPort

log = logging.getLogger("gateway.listener")

TLS_HANDSHAKE_RECORD: Final = 0x16
"""RFC 8446 §5.1 ContentType.handshake: the first byte of every TLS ClientHello."""
_ACCEPT_BATCH: Final = 64
_ACCEPT_PAUSE: Final = 0.1
"""Seconds without accepting after accept() ran out of a resource: not a busy loop."""
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() errors that say the process or the system is full (as asyncio pauses on)."""
_WARN_EVERY: Final = 10.0
"""Seconds between two warnings that accepting is paused: one per burst, not per wake-up."""


class PlainHttpConnection(HttpConnection):
    """A connection to the TLS port that did not start TLS: answered 400 and lingered."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._refuse(PlainHttpOnTlsPort("this port speaks TLS: send the request with https"))


class TlsDoor:
    """Accepts on the listening sockets; each connection is admitted by its first byte."""

    def __init__(
        self,
        context: ListenerContext,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self._ctx = context
        self._ssl = ssl_context
        self._timeout = handshake_timeout
        self.sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_at = float("-inf")

    async def start(self, host: str | None, port: int, *, reuse_port: bool, backlog: int) -> None:
        """Bind like ``loop.create_server`` (every address ``host`` resolves to; all
        interfaces for None) and start accepting."""
        loop = self._ctx.loop
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )  # "" means every interface, as for create_server
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                try:
                    listening = socket.socket(family, kind, proto)
                except OSError:  # a family this kernel lacks (no IPv6): the others serve
                    log.debug("no socket for address family %s: skipped", family)
                    continue
                self.sockets.append(_listening(listening, address, family, reuse_port, backlog))
        except BaseException:
            self._close_sockets()
            raise
        if not self.sockets:
            raise OSError(errno.EAFNOSUPPORT, f"cannot listen on {_where(host or '*', port)}")
        for listening in self.sockets:
            self._listen(listening)

    def close(self) -> None:
        """Accept no more, and drop connections not yet admitted (they have sent nothing
        the listener answers); admitted ones are the drain's."""
        for task in list(self._tasks):
            task.cancel()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for listening in self.sockets:
            if listening.fileno() != -1:
                self._ctx.loop.remove_reader(listening.fileno())
            listening.close()
        self.sockets = []

    def _spawn(self, accepted: socket.socket) -> None:
        task = asyncio.ensure_future(self._admit(accepted))
        self._tasks.add(task)

        def settle(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            if done.cancelled():  # perhaps before its first step: the socket is still ours
                accepted.close()

        task.add_done_callback(settle)

    def _listen(self, listening: socket.socket) -> None:
        self._ctx.loop.add_reader(listening.fileno(), self._accept, listening)

    def _accept(self, listening: socket.socket) -> None:
        """Everything the backlog holds, up to a batch per wake-up (as asyncio does)."""
        for _ in range(_ACCEPT_BATCH):
            try:
                accepted, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:  # pause rather than spin
                    self._pause(listening, exc)
                    return
                # One connection's failure (aborted before it was taken, EPROTO...):
                # the next one in the backlog is unaffected.
                log.debug("accept failed on the TLS listener: %r", exc)
                continue
            self._spawn(accepted)

    def _pause(self, listening: socket.socket, exc: OSError) -> None:
        loop = self._ctx.loop
        if loop.time() - self._warned_at >= _WARN_EVERY:
            self._warned_at = loop.time()
            log.warning("TLS listener paused accepting for %ss: %s", _ACCEPT_PAUSE, exc)
        loop.remove_reader(listening.fileno())
        loop.call_later(_ACCEPT_PAUSE, self._relisten, listening)

    def _relisten(self, listening: socket.socket) -> None:
        if listening in self.sockets and listening.fileno() != -1:
            self._listen(listening)

    async def _admit(self, accepted: socket.socket) -> None:
        loop = self._ctx.loop
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                first = await _first_byte(loop, accepted)
            if first is None:  # closed before it said anything
                accepted.close()
                return
            if first == TLS_HANDSHAKE_RECORD:
                await loop.connect_accepted_socket(
                    self._connection, accepted, ssl=self._ssl,
                    ssl_handshake_timeout=max(deadline - loop.time(), 0.1),
                )  # fmt: skip
            else:
                await loop.connect_accepted_socket(self._plain_connection, accepted)
        except Exception as exc:  # a handshake failure, a reset, a timeout
            # A failed handshake is the client's business: it is closed, never answered.
            log.debug("connection to the TLS listener not admitted: %r", exc)
            accepted.close()
        except asyncio.CancelledError:
            accepted.close()
            raise

    def _connection(self) -> HttpConnection:
        return HttpConnection(self._ctx)

    def _plain_connection(self) -> HttpConnection:
        return PlainHttpConnection(self._ctx)


async def _first_byte(loop: asyncio.AbstractEventLoop, accepted: socket.socket) -> int | None:
    """The first byte the client sent, left unread; None when it closed (or reset) first.
    Often it has arrived by the time the connection is accepted: then nothing waits."""
    accepted.setblocking(False)
    while True:
        try:
            peeked = accepted.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            await _readable(loop, accepted.fileno())
            continue
        except ConnectionError:
            return None
        return peeked[0] if peeked else None


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _listening(
    listening: socket.socket,
    address: tuple[Any, ...],
    family: int,
    reuse_port: bool,
    backlog: int,
) -> socket.socket:
    """``listening`` bound to ``address`` and listening, or closed and the error raised."""
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio does: one socket per family
            listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            listening.bind(address)
        except OSError as exc:  # worded as asyncio's create_server words it
            reason = (exc.strerror or str(exc)).lower()
            where = _where(address[0], address[1])
            raise OSError(exc.errno, f"cannot listen on {where}: {reason}") from exc
        listening.listen(backlog)
        listening.setblocking(False)
    except BaseException:
        listening.close()
        raise
    return listening


def _where(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
