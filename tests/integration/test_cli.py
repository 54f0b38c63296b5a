"""The ``gateway`` command as a user runs it: a real subprocess, real ports, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway import __version__

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [*sorted((ROOT / "config").glob("*.yaml")), ROOT / "gateway/defaults/demo.yaml"]
EXAMPLE_ENV = {"DEMO_ISSUER": "http://127.0.0.1:1", "DEMO_UPSTREAM": "http://127.0.0.1:2"}


def gateway(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, **(env or {})}, **kwargs,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_version():
    result = gateway("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gateway {__version__}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_config_checks_clean(path: Path):
    result = gateway("check", "-c", str(path), env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_reports_file_line_and_key_path(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "upstreams:\n"
        "  app: {url: 'http://127.0.0.1:9000'}\n"
        "defaults: {auth: anonymous}\n"
        "routes:\n"
        "  - match: {path: /a}\n"
        "    upstream: app\n"
        "  - match: {pth: /b}\n"
        "    upstream: nowhere\n"
    )
    result = gateway("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:7: routes[1].match.pth: unknown key 'pth'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_env_variable_is_a_config_error(tmp_path: Path):
    config = tmp_path / "env.yaml"
    config.write_text(
        "upstreams:\n  app: {url: '${UPSTREAM_URL}'}\n"
        "defaults: {auth: anonymous}\nroutes: [{upstream: app}]\n"
    )
    result = gateway("check", "-c", str(config))
    assert result.returncode == 2
    assert "UPSTREAM_URL" in result.stderr
    assert f"{config}:2: upstreams.app.url" in result.stderr


ROUTE_CHECK = (
    "upstreams:\n"
    "  app: {url: 'http://127.0.0.1:9000'}\n"
    "issuers:\n"
    "  - {issuer: 'https://a.example/', audiences: [api], keys: {jwks: {keys: []}}}\n"
    "routes:\n"
    "  - match: {path: PATTERN}\n"
    "    upstream: app\n"
    "  - match: {path: {prefix: /}}\n"
    "    upstream: app\n"
    "    auth: anonymous\n"
)


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        pytest.param(
            "{prefix: '/v2/../admin%2F;x'}",
            "routes[0].match.path.prefix: prefix path '/v2/../admin%2F;x': "
            "The path encodes a forbidden character: %2F.",
            id="issue-13-unnormalised-prefix",
        ),
        pytest.param(
            "{regex: '/a(?=b)'}",
            "routes[0].match.path.regex: invalid regular expression: invalid perl operator: "
            "(?= (RE2 syntax: no backreferences, lookaround or possessive quantifiers)",
            id="lookahead",
        ),
    ],
)
def test_check_refuses_patterns_with_file_line_and_key_path(
    tmp_path: Path, pattern: str, error: str
):
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTE_CHECK.replace("PATTERN", pattern))
    result = gateway("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:6: {error}" in result.stderr


def test_check_accepts_a_regex_that_would_backtrack_in_python(tmp_path: Path):
    """Issue 13: "/(a+)+b" stalled the event loop; on RE2 it is linear, so it is fine."""
    config = tmp_path / "redos.yaml"
    config.write_text(ROUTE_CHECK.replace("PATTERN", "{regex: '/(a+)+b'}"))
    result = gateway("check", "-c", str(config), "--strict")
    assert result.returncode == 0, result.stderr
    assert "regex:/(a+)+b" in result.stdout


def test_check_warns_and_strict_refuses_a_weaker_route_receiving_near_spellings(
    tmp_path: Path,
):
    config = tmp_path / "shadow.yaml"
    config.write_text(ROUTE_CHECK.replace("PATTERN", "/admin/**"))
    lenient = gateway("check", "-c", str(config))
    assert lenient.returncode == 0
    assert "OK, 2 routes, 1 warning(s)" in lenient.stdout
    assert (
        f"{config}:8: routes[1]: warning: this anonymous route receives spellings of the paths "
        "of routes[0] (line 6) that differ only by case ('/ADMIN/X' for '/admin/x')"
    ) in lenient.stderr
    strict = gateway("check", "-c", str(config), "--strict")
    assert strict.returncode == 2
    assert f"{config}: refused: 1 warning(s) under --strict" in strict.stderr
    assert "OK" not in strict.stdout
    config.write_text(
        ROUTE_CHECK.replace("PATTERN", "/admin/**").replace(
            "'http://127.0.0.1:9000'}",
            "'http://127.0.0.1:9000', paths: {case: insensitive, trailing_dot: ignored, "
            "trailing_space: ignored}}",
        )
    )
    fixed = gateway("check", "-c", str(config), "--strict")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stderr == ""
    assert "paths=case-insensitive,trailing-dot-ignored,trailing-space-ignored" in fixed.stdout


def test_schema_is_json_schema_for_the_config():
    result = gateway("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"routes", "upstreams", "issuers", "listen"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_run_serves_and_stops_on_sigterm(tmp_path: Path):
    port, admin = free_port(), free_port()
    config = tmp_path / "run.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nadmin: {{host: 127.0.0.1, port: {admin}}}\n"
        "upstreams:\n  app: {url: 'http://127.0.0.1:1'}\n"
        "defaults: {auth: anonymous}\nroutes: [{upstream: app}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5)
        assert refused.value.code == 502  # nothing listens on the upstream port
        assert refused.value.headers["Content-Type"] == "application/problem+json"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path):
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
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        pids: set[str] = set()
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"saw worker pids {pids}"
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as r:
                    pids.add(r.headers.get("X-Worker-Pid", ""))
            except OSError:
                time.sleep(0.1)
        assert "" not in pids
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_demo_shows_an_allowed_a_forbidden_and_an_unauthenticated_call():
    """The README's run command: what it prints must work when pasted."""
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", str(port), "--admin-port", str(admin)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        text = ""
        deadline = time.monotonic() + 30
        while "curl -s http://" not in text or "public/hello" not in text:
            assert time.monotonic() < deadline and process.poll() is None, text
            text += process.stdout.readline()
        tokens = re.findall(r"Authorization: Bearer ([A-Za-z0-9._-]+)", text)
        assert len(tokens) == 2

        def call(token: str | None) -> tuple[int, dict]:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/orders/42")
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers)

        status, body = call(tokens[0])
        assert status == 200
        assert body["headers_received"]["X-Auth-Subject"] == "alice"
        assert body["headers_received"]["X-Auth-Scopes"] == "orders:read"
        status, headers = call(tokens[1])
        assert status == 403
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
        status, headers = call(None)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="demo"'
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
def test_a_port_already_taken_is_one_error_line_and_exit_1(
    tmp_path: Path, workers: str, tls: bool
) -> None:
    from tests.support.certificates import TestCA

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen: dict[str, object] = {"host": "127.0.0.1", "port": port}
        if tls:
            issued = TestCA(tmp_path / "ca").issue("localhost", server=True)
            listen["tls"] = {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}
        config = tmp_path / "gw.yaml"
        config.write_text(json.dumps({
            "listen": listen, "admin": {"host": "127.0.0.1", "port": free_port()},
            "upstreams": {"app": {"url": "http://127.0.0.1:9"}}, "defaults": {"auth": "anonymous"},
            "routes": [{"match": {"path": {"prefix": "/"}}, "upstream": "app"}],
        }))  # fmt: skip
        result = gateway("run", "-c", str(config), "--workers", workers)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(port) in result.stderr and "address already in use" in result.stderr
