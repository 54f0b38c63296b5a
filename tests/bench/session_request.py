"""What a browser-session request costs next to a bearer request, through the real gateway.

    PYTHONPATH=. .venv/bin/python tests/bench/session_request.py [--rounds N] [--wrk SECONDS]

Two measurements of the same three routes of one config (a hot RS256 bearer token; a
session in the cookie store; a session in the Redis store):

* the decision alone, in-process: ``Decider.decide`` for the route and a browser-shaped
  request (its Cookie header carries three other cookies), µs per call, the median of five
  batches of ``--rounds``. For the session routes this is the whole session path: Cookie
  parsing, AES-GCM open (or a Redis GET and open), timeouts, the identity, its headers and
  the gateway's cookies taken out of the Cookie header;
* a wrk smoke (``--wrk`` seconds per route, 0 to skip): a gateway process and an nginx
  upstream (the aiohttp fallback without nginx), ``wrk -t1 -c20``; req/s, latency and the
  gateway's CPU µs per request from /proc.

The sessions are made with the gateway's own store classes and the config's secrets, so no
authorization server is needed (the access tokens are valid for an hour: no refresh).
Redis is a private ``redis-server`` on a free port (skipped without one). The machine is
shared: keep ``--wrk`` short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402
from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402

from gateway.auth.decide import RequestFacts  # noqa: E402
from gateway.compiler import compile_config  # noqa: E402
from gateway.config.loader import load_config  # noqa: E402
from gateway.runtime import start_runtime  # noqa: E402
from tests.bench.run import cpu_ticks, parse_wrk, start_upstream, tree_pids, wait_until  # noqa: E402
from tests.support.issuer import TestIssuer  # noqa: E402
from tests.support.processes import Children, free_port  # noqa: E402
from tests.support.redis import TEST_CACHE_KEY, RedisServer  # noqa: E402
from tests.support.sessions import Browser, make_session  # noqa: E402

ISSUER = "https://as.bench"
SECRET = "bench-session-secret-" + "b" * 32
OTHER_COOKIES = "_ga=GA1.2.1234567890.1700000000; theme=dark; consent=yes"
BROWSER_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36",
    "Accept-Language": "en-GB,en;q=0.9",
    "Sec-Fetch-Mode": "navigate",
}


def login(name: str, path: str, store: str) -> dict[str, Any]:
    return {
        "name": name, "issuer": "bench", "external_url": "http://127.0.0.1",
        "client": {"client_id": "web-app", "client_secret": "s"},
        "endpoints": {"authorization": ISSUER + "/authorize", "token": ISSUER + "/token"},
        "redirect_path": f"/{path}/callback", "logout_path": f"/{path}/logout",
        "cookie": {"name": f"gw_{path}"}, "store": {"type": store}, "secrets": [SECRET],
    }  # fmt: skip


def config(tmp: Path, upstream: str, port: int, admin: int, redis: str | None) -> dict[str, Any]:
    routes = [
        {"match": {"path": {"prefix": "/bearer"}}, "upstream": "app"},
        {"match": {"path": {"prefix": "/session"}}, "upstream": "app", "auth": "session",
         "session": {"login": "cookie"}},
    ]  # fmt: skip
    logins = [login("cookie", "session", "cookie")]
    cache: dict[str, Any] = {}
    if redis is not None:
        logins.append(login("redis", "redis", "redis"))
        routes.append({"match": {"path": {"prefix": "/redis"}}, "upstream": "app",
                       "auth": "session", "session": {"login": "redis"}})  # fmt: skip
        cache = {"redis": {"url": redis, "key": TEST_CACHE_KEY, "timeout": "200ms"}}
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "logging": {"access_log": False, "level": "warning"},
        "shutdown": {"readiness_delay": "0s", "drain_timeout": "2s"},
        "upstreams": {"app": {"url": upstream}},
        "issuers": [{"name": "bench", "issuer": ISSUER, "keys": {"file": str(tmp / "jwks.json")},
                     "audiences": ["api://bench"]}],
        "logins": logins, "cache": cache, "routes": routes,
    }  # fmt: skip


def credentials(tmp: Path) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k", "alg": "RS256"}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": "api://bench", "client_id": "svc",
              "scope": "orders:read", "iat": now, "exp": now + 3600, "jti": "j"}  # fmt: skip
    return TestIssuer.sign({"alg": "RS256", "kid": "k", "typ": "at+jwt"}, claims, alg="RS256",
                           key=key)  # fmt: skip


async def session_cookies(runtime: Any) -> dict[str, str]:
    """A realistic session per session login, stored with the gateway's own store: opaque
    access and refresh tokens, a 1 KB ID token kept for the logout hint."""
    cookies = {}
    for name, service in runtime.logins.services.items():
        now = time.time()
        made = make_session(now=now, expires_in=3600, id_token="e" * 1000)
        session = dataclasses.replace(made, login=name, issuer=ISSUER)
        browser = Browser()
        browser.receive(await service.store.create(session, None, now))
        cookies[name] = browser.cookie_header()[0]
    return cookies


async def timed(step: Callable[[], Awaitable[Any]], rounds: int) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            await step()
        samples.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(samples)


def headers_for(kind: str, token: str, cookies: dict[str, str]) -> dict[str, str]:
    headers = dict(BROWSER_HEADERS)
    if kind == "bearer":
        headers["Authorization"] = f"Bearer {token}"
        headers["Cookie"] = OTHER_COOKIES
    else:
        headers["Cookie"] = f"{OTHER_COOKIES}; {cookies[kind.removeprefix('session-')]}"
    return headers


# (label, config with Redis?, route): the cookie store uses a configured Redis for what
# replicas share (revocations: one MGET per request), so it is measured both ways.
CASES = (
    ("bearer (hot RS256 token)", False, "/bearer/x"),
    ("session, cookie store", False, "/session/x"),
    ("session, cookie store + Redis revocations", True, "/session/x"),
    ("session, Redis store", True, "/redis/x"),
)


def kind_of(target: str) -> str:
    return {"/bearer/x": "bearer", "/session/x": "session-cookie"}.get(target, "session-redis")


async def micro(tmp: Path, redis: str | None, rounds: int, token: str) -> list[str]:
    rows = []
    for shared in (False, True):
        if shared and redis is None:
            continue
        path = tmp / f"micro-{shared}.yaml"
        path.write_text(yaml.safe_dump(config(tmp, "http://127.0.0.1:9", 0, 0,
                                              redis if shared else None)))  # fmt: skip
        compiled = compile_config(load_config(path, env={}))
        async with aiohttp.ClientSession() as control:
            runtime = await start_runtime(compiled, control)
            try:
                cookies = await session_cookies(runtime)
                for label, with_redis, target in CASES:
                    if with_redis != shared:
                        continue
                    route = compiled.table.match("127.0.0.1", target, "GET")
                    sent = headers_for(kind_of(target), token, cookies)
                    headers = CIMultiDictProxy(CIMultiDict(sent))
                    facts = RequestFacts(
                        method="GET", host="127.0.0.1", path=target, query=None,
                        authorization=headers.getall("Authorization", []), headers=headers,
                    )  # fmt: skip
                    decision = await runtime.decider.decide(route.auth, facts)
                    assert getattr(decision, "identity", None) is not None, decision
                    step = functools.partial(runtime.decider.decide, route.auth, facts)
                    rows.append(f"| {label} | {await timed(step, rounds):.1f} |")
            finally:
                await runtime.close()
    return rows


def smoke(tmp: Path, redis: str | None, seconds: int, token: str) -> list[str]:
    procs = Children(cwd=REPO)
    notes: list[str] = []
    rows = []
    try:
        upstream = start_upstream(tmp, procs, notes)
        for shared in (False, True):
            if shared and redis is None:
                continue
            port, admin = free_port(), free_port()
            path = tmp / f"gateway-{shared}.yaml"
            path.write_text(
                yaml.safe_dump(
                    config(
                        tmp,
                        f"http://127.0.0.1:{upstream.port}",
                        port,
                        admin,
                        redis if shared else None,
                    )
                )
            )
            log = tmp / f"gateway-{shared}.log"
            gateway = procs.start([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                                  stdout=log, stderr=log, cwd=REPO)  # fmt: skip
            wait_until(gateway, f"http://127.0.0.1:{admin}/readyz", log, want=200)
            cookies = asyncio.run(_cookies_for(path))
            for label, with_redis, target in CASES:
                if with_redis != shared:
                    continue
                argv = ["wrk", "-t1", "-c20", f"-d{seconds}s", "--latency"]
                for name, value in headers_for(kind_of(target), token, cookies).items():
                    argv += ["-H", f"{name}: {value}"]
                argv.append(f"http://127.0.0.1:{port}{target}")
                before = cpu_ticks(tree_pids(gateway.pid))
                output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                ticks = cpu_ticks(tree_pids(gateway.pid)) - before
                result = parse_wrk(output)
                cpu = ticks / os.sysconf("SC_CLK_TCK") / max(1, int(result["requests"])) * 1e6
                rows.append(
                    f"| {label} | {result['rps']:,.0f} | {result['p50_ms']:.2f} | "
                    f"{result['p99_ms']:.2f} | {cpu:.0f} | {result['non_2xx']} |"
                )
            procs.stop(gateway)
    finally:
        procs.stop_all()
    return [*rows, *(f"\n{note}" for note in notes)]


async def _cookies_for(path: Path) -> dict[str, str]:
    """Sessions the running gateway will open: made with a runtime of the same config (the
    same secrets and Redis)."""
    async with aiohttp.ClientSession() as control:
        runtime = await start_runtime(compile_config(load_config(path, env={})), control)
        try:
            return await session_cookies(runtime)
        finally:
            await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--wrk", type=int, default=5, help="seconds per route; 0: skip")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="session-bench-") as name:
        tmp = Path(name)
        server = RedisServer() if shutil.which("redis-server") else None
        with server if server is not None else contextlib.nullcontext():
            redis = server.url if server is not None else None
            token = credentials(tmp)
            rows = asyncio.run(micro(tmp, redis, args.rounds, token))
            print("| decision (in-process) | µs per request |\n|---|---:|", *rows, sep="\n")
            if args.wrk > 0 and shutil.which("wrk"):
                print("\n| route (wrk -t1 -c20) | req/s | p50 ms | p99 ms | gateway CPU µs/req "
                      "| non-2xx |\n|---|---:|---:|---:|---:|---:|")  # fmt: skip
                print(*smoke(tmp, redis, args.wrk, token), sep="\n")


if __name__ == "__main__":
    main()
