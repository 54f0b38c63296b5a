"""Load benchmark of the gateway against nginx and HAProxy peers (RFC 6750 §2.1, RFC 7662 §2).

    .venv/bin/python tests/bench/run.py [--duration 10] [--scenarios a,b] [--json out.json]

Everything runs on loopback and is started here, in a temporary directory, and stopped here
by process group, also on Ctrl-C or an error. Layout (issue 7): the server under test alone
on core 0; wrk, the nginx upstream, and for opaque tokens the introspection endpoint and
Redis, on core 1. See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's packages come first
    sys.path.insert(0, str(REPO))

from tests.bench import apache_peer  # noqa: E402
from tests.support.processes import Children, free_port  # noqa: E402

COLD_LUA = HERE / "cold.lua"

ISSUER = "https://bench.example/"
AUDIENCE = "api://bench"
SCOPE = "orders:read"
COLD_TOKENS = 500
WARMUP_SECONDS = 2
CONNECTIONS = 50
SERVER_CORE = "0"
CLIENT_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_GOAL_MB = 45.0  # per gateway worker (issue 14)

OPAQUE_POOL = 200
INTROSPECTION_CLIENT = ("gateway", "secret")
# The single-flight check: BURST_TOKENS distinct tokens, BURST_REQUESTS concurrent requests
# each. The endpoint holds a burst token's answer BURST_HOLD seconds (under the gateway's 2 s
# introspection timeout), so every request arrives while the first one's call is outstanding.
BURST_PREFIX = "burst-"
BURST_TOKENS = 8
BURST_REQUESTS = 16
BURST_HOLD = 1.0


class Skip(Exception):
    """A peer or scenario that cannot run here; reported, not fatal."""


class CheckFailed(Exception):
    """A server answered a pre-flight probe wrongly, so its numbers would mean nothing."""


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str
    path: str
    auth: str  # none | hot | cold-rs256 | cold-es256 | opaque-hot | opaque-pool
    pinned: bool
    what: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("upstream-direct", "upstream", "/anon/bench", "none", True,
             "wrk -> the upstream itself (baseline)"),
    Scenario("nginx-proxy", "nginx-proxy", "/anon/bench", "none", True,
             "nginx proxy_pass, keepalive 64"),
    Scenario("haproxy-jwt", "haproxy-1", "/auth/bench", "hot", True,
             "HAProxy jwt_verify RS256 + iss/aud/exp/scope"),
    Scenario("apache-oidc-jwt", "apache-jwt", "/auth/bench", "cold-rs256", True,
             "Apache mod_auth_openidc: RS256 JWTs (JWKS over TLS), 500 tokens rotated"),
    Scenario("gateway-anon", "gateway", "/anon/bench", "none", True,
             "gateway, anonymous route"),
    Scenario("gateway-jwt-hot", "gateway", "/auth/bench", "hot", True,
             "gateway, one RS256 token (cache hit)"),
    Scenario("gateway-jwt-idtoken", "gateway", "/idtoken/bench", "hot", True,
             "gateway, hot token, route signing an ES256 identity token (cached)"),
    Scenario("gateway-jwt-limits", "gateway", "/limited/bench", "hot", True,
             "gateway, hot token, route with two rate limits (per client, per route)"),
    Scenario("gateway-jwt-hot-logged", "gateway-logged", "/auth/bench", "hot", True,
             "gateway, hot token, JSON access log on (its default)"),
    Scenario("gateway-jwt-cold-rs256", "gateway-cold", "/auth/bench", "cold-rs256", True,
             "gateway, cache off, 500 RS256 tokens"),
    Scenario("gateway-jwt-cold-es256", "gateway-cold", "/auth/bench", "cold-es256", True,
             "gateway, cache off, 500 ES256 tokens"),
    Scenario("gateway-opaque-l1", "gateway-opaque-l1", "/auth/bench", "opaque-hot", True,
             "gateway, one opaque token: introspection L1 hit (Redis configured)"),
    Scenario("gateway-opaque-l2", "gateway-opaque-l2", "/auth/bench", "opaque-pool", True,
             "gateway, L1 off, 200 opaque tokens held in Redis: L2 hit"),
    Scenario("apache-oidc-introspection", "apache-introspection", "/auth/bench", "opaque-pool",
             True, "Apache mod_auth_openidc: introspection over TLS cached in Redis, 200 tokens"),
    Scenario("gateway-opaque-miss", "gateway-opaque-miss", "/auth/bench", "opaque-pool", True,
             "gateway, L1 off, no Redis, 200 opaque tokens: one introspection per request"),
    Scenario("gateway-workers2", "gateway-w2", "/auth/bench", "hot", False,
             "gateway --workers 2, unpinned, hot token"),
    Scenario("haproxy-jwt-2threads", "haproxy-2", "/auth/bench", "hot", False,
             "HAProxy nbthread 2, unpinned, hot token"),
)  # fmt: skip
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


@dataclass
class Result:
    name: str
    status: str = "ok"
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_req: float | None = None
    rss_mb: float | None = None
    requests: int | None = None
    non_2xx: int | None = None
    socket_errors: int | None = None
    # Opaque-token scenarios only: the backends' view of the measured run.
    introspections_per_req: float | None = None
    redis_commands_per_req: float | None = None
    backend_cpu_us_per_req: float | None = None
    single_flight: str | None = None
    # Multi-process servers: each process's RSS and PSS (MB) at the end of the run.
    processes: list[dict[str, Any]] | None = None

    @property
    def measured(self) -> bool:
        return self.rps is not None


@dataclass(frozen=True)
class Material:
    """Keys and tokens, written once to the temp dir."""

    jwks_file: Path
    public_pem: Path
    hot_token: str
    token_files: dict[str, Path]  # auth -> one token per line, rotated by cold.lua
    rejects: dict[str, tuple[str | None, int]]  # case -> (token, expected status)
    opaque_hot: str
    opaque_known: Path  # every token the introspection endpoint answers active for
    opaque_burst: tuple[str, ...]
    opaque_rejects: dict[str, tuple[str | None, int]]
    opaque_answers: Path  # answers other than the default active one, by token (JSON)
    tls: apache_peer.BenchTls  # the bench issuer over TLS, for the Apache peer


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    backends: Backends | None = None
    scheme: str = "http"


@dataclass(frozen=True)
class Backends:
    """What an opaque-token gateway talks to; started before it and stopped after it."""

    introspection: Running
    redis: Running | None


@dataclass
class Bench:
    tmp: Path
    procs: Children
    material: Material
    upstream: Running
    notes: list[str] = field(default_factory=list)


# --- processes --------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop every child."""
    raise KeyboardInterrupt(f"signal {signum}")


