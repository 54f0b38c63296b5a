"""A real Redis for tests: ``REDIS_URL`` when set, else a private ``redis-server`` subprocess.

Tests that kill or restart Redis use their own ``RedisServer`` (never a shared instance).
``RedisServer`` is synchronous on purpose: start/stop take milliseconds, so it works the
same from sync fixtures, async tests and benchmark scripts.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType

TEST_CACHE_KEY = "dGVzdC1vbmx5LWNhY2hlLWtleS0zMi1ieXRlcy1vayE="
"""The sealing key of every test gateway's Redis tier (32 bytes, base64): tests only."""

INSTALL_HINT = (
    "redis-server is not installed: `apt-get install redis-server` "
    "(or point REDIS_URL at a Redis to use instead)"
)


CLUSTER_BUS_OFFSET = 10000


class RedisServerMissing(RuntimeError):
    pass


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis needs both ≤ 65535."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """One ``redis-server`` on 127.0.0.1 with persistence off; ``restart`` keeps the port.

    ``cluster=True`` makes it a one-node Redis Cluster owning every hash slot, enough to
    exercise cluster clients (cross-slot pipelines, cluster pub/sub); it takes about two
    seconds to start, since Redis keeps a new cluster master unwritable that long.
    """

    def __init__(
        self, port: int | None = None, *, cluster: bool = False, ready_timeout: float = 10.0
    ) -> None:
        self.port = port or (free_cluster_port() if cluster else free_port())
        self.cluster = cluster
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisServerMissing(INSTALL_HINT)
        if self.running:
            return
        arguments = [executable, "--port", str(self.port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", self._dir.name]  # fmt: skip
        if self.cluster:
            arguments += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            # A restart must not reload the previous run's node identity.
            with suppress(FileNotFoundError):
                os.remove(os.path.join(self._dir.name, "nodes.conf"))
        self._process = subprocess.Popen(arguments, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()
        if self.cluster:
            self._claim_every_slot()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited early:\n{self._output()}")
            if _answers_ping(self.port):
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING in time:\n{self._output()}")

    def _claim_every_slot(self) -> None:
        _command(self.port, b"CLUSTER ADDSLOTSRANGE 0 16383")
        deadline = time.monotonic() + self._ready_timeout
        while b"cluster_state:ok" not in _command(self.port, b"CLUSTER INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node Redis Cluster did not become ready")
            time.sleep(0.05)

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]


def _command(port: int, inline: bytes) -> bytes:
    """One inline command and the first chunk of its reply: enough for PING and INFO-like
    answers, without a client library in the helper that starts the server."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(inline + b"\r\n")
        return sock.recv(65536)


def _answers_ping(port: int) -> bool:
    with suppress(OSError):
        return _command(port, b"PING").startswith(b"+PONG")
    return False


@contextmanager
def redis_url_or_start() -> Iterator[str]:
    """For a session fixture: ``REDIS_URL`` if set, else a private server for the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url
