"""Child processes for the bench and faults scripts, each in its own process group.

A stop reaches the whole group, so workers a child forked (``gateway --workers 2``, nginx)
go with it, and nothing outlives the script that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class Children:
    """Starts children pinned where asked; stops them by group (SIGTERM, then SIGKILL)."""

    def __init__(self, cwd: Path | None = None) -> None:
        self._cwd = cwd
        self._live: list[subprocess.Popen[bytes]] = []
        self.can_pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2

    def start(
        self,
        argv: Sequence[str],
        *,
        stdout: Path | None = None,
        stderr: Path | None = None,
        cpus: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """``stdout`` and ``stderr`` are appended to; the same path for both interleaves them.
        ``env`` adds to (or overrides) the inherited environment."""
        if cpus is not None and self.can_pin:
            argv = ["taskset", "-c", cpus, *argv]
        # The child's config comes from its arguments, never from this process's GATEWAY_*.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | (env or {})
        with contextlib.ExitStack() as files:
            out = files.enter_context(stdout.open("ab")) if stdout else subprocess.DEVNULL
            if stderr is not None and stderr == stdout:
                err: int | object = subprocess.STDOUT
            else:
                err = files.enter_context(stderr.open("ab")) if stderr else subprocess.DEVNULL
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,  # type: ignore[arg-type]
                start_new_session=True, cwd=cwd or self._cwd, env=env,
            )  # fmt: skip
        self._live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
        """SIGTERM the group, SIGKILL what is left after ``grace``; the leader's exit code."""
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        deadline = time.monotonic() + 3
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        signal_group(proc.pid, signal.SIGKILL)  # stragglers the leader left behind
        self.forget(proc)
        return proc.returncode

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        """A child that exited by itself needs no stop; whatever it forked still goes."""
        signal_group(proc.pid, signal.SIGKILL)
        if proc in self._live:
            self._live.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._live)):
            self.stop(proc)


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