# --- /proc accounting ---------------------------------------------------------------------------


def tree_pids(root: int) -> list[int]:
    """The root and all its descendants: multi-process servers are charged as a whole."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime (fields 14 and 15 of /proc/PID/stat), all threads included."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def process_memory(pids: Sequence[int]) -> list[dict[str, Any]]:
    """Each process's RSS and PSS (MB) from /proc/PID/smaps_rollup: with workers forked
    from one prepared process, PSS charges the pages they share once among them."""
    found = []
    for pid in pids:
        fields: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("Rss", "Pss"):
                    fields[name.lower()] = int(value.split()[0]) / 1024
        if fields:
            found.append({"pid": pid, **fields})
    return found


def rss_mb(pids: Sequence[int]) -> float:
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


# --- HTTP probing -------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def trust_bench_ca(ca: Path) -> None:
    """Probes of the TLS bench issuer trust the run's CA (and nothing else changes)."""
    import ssl

    global _OPENER
    context = ssl.create_default_context(cafile=str(ca))
    _OPENER = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )


def probe(url: str, token: str | None = None, timeout: float = 3.0) -> int:
    """The status of one GET; never through an environment proxy."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)


def introspection_count(port: int, scheme: str = "http") -> int:
    """The endpoint's call counter (``GET /count``)."""
    url = f"{scheme}://127.0.0.1:{port}/count"
    with _OPENER.open(url, timeout=3) as response:
        return int(json.loads(response.read())["calls"])


