"""Faults under load: fail-closed bearer checks (RFC 6750 §3.1, RFC 7662 §2.2/§4, RFC 7517 §5).

    .venv/bin/python tests/faults/run.py [--phase-seconds 18] [--json out.json] [--write-results]

Ten phases of mixed wrk traffic (valid JWTs, valid opaque tokens hot and cold, invalid
tokens, anonymous requests) while Redis, the introspection endpoint, the JWKS endpoint and
the upstream fail and recover, the config is reloaded twice and the gateway is stopped.
Everything runs on 127.0.0.1 and is started here: a private redis-server, a test issuer and
a test introspection endpoint in this process's event loop, a verifying upstream and the
gateway (``python -m gateway run``) as subprocesses, and wrk. Each child has its own
process group and is stopped by it in a ``finally``. See tests/faults/README.md.

``soak.py`` reuses the stack defined here; ``--serve-upstream`` is this file's own
upstream subprocess.
"""

# ruff: noqa: E402 - the repository root goes on sys.path before its packages are imported

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp
import jwt
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.processes import Children, free_port, signal_group
from tests.support.redis import TEST_CACHE_KEY, RedisServer

AUDIENCE = "api://faults"
SCOPE = "api:read"
TOKEN_LIFETIME = 7200  # seconds: longer than any run, so no valid token expires mid-run
STATS_PATH = "/__faults/stats"  # the upstream's own counters; no gateway route leads here
SLOW_PATH = "/public/slow"
RESULTS = HERE / "RESULTS.md"
SAMPLE_INTERVAL = 0.25
RECOVERY_LIMIT = 5.0  # seconds: "recovers within a few seconds"
# After a hang the introspection breaker stays open for its jittered period (issuers'
# default breaker: open_for 5 s stretched by up to 50%) and then one probe closes it: the
# 503s stop within that period and a second, not within RECOVERY_LIMIT.
BREAKER_RECOVERY_LIMIT = 5.0 * 1.5 + 1.0
MIN_CLEAN = 3.0  # seconds without 5xx before a fault counts as recovered
SETTLE = 1.0  # seconds after a fault is applied before "never 200" is judged
JWKS_RELOAD_AFTER = 4.0  # seconds into the JWKS outage when the same config is reloaded
JWKS_PHASE_MIN = 18.0  # the reload waits up to 10 s for keys; leave time to see what follows
LONG_REQUEST = 34.0  # seconds: outlives the 30 s after which a reload closes the old runtime
RELOAD_PHASE_MIN = LONG_REQUEST + 2.0
WRK_THREADS = 2
WRK_CONNECTIONS = 64
GATEWAY_CORE = "0"
CLIENT_CORE = "1"
PYTHON = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable


@dataclass(frozen=True)
class TrafficClass:
    """One kind of request; ``name`` is also the gateway route that serves it."""

    name: str
    letter: str  # its code in the wrk mix pattern
    path: str
    weight: int  # share of the faults mix, out of the sum of weights


CLASSES: tuple[TrafficClass, ...] = (
    TrafficClass("jwt", "J", "/jwt/items", 16),
    TrafficClass("jwt-neg", "X", "/jwt/neg/items", 3),
    TrafficClass("opaque-hot", "H", "/opaque/hot/items", 10),
    TrafficClass("opaque-cold", "C", "/opaque/cold/items", 4),
    TrafficClass("opaque-neg", "N", "/opaque/neg/items", 3),
    TrafficClass("public", "P", "/public/items", 4),
)
BY_NAME = {c.name: c for c in CLASSES}
TOKEN_CLASSES = tuple(c.name for c in CLASSES if c.name != "public")
NEGATIVE = ("jwt-neg", "opaque-neg")
JWT_ROUTES = ("jwt", "jwt-neg")
ADDED_PATH = "/added/items"


# --- processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def cancel_on_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> Iterator[None]:
    """SIGTERM/SIGHUP unwind the run like Ctrl-C does, so every ``finally`` stops its child."""
    wanted = (signal.SIGTERM, signal.SIGHUP)
    for signum in wanted:
        loop.add_signal_handler(signum, task.cancel)
    try:
        yield
    finally:
        for signum in wanted:
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def masked_signals() -> Iterator[None]:
    """While children are being stopped, a second Ctrl-C must not cut that short."""
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


# --- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """Token files (one per class, one token a line) and what the upstream verifies with."""

    directory: Path
    tokens: dict[str, list[str]]
    probe_cold: str  # a registered cold token kept out of the load, for the pre-flight
    neg_expected: dict[str, int]  # invalid token -> the status the gateway must answer

    def file(self, name: str) -> Path:
        return self.directory / f"{name}.txt"


def make_material(
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    directory: Path,
    *,
    jwts: int = 512,
    hot: int = 100,
    cold: int = 150_000,
) -> Material:
    """Mint and register every token a run needs and write them where wrk and the upstream
    read them. Invalid tokens each carry the status they must get (401 or 403)."""
    now = int(time.time())
    algs = ("RS256", "ES256", "EdDSA")
    valid_jwts = [
        issuer.mint({"sub": f"jwt-user-{i}"}, alg=algs[i % 3], audience=AUDIENCE, scope=SCOPE,
                    exp_in=TOKEN_LIFETIME)
        for i in range(jwts)
    ]  # fmt: skip
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    neg: dict[str, int] = {}
    for i in range(16):
        claims = {"sub": f"neg-{i}"}
        neg[issuer.mint(claims, audience=AUDIENCE, scope=SCOPE, key=rogue)] = 401  # signature
        neg[issuer.mint(claims, audience=AUDIENCE, scope=SCOPE, exp_in=-3600)] = 401  # expired
        neg[issuer.mint(claims, audience="api://other", scope=SCOPE)] = 401  # audience
        neg[issuer.mint(claims, audience=AUDIENCE, scope=SCOPE, kid="unknown-kid")] = 401
        neg[issuer.mint(claims, audience=AUDIENCE, scope="other:read")] = 403  # scope
    jwt_neg = list(neg)

    base = {"iss": issuer.url, "aud": AUDIENCE, "exp": now + TOKEN_LIFETIME,
            "client_id": "faults-client"}  # fmt: skip
    introspection.default_fields = base

    def opaque() -> str:
        return secrets.token_urlsafe(24)  # no dots: never mistaken for a JWT

    valid: dict[str, str] = {}
    hot_tokens, cold_tokens = [], []
    for i in range(hot):
        token = opaque()
        introspection.add_token(token, sub=f"hot-{i}", scope=SCOPE)
        valid[token] = f"hot-{i}"
        hot_tokens.append(token)
    for i in range(cold + 1):
        token = opaque()
        introspection.add_token(token, sub=f"cold-{i}", scope=SCOPE)
        valid[token] = f"cold-{i}"
        cold_tokens.append(token)
    probe_cold = cold_tokens.pop()
    opaque_neg: list[str] = []
    for i in range(16):
        for fields, status in (
            ({"sub": f"oneg-{i}", "scope": "other:read"}, 403),
            ({"sub": f"oneg-{i}", "scope": SCOPE, "aud": "api://other"}, 401),
            ({"active": False}, 401),
        ):
            token = opaque()
            introspection.add_token(token, **fields)
            neg[token] = status
            opaque_neg.append(token)
    for _ in range(48):  # never registered: the server answers active=false
        token = opaque()
        neg[token] = 401
        opaque_neg.append(token)

    tokens = {"jwt": valid_jwts, "jwt-neg": jwt_neg, "opaque-hot": hot_tokens,
              "opaque-cold": cold_tokens, "opaque-neg": opaque_neg}  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    material = Material(directory, tokens, probe_cold, neg)
    for name, items in tokens.items():
        material.file(name).write_text("\n".join(items) + "\n")
    (directory / "jwks.json").write_text(json.dumps(issuer.jwks()))
    (directory / "issuer.txt").write_text(issuer.url)
    lines = (f"{token}\t{subject}" for token, subject in valid.items())
    (directory / "opaque-valid.tsv").write_text("\n".join(lines) + "\n")
    return material


