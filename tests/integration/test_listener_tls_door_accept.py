"""The TLS door's own binding and accept loop (gateway/listener/tls_door.py), the parts
``loop.create_server`` did for us before: an empty host is every interface; a taken IPv6
port is named in brackets; one connection's accept() failure does not stop the next one;
running out of descriptors pauses accepting with one warning, not one per wake-up; a
connection accepted as the listener closes is closed, not left to the garbage collector.

Real listening sockets and TLS handshakes; where an accept() error must be provoked (no
kernel gives ECONNABORTED on demand), a backlog that replays the errors a kernel returns.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from pathlib import Path

import pytest

from gateway.listener import HttpListener, ListenerLimits, Request
from gateway.listener.context import ListenerContext
from gateway.listener.tls_door import TlsDoor
from tests.support.certificates import TestCA


def answer(request: Request) -> None:
    request.respond(200, [], b"tls")


def server_context(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = TestCA(tmp_path / "ca")
    issued = ca.issue("localhost", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    return context, ca.client_context()


async def get_over_tls(port: int, client: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname="localhost"
    )
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def door() -> TlsDoor:
    loop = asyncio.get_running_loop()
    context = ListenerContext(answer, ListenerLimits(), loop, server_header=None,
                              cancel_on_disconnect=False, on_refusal=None)  # fmt: skip
    return TlsDoor(context, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), 1.0)


async def test_an_empty_host_listens_on_every_interface(tmp_path: Path) -> None:
    server, client = server_context(tmp_path)
    listener = HttpListener(answer)
    await listener.start("", 0, ssl=server)
    try:
        assert listener.port > 0
        assert (await get_over_tls(listener.port, client)).endswith(b"\r\n\r\ntls")
    finally:
        await listener.close(1)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_a_taken_ipv6_port_is_named_in_brackets(tmp_path: Path) -> None:
    server, _ = server_context(tmp_path)
    first = HttpListener(answer)
    await first.start("::1", 0, ssl=server)
    try:
        with pytest.raises(OSError) as raised:
            await HttpListener(answer).start("::1", first.port, ssl=server)
        assert f"cannot listen on [::1]:{first.port}: address already in use" in str(raised.value)
    finally:
        await first.close(1)


class Backlog:
    """A listening socket's accept() as a kernel answers it: errors, then connections."""

    def __init__(self, outcomes: list[OSError | socket.socket], fd: int) -> None:
        self.outcomes = outcomes
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def accept(self) -> tuple[socket.socket, object]:
        if not self.outcomes:
            raise BlockingIOError(errno.EAGAIN, "empty")
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome, None


async def test_one_connection_failing_to_be_accepted_does_not_stop_the_next() -> None:
    gateway_side, client_side = socket.socketpair()
    backlog = Backlog([ConnectionAbortedError(errno.ECONNABORTED, "aborted"),
                       OSError(errno.EPROTO, "protocol error"), gateway_side],
                      gateway_side.fileno())  # fmt: skip
    tls = door()
    tls._accept(backlog)  # type: ignore[arg-type]
    client_side.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plain: answered 400 by the door
    loop = asyncio.get_running_loop()
    client_side.setblocking(False)
    data = await asyncio.wait_for(loop.sock_recv(client_side, 4096), 5)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert backlog.outcomes == []
    client_side.close()
    tls.close()


async def test_out_of_descriptors_pauses_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    anchor, other = socket.socketpair()
    tls = door()
    caplog.set_level(logging.WARNING, logger="gateway.listener")
    for _ in range(3):
        full = Backlog([OSError(errno.EMFILE, "too many open files")], anchor.fileno())
        tls._accept(full)  # type: ignore[arg-type]
        assert full.outcomes == []  # tried once, then paused: not 64 times
    warnings = [r for r in caplog.records if "paused accepting" in r.getMessage()]
    assert len(warnings) == 1
    anchor.close()
    other.close()
    tls.close()


async def test_a_connection_accepted_as_the_listener_closes_is_closed() -> None:
    accepted, client_side = socket.socketpair()
    tls = door()
    tls._spawn(accepted)
    tls.close()  # before the admission took its first step
    await asyncio.sleep(0.01)
    assert accepted.fileno() == -1
    client_side.close()
