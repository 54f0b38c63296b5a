"""Keep-alive HTTP/1.1 upstream connections on asyncio protocols (RFC 9112 §6, §9).

The forwarding path is the gateway's hot path. aiohttp's ``ClientSession`` costs about three
times more CPU per request than a bare protocol whose responses are parsed by httptools
(llhttp), so the upstream side is built here: a pool of ``UpstreamConnection`` protocols per
upstream, each carrying one exchange at a time, returned to the pool only after a complete
response on a connection both sides agreed to keep alive.

Timeouts are driven by timestamps checked from one timer per connection rather than by
``asyncio.wait_for`` around every read, which would allocate a task per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway.config.models import Upstream
from gateway.problems import BadGateway, GatewayError, GatewayTimeout, ServiceUnavailable

log = logging.getLogger("gateway.upstream")

_HIGH_WATER = 256 * 1024  # pause reading from the upstream above this many buffered bytes
_LOW_WATER = 64 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """An upstream as compiled from config: where to connect and how long to wait."""

    name: str
    host: str | None
    port: int | None
    unix_path: str | None
    base_path: str
    host_header: str
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    connect_timeout: float
    read_timeout: float
    total_timeout: float | None
    max_connections: int
    idle_timeout: float
    preserve_host: bool


def compile_upstream(name: str, config: Upstream) -> UpstreamTarget:
    """Resolve an upstream URL once at load; nothing is parsed per request."""
    t = config.timeouts
    common = {
        "name": name,
        "connect_timeout": t.connect,
        "read_timeout": t.read,
        "total_timeout": t.total,
        "max_connections": config.pool.max_connections,
        "idle_timeout": config.pool.idle_timeout,
        "preserve_host": config.preserve_host,
    }
    if config.url.startswith("unix:"):
        path = config.url.removeprefix("unix:").removeprefix("//")
        return UpstreamTarget(
            host=None, port=None, unix_path=path, base_path="", host_header="localhost",
            ssl=None, server_hostname=None, **common,
        )  # fmt: skip
    parts = urlsplit(config.url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or ""
    default_port = port == (443 if tls else 80)
    host_in_header = f"[{host}]" if ":" in host else host
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context(
            cafile=str(config.tls.ca_file) if config.tls.ca_file else None
        )
        if not config.tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return UpstreamTarget(
        host=host,
        port=port,
        unix_path=None,
        base_path=parts.path.rstrip("/"),
        host_header=host_in_header if default_port else f"{host_in_header}:{port}",
        ssl=context,
        server_hostname=(config.tls.server_name or host) if tls else None,
        **common,
    )


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]
    # True when the whole body already arrived with the head (small responses).
    complete: bool


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream, carrying one request/response exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._reset_exchange()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

    def _reset_exchange(self) -> None:
        self._headers: list[tuple[str, str]] = []
        self._reason = ""
        self._status = 0
        self._head: ResponseHead | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._body: deque[bytes] = deque()
        self._body_size = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._interim = False
        self._is_head_request = False
        self._close_delimited = False
        self._error: BaseException | None = None
        self._reading_paused = False
        self._received_any = False
        self._keep_alive = False
        self._last_activity = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        self._received_any = True
        parser = self._parser
        if parser is None or self._complete:
            # Bytes outside an exchange: the upstream is not speaking HTTP/1.1 as agreed.
            self._fail(BadGateway("The upstream sent data outside a response."))
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(BadGateway("The upstream sent a malformed response."))
        except httptools.HttpParserUpgrade:
            self._fail(BadGateway("The upstream switched protocols unasked."))

    def eof_received(self) -> bool:
        if self._head is not None and self._close_delimited and not self._complete:
            # RFC 9112 §6.3 rule 8: a response without framing ends when the connection closes.
            self._keep_alive = False
            self.on_message_complete()
        elif not self._complete:
            self._fail(BadGateway("The upstream closed the connection before the response ended."))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if not self._complete:
            self._fail(BadGateway("The upstream connection was lost."))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("upstream connection lost"))
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks -------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        # One character per byte, so forward.py relays the field value exactly (RFC 9110 §5.5).
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # RFC 9110 §15.2: interim responses precede the final one; the client side of this
            # gateway answers Expect itself, so they are consumed here, not relayed.
            self._interim = True
            self._headers = []
            self._reason = ""
            return
        version = self._parser.get_http_version()
        major, _, minor = version.partition(".")
        framed = False
        for name, value in self._headers:
            lname = name.lower()
            if lname == "content-length" or (lname == "transfer-encoding" and value):
                framed = True
        no_body = self._is_head_request or status in (204, 304)
        self._close_delimited = not framed and not no_body
        self._head = ResponseHead(
            status=status,
            reason=self._reason,
            version=(int(major or 1), int(minor or 1)),
            headers=self._headers,
            complete=False,
        )
        if self._is_head_request:
            # llhttp cannot be told the request was HEAD, so it would wait for a body that
            # never comes (RFC 9110 §9.3.2). End the exchange here; a fresh parser is made
            # for the next one.
            self._keep_alive = self._parser.should_keep_alive()
            self._finish()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._head)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._fail(BadGateway("The upstream sent a body where none was allowed."))
            return
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        if self._parser is not None and not self._close_delimited:
            self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    # --- exchange ------------------------------------------------------------------------

    def _finish(self) -> None:
        self._complete = True
        if self._head is not None:
            self._head.complete = True
        # The timer stays armed: the next exchange on this connection reuses it.
        self._wake_body()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._keep_alive = False
        for waiter in (self._head_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def abort(self, error: GatewayError) -> None:
        """End the exchange with ``error``: whoever waits on the response receives it."""
        self._fail(error)

    def begin(self, head: bytes, *, is_head_request: bool) -> None:
        """Start an exchange: write the request head and arm the timers."""
        assert self.transport is not None
        self._reset_exchange()
        self._parser = httptools.HttpResponseParser(self)
        self._is_head_request = is_head_request
        now = self._loop.time()
        self._last_activity = now
        target = self._pool.target
        self._deadline = now + target.total_timeout if target.total_timeout else None
        self._arm_timer(now)
        self.transport.write(head)

    async def write(self, data: bytes) -> None:
        """Write part of the request body, waiting while the upstream's socket is full."""
        if self._error is not None:
            raise self._error
        assert self.transport is not None
        self.transport.write(data)
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    async def read_head(self) -> ResponseHead:
        if self._error is not None:
            raise self._error
        if self._head is not None:
            return self._head
        self._head_waiter = self._loop.create_future()
        self._last_activity = self._loop.time()
        try:
            return await self._head_waiter
        finally:
            self._head_waiter = None

    def take_buffered_body(self) -> bytes:
        """Everything received so far: the whole body once ``ResponseHead.complete`` is set."""
        data = b"".join(self._body)
        self._body.clear()
        self._body_size = 0
        return data

    async def read_body(self) -> bytes:
        """The next piece of the response body; ``b""`` once it is complete."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._body_waiter = self._loop.create_future()
            self._last_activity = self._loop.time()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None
        chunk = self._body.popleft()
        self._body_size -= len(chunk)
        if self._reading_paused and self._body_size < _LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and self._error is None and not self.closed

    @property
    def received_any(self) -> bool:
        return self._received_any

    # --- timers --------------------------------------------------------------------------

    def _arm_timer(self, now: float) -> None:
        """Make sure a timer will look at this exchange in time.

        A timer left from an earlier exchange is kept when it fires early enough: when it
        fires it re-arms from the last activity. This saves a schedule and a cancel per
        request on a busy keep-alive connection.
        """
        when = now + self._pool.target.read_timeout
        if self._deadline is not None:
            when = min(when, self._deadline)
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._complete or self.closed:
            return  # idle in the pool: the next exchange arms a timer again
        now = self._loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._fail(GatewayTimeout("The upstream did not complete the response in time."))
            return
        waiting = self._head_waiter is not None or self._body_waiter is not None
        idle_for = now - self._last_activity
        if waiting and idle_for >= self._pool.target.read_timeout:
            self._fail(GatewayTimeout("The upstream did not answer in time."))
            return
        # Re-arm relative to the last activity, so a steady stream never times out.
        when = self._last_activity + self._pool.target.read_timeout
        if not waiting or when <= now:
            when = now + self._pool.target.read_timeout
        if self._deadline is not None:
            when = min(when, self._deadline)
        self._timer = self._loop.call_at(when, self._on_timer)

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()


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
        target = self.target
        conn = UpstreamConnection(self)
        self._open.add(conn)
        try:
            async with asyncio.timeout(target.connect_timeout):
                if target.unix_path is not None:
                    await self.loop.create_unix_connection(lambda: conn, target.unix_path)
                else:
                    await self.loop.create_connection(
                        lambda: conn,
                        target.host,
                        target.port,
                        ssl=target.ssl,
                        server_hostname=target.server_hostname,
                    )
        except TimeoutError:
            self._discard(conn)
            raise GatewayTimeout("Connecting to the upstream timed out.") from None
        except (OSError, ssl.SSLError) as exc:
            self._discard(conn)
            log.debug("connect to upstream %s failed: %s", target.name, exc)
            raise BadGateway("The upstream refused the connection.") from None
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
