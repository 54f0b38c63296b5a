"""Where the gateway's memory goes, and what ``--workers 2`` costs per process (issue 14 item 6).

    .venv/bin/python tests/bench/memory.py [--requests 2000]

Two tables, Markdown on stdout:

1. RSS by component: a fresh interpreter per row imports the components up to that row, in
   the order a worker loads them, and reports ``VmRSS``; the increment is the component's.
   The last rows start a gateway in-process (runtime, both listeners) on the bench's JWT
   config, then after ``--requests`` requests through it.
2. ``gateway run --workers 2`` as processes, on the same config with Redis configured (a
   private redis-server): after ``--requests`` requests, RSS and PSS of the supervisor and
   each worker from /proc/PID/smaps_rollup, with the workers forked from one prepared
   process (the default) and with each preparing for itself (``GATEWAY_PRELOAD=0``); and
   the single-process ``gateway run`` for comparison.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.processes import Children, free_port  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402

COMPONENTS = [
    ("Python interpreter", []),
    ("asyncio, uvloop (and ssl, which asyncio imports)", ["asyncio", "uvloop"]),
    ("config: pydantic models, YAML loader", ["gateway.config.loader", "gateway.config.models"]),
    ("listener and proxy core (httptools)", ["gateway.listener", "gateway.proxy.forward",
                                             "gateway.proxy.tunnel"]),
    ("aiohttp (admin listener, control-plane client)", ["aiohttp", "aiohttp.web"]),
    ("JWT: PyJWT, cryptography", ["jwt", "cryptography.hazmat.primitives.asymmetric.rsa",
                                  "cryptography.hazmat.primitives.asymmetric.ec"]),
    ("prometheus_client", ["prometheus_client"]),
    ("re2 (regex routes)", ["re2"]),
    ("auth core, compiler, runtime, admin, decision service", ["gateway.app"]),
    ("redis-py, hiredis (only with cache.redis)", ["gateway.cache.redis"]),
]  # fmt: skip

_PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')))
"""

_STARTED = """
import asyncio, sys, urllib.error, urllib.request
sys.path.insert(0, {repo!r})
import uvloop
from gateway.app import start_gateway
from gateway.config.loader import load_config

def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:'))

async def main():
    gateway = await start_gateway(load_config({config!r}), proxy_port=0, admin_port=0)
    started = rss()
    loop = asyncio.get_running_loop()
    def load():
        request = urllib.request.Request(f"http://127.0.0.1:{{gateway.proxy_port}}/auth/x",
                                         headers={{"Authorization": "Bearer {token}"}})
        for _ in range({requests}):
            try:
                urllib.request.urlopen(request).read()
            except urllib.error.HTTPError as error:  # 502: no upstream; the auth path ran
                error.read()
    await loop.run_in_executor(None, load)
    print(started, rss())
    await gateway.close()

uvloop.run(main())
"""


def rss_after(modules: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True,
                         text=True, check=True, cwd=REPO)  # fmt: skip
    return int(out.stdout.strip())