def redis_commands(port: int) -> int:
    """``total_commands_processed`` from ``INFO stats``, over a raw socket: a client library
    would add commands of its own (CLIENT SETINFO) to what it measures. The INFO itself
    counts one."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"INFO stats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < _bulk_end(data):
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection mid-reply")
            data += chunk
    match = re.search(rb"^total_commands_processed:(\d+)", data, re.MULTILINE)
    if match is None:
        raise OSError(f"unexpected INFO reply: {data[:80]!r}")
    return int(match[1])


def _bulk_end(data: bytes) -> int:
    """Where a RESP bulk string ($LEN CRLF payload CRLF) ends; an error reply ends at once."""
    header, _, _ = data.partition(b"\r\n")
    if not header.startswith(b"$"):
        return len(data)
    return len(header) + 2 + int(header[1:]) + 2


def wait_until(
    proc: subprocess.Popen[bytes], url: str, log: Path, *, want: int | None, timeout: float = 30
) -> None:
    """Poll until ``url`` answers (``want``, or any status if None), or fail with the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Skip(f"exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError):
            status = probe(url, timeout=1)
            if want is None or status == want:
                return
        time.sleep(0.1)
    raise Skip(f"not ready after {timeout:.0f}s at {url}: {_tail(log)}")


def _tail(log: Path, lines: int = 8) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- keys and tokens ------------------------------------------------------------------------------


def make_material(tmp: Path) -> Material:
    """An RSA-2048 and a P-256 key in one static JWKS file, and every token the runs need.

    Opaque tokens are random strings with no dots, so the gateway's JWT parser says "not
    mine" and introspection takes them, as it would a real authorization server's."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for kid, alg, public in (
        ("bench-rs", "RS256", jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), True)),
        ("bench-es", "ES256", jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), True)),
    ):
        keys.append({**public, "kid": kid, "alg": alg, "use": "sig"})
    jwks_file = tmp / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": keys}))
    public_pem = tmp / "rs256-public.pem"
    public_pem.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    def mint(key: Any, alg: str, kid: str, **changes: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": "bench-user", "client_id": "bench-client", "aud": AUDIENCE,
            "scope": SCOPE, "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex,
        }  # fmt: skip
        claims.update(changes)
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})

    token_files = {}
    for auth, key, alg, kid in (
        ("cold-rs256", rsa_key, "RS256", "bench-rs"),
        ("cold-es256", ec_key, "ES256", "bench-es"),
    ):
        path = tmp / f"{auth}.tokens"
        path.write_text("".join(mint(key, alg, kid) + "\n" for _ in range(COLD_TOKENS)))
        token_files[auth] = path
    opaque_hot = secrets.token_urlsafe(32)
    pool = [secrets.token_urlsafe(32) for _ in range(OPAQUE_POOL)]
    burst = tuple(BURST_PREFIX + secrets.token_urlsafe(24) for _ in range(BURST_TOKENS))
    token_files["opaque-pool"] = tmp / "opaque-pool.tokens"
    token_files["opaque-pool"].write_text("".join(f"{token}\n" for token in pool))
    opaque_known = tmp / "opaque-known.tokens"
    opaque_known.write_text("".join(f"{token}\n" for token in (opaque_hot, *pool, *burst)))
    rejects = {
        "no token": (None, 401),
        "bad signature": (mint(rogue, "RS256", "bench-rs"), 401),
        "expired": (mint(rsa_key, "RS256", "bench-rs", exp=int(time.time()) - 3600), 401),
        "wrong audience": (mint(rsa_key, "RS256", "bench-rs", aud="api://other"), 401),
        "missing scope": (mint(rsa_key, "RS256", "bench-rs", scope="orders:write"), 403),
    }
    # The endpoint answers active false for a token it does not know (RFC 7662 §2.2), and
    # these two as active but unfit for the route (another audience, another scope).
    wrong_aud, wrong_scope = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    tls = apache_peer.make_bench_ca(tmp)
    trust_bench_ca(tls.ca)
    opaque_answers = tmp / "opaque-answers.json"
    opaque_answers.write_text(json.dumps({
        wrong_aud: {"aud": "api://other"}, wrong_scope: {"scope": "orders:write"},
    }))  # fmt: skip
    opaque_rejects = {
        "inactive opaque token": (secrets.token_urlsafe(32), 401),
        "opaque token for another audience": (wrong_aud, 401),
        "opaque token without the scope": (wrong_scope, 403),
    }
    return Material(
        jwks_file, public_pem, mint(rsa_key, "RS256", "bench-rs"), token_files, rejects,
        opaque_hot, opaque_known, burst, opaque_rejects, opaque_answers, tls,
    )  # fmt: skip


def scenario_tokens(material: Material, auth: str) -> list[str]:
    """Every token wrk sends in a scenario: one, or the rotated file's."""
    if auth == "none":
        return []
    if auth == "hot":
        return [material.hot_token]
    if auth == "opaque-hot":
        return [material.opaque_hot]
    return material.token_files[auth].read_text().split()


def good_token(material: Material, auth: str) -> str | None:
    tokens = scenario_tokens(material, auth)
    return tokens[0] if tokens else None


# --- servers --------------------------------------------------------------------------------------


def nginx_conf(tmp: Path, name: str, port: int, locations: str, upstream: str = "") -> Path:
    """One nginx process (no master) with everything it writes inside the temp dir."""
    prefix = tmp / name
    prefix.mkdir(exist_ok=True)
    temp = "\n".join(
        f"  {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
{temp}
{upstream}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
{locations}
  }}
}}
""")
    return conf


def start_nginx(procs: Children, name: str, conf: Path, port: int, cpus: str) -> Running:
    prefix = conf.parent
    log = prefix / "stdout.log"
    proc = procs.start(
        ["nginx", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
        stdout=log, stderr=log, cpus=cpus,
    )  # fmt: skip
    running = Running(name, proc, port, prefix / "error.log")
    wait_until(proc, f"http://127.0.0.1:{port}/anon/bench", running.log, want=200)
    return running


def start_upstream(tmp: Path, procs: Children, notes: list[str]) -> Running:
    port = free_port()
    if shutil.which("nginx"):
        conf = nginx_conf(tmp, "upstream", port, '    location / { return 200 "ok\\n"; }')
        return start_nginx(procs, "upstream", conf, port, CLIENT_CORE)
    notes.append("nginx not found: the upstream is a small aiohttp app (slower than nginx).")
    log = tmp / "upstream.log"
    proc = procs.start(
        [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port)],
        stdout=log, stderr=log, cpus=CLIENT_CORE,
    )  # fmt: skip
    wait_until(proc, f"http://127.0.0.1:{port}/anon/bench", log, want=200)
    return Running("upstream", proc, port, log)


def start_nginx_proxy(bench: Bench) -> Running:
    if not shutil.which("nginx"):
        raise Skip("nginx not found (apt-get install nginx-light)")
    port = free_port()
    upstream = f"  upstream up {{ server 127.0.0.1:{bench.upstream.port}; keepalive 64; }}"
    locations = """    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }"""
    conf = nginx_conf(bench.tmp, "nginx-proxy", port, locations, upstream)
    return start_nginx(bench.procs, "nginx-proxy", conf, port, SERVER_CORE)


def haproxy_conf(bench: Bench, name: str, port: int, threads: int) -> Path:
    """The same checks as the gateway's authenticated route, in HAProxy 2.6 terms."""
    verified = f'var(txn.bearer),jwt_verify(txn.alg,"{bench.material.public_pem}") -m int 1'
    conf = bench.tmp / f"{name}.cfg"
    conf.write_text(f"""
global
  nbthread {threads}
  maxconn 4096

defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 60s
  http-reuse always

frontend bench
  bind 127.0.0.1:{port}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
  http-request deny deny_status 401 unless {{ {verified} }}
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request deny deny_status 401 unless {{ var(txn.iss) -m str {ISSUER} }}
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {AUDIENCE} }}
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date
  http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('$.scope')
  http-request deny deny_status 403 unless {{ var(txn.scope) -m sub {SCOPE} }}
  default_backend upstream

backend upstream
  server up 127.0.0.1:{bench.upstream.port} maxconn 1000
""")
    return conf


def start_haproxy(bench: Bench, threads: int, pinned: bool) -> Running:
    if not shutil.which("haproxy"):
        raise Skip("haproxy not found (apt-get install haproxy)")
    name = f"haproxy-{threads}"
    port = free_port()
    conf = haproxy_conf(bench, name, port, threads)
    log = bench.tmp / f"{name}.log"
    cpus = SERVER_CORE if pinned else None
    proc = bench.procs.start(["haproxy", "-db", "-f", str(conf)], stdout=log, stderr=log, cpus=cpus)
    running = Running(name, proc, port, log)
    wait_until(proc, f"http://127.0.0.1:{port}/auth/bench", log, want=None)
    return running


