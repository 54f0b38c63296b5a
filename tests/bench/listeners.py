"""Which client-side listener: gateway/listener vs aiohttp's server vs granian (issue 14).

    .venv/bin/python tests/bench/listeners.py [--duration 10] [--repeat 3] [--scenarios a,b]

The same machine and layout as tests/bench/run.py: the server under test alone on core 0,
wrk (-t1 -c50) and the nginx upstream on core 1. Two applications on each server: a fixed
``hello`` and a ``proxy`` that forwards to nginx with gateway/proxy/pool.py
and relays the answer. Each scenario: start, probe, 2 s warm-up, measured run; with
``--repeat`` the scenarios take turns and the median run (by req/s) is reported.
See tests/bench/README.md, "Choosing the listener".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.bench.listener_apps import UPSTREAM_ENV  # noqa: E402
from tests.bench.run import (  # noqa: E402
    CLIENT_CORE,
    CLK_TCK,
    CONNECTIONS,
    SERVER_CORE,
    WARMUP_SECONDS,
    Running,
    Skip,
    cpu_ticks,
    interruptible,
    machine,
    parse_wrk,
    rss_mb,
    start_upstream,
    tree_pids,
    wait_until,
)
from tests.support.processes import Children, free_port  # noqa: E402

APPS = HERE / "listener_apps.py"


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # listener | listener-task | aiohttp | granian | upstream
    app: str  # hello | proxy | proxy-callback
    what: str


SCENARIOS = (
    Scenario("upstream-direct", "upstream", "hello", "wrk -> nginx itself (the ceiling)"),
    Scenario("listener-hello", "listener", "hello", "gateway/listener, answered in the callback"),
    Scenario("listener-hello-task", "listener-task", "hello", "gateway/listener, a task each"),
    Scenario("aiohttp-hello", "aiohttp", "hello", "aiohttp web.Server (as app.py today)"),
    Scenario("granian-hello", "granian", "hello", "granian RSGI, 1 worker, 1 runtime thread"),
    Scenario("listener-proxy", "listener-task", "proxy", "gateway/listener + upstream pool"),
    Scenario(
        "listener-proxy-callback",
        "listener",
        "proxy-callback",
        "the same, no task: a callback on the upstream head (experiment)",
    ),
    Scenario("aiohttp-proxy", "aiohttp", "proxy", "aiohttp web.Server + upstream pool"),
    Scenario("granian-proxy", "granian", "proxy", "granian RSGI + upstream pool"),
)
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Measured:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    rss_mb: float
    errors: int


def start_server(scenario: Scenario, procs: Children, tmp: Path, upstream: Running) -> Running:
    port = free_port()
    log = tmp / f"{scenario.name}.log"
    if scenario.server == "granian":
        os.environ[UPSTREAM_ENV] = str(upstream.port)
        argv = [
            sys.executable, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--runtime-threads", "1",
            "--runtime-mode", "st", "--loop", "uvloop", "--http", "1", "--no-ws",
            "--backlog", "1024", f"tests.bench.listener_apps:granian_{scenario.app}",
        ]  # fmt: skip
    else:
        argv = [sys.executable, str(APPS), scenario.server, scenario.app, str(port),
                str(upstream.port)]  # fmt: skip
    proc = procs.start(argv, stdout=log, stderr=log, cpus=SERVER_CORE, cwd=REPO)
    running = Running(scenario.name, proc, port, log)
    wait_until(proc, f"http://127.0.0.1:{port}/anon/bench", log, want=200)
    return running


def wrk(procs: Children, tmp: Path, url: str, seconds: int, label: str) -> str:
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s", url]
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


def measure(scenario: Scenario, procs: Children, tmp: Path, upstream: Running,
            seconds: int, run: int) -> Measured:  # fmt: skip
    server = (
        upstream if scenario.server == "upstream" else start_server(scenario, procs, tmp, upstream)
    )
    try:
        url = f"http://127.0.0.1:{server.port}/anon/bench"
        wrk(procs, tmp, url, WARMUP_SECONDS, f"{scenario.name}-{run}-warmup")
        pids = tree_pids(server.proc.pid)
        before = cpu_ticks(pids)
        output = wrk(procs, tmp, url, seconds, f"{scenario.name}-{run}")
        pids = tree_pids(server.proc.pid)
        ticks = cpu_ticks(pids) - before
        numbers = parse_wrk(output)
        requests = max(int(numbers["requests"]), 1)
        return Measured(
            scenario.name, float(numbers["rps"]), float(numbers["p50_ms"]),
            float(numbers["p99_ms"]), ticks * 1_000_000 / CLK_TCK / requests, rss_mb(pids),
            int(numbers["non_2xx"]) + int(numbers["socket_errors"]),
        )  # fmt: skip
    finally:
        if server is not upstream:
            procs.stop(server.proc)


def table(results: dict[str, list[Measured]], seconds: int, repeat: int) -> str:
    """Each column is its own median over the runs (a noisy neighbour moves req/s most;
    CPU per request least), with the CPU range beside it."""
    info = machine()
    lines = [
        f"Listener bench {info['date']}: {info['nproc']} CPUs ({info['cpu']}), Python "
        f"{info['python']}; wrk -t1 -c{CONNECTIONS}, {seconds}s after a {WARMUP_SECONDS}s "
        f"warm-up, medians of {repeat} runs; server on core {SERVER_CORE}, wrk and nginx "
        f"on core {CLIENT_CORE}",
        "",
        "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | (min-max) | RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cpu: dict[str, float] = {}
    for name, runs in results.items():
        if not runs:
            lines.append(f"| {name} | - | - | - | - | - | - | skipped |")
            continue
        cpu[name] = statistics.median(m.cpu_us for m in runs)
        lines.append(
            f"| {name} | {statistics.median(m.rps for m in runs):,.0f} "
            f"| {statistics.median(m.p50_ms for m in runs):.2f} "
            f"| {statistics.median(m.p99_ms for m in runs):.2f} | {cpu[name]:.1f} "
            f"| {min(m.cpu_us for m in runs):.1f}-{max(m.cpu_us for m in runs):.1f} "
            f"| {statistics.median(m.rss_mb for m in runs):.1f} | {sum(m.errors for m in runs)} |"
        )
    lines.append("")
    for app in ("hello", "proxy"):
        ours = cpu.get(f"listener-{app}")
        for peer in ("aiohttp", "granian"):
            theirs = cpu.get(f"{peer}-{app}")
            if ours and theirs:
                lines.append(f"- {app}: {peer} CPU/req ÷ listener CPU/req = {theirs / ours:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--scenarios", help="comma-separated: " + ",".join(BY_NAME))
    args = parser.parse_args(argv)
    chosen = (
        [BY_NAME[n.strip()] for n in args.scenarios.split(",")]
        if args.scenarios
        else list(SCENARIOS)
    )
    results: dict[str, list[Measured]] = {s.name: [] for s in chosen}
    procs = Children()
    with interruptible(), tempfile.TemporaryDirectory(prefix="listener-bench-") as name:
        tmp = Path(name)
        try:
            upstream = start_upstream(tmp, procs, [])
            for run in range(args.repeat):
                for scenario in chosen:
                    print(f"--- {scenario.name} (run {run + 1}): {scenario.what}", file=sys.stderr)
                    try:
                        result = measure(scenario, procs, tmp, upstream, args.duration, run)
                    except (Skip, RuntimeError) as error:
                        print(f"    skipped: {error}", file=sys.stderr)
                        continue
                    print(f"    {result.rps:,.0f} req/s, {result.cpu_us:.1f} µs/req",
                          file=sys.stderr)  # fmt: skip
                    results[scenario.name].append(result)
                    time.sleep(0.5)
        finally:
            procs.stop_all()
    print(table(results, args.duration, args.repeat))
    return 1 if any(m.errors for runs in results.values() for m in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
