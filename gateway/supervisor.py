"""The ``--workers N`` supervisor: prepares once, forks the workers, forwards signals, relays
messages between workers, reaps them.

Kept small: this process imports nothing of the gateway beyond this module (no pydantic, no
aiohttp, no auth or proxy core), so ``--workers 2`` costs two workers and a few MB. A
short-lived child prepares instead (``prepare``: imports the gateway, loads and compiles the
config, exits 2 for a bad one before anything serves), forks the workers and exits; this
process adopts them (Linux ``PR_SET_CHILD_SUBREAPER``). Forked from one prepared process,
the workers share its pages copy-on-write (``gc.freeze()`` keeps the collector from touching
them); the bench README measures what that saves. Where adoption is not available, or with
``GATEWAY_PRELOAD=0``, the child only validates and each worker prepares for itself.

Each worker holds its own caches. An eviction an operator sends to the admin port reaches
one worker (the kernel picks one of the ``SO_REUSEPORT`` listeners); without Redis, the
others would keep accepting the revoked token. So every worker gets one end of a
``SOCK_SEQPACKET`` socket pair, and the supervisor relays each message a worker sends to
every other worker. Messages are small JSON objects; the supervisor does not read them.

"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import selectors
import signal
import socket
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger("gateway.supervisor")

MAX_MESSAGE = 4096
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_CHILD_SUBREAPER = 36
T = TypeVar("T")


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


def supervise(
    children: Sequence[int], channels: Sequence[socket.socket], pending: Sequence[int] = ()
) -> int:
    """Relay messages and forward SIGTERM/SIGINT/SIGHUP (``pending``: those that came
    before the children were known) until every child has exited; returns the exit code for
    the whole group."""
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

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    signal.signal(signal.SIGCHLD, wake)
    for number in pending:
        forward(number, None)
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


def _become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux ``prctl``), so workers forked by a child that then
    exits are still this process's to reap and signal."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _hold_signals() -> list[int]:
    """Until the workers are known, remember the signals to forward to them."""
    pending: list[int] = []
    for signum in _FORWARDED:
        signal.signal(signum, lambda number, _frame: pending.append(number))
    return pending


def _as_child() -> None:
    for signum in _FORWARDED:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _serve(
    run_worker: Callable[[T, socket.socket], None], prepared: T, channel: socket.socket
) -> int:
    try:
        run_worker(prepared, channel)
    except SystemExit as stopped:  # the worker logged why (a port taken) before it stopped
        return stopped.code if isinstance(stopped.code, int) else 1
    except BaseException:
        log.exception("worker failed")
        return 1
    return 0


def _keep_only(ends: Sequence[tuple[socket.socket, socket.socket]], index: int) -> socket.socket:
    """In a worker: close every channel end but its own."""
    for other, (parent_end, worker_end) in enumerate(ends):
        parent_end.close()
        if other != index:
            worker_end.close()
    return ends[index][1]


def _prepare_and_fork(
    prepare: Callable[[], T | None],
    run_worker: Callable[[T, socket.socket], None],
    ends: Sequence[tuple[socket.socket, socket.socket]],
    report: int,
    adopted: bool,
) -> int:
    """The preparing child: 2 for a bad config; with ``adopted``, fork the workers from the
    prepared state and report their pids."""
    try:
        prepared = prepare()
    except BaseException:
        log.exception("preparing the workers failed")
        return 1
    if prepared is None:
        return 2
    if not adopted:
        return 0
    gc.freeze()  # what is loaded now is shared: the collector leaves its pages alone
    pids = []
    for index in range(len(ends)):
        pid = os.fork()
        if pid == 0:
            os.close(report)
            os._exit(_serve(run_worker, prepared, _keep_only(ends, index)))
        pids.append(pid)
    os.write(report, " ".join(map(str, pids)).encode("ascii"))
    return 0


def _fork_each(
    prepare: Callable[[], T | None],
    run_worker: Callable[[T, socket.socket], None],
    ends: Sequence[tuple[socket.socket, socket.socket]],
) -> list[int]:
    """Without adoption: fork the workers from here, each preparing for itself."""
    children = []
    for index in range(len(ends)):
        pid = os.fork()
        if pid == 0:
            _as_child()
            channel = _keep_only(ends, index)
            prepared = prepare()
            os._exit(2 if prepared is None else _serve(run_worker, prepared, channel))
        children.append(pid)
    return children


def start_workers(
    count: int,
    prepare: Callable[[], T | None],
    run_worker: Callable[[T, socket.socket], None],
    *,
    preload: bool = True,
) -> int:
    """Prepare once, run ``count`` workers (``run_worker(prepared, its channel)``) and
    supervise them; the group's exit code: 2 when ``prepare`` found the config bad (it
    returned None, having said why), before any worker started."""
    pending = _hold_signals()
    adopted = preload and _become_subreaper()
    ends = [channel_pair() for _ in range(count)]
    report_read, report_write = os.pipe()
    preparer = os.fork()
    if preparer == 0:
        _as_child()
        os.close(report_read)
        os._exit(_prepare_and_fork(prepare, run_worker, ends, report_write, adopted))
    os.close(report_write)
    _, status = os.waitpid(preparer, 0)
    with os.fdopen(report_read, "rb") as reader:
        report = reader.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        for parent_end, worker_end in ends:
            parent_end.close()
            worker_end.close()
        return code if code > 0 else 1
    children = (
        [int(pid) for pid in report.split()] if adopted else _fork_each(prepare, run_worker, ends)
    )
    for _, worker_end in ends:
        worker_end.close()
    return supervise(children, [parent_end for parent_end, _ in ends], pending)