def start_introspection(bench: Bench, *, tls: bool = False) -> Running:
    """The bench issuer's RFC 7662 endpoint and JWKS (``serve_introspection``), on the client
    core; over TLS with the run's CA for the Apache peer, which accepts nothing else."""
    port = free_port()
    log = bench.tmp / "introspection.log"
    material = bench.material
    files = (material.opaque_known, material.opaque_answers, material.jwks_file)
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-introspection", str(port),
            *map(str, files)]  # fmt: skip
    if tls:
        argv += ["--tls", str(material.tls.cert), str(material.tls.key)]
    proc = bench.procs.start(argv, stdout=log, stderr=log, cpus=CLIENT_CORE)
    scheme = "https" if tls else "http"
    running = Running("introspection", proc, port, log, scheme=scheme)
    try:
        wait_until(proc, f"{scheme}://127.0.0.1:{port}/count", log, want=200)
    except Skip:
        bench.procs.stop(proc)
        raise
    return running


def start_apache(bench: Bench, mode: str) -> Running:
    """Apache + mod_auth_openidc pinned like the gateway; its issuer (and Redis, for
    introspection) on the client core, counted as its backends."""
    reason = apache_peer.missing()
    if reason is not None:
        raise Skip(reason)
    if mode == "introspection" and not shutil.which("redis-server"):
        raise Skip("redis-server not found (apt-get install redis-server)")
    issuer = start_introspection(bench, tls=True)
    redis: Running | None = None
    try:
        redis = start_redis(bench) if mode == "introspection" else None
        port = free_port()
        name = f"apache-{mode}"
        conf = apache_peer.apache_conf(
            bench.tmp / name, port=port, upstream_port=bench.upstream.port,
            issuer_port=issuer.port, tls=bench.material.tls, issuer=ISSUER, audience=AUDIENCE,
            scope=SCOPE, mode=mode, client=INTROSPECTION_CLIENT,
            redis_port=redis.port if redis is not None else None,
        )  # fmt: skip
        log = conf.parent / "error.log"
        proc = bench.procs.start(
            ["/usr/sbin/apache2", "-f", str(conf), "-DFOREGROUND"],
            stdout=conf.parent / "stdout.log", stderr=conf.parent / "stdout.log", cpus=SERVER_CORE,
        )  # fmt: skip
        running = Running(name, proc, port, log, Backends(issuer, redis))
        wait_until(proc, f"http://127.0.0.1:{port}/anon/bench", log, want=200)
        return running
    except BaseException:
        stop_backends(bench, Backends(issuer, redis))
        raise


def start_redis(bench: Bench) -> Running:
    """A private, diskless redis-server on the client core; never the system one."""
    if not shutil.which("redis-server"):
        raise Skip("redis-server not found (apt-get install redis-server)")
    port = free_port()
    log = bench.tmp / "redis.log"
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(bench.tmp)]  # fmt: skip
    proc = bench.procs.start(argv, stdout=log, stderr=log, cpus=CLIENT_CORE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Skip(f"redis-server exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError):
            redis_commands(port)
            return Running("redis", proc, port, log)
        time.sleep(0.1)
    bench.procs.stop(proc)
    raise Skip(f"redis-server not ready after 30s: {_tail(log)}")


def identity_key(bench: Bench) -> Path:
    """A P-256 key for the identity tokens (ES256, the gateway's default algorithm)."""
    path = bench.tmp / "identity-token.pem"
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))  # fmt: skip
    return path


def gateway_conf(
    bench: Bench,
    name: str,
    port: int,
    admin_port: int,
    cache: int,
    access_log: bool,
    backends: Backends | None = None,
    l1_entries: int = 10000,
) -> Path:
    import yaml

    config = {
        # The peers log nothing either; gateway-jwt-hot-logged shows what the log costs.
        "logging": {"access_log": access_log},
        # No load balancer to tell: stop at once, so stopping does not wait out the delay.
        "shutdown": {"readiness_delay": "0s", "drain_timeout": "2s"},
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "upstreams": {"bench": {"url": f"http://127.0.0.1:{bench.upstream.port}"}},
        "issuers": [{
            "name": "bench", "issuer": ISSUER,
            "keys": {"file": str(bench.material.jwks_file)},
            "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"],
        }],
        "token_cache": {"max_entries": cache},
        # Issue 17's overheads, measured on the same process as gateway-jwt-hot.
        "token_signing": {"issuer": "https://gateway.bench/",
                          "keys": [{"file": str(identity_key(bench))}]},
        "routes": [
            {"name": "anon", "match": {"path": "/anon/**"}, "upstream": "bench",
             "auth": "anonymous"},
            {"name": "auth", "match": {"path": "/auth/**"}, "upstream": "bench",
             "require": {"scopes": {"all": [SCOPE]}}},
            {"name": "idtoken", "match": {"path": "/idtoken/**"}, "upstream": "bench",
             "require": {"scopes": {"all": [SCOPE]}}, "identity_token": {}},
            # Limits far above what wrk reaches: the cost of checking them, not of a 429.
            {"name": "limited", "match": {"path": "/limited/**"}, "upstream": "bench",
             "require": {"scopes": {"all": [SCOPE]}},
             "rate_limits": {"limits": [
                 {"name": "per-client", "key": ["client_id"], "limit": 10_000_000, "window": 1},
                 {"name": "route", "limit": 10_000_000, "window": 1}]}},
        ],
    }  # fmt: skip
    if backends is not None:
        client_id, secret = INTROSPECTION_CLIENT
        config["issuers"][0] |= {
            "mode": "auto",
            "introspection": {
                "endpoint": f"http://127.0.0.1:{backends.introspection.port}/introspect",
                "client": {"client_id": client_id, "client_secret": secret},
            },
        }
        cache_section: dict[str, Any] = {"l1": {"max_entries": l1_entries}}
        if backends.redis is not None:
            url = f"redis://127.0.0.1:{backends.redis.port}"
            # A sealing key made for the run (32 random bytes, RFC 4648 base64).
            key = base64.b64encode(secrets.token_bytes(32)).decode()
            cache_section["redis"] = {"url": url, "timeout": "200ms", "key": key}
        config["cache"] = cache_section
    path = bench.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_gateway(
    bench: Bench,
    name: str,
    *,
    cache: int,
    workers: int,
    pinned: bool,
    access_log: bool = False,
    backends: Backends | None = None,
    l1_entries: int = 10000,
) -> Running:
    port, admin_port = free_port(), free_port()
    conf = gateway_conf(bench, name, port, admin_port, cache, access_log, backends, l1_entries)
    log = bench.tmp / f"{name}.log"
    argv = [sys.executable, "-m", "gateway", "run", "-c", str(conf), "--workers", str(workers)]
    proc = bench.procs.start(
        argv, stdout=log, stderr=log, cpus=SERVER_CORE if pinned else None, cwd=REPO
    )
    running = Running(name, proc, port, log, backends)
    wait_until(proc, f"http://127.0.0.1:{admin_port}/readyz", log, want=200)
    if workers > 1:  # every worker must be up before the load, not only the first to answer
        deadline = time.monotonic() + 30
        while len(tree_pids(proc.pid)) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    return running