def mix_pattern(weights: dict[str, int]) -> str:
    """Smooth weighted round-robin over class letters: each class spread evenly through
    the cycle, so any stretch of requests has about the configured mix."""
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0)
    out = []
    for _ in range(total):
        for name, weight in weights.items():
            current[name] += weight
        best = max(current, key=lambda name: current[name])
        current[best] -= total
        out.append(BY_NAME[best].letter)
    return "".join(out)


# --- the verifying upstream (a subprocess: run.py --serve-upstream) -----------------------


def class_of(path: str) -> str:
    """The traffic class a path belongs to, by the same prefixes the gateway routes on."""
    for prefix, name in (
        ("/jwt/neg/", "jwt-neg"), ("/jwt/", "jwt"), ("/opaque/hot/", "opaque-hot"),
        ("/opaque/cold/", "opaque-cold"), ("/opaque/neg/", "opaque-neg"),
        ("/public/", "public"), ("/added/", "added"),
    ):  # fmt: skip
        if path.startswith(prefix):
            return name
    return "other"


class TokenChecker:
    """The upstream's own verdict on a bearer token, independent of the gateway: a JWT is
    verified with the issuer's published keys (signature, iss, aud, exp, scope), an opaque
    token must be one registered as active for our audience and scope."""

    def __init__(self, material: Path) -> None:
        self._issuer = (material / "issuer.txt").read_text().strip()
        jwks = json.loads((material / "jwks.json").read_text())
        self._keys = {jwk["kid"]: jwt.PyJWK(jwk) for jwk in jwks["keys"]}
        self._opaque: dict[str, str] = {}
        for line in (material / "opaque-valid.tsv").read_text().splitlines():
            token, _, subject = line.partition("\t")
            self._opaque[token] = subject
        self._jwts: dict[str, str | None] = {}

    def subject(self, authorization: list[str]) -> str | None:
        """The token's subject when exactly one valid bearer token was sent, else None."""
        if len(authorization) != 1:
            return None
        scheme, _, token = authorization[0].partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        found = self._opaque.get(token)
        if found is not None:
            return found
        if token not in self._jwts:
            if len(self._jwts) > 100_000:  # bounded; tokens outlive the run, so no staleness
                self._jwts.clear()
            self._jwts[token] = self._verify(token)
        return self._jwts[token]

    def _verify(self, token: str) -> str | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims = jwt.decode(
                token, key.key, algorithms=[key.algorithm_name], audience=AUDIENCE,
                issuer=self._issuer, options={"require": ["exp", "iss", "aud", "sub"]},
            )  # fmt: skip
        except jwt.PyJWTError:
            return None
        if SCOPE not in str(claims.get("scope", "")).split():
            return None
        return str(claims["sub"])


def serve_upstream(port: int, material: Path, stats_file: Path) -> None:
    """Answer 200 to everything and count what should never have arrived: a protected
    request without a valid token, an identity header that does not match the token, or
    any identity header on an anonymous route (the client sent a spoofed one). Counters
    survive a restart through ``stats_file``."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    checker = TokenChecker(material)
    counts: Counter[str] = Counter()
    if stats_file.exists():
        counts.update(json.loads(stats_file.read_text()))

    async def handle(request: web.Request) -> web.StreamResponse:
        name = class_of(request.path)
        counts[f"arrived:{name}"] += 1
        claimed = request.headers.get("X-Auth-Subject")
        if name == "public":
            if claimed is not None:
                counts["spoofed:public"] += 1
            if request.path == SLOW_PATH:
                counts[f"slow:{request.query.get('delay', '1')}"] += 1  # a replay shows here
                await asyncio.sleep(float(request.query.get("delay", "1")))
        else:
            subject = checker.subject(request.headers.getall("Authorization", []))
            if subject is None:
                counts[f"unauthenticated:{name}"] += 1
            elif claimed != subject:
                counts[f"mismatch:{name}"] += 1
        return web.Response(text="ok\n")

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def dump(_app: web.Application) -> None:
        stats_file.write_text(json.dumps(counts))

    app = web.Application()
    app.router.add_get(STATS_PATH, stats)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_cleanup.append(dump)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                shutdown_timeout=2.0)  # fmt: skip


# --- the stack ------------------------------------------------------------------------------


def routes(*, added: bool = False, broken: bool = False) -> list[dict[str, Any]]:
    """One route per traffic class (so /metrics counts each class), first match wins."""
    protected = {"upstream": "app", "require": {"scopes": {"all": [SCOPE]}}}
    table: list[dict[str, Any]] = [
        {"name": "jwt-neg", "match": {"path": "/jwt/neg/**"}, **protected},
        {"name": "jwt", "match": {"path": "/jwt/**"}, **protected},
        {"name": "opaque-hot", "match": {"path": "/opaque/hot/**"}, **protected},
        {"name": "opaque-cold", "match": {"path": "/opaque/cold/**"}, **protected},
        {"name": "opaque-neg", "match": {"path": "/opaque/neg/**"}, **protected},
        {"name": "public", "match": {"path": "/public/**"}, "upstream": "app",
         "auth": "anonymous"},
    ]  # fmt: skip
    if added:
        table.append({"name": "added", "match": {"path": "/added/**"}, **protected})
    if broken:  # a reload must refuse this: the upstream does not exist
        table.append({"name": "broken", "match": {"path": "/broken/**"}, "upstream": "nowhere"})
    return table


Profile = Literal["faults", "soak"]


@dataclass
class Ports:
    proxy: int
    admin: int
    upstream: int
    issuer_url: str
    redis_url: str


def gateway_config(
    ports: Ports, profile: Profile, *, added: bool = False, broken: bool = False
) -> dict[str, Any]:
    """The gateway under test. ``faults`` shortens the timers a fault has to go through
    (key refresh every 2 s, a verified-token cache smaller than the JWT pool so keys are
    used all the time, a 5 s L1 so Redis serves the hot tokens, a 1 s introspection
    timeout); ``soak`` keeps the defaults."""
    issuer: dict[str, Any] = {
        "name": "main",
        "issuer": ports.issuer_url,
        "keys": {"discovery": True},
        "audiences": [AUDIENCE],
        "mode": "auto",
        "introspection": {"client": {"client_id": "gateway", "client_secret": "gateway-secret"}},
    }
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": ports.proxy},
        "admin": {"host": "127.0.0.1", "port": ports.admin},
        "logging": {"level": "info", "format": "text"},
        "shutdown": {"readiness_delay": "2s", "drain_timeout": "10s"},
        "upstreams": {"app": {"url": f"http://127.0.0.1:{ports.upstream}",
                              "timeouts": {"connect": "1s", "read": "60s"}}},
        "issuers": [issuer],
        "cache": {"redis": {"url": ports.redis_url, "key": TEST_CACHE_KEY}},
        "routes": routes(added=added, broken=broken),
    }  # fmt: skip
    if profile == "faults":
        issuer["refresh"] = {"default": "2s", "min": "1s", "max": "10s", "retry": "1s",
                             "unknown_kid_interval": "5s"}  # fmt: skip
        issuer["introspection"]["timeout"] = "1s"
        config["token_cache"] = {"max_entries": 256, "max_ttl": "10s"}
        config["cache"]["l1"] = {"ttl": "5s"}
    return config


@dataclass
class Managed:
    """A subprocess this run started, with where its output went."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


