"""The applications the listener bench serves, on each candidate server (RFC 9112 §9).

    python tests/bench/listener_apps.py SERVER APP PORT UPSTREAM_PORT

SERVER is ``listener`` (gateway/listener), ``listener-task`` (the same with a coroutine
per request, so a task per request) or ``aiohttp`` (its low-level ``web.Server``, as
gateway/app.py used it before the proxy port moved to gateway/listener). granian is
started by its own CLI with ``granian_hello`` or ``granian_proxy`` below as the RSGI target.
APP is ``hello`` (a fixed 200) or ``proxy`` (the request forwarded to the upstream with
gateway/proxy/pool.py and the response relayed, the gateway's forwarding path without auth).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.proxy.headers import downstream_response_headers  # noqa: E402
from gateway.proxy.pool import UpstreamPool  # noqa: E402
from gateway.proxy.response_head import ResponseHead  # noqa: E402
from gateway.proxy.targets import UpstreamTarget  # noqa: E402

HELLO = b"hello\n"
UPSTREAM_ENV = "BENCH_UPSTREAM_PORT"


def make_pool(port: int) -> UpstreamPool:
    target = UpstreamTarget(
        name="bench", host="127.0.0.1", port=port, unix_path=None, base_path="",
        host_header=f"127.0.0.1:{port}", ssl=None, server_hostname=None,
        connect_timeout=2.0, read_timeout=10.0, total_timeout=None, max_connections=256,
        idle_timeout=60.0, preserve_host=False,
    )  # fmt: skip
    return UpstreamPool(target, asyncio.get_running_loop())


async def relay(
    pool: UpstreamPool, method: str, target: str
) -> tuple[ResponseHead, list[tuple[str, str]], bytes]:
    """One upstream exchange, the way gateway/proxy/forward.py does it for a small body."""
    head = f"{method} {target} HTTP/1.1\r\nHost: {pool.target.host_header}\r\n\r\n".encode()
    conn, _ = await pool.acquire()
    conn.begin(head, is_head_request=method == "HEAD")
    try:
        response = await conn.read_head()
        payload = conn.take_buffered_body()
        if not response.complete:
            parts = [payload]
            while piece := await conn.read_body():
                parts.append(piece)
            payload = b"".join(parts)
    except BaseException:
        conn.close()
        pool.release(conn)
        raise
    pool.release(conn)
    return response, downstream_response_headers(response.headers), payload


def _without_length(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != "content-length"]


# --- gateway/listener --------------------------------------------------------------------------


async def serve_listener(app: str, port: int, upstream: int, task_per_request: bool) -> None:
    from gateway.listener import HttpListener, Request, http_date

    pool = make_pool(upstream)

    def hello(request: Request) -> None:
        request.respond(200, [(b"Content-Type", b"text/plain"), (b"Date", http_date())], HELLO)

    async def hello_task(request: Request) -> None:
        hello(request)

    async def proxy(request: Request) -> None:
        target = request.target.decode("latin-1")
        response, headers, payload = await relay(pool, request.method, target)
        fields = [
            (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
            for k, v in _without_length(headers)
        ]
        request.respond(response.status, fields, payload)

    loop = asyncio.get_running_loop()

    def proxy_callback(request: Request) -> Any:
        """The experiment: the same exchange with no task, driven by the head future's
        callback. It reaches into the pool's internals (an idle connection, the head
        waiter), so it measures what a callback-driven forward path could save."""
        idle = pool._idle
        if not idle:
            return proxy(request)
        conn = idle.pop()
        head = f"{request.method} {request.target.decode('latin-1')} HTTP/1.1\r\n"
        conn.begin(f"{head}Host: {pool.target.host_header}\r\n\r\n".encode(), is_head_request=False)
        waiter = conn._head_waiter = loop.create_future()

        def on_head(done: asyncio.Future[ResponseHead]) -> None:
            conn._head_waiter = None
            if done.cancelled() or done.exception() is not None or not done.result().complete:
                conn.close()
                pool.release(conn)
                request.abort()
                return
            response = done.result()
            payload = conn.take_buffered_body()
            pool.release(conn)
            fields = [
                (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                for k, v in _without_length(downstream_response_headers(response.headers))
            ]
            request.respond(response.status, fields, payload)

        waiter.add_done_callback(on_head)
        return None

    handlers = {"proxy": proxy, "proxy-callback": proxy_callback}
    handler: Any = handlers.get(app) or (hello_task if task_per_request else hello)
    listener = HttpListener(handler)
    await listener.start("127.0.0.1", port, backlog=1024)
    await asyncio.Event().wait()


# --- aiohttp's low-level server, as gateway/app.py ran it -------------------------------------


class _WholeResponse:
    """The relayed response in one write, as gateway/proxy/forward.py's CompleteResponse did
    on aiohttp's server before the proxy port moved to gateway/listener: aiohttp's handler
    needs only ``prepare``, ``write_eof`` and ``keep_alive`` from what it is given."""

    __slots__ = ("_data", "keep_alive", "status")

    def __init__(self, request: Any, head: ResponseHead, headers: list[tuple[str, str]],
                 payload: bytes) -> None:  # fmt: skip
        from aiohttp.helpers import rfc822_formatted_time

        self.status, self.keep_alive = head.status, request.keep_alive
        fields = [*_without_length(headers), ("Content-Length", str(len(payload)))]
        if not any(k.lower() == "date" for k, _ in fields):
            fields.append(("Date", rfc822_formatted_time()))
        lines = [f"HTTP/1.1 {head.status} {head.reason or 'OK'}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in fields]
        self._data = ("".join(lines) + "\r\n").encode("latin-1") + payload

    async def prepare(self, request: Any) -> None:
        request.transport.write(self._data)

    async def write_eof(self, data: bytes = b"") -> None:
        return None


async def serve_aiohttp(app: str, port: int, upstream: int) -> None:
    from aiohttp import web

    pool = make_pool(upstream)

    async def hello(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=HELLO, content_type="text/plain")

    async def proxy(request: web.BaseRequest) -> Any:
        response, headers, payload = await relay(pool, request.method, request.raw_path)
        return _WholeResponse(request, response, headers, payload)

    server = web.Server(
        proxy if app == "proxy" else hello,
        handler_cancellation=True,
        auto_decompress=False,
        access_log=None,
    )
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


# --- granian (RSGI) -----------------------------------------------------------------------------


class _GranianApp:
    """An RSGI application; the pool is made on granian's loop at the first request."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pool: UpstreamPool | None = None

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if self.kind == "hello":
            proto.response_bytes(200, [("content-type", "text/plain")], HELLO)
            return
        if self.pool is None:
            self.pool = make_pool(int(os.environ[UPSTREAM_ENV]))
        target = scope.path + ("?" + scope.query_string if scope.query_string else "")
        response, headers, payload = await relay(self.pool, scope.method, target)
        proto.response_bytes(response.status, _without_length(headers), payload)


granian_hello = _GranianApp("hello")
granian_proxy = _GranianApp("proxy")


def main() -> None:
    server, app, port, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    import uvloop

    if server == "aiohttp":
        uvloop.run(serve_aiohttp(app, port, upstream))
    else:
        uvloop.run(serve_listener(app, port, upstream, task_per_request=server == "listener-task"))


if __name__ == "__main__":
    main()