def start_server(bench: Bench, server: str) -> Running:
    if server == "nginx-proxy":
        return start_nginx_proxy(bench)
    if server in ("haproxy-1", "haproxy-2"):
        threads = int(server[-1])
        return start_haproxy(bench, threads, pinned=threads == 1)
    if server == "gateway":
        return start_gateway(bench, server, cache=10000, workers=1, pinned=True)
    if server == "gateway-logged":
        return start_gateway(bench, server, cache=10000, workers=1, pinned=True, access_log=True)
    if server == "gateway-cold":
        return start_gateway(bench, server, cache=0, workers=1, pinned=True)
    if server == "gateway-w2":
        return start_gateway(bench, server, cache=10000, workers=2, pinned=False)
    if server.startswith("gateway-opaque-"):
        return start_opaque_gateway(bench, server.removeprefix("gateway-opaque-"))
    if server.startswith("apache-"):
        return start_apache(bench, server.removeprefix("apache-"))
    raise ValueError(server)


def start_opaque_gateway(bench: Bench, tier: str) -> Running:
    """l1: default L1 with Redis behind it; l2: L1 holds nothing, Redis everything; miss:
    neither, so every request introspects."""
    use_redis = tier in ("l1", "l2")
    if use_redis and not shutil.which("redis-server"):
        if tier == "l2":
            raise Skip("redis-server not found (apt-get install redis-server)")
        bench.notes.append("redis-server not found: gateway-opaque-l1 ran without Redis.")
        use_redis = False
    introspection = start_introspection(bench)
    redis: Running | None = None
    try:
        redis = start_redis(bench) if use_redis else None
        backends = Backends(introspection, redis)
        return start_gateway(
            bench, f"gateway-opaque-{tier}", cache=10000, workers=1, pinned=True,
            backends=backends, l1_entries=10000 if tier == "l1" else 0,
        )  # fmt: skip
    except BaseException:
        stop_backends(bench, Backends(introspection, redis))
        raise


def stop_backends(bench: Bench, backends: Backends | None) -> None:
    if backends is None:
        return
    bench.procs.stop(backends.introspection.proc)
    if backends.redis is not None:
        bench.procs.stop(backends.redis.proc)


# --- checks ---------------------------------------------------------------------------------------


def preflight(bench: Bench, scenario: Scenario, base: str) -> None:
    """The target answers 200, and an authenticated target refuses what it must refuse."""
    token = good_token(bench.material, scenario.auth)
    status = probe(base + scenario.path, token)
    if status != 200:
        raise CheckFailed(f"GET {scenario.path} answered {status}, not 200")
    if scenario.server.startswith(("gateway", "haproxy", "apache")):
        rejects = dict(bench.material.rejects)
        if scenario.server == "apache-introspection":
            # No local JWT check there: every JWT is an unknown token to the endpoint.
            rejects = {case: (bad, 401) for case, (bad, _) in rejects.items()}
        if scenario.auth.startswith("opaque"):
            rejects |= bench.material.opaque_rejects
        for case, (bad, expected) in rejects.items():
            status = probe(base + "/auth/bench", bad)
            # Apache's claim rules are authorization: a wrong audience may be its 403.
            tolerated = {401, 403} if scenario.server.startswith("apache") and "audience" in case \
                else {expected}  # fmt: skip
            if status not in tolerated:
                raise CheckFailed(f"/auth/bench with {case} answered {status}, not {expected}")


def prewarm(bench: Bench, scenario: Scenario, base: str) -> None:
    """One request per token, so the caches hold every token wrk will send (for l2: in
    Redis, since L1 keeps nothing) before the warm-up run."""
    for token in scenario_tokens(bench.material, scenario.auth):
        status = probe(base + scenario.path, token)
        if status != 200:
            raise CheckFailed(f"pre-warm: GET {scenario.path} answered {status}, not 200")


def single_flight_check(bench: Bench, server: Running) -> tuple[bool, str]:
    """N distinct uncached tokens, many concurrent requests each, must cost exactly N
    introspection calls: concurrent requests share one call per token (RFC 7662 §4 lets a
    resource server cache; a stampede on the authorization server is what it must avoid)."""
    assert server.backends is not None
    port = server.backends.introspection.port
    url = f"http://127.0.0.1:{server.port}/auth/bench"
    tokens = bench.material.opaque_burst
    before = introspection_count(port)
    statuses = asyncio.run(_burst(url, tokens, BURST_REQUESTS))
    calls = introspection_count(port) - before
    answered = sum(status == 200 for status in statuses)
    passed = calls == len(tokens) and answered == len(statuses)
    verdict = "PASS" if passed else "FAIL"
    return passed, (
        f"{verdict}: {len(tokens)} distinct tokens x {BURST_REQUESTS} concurrent requests → "
        f"{calls} introspection calls (want {len(tokens)}), {answered}/{len(statuses)} got 200"
    )


