"""Soak: gateway memory and descriptors under steady bearer traffic (RFC 6750 §2.1, RFC 7662 §4).

    .venv/bin/python tests/faults/soak.py --minutes 10 [--rate 1000] [--write-results]

A steady, open-loop mix of valid JWTs, cached and uncached opaque tokens, invalid tokens and
anonymous requests at ``--rate`` req/s (an aiohttp load generator in its own process: wrk
cannot hold a rate, and wrk2 is not packaged here) against the gateway running its default
cache settings, with the same stack as ``run.py``: private Redis, test issuer and
introspection endpoint, verifying upstream. The gateway's VmRSS and open descriptors are
sampled every 5 s into a CSV; after the warm-up the report gives RSS min/median/max, the
drift of the last minute's median against the first post-warm-up minute's (must stay under
10 %), and whether the descriptor count is flat. Every child is stopped by process group.
"""

# ruff: noqa: E402 - the repository root goes on sys.path before its packages are imported

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp

from tests.faults.run import (
    BY_NAME,
    CLASSES,
    CLIENT_CORE,
    PYTHON,
    RESULTS,
    Children,
    Stack,
    cancel_on_signals,
    machine_line,
    metric,
    mix_pattern,
    parse_metrics,
    statuses,
    write_section,
)

SOAK_MIX = {"jwt": 8, "jwt-neg": 1, "opaque-hot": 4, "opaque-cold": 4, "opaque-neg": 1,
            "public": 2}  # fmt: skip
"""Out of 20: one request in five carries a never-seen opaque token, so the L1 cache (10,000
entries by default) is full within the warm-up at 1,000 req/s and the run measures a cache
that evicts, not one that is still filling."""
MAX_IN_FLIGHT = 256  # beyond this the generator counts a request as late instead of queueing
DRIFT_LIMIT = 0.10
FD_SLOPE_LIMIT = 0.5  # descriptors per minute, least-squares over the second half
FD_MARGIN = 2  # the last minute may exceed the first half's highest count by this much
PEERS = ("clients", "upstream", "redis", "auth", "other")


# --- the load generator (a subprocess: soak.py --loadgen) -------------------------------


@dataclass
class LoadStats:
    seconds: float = 0.0
    sent: int = 0
    late: int = 0  # due while MAX_IN_FLIGHT requests were outstanding: not sent
    cold_wrapped: bool = False
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            if not ordered:
                return None
            return ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)]

        answered = sum(sum(c.values()) for c in self.counts.values())
        return {
            "seconds": self.seconds, "sent": self.sent, "late": self.late,
            "answered": answered, "achieved_rps": answered / self.seconds if self.seconds else 0,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": ordered[-1] if ordered else None,
            "cold_wrapped": self.cold_wrapped,
            "counts": {name: dict(c) for name, c in self.counts.items()},
        }  # fmt: skip


async def generate(
    target: str, material: Path, rate: float, seconds: float, pattern: str
) -> LoadStats:
    """Send ``rate`` req/s for ``seconds`` on a fixed schedule, whatever the answers' pace."""
    by_letter = {c.letter: c for c in CLASSES}
    tokens: dict[str, list[str]] = {}
    for c in CLASSES:
        file = material / f"{c.name}.txt"
        if file.exists():
            tokens[c.letter] = [f"Bearer {t}" for t in file.read_text().split()]
    stats = LoadStats(counts={c.name: Counter() for c in CLASSES})
    next_index: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as s:

        async def one(letter: str) -> None:
            headers = {"X-Auth-Subject": "spoofed"}  # the gateway must replace or drop it
            pool = tokens.get(letter)
            if pool:
                i = next_index[letter]
                next_index[letter] = i + 1
                if letter == BY_NAME["opaque-cold"].letter and i >= len(pool):
                    stats.cold_wrapped = True
                headers["Authorization"] = pool[i % len(pool)]
            name = by_letter[letter].name
            started = loop.time()
            try:
                async with s.get(target + by_letter[letter].path, headers=headers) as response:
                    await response.read()
                    stats.counts[name][str(response.status)] += 1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                stats.counts[name][type(exc).__name__] += 1
            stats.latencies_ms.append((loop.time() - started) * 1000)

        in_flight: set[asyncio.Task[None]] = set()
        start = loop.time()
        position = 0
        while (elapsed := loop.time() - start) < seconds:
            for _ in range(int(elapsed * rate) - stats.sent):
                stats.sent += 1
                if len(in_flight) >= MAX_IN_FLIGHT:
                    stats.late += 1
                    continue
                task = asyncio.create_task(one(pattern[position % len(pattern)]))
                position += 1
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.sleep(0.005)
        await asyncio.gather(*in_flight)
        stats.seconds = loop.time() - start
    return stats