def material(directory: Path, redis_url: str | None) -> tuple[Path, str, int, int]:
    """A JWT config (one RS256 key in a file), a token for it, and its two ports."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (directory / "jwks.json").write_text(json.dumps({"keys": [public | {"kid": "k"}]}))
    now = int(time.time())
    token = jwt.encode({"iss": "https://bench.example/", "sub": "u", "aud": "api://bench",
                        "scope": "orders:read", "iat": now, "exp": now + 3600}, key,
                       algorithm="RS256", headers={"kid": "k"})  # fmt: skip
    port, admin = free_port(), free_port()
    upstream = free_port()
    cache = ""
    if redis_url is not None:
        sealing = base64.b64encode(secrets.token_bytes(32)).decode()
        cache = f"cache: {{redis: {{url: '{redis_url}', key: '{sealing}'}}}}\n"
    config = directory / "gateway.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nadmin: {{host: 127.0.0.1, port: {admin}}}\n"
        "logging: {access_log: false}\nshutdown: {readiness_delay: 0s, drain_timeout: 2s}\n"
        f"upstreams: {{app: {{url: 'http://127.0.0.1:{upstream}'}}}}\n"
        f"issuers: [{{issuer: 'https://bench.example/', keys: {{file: '{directory}/jwks.json'}},"
        " audiences: ['api://bench']}]\n" + cache +
        "routes: [{match: {path: '/auth/**'}, upstream: app,"
        " require: {scopes: {all: ['orders:read']}}}]\n"
    )  # fmt: skip
    return config, token, port, admin


def component_table(requests: int) -> list[str]:
    lines = ["| component | RSS after MB | added MB |", "|---|---:|---:|"]
    modules: list[str] = []
    previous = 0
    for label, names in COMPONENTS:
        if label.startswith("redis"):
            continue  # measured last, beside the started gateway
        modules += names
        rss = rss_after(modules)
        lines.append(f"| {label} | {rss / 1024:.1f} | {(rss - previous) / 1024:+.1f} |")
        previous = rss
    redis = rss_after([*modules, "gateway.cache.redis"])
    lines.append(f"| redis-py, hiredis (only with cache.redis) | {redis / 1024:.1f} "
                 f"| {(redis - previous) / 1024:+.1f} |")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        config, token, _, _ = material(Path(tmp), None)
        script = _STARTED.format(repo=str(REPO), config=str(config), token=token,
                                 requests=requests)  # fmt: skip
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=False, cwd=tmp)  # fmt: skip
        if out.returncode == 0:
            started, loaded = (int(v) for v in out.stdout.split())
            lines.append(f"| started (runtime, listeners), no Redis | {started / 1024:.1f} "
                         f"| {(started - previous) / 1024:+.1f} |")  # fmt: skip
            lines.append(f"| after {requests} requests (502s: no upstream) | "
                         f"{loaded / 1024:.1f} | {(loaded - started) / 1024:+.1f} |")  # fmt: skip
        else:
            lines.append(f"| started | failed: {out.stderr.strip().splitlines()[-1:]} | |")
    return lines


def smaps(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Rss", "Pss"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["Rss"], fields["Pss"]


def family(root: int) -> list[int]:
    """The root and its children (the workers are the supervisor's, adopted or forked)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                children.append(int(entry.name))
    return [root, *sorted(children)]


def process_table(requests: int) -> list[str]:
    lines = ["| run | process | RSS MB | PSS MB |", "|---|---|---:|---:|"]
    procs = Children(cwd=REPO)
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        config, token, port, admin = material(Path(tmp), redis.url)
        for label, workers, env in (("--workers 2", 2, {}),
                                    ("--workers 2, GATEWAY_PRELOAD=0", 2, {"GATEWAY_PRELOAD": "0"}),
                                    ("one process", 1, {})):  # fmt: skip
            log = Path(tmp) / "gateway.log"
            argv = [sys.executable, "-m", "gateway", "run", "-c", str(config),
                    "--workers", str(workers)]  # fmt: skip
            proc = procs.start(argv, stdout=log, stderr=log, cwd=REPO, env=env)
            try:
                deadline = time.monotonic() + 30
                while len(family(proc.pid)) < workers + (workers > 1):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(log.read_text()[-500:])
                    time.sleep(0.2)
                _wait_ready(admin)
                _load(port, token, requests)
                members = family(proc.pid)
                for index, pid in enumerate(members):
                    role = "the gateway" if workers == 1 else (
                        "supervisor" if index == 0 else f"worker {index}")  # fmt: skip
                    rss, pss = smaps(pid)
                    lines.append(f"| {label} | {role} | {rss:.1f} | {pss:.1f} |")
                total_rss = sum(smaps(pid)[0] for pid in members)
                total_pss = sum(smaps(pid)[1] for pid in members)
                lines.append(f"| {label} | **all** | {total_rss:.1f} | {total_pss:.1f} |")
            finally:
                procs.stop(proc)
    return lines


def _wait_ready(admin: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the gateway never became ready")


def _load(port: int, token: str, requests: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/auth/x",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    for _ in range(requests):
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except urllib.error.HTTPError as error:  # 502: no upstream; the auth path ran
            error.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    print("\n".join(component_table(args.requests)))
    print()
    print("\n".join(process_table(args.requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