async def _burst(url: str, tokens: Sequence[str], per_token: int) -> list[int]:
    """Every request on its own connection, all sent at once."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(url, headers=headers) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(token) for _ in range(per_token) for token in tokens))


# --- wrk ------------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> dict[str, float | int]:
    def number(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk output has no {pattern!r}:\n{output}")
        return match

    def latency(percent: str) -> float:
        match = number(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$")
        return float(match[1]) * _UNITS_MS[match[2]]

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "rps": float(number(r"^Requests/sec:\s+([\d.]+)")[1]),
        "requests": int(number(r"^\s*(\d+) requests in ")[1]),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in sockets.groups()) if sockets else 0,
    }


def run_wrk(bench: Bench, scenario: Scenario, url: str, seconds: int, label: str) -> str:
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    rotated = bench.material.token_files.get(scenario.auth)
    if rotated is not None:
        argv += ["-s", str(COLD_LUA), url, "--", str(rotated)]
    else:
        token = good_token(bench.material, scenario.auth)
        if token is not None:
            argv += ["-H", f"Authorization: Bearer {token}"]
        argv.append(url)
    log = bench.tmp / f"wrk-{scenario.name}-{label}.txt"
    proc = bench.procs.start(
        argv, stdout=log, stderr=log, cpus=CLIENT_CORE if scenario.pinned else None
    )
    try:
        code = proc.wait(timeout=seconds + 30)
    finally:
        bench.procs.stop(proc)
    output = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"wrk exited with {code}: {output}")
    return output


@dataclass(frozen=True)
class BackendCounters:
    introspections: int
    redis_commands: int | None
    cpu_ticks: int


def backend_counters(backends: Backends) -> BackendCounters:
    """Read from outside the gateway, so the gateway's own bookkeeping is not trusted."""
    redis = backends.redis
    pids = tree_pids(backends.introspection.proc.pid)
    if redis is not None:
        pids += tree_pids(redis.proc.pid)
    return BackendCounters(
        introspection_count(backends.introspection.port, backends.introspection.scheme),
        None if redis is None else redis_commands(redis.port),
        cpu_ticks(pids),
    )


def charge_backends(
    result: Result, before: BackendCounters, after: BackendCounters, requests: int
) -> None:
    result.introspections_per_req = (after.introspections - before.introspections) / requests
    if before.redis_commands is not None and after.redis_commands is not None:
        # Minus one: the INFO that read `before` is counted in `after`.
        commands = after.redis_commands - before.redis_commands - 1
        result.redis_commands_per_req = commands / requests
    ticks = after.cpu_ticks - before.cpu_ticks
    result.backend_cpu_us_per_req = ticks * 1_000_000 / CLK_TCK / requests


def measure(bench: Bench, scenario: Scenario, server: Running, seconds: int) -> Result:
    url = f"http://127.0.0.1:{server.port}{scenario.path}"
    run_wrk(bench, scenario, url, WARMUP_SECONDS, "warmup")
    pids = tree_pids(server.proc.pid)
    before = cpu_ticks(pids)
    backends_before = backend_counters(server.backends) if server.backends else None
    output = run_wrk(bench, scenario, url, seconds, "run")
    backends_after = backend_counters(server.backends) if server.backends else None
    pids = tree_pids(server.proc.pid)
    ticks = cpu_ticks(pids) - before
    numbers = parse_wrk(output)
    result = Result(scenario.name, **numbers)  # type: ignore[arg-type]
    requests = max(int(numbers["requests"]), 1)
    result.cpu_us_per_req = ticks * 1_000_000 / CLK_TCK / requests
    result.rss_mb = rss_mb(pids)
    if len(pids) > 1 and scenario.server.startswith("gateway"):
        result.processes = process_memory(pids)
    if backends_before is not None and backends_after is not None:
        charge_backends(result, backends_before, backends_after, requests)
    errors = int(numbers["non_2xx"]) + int(numbers["socket_errors"])
    if errors:
        result.status = f"ERRORS: {numbers['non_2xx']} non-2xx, {numbers['socket_errors']} socket"
    return result


def run_scenario(bench: Bench, scenario: Scenario, seconds: int) -> Result:
    print(f"--- {scenario.name}: {scenario.what}", file=sys.stderr, flush=True)
    if scenario.server == "upstream":
        return _checked_run(bench, scenario, bench.upstream, seconds)
    try:
        server = start_server(bench, scenario.server)
    except Skip as reason:
        print(f"    skipped: {reason}", file=sys.stderr)
        return Result(scenario.name, status=f"skipped: {reason}")
    try:
        return _checked_run(bench, scenario, server, seconds)
    finally:
        bench.procs.stop(server.proc)
        stop_backends(bench, server.backends)


def _checked_run(bench: Bench, scenario: Scenario, server: Running, seconds: int) -> Result:
    base = f"http://127.0.0.1:{server.port}"
    try:
        preflight(bench, scenario, base)
        if server.backends is not None:
            prewarm(bench, scenario, base)
    except (CheckFailed, OSError) as error:
        print(f"    ERROR, not measured: {error}", file=sys.stderr)
        if scenario.server.startswith("gateway"):
            return Result(scenario.name, status=f"FAILED CHECK: {error}")
        return Result(scenario.name, status=f"skipped, peer failed its check: {error}")
    try:
        result = measure(bench, scenario, server, seconds)
    except RuntimeError as error:  # wrk failed or printed nothing parseable
        print(f"    ERROR: {error}", file=sys.stderr)
        return Result(scenario.name, status=f"FAILED RUN: {str(error).splitlines()[0]}")
    print(f"    {result.rps:.0f} req/s, {result.status}", file=sys.stderr, flush=True)
    if scenario.server == "gateway-opaque-miss":
        _record_single_flight(bench, server, result)
    return result


