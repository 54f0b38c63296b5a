"""The listener's own Python per request, without sockets: parse, dispatch, answer.

    .venv/bin/python tests/bench/listener_hotpath.py

Feeds whole requests to one ``HttpConnection`` over a transport that only counts writes,
with an application that answers at once, and prints the best of 7 rounds of CPU time per
request (``time.process_time``). What is left of a real request's cost is the event loop
and the two system calls (see "Choosing the listener" in tests/bench/README.md).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvloop

from gateway.listener import ListenerLimits, Request, http_date
from gateway.listener.connection import HttpConnection
from gateway.listener.context import ListenerContext

ROUNDS, REQUESTS = 7, 50_000
ONE_FIELD = b"GET /anon/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
FIVE_FIELDS = (
    b"GET /anon/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.0\r\n"
    b"Accept: */*\r\nAuthorization: Bearer abcdefghijklmnopqrstuvwxyz.abcdefghijklmnop.qrst\r\n"
    b"Accept-Encoding: gzip\r\n\r\n"
)


class CountingTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


class Unbatched(ListenerContext):
    """Flushes are driven by the loop below, not by call_soon (the loop never runs)."""

    __slots__ = ()

    def cork(self, output: Any) -> None:
        pass


def answer(request: Request) -> None:
    request.respond(200, [(b"Content-Type", b"text/plain"), (b"Date", http_date())], b"hello\n")


async def main() -> None:
    loop = asyncio.get_running_loop()
    context = Unbatched(
        answer, ListenerLimits(), loop, server_header=None, cancel_on_disconnect=True,
        on_refusal=None,
    )  # fmt: skip
    connection = HttpConnection(context)
    transport = CountingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    for label, data in (("1 field", ONE_FIELD), ("5 fields", FIVE_FIELDS)):
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.process_time()
            for _ in range(REQUESTS):
                connection.data_received(data)
                connection._output.flush()
            best = min(best, time.process_time() - started)
        print(f"{label}: {best / REQUESTS * 1e6:.2f} µs CPU per request")
    assert transport.writes == 2 * ROUNDS * REQUESTS


if __name__ == "__main__":
    uvloop.run(main())