class Stack:
    """Issuer + introspection (in this loop), Redis, the verifying upstream and the gateway."""

    def __init__(self, tmp: Path, children: Children, profile: Profile, *, cold: int) -> None:
        self.tmp = tmp
        self.children = children
        self.profile = profile
        self.cold = cold
        self.issuer = TestIssuer(audience=AUDIENCE)
        self.introspection = TestIntrospectionServer()
        self.redis = RedisServer()
        self.session: aiohttp.ClientSession | None = None
        self.material: Material | None = None
        self.ports: Ports | None = None
        self.upstream: Managed | None = None
        self.gateway: Managed | None = None
        self.config_path = tmp / "gateway.yaml"
        self.stats_file = tmp / "upstream-stats.json"

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(trust_env=False)
        await self.issuer.start()
        await self.introspection.start()
        self.issuer.metadata_overrides["introspection_endpoint"] = self.introspection.url
        self.material = await asyncio.to_thread(
            make_material, self.issuer, self.introspection, self.tmp / "material",
            cold=self.cold,
        )  # fmt: skip
        await asyncio.to_thread(self.redis.start)
        self.ports = Ports(free_port(), free_port(), free_port(), self.issuer.url, self.redis.url)
        await self.start_upstream()
        self.write_config()
        await self.start_gateway()

    async def close(self) -> None:
        with masked_signals():
            await asyncio.to_thread(self.children.stop_all)
            await asyncio.to_thread(self.redis.close)
            await self.introspection.close()
            await self.issuer.close()
            if self.session is not None:
                await self.session.close()

    def write_config(self, *, added: bool = False, broken: bool = False) -> None:
        assert self.ports is not None
        config = gateway_config(self.ports, self.profile, added=added, broken=broken)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    async def start_upstream(self) -> None:
        assert self.ports is not None and self.material is not None
        log = self.tmp / "upstream.log"
        argv = [
            PYTHON,
            str(HERE / "run.py"),
            "--serve-upstream",
            str(self.ports.upstream),
            "--material",
            str(self.material.directory),
            "--stats",
            str(self.stats_file),
        ]
        proc = self.children.start(argv, stdout=log, stderr=log, cpus=CLIENT_CORE)
        self.upstream = Managed(proc, log)
        await self._wait(proc, log, f"http://127.0.0.1:{self.ports.upstream}{STATS_PATH}", 200)

    async def stop_upstream(self) -> None:
        assert self.upstream is not None
        await asyncio.to_thread(self.children.stop, self.upstream.proc)

    async def start_gateway(self) -> None:
        log = self.tmp / "gateway.log"
        argv = [PYTHON, "-m", "gateway", "run", "-c", str(self.config_path)]
        # The access log (on by default) is written, to nowhere: the soak measures its cost.
        proc = self.children.start(argv, stderr=log, cpus=GATEWAY_CORE)
        self.gateway = Managed(proc, log)
        await self._wait(proc, log, self.admin_url("/readyz"), 200)

    async def _wait(
        self, proc: subprocess.Popen[bytes], log: Path, url: str, want: int, limit: float = 30
    ) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                if await self.status(url, timeout=1) == want:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{url} did not answer {want} within {limit:.0f} s: {tail(log)}")

    # -- HTTP -----------------------------------------------------------------------------

    def url(self, path: str) -> str:
        assert self.ports is not None
        return f"http://127.0.0.1:{self.ports.proxy}{path}"

    def admin_url(self, path: str) -> str:
        assert self.ports is not None
        return f"http://127.0.0.1:{self.ports.admin}{path}"

    async def status(self, url: str, token: str | None = None, timeout: float = 5) -> int:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            await response.read()
            return response.status

    async def text(self, url: str, timeout: float = 2) -> tuple[int, str]:
        assert self.session is not None
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.text()

    async def preflight(self) -> list[str]:
        """Every class answers as it must before any load: what is wrong, if anything."""
        assert self.material is not None
        m = self.material
        wrong = []
        cases: list[tuple[str, str | None, int]] = [
            (BY_NAME["jwt"].path, m.tokens["jwt"][0], 200),
            (BY_NAME["opaque-hot"].path, m.tokens["opaque-hot"][0], 200),
            (BY_NAME["opaque-cold"].path, m.probe_cold, 200),
            (BY_NAME["public"].path, None, 200),
            (BY_NAME["jwt"].path, None, 401),
            (ADDED_PATH, m.tokens["jwt"][0], 404),
        ]
        for name in NEGATIVE:
            cases += [(BY_NAME[name].path, t, m.neg_expected[t]) for t in m.tokens[name]]
        for path, token, expected in cases:
            got = await self.status(self.url(path), token)
            if got != expected:
                wrong.append(f"{path} answered {got}, not {expected}")
        return wrong

    async def upstream_stats(self) -> dict[str, int] | None:
        assert self.ports is not None
        try:
            status, body = await self.text(f"http://127.0.0.1:{self.ports.upstream}{STATS_PATH}")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        return json.loads(body) if status == 200 else None


def tail(log: Path, lines: int = 6) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_EXCEPTION = re.compile(r"^\w+(\.\w+)*(Error|Exception)\b")


def gateway_log_warnings(log: Path) -> list[str]:
    """WARNING lines by logger and the first words of their message, most frequent first."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found: Counter[str] = Counter()
    for line in text.splitlines():
        _, sep, rest = line.partition(" WARNING ")
        if sep:
            logger, _, message = rest.partition(" ")
            found[f"{logger}: {' '.join(message.split()[:4])}"] += 1
    return [f"{n} x {kind}" for kind, n in found.most_common(8)]


def gateway_log_problems(log: Path) -> list[str]:
    """Distinct ERROR lines and exception types in the gateway's stderr (never expected)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if " ERROR " in line or line.startswith("Traceback") or _EXCEPTION.match(line):
            found[re.sub(r"\b[0-9a-f]{12,}\b", "…", line.split(" ERROR ", 1)[-1])[:160]] += 1
    return [f"{n} x {line}" for line, n in found.most_common(12)]


# --- metrics --------------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]
Series = dict[str, dict[Labels, float]]
_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> Series:
    """Prometheus text exposition: name -> labels -> value (comments skipped)."""
    series: Series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        labels = tuple(sorted(_LABEL.findall(match[2] or "")))
        series.setdefault(match[1], {})[labels] = float(match[3])
    return series


