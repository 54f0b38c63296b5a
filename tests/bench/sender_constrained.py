"""DPoP through the gateway (RFC 9449): a DPoP-bound token with a fresh ES256 proof per
request against a hot Bearer JWT, in the same run on the same gateway process, and the
replay store's cost with Redis on (issue 16).

    .venv/bin/python tests/bench/sender_constrained.py [--duration 10]

One gateway (pinned to core 0) with three routes to the same nginx upstream: ``/auth``
(Bearer, RS256 JWT, a verified-token cache hit), ``/dpop`` (DPoP required, replay store in
memory) and ``/dpop-redis`` (DPoP required, replay store in memory and Redis: one
``SET NX PX`` per proof). The token is the same hot RS256 JWT shape, bound with
``cnf.jkt``; what DPoP adds per request is the proof: parse, ``htu``/``htm``/``iat``/``ath``
checks, the ES256 signature, the thumbprint, the replay record. wrk cannot sign, so each
DPoP run gets its own file of pre-signed proofs with unique ``jti``s (``dpop.lua``), sized
from the Bearer run's rate. Reported: req/s, latency, gateway CPU µs/request from /proc,
Redis commands per request. Reuses tests/bench/run.py's machinery; everything it starts
is stopped by process group, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.bench.run import (  # noqa: E402
    CLIENT_CORE,
    CLK_TCK,
    CONNECTIONS,
    REPO,
    SERVER_CORE,
    WARMUP_SECONDS,
    cpu_ticks,
    parse_wrk,
    redis_commands,
    start_upstream,
    tree_pids,
    wait_until,
)
from tests.support.dpop import ClientKey, client_key, proof  # noqa: E402
from tests.support.processes import Children, free_port  # noqa: E402

ISSUER = "https://bench.example/"
AUDIENCE = "api://bench"
DPOP_LUA = HERE / "dpop.lua"
# Proofs made per expected request: the DPoP rate stays below the Bearer rate it is sized
# from; the margin covers a faster second half.
PROOF_MARGIN = 1.25


@dataclass(frozen=True)
class Material:
    jwks_file: Path
    bearer: str
    bound: str  # the same claims plus cnf.jkt of ``key``
    key: ClientKey


def make_material(tmp: Path) -> Material:
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(signing.public_key(), as_dict=True)
    jwks_file = tmp / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [{**public, "kid": "bench", "alg": "RS256"}]}))
    key = client_key("ES256")

    def mint(**extra: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": "bench-user", "client_id": "bench-client",
                  "aud": AUDIENCE, "scope": "orders:read", "iat": now, "exp": now + 3600,
                  "jti": uuid.uuid4().hex, **extra}  # fmt: skip
        headers = {"kid": "bench", "typ": "at+jwt"}
        return jwt.encode(claims, signing, algorithm="RS256", headers=headers)

    return Material(jwks_file, mint(), mint(cnf={"jkt": key.jkt}), key)


def gateway_config(
    tmp: Path, material: Material, port: int, admin: int, upstream: int, redis: int | None
) -> Path:
    """``/auth`` (Bearer) and ``/dpop`` (DPoP required); with ``redis`` the replay store
    also records every proof in Redis (``replay.redis``; it is one store per gateway)."""
    external = f"http://127.0.0.1:{port}"
    replay: dict[str, Any] = {"max_entries": 2_000_000, "redis": redis is not None}
    dpop = {"mode": "required", "external_url": external}
    config: dict[str, Any] = {
        "logging": {"access_log": False},
        "shutdown": {"readiness_delay": "0s", "drain_timeout": "2s"},
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "defaults": {"dpop": {"replay": replay}},
        "upstreams": {"bench": {"url": f"http://127.0.0.1:{upstream}"}},
        "issuers": [{"name": "bench", "issuer": ISSUER, "keys": {"file": str(material.jwks_file)},
                     "audiences": [AUDIENCE], "algorithms": ["RS256"]}],
        "routes": [
            {"name": "auth", "match": {"path": {"prefix": "/auth"}}, "upstream": "bench"},
            {"name": "dpop", "match": {"path": {"prefix": "/dpop"}}, "upstream": "bench",
             "dpop": dpop},
        ],
    }  # fmt: skip
    if redis is not None:
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        # The timeout covers the event loop's queue as well as Redis: at saturation (50
        # connections, a full core) a 200 ms budget ran out for ~0.1% of proofs, answered
        # 503 (fail closed). 1 s keeps refusals out of a cost measurement.
        config["cache"] = {"redis": {"url": f"redis://127.0.0.1:{redis}", "timeout": "1s",
                                     "key": key}}  # fmt: skip
    path = tmp / ("gateway-redis.yaml" if redis else "gateway.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def status_of(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=3) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)


@dataclass(frozen=True)
class Gateway:
    proc: Any
    base: str  # the proxy listener
    admin: str  # the admin listener (/metrics)


def start_gateway(
    tmp: Path, procs: Children, material: Material, upstream: int, redis: int | None
) -> Gateway:
    port, admin = free_port(), free_port()
    conf = gateway_config(tmp, material, port, admin, upstream, redis)
    log = tmp / f"{conf.stem}.log"
    command = [sys.executable, "-m", "gateway", "run", "-c", str(conf)]
    gateway = procs.start(command, stdout=log, stderr=log, cpus=SERVER_CORE, cwd=REPO)
    wait_until(gateway, f"http://127.0.0.1:{admin}/readyz", log, want=200)
    return Gateway(gateway, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")


def preflight(base: str, material: Material) -> None:
    """Auth is on: the right requests pass, a replay and a bound token as Bearer do not."""
    assert status_of(base + "/auth/bench", {"Authorization": f"Bearer {material.bearer}"}) == 200
    assert status_of(base + "/auth/bench", {}) == 401
    for path in ("/dpop/bench",):
        url = base + path
        signed = proof(material.key, htu=url, token=material.bound)
        headers = {"Authorization": f"DPoP {material.bound}", "DPoP": signed}
        assert status_of(url, headers) == 200, path
        assert status_of(url, headers) == 401, f"{path}: a replayed proof passed"
        assert status_of(url, {"Authorization": f"Bearer {material.bound}"}) == 401, path
        assert status_of(url, {"Authorization": f"Bearer {material.bearer}"}) == 401, path


_SAMPLE = re.compile(r"^(gateway_requests_total|gateway_auth_decisions_total)\{([^}]*)\} (\S+)$",
                     re.MULTILINE)  # fmt: skip


def refusals(admin: str) -> Counter[str]:
    """Answers other than 200 so far, by status and, for refusals of the auth step, its
    reason, from the gateway's own /metrics: what a non-2xx in wrk's summary was."""
    with urllib.request.urlopen(admin + "/metrics", timeout=3) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for family, labels, value in _SAMPLE.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        # 499: wrk closing its connections at the end of a run, not an answer anyone got.
        if family == "gateway_requests_total" and fields.get("status") not in ("200", "499"):
            counts[f"status {fields.get('status')}"] += int(float(value))
        elif family == "gateway_auth_decisions_total" and fields.get("outcome") == "deny":
            counts[f"denied: {fields.get('reason')}"] += int(float(value))
    return counts


def write_proofs(tmp: Path, name: str, material: Material, url: str, count: int) -> Path:
    path = tmp / f"{name}.proofs"
    with path.open("w") as out:
        for _ in range(count):
            out.write(proof(material.key, htu=url, token=material.bound) + "\n")
    return path


def wrk(procs: Children, tmp: Path, label: str, url: str, seconds: int, extra: list[str]) -> str:
    """``extra``: ``["-H", header]``, or ``["-s", script, *script_args]`` (those follow the URL)."""
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if extra[0] == "-s":
        argv += [*extra[:2], url, "--", *extra[2:]]
    else:
        argv += [*extra, url]
    log = tmp / f"wrk-{label}.txt"
    proc = procs.start(argv, stdout=log, stderr=log, cpus=CLIENT_CORE)
    try:
        code = proc.wait(timeout=seconds + 30)
    finally:
        procs.stop(proc)
    output = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"wrk exited with {code}: {output}")
    return output


def measure(
    procs: Children,
    tmp: Path,
    name: str,
    url: str,
    seconds: int,
    args_for: Any,
    gateway: Gateway,
    redis_port: int | None,
) -> dict[str, Any]:
    wrk(procs, tmp, f"{name}-warmup", url, WARMUP_SECONDS, args_for("warmup", WARMUP_SECONDS))
    run_args = args_for("run", seconds)
    pids = tree_pids(gateway.proc.pid)
    denied = refusals(gateway.admin)
    ticks = cpu_ticks(pids)
    commands = redis_commands(redis_port) if redis_port else None
    numbers = parse_wrk(wrk(procs, tmp, f"{name}-run", url, seconds, run_args))
    ticks = cpu_ticks(pids) - ticks
    requests = max(int(numbers["requests"]), 1)
    result: dict[str, Any] = {"name": name, **numbers,
                              "cpu_us_per_req": ticks * 1_000_000 / CLK_TCK / requests,
                              "refused": dict(refusals(gateway.admin) - denied)}  # fmt: skip
    if commands is not None and redis_port:
        # Minus one: the INFO that read ``commands`` is counted in the second reading.
        result["redis_per_req"] = (redis_commands(redis_port) - commands - 1) / requests
    return result


def start_redis(procs: Children, tmp: Path) -> int | None:
    if shutil.which("redis-server") is None:
        return None
    port = free_port()
    log = tmp / "redis.log"
    procs.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp)], stdout=log, stderr=log,
                cpus=CLIENT_CORE)  # fmt: skip
    for _ in range(100):
        try:
            redis_commands(port)
            return port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"redis-server did not start: {log.read_text()[-500:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    notes: list[str] = []
    procs = Children()
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dpop-") as directory:
            tmp = Path(directory)
            material = make_material(tmp)
            upstream = start_upstream(tmp, procs, notes)
            redis = start_redis(procs, tmp)
            if redis is None:
                notes.append("redis-server not found: the Redis replay scenario was skipped.")
            bearer = ["-H", f"Authorization: Bearer {material.bearer}"]
            rate = 0.0
            # One gateway without Redis (Bearer and DPoP in the same process), then one whose
            # replay store is backed by Redis.
            for with_redis in (False, True) if redis else (False,):
                gateway = start_gateway(tmp, procs, material, upstream.port,
                                        redis if with_redis else None)  # fmt: skip
                base = gateway.base
                preflight(base, material)
                if not with_redis:
                    print("--- bearer-jwt-hot", file=sys.stderr, flush=True)
                    results.append(measure(procs, tmp, "bearer-jwt-hot", base + "/auth/bench",
                                           args.duration, lambda _label, _s: bearer,
                                           gateway, redis))  # fmt: skip
                    rate = float(results[0]["rps"])
                name = "dpop-es256-redis" if with_redis else "dpop-es256"
                url = base + "/dpop/bench"

                def proofs_for(
                    label: str, seconds: int, url: str = url, name: str = name, rate: float = rate
                ) -> list[str]:
                    count = math.ceil(rate * seconds * PROOF_MARGIN) + 1000
                    started = time.perf_counter()
                    made = write_proofs(tmp, f"{name}-{label}", material, url, count)
                    took = time.perf_counter() - started
                    print(f"    {count} proofs for {label} in {took:.1f}s", file=sys.stderr)
                    return ["-s", str(DPOP_LUA), str(made), material.bound]

                print(f"--- {name}", file=sys.stderr, flush=True)
                results.append(measure(procs, tmp, name, url, args.duration, proofs_for,
                                       gateway, redis))  # fmt: skip
                procs.stop(gateway.proc)
    finally:
        procs.stop_all()
    report(results, args.duration, notes)
    return 0 if all(r["non_2xx"] == 0 and r["socket_errors"] == 0 for r in results) else 1


def report(results: list[dict[str, Any]], seconds: int, notes: list[str]) -> None:
    print(f"wrk -t1 -c{CONNECTIONS}, {seconds}s after a {WARMUP_SECONDS}s warm-up, one gateway "
          "process pinned to core 0; wrk, nginx upstream and Redis on core 1\n")  # fmt: skip
    print("| scenario | req/s | p50 ms | p99 ms | gateway CPU µs/req | Redis cmds/req | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        redis = f"{r['redis_per_req']:.2f}" if "redis_per_req" in r else "-"
        print(f"| {r['name']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['cpu_us_per_req']:.0f} | {redis} | {r['non_2xx']} |")  # fmt: skip
    by_name = {r["name"]: r for r in results}
    bearer, dpop = by_name.get("bearer-jwt-hot"), by_name.get("dpop-es256")
    if bearer and dpop:
        extra = dpop["cpu_us_per_req"] - bearer["cpu_us_per_req"]
        ratio = dpop["rps"] / bearer["rps"]
        print(f"\nDPoP proof per request: +{extra:.0f} µs CPU, {ratio:.2f} of the Bearer rate")
    shared = by_name.get("dpop-es256-redis")
    if dpop and shared:
        extra = shared["cpu_us_per_req"] - dpop["cpu_us_per_req"]
        ratio = shared["rps"] / dpop["rps"]
        print(
            f"Redis replay store: +{extra:.0f} µs CPU per request, {ratio:.2f} of the "
            "in-memory rate"
        )
    for r in results:
        if r["refused"]:
            print(f"{r['name']}: refused during the run: {r['refused']}")
    for note in notes:
        print(f"\nNote: {note}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process this bench started was stopped", file=sys.stderr)
        sys.exit(130)