def run_loadgen(args: argparse.Namespace) -> int:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    stats = asyncio.run(generate(args.target, args.material, args.rate, args.seconds,
                                 args.pattern))  # fmt: skip
    args.out.write_text(json.dumps(stats.summary(), indent=2) + "\n")
    return 0


# --- sampling and the verdict -------------------------------------------------------------


@dataclass
class Row:
    elapsed_s: float
    rss_kb: int
    fds: int
    requests_total: int
    responses_5xx_total: int
    introspection_calls_total: int
    token_cache_entries: int
    upstream_connections_open: int
    fd_clients: int  # descriptors by peer: which pool grew, if the total moves
    fd_upstream: int
    fd_redis: int
    fd_auth: int  # the issuer and the introspection endpoint
    fd_other: int


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_peers(pid: int, stack: Stack) -> Counter[str]:
    """The process's descriptors by peer: TCP sockets are matched (by inode, in
    /proc/PID/net/tcp) on the proxy port or the remote port; the rest is "other"."""
    assert stack.ports is not None
    remote = {stack.ports.upstream: "upstream", stack.redis.port: "redis",
              urlsplit(stack.issuer.url).port: "auth",
              stack.introspection.port: "auth"}  # fmt: skip
    sockets: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if fields[3] == "0A":  # LISTEN
            continue
        if local_port == stack.ports.proxy:
            sockets[fields[9]] = "clients"
        elif remote_port in remote:
            sockets[fields[9]] = remote[remote_port]
    found: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            inode = target[8:-1] if target.startswith("socket:[") else ""
            found[sockets.get(inode, "other")] += 1
    return found


async def take_row(stack: Stack, pid: int, elapsed: float) -> Row:
    series = {}
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        status, body = await stack.text(stack.admin_url("/metrics"), timeout=3)
        if status == 200:
            series = parse_metrics(body)
    answered = statuses(series)
    peers = fd_peers(pid, stack)
    return Row(
        elapsed_s=round(elapsed, 1),
        rss_kb=rss_kb(pid),
        fds=fd_count(pid),
        requests_total=sum(sum(c.values()) for c in answered.values()),
        responses_5xx_total=sum(n for c in answered.values() for s, n in c.items() if s >= 500),
        introspection_calls_total=int(metric(series, "gateway_introspection_calls_total")),
        token_cache_entries=int(metric(series, "gateway_token_cache_entries")),
        upstream_connections_open=int(metric(series, "gateway_upstream_connections", state="open")),
        **{f"fd_{peer}": peers[peer] for peer in PEERS},
    )


def slope_per_minute(rows: Sequence[Row], value: str) -> float:
    """Least-squares slope of ``value`` against time, per minute."""
    xs = [r.elapsed_s / 60 for r in rows]
    ys = [float(getattr(r, value)) for r in rows]
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


@dataclass
class Verdict:
    name: str
    measured: str
    passed: bool | None  # None: reported, not judged


def judge(rows: Sequence[Row], warmup: float, seconds: float) -> list[Verdict]:
    after = [r for r in rows if r.elapsed_s >= warmup]
    first = [r for r in after if r.elapsed_s < warmup + 60]
    last = [r for r in after if r.elapsed_s >= seconds - 60]
    out: list[Verdict] = []
    if not (after and first and last):
        return [Verdict("enough samples after the warm-up", f"{len(after)}", False)]
    rss = [r.rss_kb / 1024 for r in after]
    out.append(Verdict("RSS after warm-up, min / median / max",
                       f"{min(rss):.1f} / {statistics.median(rss):.1f} / {max(rss):.1f} MB",
                       None))  # fmt: skip
    rss_first = statistics.median(r.rss_kb for r in first) / 1024
    rss_last = statistics.median(r.rss_kb for r in last) / 1024
    drift = (rss_last - rss_first) / rss_first
    out.append(Verdict("RSS drift: last minute's median vs first post-warm-up minute's",
                       f"{rss_first:.1f} -> {rss_last:.1f} MB ({drift:+.1%}); slope "
                       f"{slope_per_minute(after, 'rss_kb') / 1024:+.2f} MB/min",
                       drift < DRIFT_LIMIT))  # fmt: skip
    fds = [r.fds for r in after]
    out.append(
        Verdict(
            "open descriptors after warm-up, min / median / max",
            f"{min(fds)} / {statistics.median(fds):g} / {max(fds)}",
            None,
        )
    )
    # Pools (client keep-alives, upstream, Redis, introspection) grow to a high-water mark on
    # a burst and stay there: a step, not a leak. A leak keeps climbing, so it shows as a
    # slope in the second half and as a last minute above anything seen before.
    middle = (warmup + seconds) / 2
    early_max = max(r.fds for r in after if r.elapsed_s < middle)
    last_max = max(r.fds for r in last)
    fd_slope = slope_per_minute([r for r in after if r.elapsed_s >= middle], "fds")
    out.append(
        Verdict(
            "descriptors flat: second-half slope; last minute's max vs the first half's max",
            f"{fd_slope:+.2f}/min; {last_max} vs {early_max}",
            fd_slope < FD_SLOPE_LIMIT and last_max <= early_max + FD_MARGIN,
        )
    )
    return out