def metric(series: Series, name: str, **wanted: str) -> float:
    """The sum of every series of ``name`` whose labels include ``wanted``."""
    total = 0.0
    for labels, value in series.get(name, {}).items():
        have = dict(labels)
        if all(have.get(k) == v for k, v in wanted.items()):
            total += value
    return total


def statuses(series: Series) -> dict[str, Counter[int]]:
    """gateway_requests_total as route -> status -> count."""
    out: dict[str, Counter[int]] = {}
    for labels, value in series.get("gateway_requests_total", {}).items():
        have = dict(labels)
        out.setdefault(have.get("route", "?"), Counter())[int(have.get("status", "0"))] += int(
            value
        )
    return out


def status_delta(after: Series, before: Series) -> dict[str, Counter[int]]:
    late, early = statuses(after), statuses(before)
    out: dict[str, Counter[int]] = {}
    for route, counts in late.items():
        diff = Counter({s: n - early.get(route, Counter()).get(s, 0) for s, n in counts.items()})
        diff = +diff  # drop zeros
        if diff:
            out[route] = diff
    return out


def count(
    delta: dict[str, Counter[int]], routes: Sequence[str], test: Callable[[int], bool]
) -> int:
    return sum(n for r in routes for s, n in delta.get(r, Counter()).items() if test(s))


def is_5xx(status: int) -> bool:
    return status >= 500


@dataclass
class Sample:
    t: float  # loop time
    metrics: Series
    ready: int | None  # /readyz status, None when it did not answer
    notes: dict[str, str]
    upstream: dict[str, int]
    scraped: bool  # False: metrics carried over from the previous sample


class Sampler:
    """Scrapes /metrics, /readyz and the upstream's counters every ``interval``."""

    def __init__(self, stack: Stack, interval: float = SAMPLE_INTERVAL) -> None:
        self.stack = stack
        self.interval = interval
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def now(self) -> Sample:
        sample = await self._take()
        self.samples.append(sample)
        return sample

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self.samples.append(await self._take())
            # The introspection server keeps every request it saw; nothing here needs them.
            self.stack.introspection.requests.clear()
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))

    async def _take(self) -> Sample:
        t = asyncio.get_running_loop().time()
        previous = self.samples[-1] if self.samples else None
        metrics_text, readyz, upstream = await asyncio.gather(
            self._get(self.stack.admin_url("/metrics")),
            self._get(self.stack.admin_url("/readyz")),
            self.stack.upstream_stats(),
        )
        scraped = metrics_text is not None and metrics_text[0] == 200
        metrics = parse_metrics(metrics_text[1]) if scraped and metrics_text else None
        ready, notes = None, {}
        if readyz is not None:
            ready = readyz[0]
            with contextlib.suppress(ValueError):
                notes = json.loads(readyz[1]).get("notes", {})
        return Sample(
            t=t,
            metrics=metrics if metrics is not None else (previous.metrics if previous else {}),
            ready=ready,
            notes=notes,
            upstream=upstream if upstream is not None else (previous.upstream if previous else {}),
            scraped=metrics is not None,
        )

    async def _get(self, url: str) -> tuple[int, str] | None:
        try:
            return await self.stack.text(url, timeout=1.0)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]

    def at(self, t: float) -> Sample:
        """The first sample taken at or after ``t`` (else the last one)."""
        for sample in self.samples:
            if sample.t >= t:
                return sample
        return self.samples[-1]


def last_error_end(
    samples: Sequence[Sample], routes: Sequence[str], error: Callable[[int], bool]
) -> float | None:
    """The end of the last sampling interval in which ``routes`` answered an ``error``."""
    last = None
    for early, late in itertools.pairwise(samples):
        if count(status_delta(late.metrics, early.metrics), routes, error):
            last = late.t
    return last


def recovery_seconds(
    samples: Sequence[Sample],
    cleared: float,
    end: float,
    routes: Sequence[str],
    error: Callable[[int], bool] = is_5xx,
) -> float | None:
    """Seconds from ``cleared`` until ``routes`` stopped answering 5xx for good (an upper
    bound, to the sampling interval), or None if they had not stopped by ``end`` -
    MIN_CLEAN."""
    window = [s for s in samples if cleared - 0.001 <= s.t <= end]
    if len(window) < 2:
        return None
    last = last_error_end(window, routes, error)
    if last is None:
        return 0.0
    if end - last < MIN_CLEAN:
        return None
    return last - cleared


# --- the run --------------------------------------------------------------------------------

LUA = r"""
-- Mixed bearer traffic for tests/faults (written by run.py). Args: DIR PATTERN THREADS.
-- Each request takes the next class letter of PATTERN; cold opaque tokens are split
-- between threads so none is sent twice; every request also carries a spoofed identity
-- header, which the gateway must replace (or drop, on anonymous routes).
local classes = {
  J = {path = "/jwt/items", file = "jwt.txt"},
  X = {path = "/jwt/neg/items", file = "jwt-neg.txt"},
  H = {path = "/opaque/hot/items", file = "opaque-hot.txt"},
  C = {path = "/opaque/cold/items", file = "opaque-cold.txt", split = true},
  N = {path = "/opaque/neg/items", file = "opaque-neg.txt"},
  P = {path = "/public/items"},
}
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local pattern, position = "", 0
local tokens, next_index = {}, {}

function init(args)
  local dir, nthreads, me = args[1], tonumber(args[3]), tid or 0
  pattern = args[2]
  position = me
  for letter, class in pairs(classes) do
    if class.file then
      local list, i = {}, 0
      for line in io.lines(dir .. "/" .. class.file) do
        if #line > 0 then
          if not class.split or i % nthreads == me then
            list[#list + 1] = "Bearer " .. line
          end
          i = i + 1
        end
      end
      assert(#list > 0, "no tokens in " .. class.file)
      tokens[letter] = list
      next_index[letter] = 0
    end
  end
end

function request()
  position = position % #pattern + 1
  local letter = pattern:sub(position, position)
  local headers = {["X-Auth-Subject"] = "spoofed"}
  local list = tokens[letter]
  if list then
    local i = next_index[letter] % #list + 1
    next_index[letter] = i
    headers["Authorization"] = list[i]
  end
  return wrk.format("GET", classes[letter].path, headers)
end
"""


@dataclass
class Phase:
    number: int
    name: str
    what: str
    started: float = 0.0
    ended: float = 0.0
    fault: tuple[float, float] | None = None  # the window the fault was in force
    cleared: float | None = None  # when the fault was removed (for recovery)
    notes: list[str] = field(default_factory=list)
    requests: int = 0
    delta: dict[str, Counter[int]] = field(default_factory=dict)
    upstream: dict[str, int] = field(default_factory=dict)
    recovery: float | None = None
    recovery_text: str = "-"


@dataclass
class Check:
    name: str
    measured: str
    passed: bool


