"""``gateway run --workers N`` as processes: a small supervisor, workers that share what was
loaded before they were forked, and a bad config refused with exit 2 before anything serves
(issue 14 item 6).

The supervisor must not load the gateway's stack: its memory map is checked for the native
libraries of pydantic, aiohttp and cryptography, which every worker maps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.redis import free_port

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pydantic_core", "aiohttp", "cryptography", "_http_parser")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as maps:
        return maps.read()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize("preload", ["1", "0"])
def test_the_supervisor_stays_small_and_the_workers_serve(tmp_path: Path, preload: str) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "run.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nadmin: {{host: 127.0.0.1, port: {admin}}}\n"
        "shutdown: {readiness_delay: 0s, drain_timeout: 2s}\n"
        "upstreams:\n  app: {url: 'http://127.0.0.1:1'}\n"
        "defaults: {auth: anonymous}\nroutes: [{upstream: app}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config), "--workers", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GATEWAY_PRELOAD": preload},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        pids: set[str] = set()
        while len(pids) < 2:
            assert time.monotonic() < deadline and process.poll() is None, f"saw {pids}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as r:
                    pids.add(r.headers.get("X-Worker-Pid", ""))
            except OSError:
                time.sleep(0.1)
        workers = _children(process.pid)
        assert sorted(workers) == sorted(int(pid) for pid in pids)  # adopted or forked here
        supervisor = _maps(process.pid)
        assert [lib for lib in HEAVY if lib in supervisor] == []
        for worker in workers:
            assert all(lib in _maps(worker) for lib in HEAVY[:3])
        assert _rss_kib(process.pid) < 24 * 1024
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_config_exits_2_before_anything_serves(tmp_path: Path, workers: str) -> None:
    """A compile error (not only a schema error) is refused like ``gateway check`` would."""
    port = free_port()
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        "upstreams:\n  app: {url: 'http://127.0.0.1:1'}\nroutes: [{upstream: app}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(config), "--workers", workers],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{config}:4: routes[0]: auth is required but no issuer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_login_without_redis_is_refused_under_several_workers(tmp_path: Path) -> None:
    """Regression: with --workers 2 and a login without Redis, each process kept its own
    refresh single-flight, revocations and seen logout tokens: a browser's parallel
    connections (on different workers) refreshed twice - a revoked grant with rotating
    refresh tokens - and a back-channel or RP logout ended the session on one worker only."""
    port = free_port()
    config = tmp_path / "login.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        "upstreams:\n  app: {url: 'http://127.0.0.1:1'}\n"
        "issuers: [{name: main, issuer: 'https://as.example', keys: {discovery: true},"
        " audiences: [api]}]\n"
        "logins: [{issuer: main, external_url: 'https://app.example', client: {client_id: web,"
        " client_secret: s}, secrets: ['0123456789abcdef0123456789abcdef']}]\n"
        "routes: [{upstream: app, auth: session}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config), "--workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the supervisor and the workers it forked
        process.communicate()
        pytest.fail("two workers served a login without Redis")
    assert process.returncode == 2
    assert "logins main: with --workers 2" in stderr and "cache.redis" in stderr
    assert "Traceback" not in stderr
