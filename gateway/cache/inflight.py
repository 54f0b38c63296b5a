"""The L2's request-path GETs on one connection with many in flight (RESP2 pipelining).

Redis answers the commands of one connection in the order they came, so a client needs
no connection per command and no round trip per command: GETs are queued, the queue of one
loop iteration leaves in one write, and each reply, parsed by hiredis, resolves the oldest
waiting GET. Measured in ``tests/bench/redis_l2.py``, this costs the gateway about 2 µs of
CPU per GET where redis-py's pipeline over its pool costs 18 and a command per call 90.

Only for a plain ``redis://`` URL (TCP; AUTH and SELECT from the URL): TLS, unix sockets,
Sentinel and Cluster, and any URL option, keep redis-py (``GetBatcher``). The connection is
opened on the first GET and again after a failure; a batch whose replies do not all arrive
within the time limit ends the connection (a late reply would answer the wrong GET), and
every GET waiting on it fails, which ``RedisCache`` counts as a miss.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis

_KNOWN = frozenset({"host", "port", "db", "username", "password"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None


def endpoint_of(url: str) -> Endpoint | None:
    """Where a plain ``redis://`` URL points, or None when it needs redis-py."""
    from redis.asyncio.connection import parse_url

    if not url.startswith("redis://"):
        return None
    parts: dict[str, Any] = dict(parse_url(url))
    if not set(parts) <= _KNOWN or "host" not in parts:
        return None
    return Endpoint(parts["host"], int(parts.get("port", 6379)), int(parts.get("db", 0)),
                    parts.get("username"), parts.get("password"))  # fmt: skip


def _command(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


class _Connection(asyncio.Protocol):
    """One connection: replies resolve the waiting futures in order; each batch sent has a
    deadline for its last reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[tuple[int, asyncio.TimerHandle]] = deque()
        self._sent = 0
        self._replied = 0
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                future = self._waiting.popleft()
                self._replied += 1
                if future.done():
                    continue  # its caller gave up; the reply was still its own
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(ConnectionError(f"redis: {reply}"))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self.fail(ConnectionError("redis sent a reply nobody asked for"))
            return
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= self._replied:
            deadlines.popleft()[1].cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("the redis connection was lost"))

    def fail(self, error: Exception) -> None:
        """End the connection; every waiting GET gets ``error``."""
        self.lost = True
        for _, timer in self._deadlines:
            timer.cancel()
        self._deadlines.clear()
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        """``data`` holds one command per future, in order."""
        self._waiting.extend(futures)
        self._sent += len(futures)
        timer = self._loop.call_later(
            self._timeout, self.fail, TimeoutError("redis did not answer in time")
        )
        self._deadlines.append((self._sent, timer))
        assert self.transport is not None
        self.transport.write(data)


class InFlightGets:
    """``get(key)`` over one shared connection; see the module docstring."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._queued: list[bytes] = []
        self._futures: list[asyncio.Future[Any]] = []

    async def get(self, key: str) -> Any:
        connection = self._connection
        if connection is None or connection.lost:
            await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)  # after every GET of this iteration was queued
        key_bytes = key.encode()
        self._queued.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key_bytes), key_bytes))
        self._futures.append(future)
        return await future

    def _flush(self) -> None:
        queued, futures = self._queued, self._futures
        self._queued, self._futures = [], []
        connection = self._connection
        if connection is None or connection.lost:
            for future in futures:
                if not future.done():
                    future.set_exception(ConnectionError("the redis connection was lost"))
            return
        connection.send(b"".join(queued), futures)

    async def _connect(self) -> None:
        """Open (once, shared by the GETs that wait for it) and authenticate a connection."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            self._connection = await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        point = self._endpoint
        connection: _Connection | None = None
        replies: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._timeout), point.host, point.port
                )
                setup = []
                if point.password is not None:
                    user = () if point.username is None else (point.username.encode(),)
                    setup.append(_command(b"AUTH", *user, point.password.encode()))
                if point.db:
                    setup.append(_command(b"SELECT", str(point.db).encode()))
                replies = [loop.create_future() for _ in setup]
                if setup:
                    connection.send(b"".join(setup), replies)
                for reply in replies:
                    if await reply != b"OK":
                        raise ConnectionError("redis refused AUTH or SELECT")
        except BaseException:
            if connection is not None:
                connection.fail(ConnectionError("the redis connection could not be set up"))
                for reply in replies:
                    if reply.done() and not reply.cancelled():
                        reply.exception()  # retrieved: nobody awaits the rest of the setup
            raise
        return connection

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.fail(ConnectionError("closed"))
            self._connection = None