PHASES: tuple[tuple[str, str], ...] = (
    ("baseline", "no fault"),
    ("redis killed", "SIGKILL redis-server"),
    ("redis restarted", "redis-server back on the same port (empty)"),
    ("introspection 500", "the introspection endpoint answers 500"),
    ("introspection hangs", "the introspection endpoint never answers"),
    ("introspection recovers", "the introspection endpoint answers again"),
    ("JWKS 500", "the JWKS endpoint answers 500 (refresh every 2 s fails); SIGHUP after 4 s"),
    ("upstream restarted", "upstream stopped, down 2 s, started on the same port"),
    (
        "reload x2",
        "SIGHUP with a good config (adds /added/**), then a bad one; a 34 s "
        "request in flight across both",
    ),
    ("SIGTERM", "SIGTERM under load, with a 4 s request in flight"),
)


class FaultRun:
    def __init__(self, stack: Stack, seconds: float) -> None:
        self.stack = stack
        self.seconds = seconds
        self.sampler = Sampler(stack)
        self.phases = [Phase(i + 1, name, what) for i, (name, what) in enumerate(PHASES)]
        self.wrk: Managed | None = None
        self.facts: dict[str, Any] = {}
        self.loop = asyncio.get_running_loop()

    # -- driving --------------------------------------------------------------------------

    async def run(self) -> None:
        stack = self.stack
        wrong = await stack.preflight()
        if wrong:
            raise RuntimeError("pre-flight failed: " + "; ".join(wrong))
        self.start_wrk()
        await asyncio.sleep(2.0)  # wrk connects and the caches warm before the baseline
        self.sampler.start()
        steps: list[Callable[[Phase], Awaitable[None]]] = [
            self.baseline, self.redis_killed, self.redis_restarted, self.introspection_error,
            self.introspection_hang, self.introspection_ok, self.jwks_error,
            self.upstream_restart, self.reloads, self.sigterm,
        ]  # fmt: skip
        try:
            for phase, step in zip(self.phases, steps, strict=True):
                print(f"--- phase {phase.number}: {phase.name}", file=sys.stderr, flush=True)
                before = await self.sampler.now()
                phase.started = before.t
                await step(phase)
                if phase.name == "SIGTERM":
                    after = self._last()  # the admin listener is gone with the process
                else:
                    after = await self.sampler.now()
                    phase.ended = after.t
                phase.delta = status_delta(after.metrics, before.metrics)
                phase.requests = sum(sum(c.values()) for c in phase.delta.values())
                phase.upstream = {k: v - before.upstream.get(k, 0)
                                  for k, v in after.upstream.items()}  # fmt: skip
        finally:
            await self.sampler.stop()
            await self.stop_wrk()

    def _last(self) -> Sample:
        scraped = [s for s in self.sampler.samples if s.scraped]
        return scraped[-1] if scraped else self.sampler.samples[-1]

    async def hold(self, phase: Phase, until: float | None = None) -> None:
        """Keep the load on until the phase's end (or ``until``); the gateway must live."""
        end = phase.started + self.seconds if until is None else until
        while self.loop.time() < end:
            gateway = self.stack.gateway
            assert gateway is not None
            if gateway.proc.poll() is not None:
                code = gateway.proc.returncode
                raise RuntimeError(f"the gateway exited ({code}) in phase {phase.number}")
            await asyncio.sleep(min(0.2, max(0.0, end - self.loop.time())))

    def start_wrk(self) -> None:
        stack = self.stack
        assert stack.material is not None
        script = stack.tmp / "mixed.lua"
        script.write_text(LUA)
        pattern = mix_pattern({c.name: c.weight for c in CLASSES})
        duration = int(self.seconds * len(PHASES) + 120)  # stopped by SIGINT long before
        argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency",
                "--timeout", "5s", "-s", str(script), stack.url("/"), "--",
                str(stack.material.directory), pattern, str(WRK_THREADS)]  # fmt: skip
        log = stack.tmp / "wrk.txt"
        proc = stack.children.start(argv, stdout=log, stderr=log, cpus=CLIENT_CORE)
        self.wrk = Managed(proc, log)
        self.facts["pattern"] = pattern

    async def stop_wrk(self) -> None:
        if self.wrk is None:
            return
        proc = self.wrk.proc
        signal_group(proc.pid, signal.SIGINT)  # wrk prints its summary on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 10)
        await asyncio.to_thread(self.stack.children.stop, proc)
        self.facts["wrk"] = parse_wrk(self.wrk.log.read_text(errors="replace"))
        self.wrk = None

    # -- the phases -------------------------------------------------------------------------

    async def baseline(self, phase: Phase) -> None:
        await self.hold(phase)

    async def redis_killed(self, phase: Phase) -> None:
        redis = self.stack.redis
        pid = await asyncio.to_thread(_redis_pid, redis.port)
        phase.fault = (self.loop.time(), 0.0)
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(redis.stop)  # reaps it
        await self.hold(phase)
        phase.fault = (phase.fault[0], self.loop.time())

    async def redis_restarted(self, phase: Phase) -> None:
        await asyncio.to_thread(self.stack.redis.start)
        phase.cleared = self.loop.time()
        await self.hold(phase)

    async def introspection_error(self, phase: Phase) -> None:
        phase.fault = (self.loop.time(), 0.0)
        self.stack.introspection.mode = "error"
        await self.hold(phase)
        phase.fault = (phase.fault[0], self.loop.time())

    async def introspection_hang(self, phase: Phase) -> None:
        phase.fault = (self.loop.time(), 0.0)
        self.stack.introspection.mode = "hang"
        await self.hold(phase)
        phase.fault = (phase.fault[0], self.loop.time())

    async def introspection_ok(self, phase: Phase) -> None:
        self.stack.introspection.mode = "ok"
        phase.cleared = self.loop.time()
        await self.hold(phase)

    async def jwks_error(self, phase: Phase) -> None:
        """The keys already loaded must keep working, and keep working across a routine
        reload (same file) sent while the JWKS endpoint is still down."""
        issuer = self.stack.issuer
        gateway = self.stack.gateway
        assert gateway is not None
        fetches = issuer.jwks_fetches
        phase.fault = (self.loop.time(), 0.0)
        issuer.jwks_status = 500
        await self.hold(phase, phase.started + JWKS_RELOAD_AFTER)
        self.facts["jwks_reload_at"] = self.loop.time()
        os.kill(gateway.pid, signal.SIGHUP)
        await self.hold(phase, phase.started + max(self.seconds, JWKS_PHASE_MIN))
        phase.fault = (phase.fault[0], self.loop.time())
        self.facts["jwks_failed_fetches"] = issuer.jwks_fetches - fetches
        fetches = issuer.jwks_fetches
        issuer.jwks_status = 200
        self.facts["jwks_cleared"] = self.loop.time()
        # The next phase runs meanwhile; this watches for the first good fetch.
        self.facts["jwks_watch"] = asyncio.create_task(self._first_fetch_after(fetches))

    async def _first_fetch_after(self, fetches: int) -> float | None:
        deadline = self.loop.time() + 15
        while self.loop.time() < deadline:
            if self.stack.issuer.jwks_fetches > fetches:
                return self.loop.time()
            await asyncio.sleep(0.05)
        return None

    async def upstream_restart(self, phase: Phase) -> None:
        start = self.loop.time()
        await self.stack.stop_upstream()
        await asyncio.sleep(2.0)
        await self.stack.start_upstream()
        phase.fault = (start, self.loop.time())
        phase.cleared = self.loop.time()
        await self.hold(phase)

    async def reloads(self, phase: Phase) -> None:
        stack = self.stack
        assert stack.gateway is not None and stack.material is not None
        token = stack.material.tokens["jwt"][0]
        results = self.facts.setdefault("reload", {})
        results["added_before"] = await stack.status(stack.url(ADDED_PATH), token)
        long = asyncio.create_task(self._long_request())
        await self.hold(phase, phase.started + 2)
        stack.write_config(added=True)
        results["ok"] = await self._reload("ok")
        results["added_after_good"] = await stack.status(stack.url(ADDED_PATH), token)
        await self.hold(phase, phase.started + 9)
        stack.write_config(added=True, broken=True)
        results["rejected"] = await self._reload("rejected")
        results["added_after_bad"] = await stack.status(stack.url(ADDED_PATH), token)
        results["jwt_after_bad"] = await stack.status(stack.url(BY_NAME["jwt"].path), token)
        stack.write_config(added=True)  # leave a good file behind
        await self.hold(phase, phase.started + max(self.seconds, RELOAD_PHASE_MIN))
        results["long_request"] = await long

    async def _long_request(self) -> tuple[int | str, float]:
        """A request that started on the old config: README says it finishes on it."""
        url = self.stack.url(f"{SLOW_PATH}?delay={LONG_REQUEST:g}")
        started = self.loop.time()
        try:
            status: int | str = await self.stack.status(url, timeout=LONG_REQUEST + 10)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = type(exc).__name__
        return status, self.loop.time() - started

    async def _reload(self, result: str) -> float | None:
        """SIGHUP, then wait for gateway_config_reloads_total{result} to move: its delta."""
        gateway = self.stack.gateway
        assert gateway is not None
        before = metric((await self.sampler.now()).metrics, "gateway_config_reloads_total",
                        result=result)  # fmt: skip
        os.kill(gateway.pid, signal.SIGHUP)
        deadline = self.loop.time() + 15
        while self.loop.time() < deadline:
            await asyncio.sleep(0.1)
            after = metric((await self.sampler.now()).metrics, "gateway_config_reloads_total",
                           result=result)  # fmt: skip
            if after > before:
                return after - before
        return None

    async def sigterm(self, phase: Phase) -> None:
        stack = self.stack
        gateway = stack.gateway
        assert gateway is not None
        out = self.facts.setdefault("sigterm", {})
        await self.hold(phase, phase.started + 3)
        slow = asyncio.create_task(stack.status(stack.url(f"{SLOW_PATH}?delay=4"), timeout=20))
        await asyncio.sleep(0.3)
        term = self.loop.time()
        os.kill(gateway.pid, signal.SIGTERM)
        out["readyz_503_after"] = await self._readyz_turns_503(term)
        await asyncio.sleep(0.5)
        try:
            out["request_during_delay"] = await stack.status(stack.url("/public/items"), timeout=3)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            out["request_during_delay"] = type(exc).__name__
        await self.sampler.now()  # the last counts before the admin listener goes
        try:
            code = await asyncio.to_thread(gateway.proc.wait, 30)
        except subprocess.TimeoutExpired:
            code = None
        out["exit_code"] = code
        out["exit_after"] = self.loop.time() - term
        stack.children.forget(gateway.proc)
        try:
            out["in_flight_status"] = await slow
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            out["in_flight_status"] = type(exc).__name__
        phase.ended = self.loop.time()

    async def _readyz_turns_503(self, since: float) -> float | None:
        deadline = since + 2.0
        while self.loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                if await self.stack.status(self.stack.admin_url("/readyz"), timeout=1) == 503:
                    return self.loop.time() - since
            await asyncio.sleep(0.02)
        return None

    # -- verdicts ---------------------------------------------------------------------------

    async def finish(self) -> list[Check]:
        samples = self.sampler.samples
        p = {phase.number: phase for phase in self.phases}
        all_routes = [*BY_NAME, "added"]
        # Recovery after each cleared fault.
        redis_ok = self._redis_recovery(p[3])
        p[3].recovery, p[3].recovery_text = redis_ok, _seconds(redis_ok, "readyz cache ok")
        intro = recovery_seconds(samples, p[6].cleared or 0, p[6].ended,
                                 ["opaque-cold", "opaque-neg"])  # fmt: skip
        p[6].recovery, p[6].recovery_text = intro, _seconds(intro, "5xx stop")
        watch = self.facts.pop("jwks_watch", None)
        jwks_at = await watch if watch is not None else None
        jwks = None if jwks_at is None else jwks_at - self.facts["jwks_cleared"]
        p[7].recovery, p[7].recovery_text = jwks, _seconds(jwks, "good JWKS fetch")
        self.facts["jwks_jwt_recovery"] = recovery_seconds(
            samples, self.facts["jwks_cleared"], p[8].ended, JWT_ROUTES, lambda s: s == 503
        )
        up = recovery_seconds(samples, p[8].cleared or 0, p[8].ended, all_routes)
        p[8].recovery, p[8].recovery_text = up, _seconds(up, "5xx stop")
        return self._checks(p)

    def _redis_recovery(self, phase: Phase) -> float | None:
        assert phase.cleared is not None
        for sample in self.sampler.between(phase.cleared, phase.ended):
            if sample.notes and all(v == "ok" for v in sample.notes.values()):
                return sample.t - phase.cleared
        return None

    def _window(
        self,
        phase: Phase,
        *,
        settle: float = 0.0,
        start: float | None = None,
        end: float | None = None,
    ) -> dict[str, Counter[int]]:
        """Status counts while the fault was in force (from ``settle`` s after it began:
        requests answered in the first moments may have been decided before it)."""
        assert phase.fault is not None
        begin = (phase.fault[0] if start is None else start) + settle
        finish = phase.fault[1] if end is None else end
        return status_delta(self.sampler.at(finish).metrics, self.sampler.at(begin).metrics)

    def _checks(self, p: dict[int, Phase]) -> list[Check]:
        checks: list[Check] = []

        def add(name: str, measured: Any, passed: bool) -> None:
            checks.append(Check(name, str(measured), passed))

        total_up: Counter[str] = Counter()
        for phase in self.phases:
            total_up.update(phase.upstream)
        unauth = sum(v for k, v in total_up.items() if k.startswith("unauthenticated:"))
        add("no request reached a protected upstream path without a valid token", unauth,
            unauth == 0)  # fmt: skip
        mismatch = sum(v for k, v in total_up.items() if k.startswith("mismatch:"))
        add("identity header always matched the token's subject at the upstream", mismatch,
            mismatch == 0)  # fmt: skip
        spoofed = total_up.get("spoofed:public", 0)
        add("no spoofed identity header reached the upstream on /public/**", spoofed,
            spoofed == 0)  # fmt: skip
        neg_2xx = sum(count(ph.delta, NEGATIVE, lambda s: s < 300) for ph in self.phases)
        add("invalid tokens never got 2xx (jwt-neg, opaque-neg)", neg_2xx, neg_2xx == 0)
        base = count(p[1].delta, list(BY_NAME), is_5xx)
        add("baseline: no 5xx", base, base == 0)

        redis = self._window(p[2])
        jwt_5xx = count(redis, JWT_ROUTES, is_5xx)
        add("Redis down: no 5xx on /jwt/**", jwt_5xx, jwt_5xx == 0)
        any_5xx = count(redis, list(BY_NAME), is_5xx)
        add("Redis down: no 5xx on any route (L1 + introspection carry on)", any_5xx,
            any_5xx == 0)  # fmt: skip
        add("Redis back: /readyz cache note ok within 5 s", p[3].recovery_text,
            p[3].recovery is not None and p[3].recovery <= RECOVERY_LIMIT)  # fmt: skip

        for number in (4, 5):
            window = self._window(p[number])
            settled = self._window(p[number], settle=SETTLE)
            label = p[number].name
            cold_200 = count(settled, ["opaque-cold"], lambda s: s == 200)
            cold_503 = count(settled, ["opaque-cold"], lambda s: s == 503)
            add(f"{label}: uncached opaque tokens get 503, never 200",
                f"200: {cold_200}, 503: {cold_503}", cold_200 == 0 and cold_503 > 0)  # fmt: skip
            hot = window.get("opaque-hot", Counter())
            hot_bad = sum(n for s, n in hot.items() if s != 200)
            add(f"{label}: cached opaque tokens keep 200", _cell(hot),
                hot_bad == 0 and hot.get(200, 0) > 0)  # fmt: skip
            jwt_5xx = count(window, JWT_ROUTES, is_5xx)
            add(f"{label}: no 5xx on /jwt/**", jwt_5xx, jwt_5xx == 0)
        add("introspection back: 5xx stop within the breaker's open period + 1 s (8.5 s)",
            p[6].recovery_text,
            p[6].recovery is not None and p[6].recovery <= BREAKER_RECOVERY_LIMIT)  # fmt: skip

        reload_at = self.facts.get("jwks_reload_at", p[7].ended)
        jwt = self._window(p[7], end=reload_at).get("jwt", Counter())
        jwt_bad = sum(n for s, n in jwt.items() if s != 200)
        failed = self.facts.get("jwks_failed_fetches", 0)
        add("JWKS 500: valid JWTs keep 200 with the keys already loaded",
            f"{_cell(jwt)}; failed JWKS fetches in the phase: {failed}",
            jwt_bad == 0 and failed > 0)  # fmt: skip
        jwt = self._window(p[7], start=reload_at).get("jwt", Counter())
        jwt_bad = sum(n for s, n in jwt.items() if s != 200)
        add("JWKS 500 + reload of the same file: valid JWTs keep 200", _cell(jwt), jwt_bad == 0)
        add("JWKS back: a good fetch within 5 s", p[7].recovery_text,
            p[7].recovery is not None and p[7].recovery <= RECOVERY_LIMIT)  # fmt: skip
        jwt_503 = self.facts.get("jwks_jwt_recovery")
        add("JWKS back: 503 on /jwt/** (if any) stop within 5 s", _seconds(jwt_503, "503 stop"),
            jwt_503 is not None and jwt_503 <= RECOVERY_LIMIT)  # fmt: skip

        down = self._window(p[8])
        other_5xx = count(down, list(BY_NAME), lambda s: s >= 500 and s not in (502, 503, 504))
        add("upstream down: only 502/503/504, no other 5xx", other_5xx, other_5xx == 0)
        add("upstream back: 5xx stop within 5 s", p[8].recovery_text,
            p[8].recovery is not None and p[8].recovery <= RECOVERY_LIMIT)  # fmt: skip

        reload = self.facts.get("reload", {})
        add("good reload counted ok, /added/** 404 -> 200",
            f"ok +{reload.get('ok')}, {reload.get('added_before')} -> "
            f"{reload.get('added_after_good')}",
            reload.get("ok") == 1 and reload.get("added_before") == 404
            and reload.get("added_after_good") == 200)  # fmt: skip
        add("bad reload counted rejected, old config keeps serving",
            f"rejected +{reload.get('rejected')}, /added {reload.get('added_after_bad')}, "
            f"/jwt {reload.get('jwt_after_bad')}",
            reload.get("rejected") == 1 and reload.get("added_after_bad") == 200
            and reload.get("jwt_after_bad") == 200)  # fmt: skip
        reload_5xx = count(p[9].delta, [*BY_NAME, "added"], is_5xx)
        long_status, long_seconds = reload.get("long_request", ("not run", 0.0))
        long_5xx = 1 if isinstance(long_status, int) and long_status >= 500 else 0
        other_5xx = reload_5xx - long_5xx
        add("reloads: no 5xx (the long request aside)", other_5xx, other_5xx == 0)
        sent = p[9].upstream.get(f"slow:{LONG_REQUEST:g}", 0)
        add(f"reloads: a {LONG_REQUEST:g} s request in flight across them completes, once",
            f"{long_status} after {long_seconds:.1f} s; the upstream received it {sent}x",
            long_status == 200 and sent == 1)  # fmt: skip

        term = self.facts.get("sigterm", {})
        add(
            "SIGTERM: /readyz 503 at once",
            _seconds(term.get("readyz_503_after"), "after"),
            term.get("readyz_503_after") is not None and term["readyz_503_after"] < 1.0,
        )
        add("SIGTERM: still serving during readiness_delay", term.get("request_during_delay"),
            term.get("request_during_delay") == 200)  # fmt: skip
        add("SIGTERM: the in-flight 4 s request completed", term.get("in_flight_status"),
            term.get("in_flight_status") == 200)  # fmt: skip
        exit_after = term.get("exit_after")
        add("SIGTERM: exit code 0", f"{term.get('exit_code')} after {exit_after or 0:.1f} s",
            term.get("exit_code") == 0)  # fmt: skip
        return checks


