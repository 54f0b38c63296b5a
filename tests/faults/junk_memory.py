"""Memory under a flood of junk tokens (issue 11, defect 2): does a rejection pin a request?

    .venv/bin/python tests/faults/junk_memory.py                  # 100,000 requests, ~1-2 min
    .venv/bin/python tests/faults/junk_memory.py --requests 20000 --header-bytes 8192

Starts a real gateway (``gateway run``, one worker) with a trusted issuer and an
introspection endpoint that knows no token, then sends unique junk tokens, each request
with ``--header-bytes`` of padding: half are JWTs of the trusted issuer with a forged
signature (refused after a signature check, remembered as a rejection), half opaque
strings on an introspection route (asked once each, the inactive answer remembered). The
gateway's RSS (``/proc/PID/status``) is read before, at the end of the flood, and after
``negative_ttl`` plus the sweep interval. PASS: growth under 32 MB, and RSS back within 10%
of where it started. Not part of the pytest run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.introspection import TestIntrospectionServer  # noqa: E402
from tests.support.issuer import TestIssuer  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

NEGATIVE_TTL = 5


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def forged_jwt(issuer: TestIssuer, index: int) -> str:
    """A JWT of the trusted issuer, unique per index, whose signature is wrong."""
    token = issuer.mint({"jti": f"junk-{index}-{secrets.token_hex(4)}"})
    return token[: token.rindex(".") + 1] + base64.urlsafe_b64encode(b"\0" * 256).decode().rstrip(
        "="
    )


async def flood(port: int, issuer: TestIssuer, count: int, padding: str) -> dict[int, int]:
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            if index % 2:
                path, token = "/jwt/x", forged_jwt(issuer, index)
            else:
                path, token = "/opaque/x", f"junk{index}{secrets.token_hex(8)}"
            headers = {"Authorization": f"Bearer {token}", "X-Padding": padding}
            async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(64)))
    return statuses


async def main(args: argparse.Namespace) -> int:
    issuer, introspection = TestIssuer(), TestIntrospectionServer()
    await issuer.start()
    await introspection.start()
    port, admin = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="junk-memory-"))
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "limits": {"max_header_size": max(8190, args.header_bytes + 64)},
        "logging": {"access_log": False, "level": "warning"},
        "upstreams": {"app": {"url": "http://127.0.0.1:9"}},
        "issuers": [{
            "issuer": issuer.url, "audiences": ["api://default"], "mode": "auto",
            "keys": {"jwks_uri": issuer.jwks_url},
            "introspection": {"endpoint": introspection.url, "client": {
                "client_id": "gateway", "client_secret": "gateway-secret"}},
        }],
        "token_cache": {"negative_ttl": f"{NEGATIVE_TTL}s"},
        "cache": {"negative_ttl": f"{NEGATIVE_TTL}s"},
        "routes": [
            {"match": {"path": {"prefix": "/jwt"}}, "upstream": "app", "token_mode": "jwt"},
            {"match": {"path": {"prefix": "/opaque"}}, "upstream": "app"},
        ],
    }  # fmt: skip
    (work / "gateway.yaml").write_text(yaml.safe_dump(config))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(work / "gateway.yaml")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        padding = "p" * args.header_bytes
        await flood(port, issuer, 2000, padding)  # warm: imports, pools, allocator arenas
        await asyncio.sleep(NEGATIVE_TTL + 2)
        before = rss_mb(gateway.pid)
        started = time.monotonic()
        statuses = await flood(port, issuer, args.requests, padding)
        seconds = time.monotonic() - started
        peak = rss_mb(gateway.pid)
        await asyncio.sleep(NEGATIVE_TTL + 3)
        after = rss_mb(gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)
        await issuer.close()
        await introspection.close()
    growth = peak - before
    returned = abs(after - before) <= 0.10 * before
    ok = growth < 32 and returned and set(statuses) == {401}
    print(json.dumps({
        "requests": args.requests, "header_bytes": args.header_bytes,
        "statuses": statuses, "seconds": round(seconds, 1),
        "rss_mb": {"before": round(before, 1), "end_of_flood": round(peak, 1),
                   "after_negative_ttl": round(after, 1)},
        "growth_mb": round(growth, 1), "introspection_calls": introspection.calls,
        "result": "PASS" if ok else "FAIL",
    }, indent=2))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--header-bytes", type=int, default=8192)
    sys.exit(asyncio.run(main(parser.parse_args())))