def by_peer(rows: Sequence[Row]) -> str:
    return " / ".join(f"{statistics.median(getattr(r, f'fd_{p}') for r in rows):g}" for p in PEERS)


def per_minute(rows: Sequence[Row]) -> list[str]:
    lines = ["| minute | RSS median MB | descriptors median (clients / upstream / redis / "
             "auth / other) | req/s | 5xx | token cache | upstream conns |",
             "|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    previous: Row | None = None
    minute = 0
    while True:
        chunk = [r for r in rows if minute * 60 <= r.elapsed_s < (minute + 1) * 60]
        if not chunk:
            break
        end = chunk[-1]
        start = previous or chunk[0]
        span = max(end.elapsed_s - start.elapsed_s, 1.0)
        rps = (end.requests_total - start.requests_total) / span
        errors = end.responses_5xx_total - start.responses_5xx_total
        lines.append(
            f"| {minute + 1} | {statistics.median(r.rss_kb for r in chunk) / 1024:.1f} "
            f"| {statistics.median(r.fds for r in chunk):g} ({by_peer(chunk)}) "
            f"| {rps:,.0f} | {errors} "
            f"| {end.token_cache_entries} | {end.upstream_connections_open} |"
        )
        previous = end
        minute += 1
    return lines


# --- the run -------------------------------------------------------------------------------


@dataclass
class SoakResult:
    rows: list[Row]
    load: dict[str, Any]
    upstream: dict[str, int]
    verdicts: list[Verdict]
    csv_path: Path
    pinned: bool


async def soak(minutes: float, rate: float, warmup: float, interval: float) -> SoakResult:
    seconds = minutes * 60
    share = SOAK_MIX["opaque-cold"] / sum(SOAK_MIX.values())
    children = Children(cwd=REPO)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    keep = Path(tempfile.mkdtemp(prefix="gateway-soak-samples-"))  # the CSV outlives the run
    stack = Stack(tmp, children, "soak", cold=int(rate * share * seconds * 1.1) + 1000)
    loop = asyncio.get_running_loop()
    try:
        await stack.start()
        wrong = await stack.preflight()
        if wrong:
            raise RuntimeError("pre-flight failed: " + "; ".join(wrong))
        assert stack.gateway is not None and stack.material is not None
        out = tmp / "load.json"
        pattern = mix_pattern(SOAK_MIX)
        argv = [PYTHON, str(HERE / "soak.py"), "--loadgen", "--target", stack.url(""),
                "--material", str(stack.material.directory), "--rate", str(rate),
                "--seconds", str(seconds), "--pattern", pattern, "--out", str(out)]  # fmt: skip
        log = tmp / "loadgen.log"
        generator = children.start(argv, stdout=log, stderr=log, cpus=CLIENT_CORE)
        pid = stack.gateway.pid
        rows: list[Row] = []
        start = loop.time()
        while (elapsed := loop.time() - start) <= seconds:
            if stack.gateway.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited at {elapsed:.0f} s")
            rows.append(await take_row(stack, pid, elapsed))
            if len(rows) % 12 == 0:
                print(f"    {elapsed / 60:4.1f} min: RSS {rows[-1].rss_kb / 1024:.1f} MB, "
                      f"{rows[-1].fds} fds", file=sys.stderr, flush=True)  # fmt: skip
            stack.introspection.requests.clear()
            await asyncio.sleep(max(0.0, start + len(rows) * interval - loop.time()))
        code = await asyncio.to_thread(generator.wait, 60)
        children.forget(generator)
        if code != 0 or not out.exists():
            raise RuntimeError(f"the load generator failed ({code}): {log.read_text()[-2000:]}")
        upstream = await stack.upstream_stats() or {}
        csv_path = keep / "soak-samples.csv"
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(Row.__dataclass_fields__)
            writer.writerows([list(vars(r).values()) for r in rows])
        return SoakResult(rows, json.loads(out.read_text()), upstream,
                          judge(rows, warmup, seconds), csv_path, children.can_pin)  # fmt: skip
    finally:
        await stack.close()
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(result: SoakResult, command: str, rate: float, warmup: float) -> str:
    load = result.load
    mix = ", ".join(f"{name} {weight}" for name, weight in SOAK_MIX.items())
    layout = ("gateway pinned to core 0, generator and upstream to core 1" if result.pinned
              else "nothing pinned")  # fmt: skip
    counts = "; ".join(
        f"{name} " + " ".join(f"{s}:{n}" for s, n in sorted(c.items()))
        for name, c in load["counts"].items()
    )
    errors_5xx = sum(n for c in load["counts"].values() for s, n in c.items()
                     if s.isdigit() and int(s) >= 500)  # fmt: skip
    failures = sum(n for c in load["counts"].values() for s, n in c.items() if not s.isdigit())
    up = result.upstream
    unauth = sum(v for k, v in up.items() if k.startswith("unauthenticated:"))
    mismatch = sum(v for k, v in up.items() if k.startswith("mismatch:"))
    spoofed = up.get("spoofed:public", 0)
    rows: list[tuple[str, str, bool | None]] = [
        ("requests sent / answered / late (not sent: 256 outstanding)",
         f"{load['sent']:,} / {load['answered']:,} / {load['late']:,}", load["late"] == 0),
        ("achieved rate", f"{load['achieved_rps']:,.0f} req/s (target {rate:,.0f})", None),
        ("client latency p50 / p99 / max",
         f"{load['p50_ms']:.1f} / {load['p99_ms']:.1f} / {load['max_ms']:.0f} ms", None),
        ("statuses by class", counts, None),
        ("5xx answers, transport failures", f"{errors_5xx}, {failures}",
         errors_5xx == 0 and failures == 0),
        ("at the upstream: unauthenticated / identity mismatch / spoofed",
         f"{unauth} / {mismatch} / {spoofed}", unauth == mismatch == spoofed == 0),
        ("cold opaque tokens reused (pool exhausted)", str(load["cold_wrapped"]), None),
    ]  # fmt: skip
    rows += [(v.name, v.measured, v.passed) for v in result.verdicts]
    lines = [
        f"Soak {machine_line()}",
        "",
        f"Command: `{command}`; open-loop aiohttp generator at {rate:,.0f} req/s (separate "
        f"process, 64 connections), mix (out of {sum(SOAK_MIX.values())}): {mix}; gateway "
        f"with default cache settings (token cache 10,000, L1 10,000 entries / 30 s, "
        f"Redis L2), access log on (to /dev/null); {layout}; VmRSS and /proc/PID/fd "
        f"sampled every 5 s, first {warmup:.0f} s are warm-up. Samples: "
        f"`{result.csv_path}`.",
        "",
        "| measure | value | result |",
        "|---|---|---|",
    ]
    for name, value, passed in rows:
        verdict = "-" if passed is None else ("PASS" if passed else "**FAIL**")
        lines.append(f"| {name} | {value} | {verdict} |")
    lines += ["", *per_minute(result.rows)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="including the warm-up")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds not judged")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"replace the soak section of {RESULTS.relative_to(REPO)}",
    )
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--material", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--pattern", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.loadgen and args.minutes * 60 < args.warmup + 120:
        parser.error("--minutes must leave at least two minutes after the warm-up")
    return args  # fmt: skip


async def _main(args: argparse.Namespace) -> SoakResult:
    task = asyncio.current_task()
    assert task is not None
    with cancel_on_signals(asyncio.get_running_loop(), task):
        return await soak(args.minutes, args.rate, args.warmup, args.interval)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        return run_loadgen(args)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    command = "python tests/faults/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = asyncio.run(_main(args))
    report = markdown(result, command.strip(), args.rate, args.warmup)
    print(report)
    if args.write_results:
        write_section(RESULTS, "soak", report)
    failed = [v.name for v in result.verdicts if v.passed is False]
    failed += [line for line in report.splitlines() if line.endswith("**FAIL** |")]
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; every process this soak started was stopped", file=sys.stderr)
        sys.exit(130)
