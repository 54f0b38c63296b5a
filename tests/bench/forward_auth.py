"""Forward auth vs proxy: nginx + ``auth_request`` + the decision service, against the gateway
as the proxy, one hot RS256 JWT, in the same run (issue 15).

    .venv/bin/python tests/bench/forward_auth.py [--duration 10]

Both paths reach the same upstream (nginx returning a fixed body) and run the same decision
on the same gateway process: once as its proxy listener, once as its decision service behind
an nginx front that asks ``/nginx`` per request (keep-alive to the service). Reported per
component: req/s, and CPU µs per request of the gateway and of the nginx front, read from
/proc over the measured run. Reuses tests/bench/run.py's machinery; everything it starts
is stopped by process group, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.bench.run import (  # noqa: E402
    AUDIENCE,
    CLIENT_CORE,
    CLK_TCK,
    ISSUER,
    REPO,
    SCOPE,
    SERVER_CORE,
    WARMUP_SECONDS,
    Bench,
    Scenario,
    cpu_ticks,
    make_material,
    nginx_conf,
    parse_wrk,
    probe,
    run_wrk,
    start_nginx,
    start_upstream,
    tree_pids,
    wait_until,
)
from tests.support.processes import Children, free_port  # noqa: E402

IDENTITY = ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Scopes")


def gateway_config(bench: Bench, port: int, admin: int, decision: int) -> Path:
    config = {
        "logging": {"access_log": False},
        "shutdown": {"readiness_delay": "0s", "drain_timeout": "2s"},
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "decision": {"listen": {"host": "127.0.0.1", "port": decision},
                     "trusted_proxies": ["127.0.0.1/32"]},
        "upstreams": {"bench": {"url": f"http://127.0.0.1:{bench.upstream.port}"}},
        "issuers": [{"name": "bench", "issuer": ISSUER,
                     "keys": {"file": str(bench.material.jwks_file)},
                     "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"]}],
        "routes": [
            {"name": "anon", "match": {"path": "/anon/**"}, "upstream": "bench",
             "auth": "anonymous"},
            {"name": "auth", "match": {"path": "/auth/**"}, "upstream": "bench",
             "require": {"scopes": {"all": [SCOPE]}}},
        ],
    }  # fmt: skip
    path = bench.tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def front_locations(bench: Bench, decision: int) -> tuple[str, str]:
    sets = "\n".join(
        f"      auth_request_set $gw_{i} $upstream_http_{name.lower().replace('-', '_')};\n"
        f"      proxy_set_header {name} $gw_{i};"
        for i, name in enumerate(IDENTITY)
    )
    upstream = (
        f"  upstream decision {{ server 127.0.0.1:{decision}; keepalive 64; }}\n"
        f"  upstream app {{ server 127.0.0.1:{bench.upstream.port}; keepalive 64; }}"
    )
    locations = f"""
    location / {{
      auth_request /_check;
{sets}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://app;
    }}
    location = /_check {{
      internal;
      proxy_pass http://decision/nginx;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
    }}"""
    return locations, upstream


def measure(bench: Bench, name: str, url: str, charged: dict[str, int], seconds: int) -> dict:
    scenario = Scenario(name, name, "/auth/bench", "hot", False, name)
    run_wrk(bench, scenario, url, WARMUP_SECONDS, "warmup")
    pids = {label: tree_pids(pid) for label, pid in charged.items()}
    before = {label: cpu_ticks(p) for label, p in pids.items()}
    numbers = parse_wrk(run_wrk(bench, scenario, url, seconds, "run"))
    requests = max(int(numbers["requests"]), 1)
    cpu = {
        label: (cpu_ticks(p) - before[label]) * 1_000_000 / CLK_TCK / requests
        for label, p in pids.items()
    }
    return {"name": name, **numbers, "cpu_us_per_req": cpu}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    args = parser.parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    procs = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fa-") as directory:
            tmp = Path(directory)
            notes: list[str] = []
            material = make_material(tmp)
            upstream = start_upstream(tmp, procs, notes)
            bench = Bench(tmp, procs, material, upstream, notes)
            port, admin, decision = free_port(), free_port(), free_port()
            conf = gateway_config(bench, port, admin, decision)
            log = tmp / "gateway.log"
            argv = [sys.executable, "-m", "gateway", "run", "-c", str(conf)]
            gateway = procs.start(argv, stdout=log, stderr=log, cpus=SERVER_CORE, cwd=REPO)
            wait_until(gateway, f"http://127.0.0.1:{admin}/readyz", log, want=200)
            front_port = free_port()
            locations, upstreams = front_locations(bench, decision)
            front_conf = nginx_conf(tmp, "front", front_port, locations, upstreams)
            front = start_nginx(procs, "front", front_conf, front_port, CLIENT_CORE)
            token = material.hot_token
            for base in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{front_port}"):
                assert probe(base + "/auth/bench", token) == 200, base
                assert probe(base + "/auth/bench") == 401, base
            results = [
                measure(bench, "gateway-proxy", f"http://127.0.0.1:{port}/auth/bench",
                        {"gateway": gateway.pid}, args.duration),
                measure(bench, "nginx-auth_request", f"http://127.0.0.1:{front_port}/auth/bench",
                        {"gateway": gateway.pid, "nginx": front.proc.pid}, args.duration),
            ]  # fmt: skip
    finally:
        procs.stop_all()
    print(f"hot RS256 JWT, wrk -t1 -c50, {args.duration}s after a {WARMUP_SECONDS}s warm-up; "
          "gateway pinned to core 0, nginx front and wrk on core 1\n")  # fmt: skip
    print("| path | req/s | p50 ms | p99 ms | gateway CPU µs/req | nginx CPU µs/req | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cpu = r["cpu_us_per_req"]
        nginx = f"{cpu['nginx']:.0f}" if "nginx" in cpu else "-"
        print(f"| {r['name']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{cpu['gateway']:.0f} | {nginx} | {r['non_2xx']} |")  # fmt: skip
    for note in notes:
        print(f"\nNote: {note}")
    return 0 if all(r["non_2xx"] == 0 and r["socket_errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