def _record_single_flight(bench: Bench, server: Running, result: Result) -> None:
    """After the measured run, so the burst does not disturb it."""
    import aiohttp

    try:
        passed, summary = single_flight_check(bench, server)
    except (OSError, TimeoutError, aiohttp.ClientError) as error:
        passed, summary = False, f"FAIL: {type(error).__name__}: {error}"
    result.single_flight = summary
    print(f"    single-flight: {summary}", file=sys.stderr, flush=True)
    if not passed and result.status == "ok":
        result.status = "FAILED CHECK: single-flight"


# --- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tools": tool_versions(),
    }


def tool_versions() -> dict[str, str]:
    found = {}
    for tool, argv, pattern in (
        ("wrk", ["wrk", "-v"], r"wrk (\S+)"),
        ("nginx", ["nginx", "-v"], r"nginx/(\S+)"),
        ("haproxy", ["haproxy", "-v"], r"version (\S+)"),
    ):
        if not shutil.which(tool):
            continue
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        match = re.search(pattern, done.stdout + done.stderr)
        found[tool] = match[1] if match else "?"
    return found


def ratios(results: dict[str, Result]) -> list[dict[str, Any]]:
    def rps(name: str) -> float | None:
        result = results.get(name)
        return result.rps if result is not None and result.measured else None

    def cpu(name: str) -> float | None:
        result = results.get(name)
        return result.cpu_us_per_req if result is not None and result.measured else None

    # Issue 14's targets, every one measured in this run (no quoted figures).
    rows: list[tuple[str, float | None, float | None, float | None]] = [
        ("gateway-jwt-hot / haproxy-jwt", rps("gateway-jwt-hot"), rps("haproxy-jwt"), 1.0),
        ("gateway-opaque-l2 / apache-oidc-introspection (Redis)", rps("gateway-opaque-l2"),
         rps("apache-oidc-introspection"), 1.5),
        ("gateway-opaque-l1 / gateway-jwt-hot", rps("gateway-opaque-l1"),
         rps("gateway-jwt-hot"), 0.95),
        ("gateway-anon / nginx-proxy", rps("gateway-anon"), rps("nginx-proxy"), 0.3),
        ("gateway-workers2 / haproxy-jwt-2threads", rps("gateway-workers2"),
         rps("haproxy-jwt-2threads"), 1.0),
        ("gateway-jwt-cold-rs256 / gateway-jwt-hot", rps("gateway-jwt-cold-rs256"),
         rps("gateway-jwt-hot"), None),
        ("gateway-jwt-cold-rs256 / apache-oidc-jwt", rps("gateway-jwt-cold-rs256"),
         rps("apache-oidc-jwt"), None),
        ("gateway-jwt-cold-rs256 / haproxy-jwt", rps("gateway-jwt-cold-rs256"),
         rps("haproxy-jwt"), None),
        ("gateway-jwt-cold-es256 / haproxy-jwt", rps("gateway-jwt-cold-es256"),
         rps("haproxy-jwt"), None),
        ("gateway-opaque-miss / gateway-jwt-cold-rs256", rps("gateway-opaque-miss"),
         rps("gateway-jwt-cold-rs256"), None),
    ]  # fmt: skip
    out = []
    for label, top, bottom, target in rows:
        if top is None or not bottom:
            continue
        value = top / bottom
        met = None if target is None else value >= target
        out.append({"ratio": label, "value": round(value, 3), "target": target, "met": met})
    # Issue 17: what an identity token or two limits add, in CPU per request (at most 10%).
    for name in ("gateway-jwt-idtoken", "gateway-jwt-limits"):
        top, bottom = cpu(name), cpu("gateway-jwt-hot")
        if top is None or not bottom:
            continue
        value = top / bottom
        out.append({"ratio": f"CPU µs/req: {name} / gateway-jwt-hot", "value": round(value, 3),
                    "target": 1.10, "met": value <= 1.10, "at_most": True})  # fmt: skip
    return out


