"""The ``--workers N`` supervisor: forwards signals, relays messages between workers, reaps them.

Each worker holds its own caches. An eviction an operator sends to the admin port reaches
one worker (the kernel picks one of the ``SO_REUSEPORT`` listeners); without Redis, the
others would keep accepting the revoked token. So every worker gets one end of a
``SOCK_SEQPACKET`` socket pair, and the supervisor relays each message a worker sends to
every other worker. Messages are small JSON objects; the supervisor does not read them.

Kept small on purpose: it imports nothing of the proxy or the auth core.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
from collections.abc import Callable, Sequence

log = logging.getLogger("gateway.supervisor")

MAX_MESSAGE = 4096


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end); message boundaries are kept by the socket type."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, payload: bytes) -> bool:
    """Send one message without blocking; whether it left (a full buffer drops it)."""
    if len(payload) > MAX_MESSAGE:
        return False
    try:
        sock.send(payload, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            return False
        raise
    return True


def supervise(children: Sequence[int], channels: Sequence[socket.socket]) -> int:
    """Relay messages and forward SIGTERM/SIGINT/SIGHUP until every child has exited;
    returns the exit code for the whole group."""
    selector = selectors.DefaultSelector()
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    selector.register(wake_read, selectors.EVENT_READ)
    live = {sock.fileno(): sock for sock in channels}
    for sock in channels:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    remaining = set(children)
    status = 0

    def forward(signum: int, _frame: object) -> None:
        for child in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    def wake(_signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            wake_write.send(b"\0")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    signal.signal(signal.SIGCHLD, wake)
    try:
        while remaining:
            status = _reap(remaining, status)
            if not remaining:
                break
            for key, _ in selector.select(timeout=1.0):
                ready = key.fileobj
                if ready is wake_read:
                    with contextlib.suppress(OSError):
                        wake_read.recv(64)
                    continue
                assert isinstance(ready, socket.socket)
                _relay(ready, live, selector)
    finally:
        selector.close()
        for sock in (wake_read, wake_write, *channels):
            sock.close()
    return 0 if status in (0, -signal.SIGTERM, -signal.SIGINT) else 1


def _relay(
    sock: socket.socket, live: dict[int, socket.socket], selector: selectors.BaseSelector
) -> None:
    try:
        payload = sock.recv(MAX_MESSAGE + 1)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        payload = b""
    if not payload:  # the worker is gone
        selector.unregister(sock)
        live.pop(sock.fileno(), None)
        return
    if len(payload) > MAX_MESSAGE:
        log.warning("dropping an oversized worker message")
        return
    for fileno, other in list(live.items()):
        if other is not sock and not send(other, payload):
            log.warning("could not relay a message to worker channel %d", fileno)


def _reap(remaining: set[int], status: int) -> int:
    while remaining:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            remaining.clear()
            break
        if pid == 0:
            break
        if pid in remaining:
            remaining.discard(pid)
            status = status or os.waitstatus_to_exitcode(code)
    return status


def fork_workers(count: int, run_worker: Callable[[socket.socket], None]) -> int:
    """Fork ``count`` workers, each running ``run_worker(its channel)``; supervise them."""
    ends = [channel_pair() for _ in range(count)]
    children: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # child: keep only its own end
            code = 0
            for other, (parent_end, worker_end) in enumerate(ends):
                parent_end.close()
                if other != index:
                    worker_end.close()
            try:
                run_worker(ends[index][1])
            except BaseException:
                log.exception("worker failed")
                code = 1
            os._exit(code)
        children.append(pid)
    for _, worker_end in ends:
        worker_end.close()
    return supervise(children, [parent_end for parent_end, _ in ends])
