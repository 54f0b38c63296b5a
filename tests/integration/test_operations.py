"""Operating the gateway: metrics, access log, reload under traffic, graceful stop.

The process tests run ``gateway run`` as a real subprocess and talk to it with signals and
sockets, as an orchestrator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import running_gateway
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_config(issuer: TestIssuer, upstream: RecordingUpstream, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{"issuer": issuer.url, "keys": {"jwks": issuer.jwks()},
                     "audiences": ["api://default"]}],
        "shutdown": {"readiness_delay": "300ms", "drain_timeout": "10s"},
        "routes": [
            {"name": "public", "match": {"path": "/public/**"}, "upstream": "app",
             "auth": "anonymous"},
            {"name": "read", "match": {"path": "/read/**"}, "upstream": "app",
             "require": {"scopes": {"all": ["read"]}}},
        ],
    }  # fmt: skip
    config.update(extra)
    return config


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_after_a_known_sequence(tmp_path: Path, issuer, upstream):
    async with running_gateway(tmp_path, gateway_config(issuer, upstream)) as gw:
        base = f"http://127.0.0.1:{gw.proxy_port}"
        token = issuer.mint(scope="read")
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(f"{base}/read/x", headers={"Authorization": f"Bearer {token}"}):
                    pass
            for _ in range(2):
                async with s.get(f"{base}/read/x"):
                    pass
            async with s.get(f"{base}/read/x", headers={"Authorization": "Bearer bad.to.ken"}):
                pass
            async with s.get(f"{base}/public/y"):
                pass
            async with s.get(f"{base}/nowhere"):
                pass
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                assert r.status == 200
                text = await r.text()
    values = metric_values(text)

    def requests(route: str, status: str) -> float:
        labels = (("method", "GET"), ("route", route), ("status", status))
        return values.get(("gateway_requests_total", labels), 0)

    assert requests("read", "200") == 3
    assert requests("read", "401") == 3
    assert requests("public", "200") == 1
    assert requests("-", "404") == 1
    decisions = {
        labels: value for (name, labels), value in values.items()
        if name == "gateway_auth_decisions_total"
    }  # fmt: skip
    assert (
        decisions[
            (("host_proxy", "none"), ("mode", "proxy"), ("outcome", "allow"), ("reason", "ok"))
        ]
        == 3
    )
    assert (
        decisions[
            (("host_proxy", "none"), ("mode", "proxy"), ("outcome", "deny"), ("reason", "missing"))
        ]
        == 2
    )
    assert (
        decisions[
            (
                ("host_proxy", "none"),
                ("mode", "proxy"),
                ("outcome", "deny"),
                ("reason", "malformed"),
            )
        ]
        == 1
    )
    assert (
        decisions[
            (("host_proxy", "none"), ("mode", "proxy"), ("outcome", "anonymous"), ("reason", "ok"))
        ]
        == 1
    )
    assert values[("gateway_request_duration_seconds_count", (("route", "read"),))] == 6
    assert values[("gateway_upstream_duration_seconds_count", (("upstream", "app"),))] == 4
    assert values[("gateway_requests_in_flight", ())] == 0
    # One identity. "bad.to.ken" is no JWT of a trusted issuer and no route here introspects:
    # refused by a regex, so it is not worth a cache entry a junk flood could fill.
    assert values[("gateway_token_cache_entries", ())] == 1
    assert values[("gateway_upstream_connections", (("state", "idle"), ("upstream", "app")))] == 1


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, config: dict[str, Any], *extra_args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int, Path]]:
    """``gateway run`` as a subprocess on fixed free ports; stdout/stderr to files."""
    port, admin = free_port(), free_port()
    config = {**config, "listen": {"host": "127.0.0.1", "port": port},
              "admin": {"host": "127.0.0.1", "port": admin}}  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = (tmp_path / "stdout.log").open("wb")
    err = (tmp_path / "stderr.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(path), *extra_args,
        cwd=ROOT, stdout=out, stderr=err, env={**os.environ, "GATEWAY_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        await wait_status(admin, "/readyz", 200)
        yield process, port, admin, path
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        out.close()
        err.close()


async def wait_status(port: int, path: str, status: int, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    if r.status == status:
                        return
            except aiohttp.ClientError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"{path} never gave {status}"
            await asyncio.sleep(0.05)


async def test_access_log_lines_and_no_token_anywhere(tmp_path: Path, issuer, upstream):
    token = issuer.mint({"sub": "alice", "client_id": "svc-a"}, scope="read")
    async with gateway_process(tmp_path, gateway_config(issuer, upstream)) as (proc, port, _, _):
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/read/x?state={token}"  # a query is never logged
            async with s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{port}/read/x") as r:
                assert r.status == 401
            async with s.get(url.replace("/read/", "/read/y"),
                             headers={"Authorization": f"Bearer {token}x"}) as r:  # fmt: skip
                assert r.status == 401
        await asyncio.sleep(1.0)  # the access log flushes within half a second
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    stdout = (tmp_path / "stdout.log").read_text()
    stderr = (tmp_path / "stderr.log").read_text()
    for text in (stdout, stderr):
        assert token not in text
        assert token[:40] not in text
        assert "Bearer" not in text
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    allowed, missing, invalid = lines
    assert allowed["status"] == 200
    assert allowed["decision"] == "allow"
    assert allowed["route"] == "read"
    assert allowed["client_id"] == "svc-a"
    assert allowed["path"] == "/read/x"
    assert len(allowed["sub_hash"]) == 16
    assert allowed["upstream_status"] == 200
    assert allowed["upstream_ms"] is not None
    assert len(allowed["request_id"]) >= 16
    assert (missing["status"], missing["decision"], missing["reason"]) == (401, "deny", "missing")
    assert (invalid["status"], invalid["decision"]) == (401, "deny")
    assert invalid["client_id"] is None


async def _load(port: int, stop: asyncio.Event, token: str, results: list[int]) -> None:
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            try:
                async with s.get(f"http://127.0.0.1:{port}/read/x",
                                 headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                    await r.read()
                    results.append(r.status)
            except aiohttp.ClientError:
                results.append(0)


async def test_reload_good_and_bad_config_under_traffic(tmp_path: Path, issuer, upstream):
    config = gateway_config(issuer, upstream)
    async with gateway_process(tmp_path, config) as (proc, port, admin, path):
        stop = asyncio.Event()
        results: list[int] = []
        token = issuer.mint(scope="read")
        workers = [asyncio.ensure_future(_load(port, stop, token, results)) for _ in range(8)]
        await asyncio.sleep(0.5)
        # A good config: adds a route.
        good = yaml.safe_load(path.read_text())
        good["routes"].insert(0, {"name": "new", "match": {"path": "/new/**"},
                                  "upstream": "app", "auth": "anonymous"})  # fmt: skip
        path.write_text(yaml.safe_dump(good, sort_keys=False))
        proc.send_signal(signal.SIGHUP)
        await wait_status(port, "/new/thing", 200)
        # A bad config: rejected, the running one keeps serving.
        path.write_text(path.read_text().replace("upstream: app", "upstream: nowhere", 1))
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/new/thing") as r:
                assert r.status == 200  # still the good config
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                values = metric_values(await r.text())
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert len(results) > 50
    assert set(results) == {200}, f"failed requests during reload: {sorted(set(results))}"
    assert values[("gateway_config_reloads_total", (("result", "ok"),))] == 1
    assert values[("gateway_config_reloads_total", (("result", "rejected"),))] == 1
    stderr = (tmp_path / "stderr.log").read_text()
    assert "gateway.yaml:44: routes[0].upstream: unknown upstream 'nowhere'" in stderr


async def test_sigterm_drains_in_flight_request(tmp_path: Path, issuer, upstream):
    config = gateway_config(issuer, upstream)
    async with gateway_process(tmp_path, config) as (proc, port, admin, _):
        async with aiohttp.ClientSession() as s:
            slow = asyncio.ensure_future(
                s.get(f"http://127.0.0.1:{port}/public/slow?mode=slow&delay=1.5")
            )
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            await wait_status(admin, "/readyz", 503, timeout=2)  # unready at once
            response = await slow
            assert response.status == 200
            assert (await response.json())["upstream"] == "app"
            response.release()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert upstream.last.raw_path == "/public/slow?mode=slow&delay=1.5"


async def test_environment_overrides_listen_address(tmp_path: Path, issuer, upstream):
    port = free_port()
    config = gateway_config(issuer, upstream)
    path = tmp_path / "gateway.yaml"
    config["admin"] = {"host": "127.0.0.1", "port": free_port()}
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", cwd=ROOT,
        env={**os.environ, "GATEWAY_CONFIG": str(path), "GATEWAY_LISTEN": f"127.0.0.1:{port}"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_status(port, "/public/x", 200)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_watch_reloads_when_the_config_file_changes(tmp_path: Path, issuer, upstream):
    config = gateway_config(issuer, upstream)
    async with gateway_process(tmp_path, config, "--watch") as (proc, port, _, path):
        changed = yaml.safe_load(path.read_text())
        changed["routes"].insert(0, {"name": "watched", "match": {"path": "/watched/**"},
                                     "upstream": "app", "auth": "anonymous"})  # fmt: skip
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        await wait_status(port, "/watched/x", 200, timeout=10)  # no SIGHUP sent
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