def _cell(value: float | int | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def markdown(info: dict[str, Any], seconds: int, results: list[Result],
             ratio_rows: list[dict[str, Any]]) -> str:  # fmt: skip
    tools = ", ".join(f"{k} {v}" for k, v in info["tools"].items())
    lines = [
        f"Bench {info['date']}: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, "
        f"Python {info['python']}, {tools}; wrk -t1 -c{CONNECTIONS}, {seconds}s per scenario "
        f"after a {WARMUP_SECONDS}s warm-up",
        "",
        "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | server RSS MB | non-2xx "
        "| status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {_cell(r.rps, 0)} | {_cell(r.p50_ms, 2)} | {_cell(r.p99_ms, 2)} "
            f"| {_cell(r.cpu_us_per_req, 0)} | {_cell(r.rss_mb, 1)} | {_cell(r.non_2xx, 0)} "
            f"| {r.status} |"
        )
    lines += opaque_table(results)
    lines += memory_table(results)
    if ratio_rows:
        lines += ["", "| ratio (req/s unless named) | value | target |", "|---|---:|---|"]
        for row in ratio_rows:
            bound = "≤" if row.get("at_most") else "≥"
            target = "-" if row["target"] is None else f"{bound} {row['target']:g}"
            if row["met"] is not None:
                target += " met" if row["met"] else " **MISSED**"
            lines.append(f"| {row['ratio']} | {row['value']:.2f} | {target} |")
    return "\n".join(lines)


def memory_table(results: list[Result]) -> list[str]:
    """Per-process memory of the gateway scenarios, against the per-worker goal."""
    gateways = [r for r in results if r.name.startswith("gateway") and r.rss_mb is not None]
    if not gateways:
        return []
    lines = ["", f"| gateway memory | process | RSS MB | PSS MB | RSS ≤ {RSS_GOAL_MB:g} MB |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for r in gateways:
        if r.processes:
            for index, process in enumerate(r.processes):
                role = "supervisor" if index == 0 else f"worker {index}"
                met = (
                    "-"
                    if index == 0
                    else ("met" if process["rss"] <= RSS_GOAL_MB else "**MISSED**")
                )
                lines.append(f"| {r.name} | {role} | {process['rss']:.1f} "
                             f"| {process.get('pss', 0):.1f} | {met} |")  # fmt: skip
        else:
            met = "met" if (r.rss_mb or 0) <= RSS_GOAL_MB else "**MISSED**"
            lines.append(f"| {r.name} | the one process | {r.rss_mb:.1f} | - | {met} |")
    return lines


def opaque_table(results: list[Result]) -> list[str]:
    """What the gateway asked of its backends per request, counted at the backends."""
    opaque = [r for r in results if r.introspections_per_req is not None]
    if not opaque:
        return []
    lines = [
        "",
        "| opaque scenario | introspection calls/req | Redis commands/req "
        "| endpoint + Redis CPU µs/req |",
        "|---|---:|---:|---:|",
    ]
    for r in opaque:
        lines.append(
            f"| {r.name} | {_cell(r.introspections_per_req, 3)} "
            f"| {_cell(r.redis_commands_per_req, 3)} | {_cell(r.backend_cpu_us_per_req, 0)} |"
        )
    lines += [f"\nSingle-flight ({r.name}): {r.single_flight}" for r in opaque if r.single_flight]
    return lines


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--scenarios", help="comma-separated subset: " + ",".join(BY_NAME))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-introspection", nargs=4,
                        metavar=("PORT", "TOKENS_FILE", "ANSWERS_FILE", "JWKS_FILE"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), type=Path,
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.duration < 1 or args.duration > 120:
        parser.error("--duration must be 1..120 seconds")
    return args


def selected(spec: str | None) -> list[Scenario]:
    if not spec:
        return list(SCENARIOS)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(BY_NAME)}")
    return [scenario for scenario in SCENARIOS if scenario.name in names]


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    # SIGINT too: a shell starting us in the background leaves it ignored, not KeyboardInterrupt.
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, _interrupt) for signum in wanted}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def bench_all(scenarios: list[Scenario], seconds: int) -> tuple[list[Result], list[str]]:
    procs = Children()
    notes = [] if procs.can_pin else ["taskset not found: nothing is pinned."]
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            material = make_material(tmp)
            upstream = start_upstream(tmp, procs, notes)
            bench = Bench(tmp, procs, material, upstream, notes)
            return [run_scenario(bench, scenario, seconds) for scenario in scenarios], notes
        finally:
            # A second Ctrl-C (or SIGTERM) must not cut this short.
            masked = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                procs.stop_all()
            finally:
                for signum, handler in masked.items():
                    signal.signal(signum, handler)


def serve_upstream(port: int) -> None:
    """The fallback upstream when nginx is missing: the same fixed body."""
    from aiohttp import web

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_introspection(
    port: int,
    tokens_file: Path,
    answers_file: Path,
    jwks_file: Path,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """The bench issuer: the RFC 7662 §2 endpoint and the JWKS, as cheap as they can be
    (answers are built once at start, so the bench measures its clients, not this server);
    over TLS when ``tls`` (certificate, key) is given."""
    import ssl

    from aiohttp import web

    expires = int(time.time()) + 3600
    base = {
        "active": True, "sub": "bench-user", "client_id": "bench-client", "scope": SCOPE,
        "aud": AUDIENCE, "iss": ISSUER, "exp": expires, "token_type": "Bearer",
    }  # fmt: skip
    known = {token: json.dumps(base).encode() for token in tokens_file.read_text().split()}
    for token, changes in json.loads(answers_file.read_text()).items():
        known[token] = json.dumps(base | changes).encode()
    jwks = jwks_file.read_bytes()
    inactive = b'{"active":false}'
    credentials = base64.b64encode(":".join(INTROSPECTION_CLIENT).encode()).decode()
    expected_auth = f"Basic {credentials}"
    calls = 0

    async def introspect(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        # RFC 7662 §2.1: "the endpoint MUST also require some form of authorization".
        if request.headers.get("Authorization") != expected_auth:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="bench"'})
        form = urllib.parse.parse_qs((await request.read()).decode())
        token = form.get("token", [""])[0]
        if token.startswith(BURST_PREFIX):
            await asyncio.sleep(BURST_HOLD)
        return web.Response(
            body=known.get(token, inactive), content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip

    async def keys(_request: web.Request) -> web.Response:
        return web.Response(body=jwks, content_type="application/json")

    async def count(_request: web.Request) -> web.Response:
        return web.json_response({"calls": calls})

    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    app = web.Application()
    app.router.add_post("/introspect", introspect)
    app.router.add_get("/jwks", keys)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, ssl_context=context)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.serve_introspection:
        port, tokens, answers, jwks = args.serve_introspection
        tls = tuple(args.tls) if args.tls else None
        serve_introspection(int(port), Path(tokens), Path(answers), Path(jwks), tls)  # type: ignore[arg-type]
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    scenarios = selected(args.scenarios)
    info = machine()
    with interruptible():
        results, notes = bench_all(scenarios, args.duration)
    by_name = {result.name: result for result in results}
    ratio_rows = ratios(by_name)
    print(markdown(info, args.duration, results, ratio_rows))
    for note in notes:
        print(f"\nNote: {note}")
    if args.json:
        document = {"machine": info, "duration": args.duration, "connections": CONNECTIONS,
                    "results": [asdict(r) for r in results], "ratios": ratio_rows,
                    "notes": notes}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    failed = [r.name for r in results if r.status.startswith(("ERRORS", "FAILED"))]
    if failed:
        print(f"\nScenarios with errors: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process this bench started was stopped", file=sys.stderr)
        sys.exit(130)