def _redis_pid(port: int) -> int:
    """redis-server's own pid, from INFO: the fault is a kill -9 of that process."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _seconds(value: float | None, what: str) -> str:
    return "not within the phase" if value is None else f"{value:.2f} s ({what})"


def _cell(counts: Counter[int] | None) -> str:
    if not counts:
        return "-"
    return " ".join(f"{status}:{n}" for status, n in sorted(counts.items()))


# --- wrk and the report ---------------------------------------------------------------------


def parse_wrk(output: str) -> dict[str, Any]:
    def grab(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    requests = grab(r"^\s*(\d+) requests in ([\d.]+)(\w+)")
    sockets = grab(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    non_2xx = grab(r"Non-2xx or 3xx responses:\s+(\d+)")
    p99 = grab(r"^\s*99%\s+(\S+)")
    return {
        "requests": int(requests[1]) if requests else None,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, sockets.groups()), strict=True)) if sockets else {},
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "p99": p99[1] if p99 else None,
    }  # fmt: skip


def machine_line() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk = "?"
    if shutil.which("wrk"):
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        found = re.search(r"wrk (\S+)", done.stdout + done.stderr)
        wrk = found[1] if found else "?"
    redis = "?"
    if shutil.which("redis-server"):
        done = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                              check=False)  # fmt: skip
        found = re.search(r"v=(\S+)", done.stdout)
        redis = found[1] if found else "?"
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{date}: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, wrk {wrk}, redis-server {redis}")  # fmt: skip


def markdown(run: FaultRun, checks: list[Check], command: str, pinned: bool) -> str:
    facts = run.facts
    mix = ", ".join(f"{c.name} {c.weight}" for c in CLASSES)
    layout = ("gateway pinned to core 0, wrk and the upstream to core 1" if pinned
              else "nothing pinned")  # fmt: skip
    lines = [
        f"Faults run {machine_line()}",
        "",
        f"Command: `{command}`; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, mix (out of "
        f"{sum(c.weight for c in CLASSES)}): {mix}; {run.seconds:g} s phases; {layout}.",
        "",
        "Status counts per route (from `gateway_requests_total` deltas at phase boundaries):",
        "",
        "| # | phase | requests | req/s | " + " | ".join(BY_NAME) + " | added |",
        "|---:|---|---:|---:|" + "---|" * (len(BY_NAME) + 1),
    ]
    for phase in run.phases:
        seconds = max(phase.ended - phase.started, 0.001)
        cells = " | ".join(_cell(phase.delta.get(name)) for name in [*BY_NAME, "added"])
        lines.append(f"| {phase.number} | {phase.name} | {phase.requests:,} | "
                     f"{phase.requests / seconds:,.0f} | {cells} |")  # fmt: skip
    lines += [
        "",
        "| # | phase | what was done | reached upstream | unauthenticated at upstream "
        "| introspection calls | recovery |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    calls = _introspection_calls(run)
    for phase in run.phases:
        arrived = sum(v for k, v in phase.upstream.items() if k.startswith("arrived:"))
        unauth = sum(v for k, v in phase.upstream.items() if k.startswith("unauthenticated:"))
        lines.append(f"| {phase.number} | {phase.name} | {phase.what} | {arrived:,} | {unauth} "
                     f"| {calls.get(phase.number, 0):,} | {phase.recovery_text} |")  # fmt: skip
    lines += ["", "| check | measured | result |", "|---|---|---|"]
    for check in checks:
        verdict = "PASS" if check.passed else "**FAIL**"
        lines.append(f"| {check.name} | {check.measured} | {verdict} |")
    wrk = facts.get("wrk", {})
    lines += [
        "",
        f"wrk (whole run): {wrk.get('requests')} requests, non-2xx {wrk.get('non_2xx')}, "
        f"socket errors {wrk.get('socket_errors')} (after the SIGTERM closed the listener, wrk "
        f"counts its refused reconnections as write errors), p99 {wrk.get('p99')}. Cold "
        "opaque tokens: "
        f"{facts.get('cold_used', '?')} of {facts.get('cold_available', '?')} used "
        "(each once).",
    ]
    resets = facts.get("counter_resets") or []
    if resets:
        lines += [
            "",
            "Counters that went down between two scrapes of the same gateway process "
            "(they live in the runtime a reload replaces): " + ", ".join(resets) + ".",
        ]
    warnings = facts.get("log_warnings") or []
    if warnings:
        lines += ["", "Gateway stderr WARNING lines by kind: " + "; ".join(warnings) + "."]
    problems = facts.get("log_problems") or []
    if problems:
        lines += ["", "Gateway stderr ERROR lines:", ""]
        lines += [f"- `{line}`" for line in problems]
    return "\n".join(lines)


def _introspection_calls(run: FaultRun) -> dict[int, int]:
    name = "gateway_introspection_calls_total"
    return {
        phase.number: int(increase(run.sampler.between(phase.started, phase.ended), name))
        for phase in run.phases
    }


def increase(samples: Sequence[Sample], name: str) -> float:
    """How much a counter grew over ``samples``, counting a drop as a reset to zero (the
    gateway's per-runtime counters restart at 0 on every config reload)."""
    total = 0.0
    scraped = [s for s in samples if s.scraped]
    for early, late in itertools.pairwise(scraped):
        before, after = metric(early.metrics, name), metric(late.metrics, name)
        total += after - before if after >= before else after
    return total


def counter_resets(samples: Sequence[Sample], prefix: str = "gateway_") -> list[str]:
    """Counters (``*_total``) that went down between two scrapes of one process."""
    found: set[str] = set()
    scraped = [s for s in samples if s.scraped]
    for early, late in itertools.pairwise(scraped):
        for name, series in late.metrics.items():
            if not (name.startswith(prefix) and name.endswith("_total")):
                continue
            previous = early.metrics.get(name, {})
            if any(value < previous.get(labels, 0.0) for labels, value in series.items()):
                found.add(name)
            if any(labels not in series for labels in previous):
                found.add(name)
    return sorted(found)


def write_section(path: Path, section: str, body: str) -> None:
    """Replace (or append) this script's section of RESULTS.md, between its markers."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = path.read_text() if path.exists() else "# Faults and soak: measured results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail_text = rest.partition(end)
        text = head + block + tail_text
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


# --- main -----------------------------------------------------------------------------------


async def run_faults(seconds: float, cold: int, keep: bool) -> tuple[FaultRun, list[Check], bool]:
    children = Children(cwd=REPO)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-faults-"))
    stack = Stack(tmp, children, "faults", cold=cold)
    try:
        await stack.start()
        run = FaultRun(stack, seconds)
        await run.run()
        checks = await run.finish()
        assert stack.gateway is not None and stack.material is not None
        run.facts["log_problems"] = gateway_log_problems(stack.gateway.log)
        run.facts["log_warnings"] = gateway_log_warnings(stack.gateway.log)
        run.facts["counter_resets"] = counter_resets(run.sampler.samples)
        run.facts["cold_available"] = len(stack.material.tokens["opaque-cold"])
        run.facts["cold_used"] = sum(
            sum(ph.delta.get("opaque-cold", Counter()).values()) for ph in run.phases
        )
        return run, checks, children.can_pin
    finally:
        await stack.close()
        if keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--phase-seconds", type=float, default=18.0)
    parser.add_argument("--cold-tokens", type=int, default=150_000)
    parser.add_argument("--json", type=Path, help="also write the phases and checks here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config)")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"replace the faults section of {RESULTS.relative_to(REPO)}",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--material", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 10 <= args.phase_seconds <= 120:
        parser.error("--phase-seconds must be 10..120")
    return args  # fmt: skip


async def _main(args: argparse.Namespace) -> tuple[FaultRun, list[Check], bool]:
    task = asyncio.current_task()
    assert task is not None
    with cancel_on_signals(asyncio.get_running_loop(), task):
        return await run_faults(args.phase_seconds, args.cold_tokens, args.keep)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.material, args.stats)
        return 0
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    command = "python tests/faults/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run, checks, pinned = asyncio.run(_main(args))
    report = markdown(run, checks, command.strip(), pinned)
    print(report)
    if args.write_results:
        write_section(RESULTS, "faults", report)
    if args.json:
        document = {
            "phases": [{k: v for k, v in asdict(ph).items() if k != "delta"}
                       | {"delta": {r: dict(c) for r, c in ph.delta.items()}}
                       for ph in run.phases],
            "checks": [asdict(c) for c in checks],
            "facts": {k: v for k, v in run.facts.items() if not k.startswith("jwks_watch")},
        }  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    failed = [c.name for c in checks if not c.passed]
    if failed:
        print("\nFAILED: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; every process this run started was stopped", file=sys.stderr)
        sys.exit(130)
