"""Two real gateways sharing one Redis topology, and a client load to run through events.

The Sentinel and Cluster suites (tests/integration/test_redis_sentinel.py and
test_redis_cluster.py) use the same fleet, the same load and the same measurements, so
what one proves about a failover the other proves about a node restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.app import Gateway
from gateway.cache.redis import RedisCache
from gateway.cache.tiered import TieredCache
from tests.support.gateway import running_gateway, wait_ready
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.redis import TEST_CACHE_KEY
from tests.support.upstream import RecordingUpstream

REDIS_TIMEOUT = "500ms"
"""Above the gateway's 100 ms default (as in test_gateway_introspection.py): this machine's
two cores are shared with other runs, and a command merely slow must not read as an outage."""


def redis_cache(target: dict[str, Any]) -> dict[str, Any]:
    """The ``cache.redis`` section for a topology: the one place every topology test builds
    it (``target`` is ``{"url": …, "cluster": true}`` or ``{"sentinel": {…}}``)."""
    return {**target, "timeout": REDIS_TIMEOUT, "key": TEST_CACHE_KEY}


def fleet_config(
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream: RecordingUpstream,
    redis_target: dict[str, Any],
    key_prefix: str,
) -> dict[str, Any]:
    """Opaque tokens by introspection (auto mode: JWTs are still validated locally),
    answers cached for a minute in L1 and in the shared Redis."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [
            {
                "issuer": issuer.url,
                "audiences": ["api://default"],
                "mode": "auto",
                "introspection": {
                    "endpoint": introspection.url,
                    "client": {"client_id": "gateway", "client_secret": "gateway-secret"},
                },
            }
        ],
        "cache": {
            "max_ttl": "60s", "negative_ttl": "60s", "l1": {"ttl": "60s"},
            "key_prefix": key_prefix, "redis": redis_cache(redis_target),
        },
        "logging": {"access_log": False},
        "routes": [
            {"match": {"path": "/read/**"}, "upstream": "app",
             "require": {"scopes": {"all": ["read"]}}},
        ],
    }  # fmt: skip


@asynccontextmanager
async def gateway_pair(directory: Path, config: dict[str, Any]) -> AsyncIterator[list[Gateway]]:
    """Gateways A and B: two replicas on one config, as a fleet behind a load balancer."""
    async with AsyncExitStack() as stack:
        pair = []
        for name in ("a", "b"):
            (directory / name).mkdir()
            gateway = await stack.enter_async_context(running_gateway(directory / name, config))
            await wait_ready(gateway)
            pair.append(gateway)
        yield pair


def opaque_token(introspection: TestIntrospectionServer, subject: str = "svc-user") -> str:
    token = secrets.token_urlsafe(32)
    introspection.add_token(
        token, sub=subject, client_id="svc", scope="read", aud="api://default",
        exp=int(time.time() + 300),
    )  # fmt: skip
    return token


def entry_pattern(prefix: str, token: str) -> str:
    """A glob matching ``token``'s entries in Redis under any validation context."""
    return f"{prefix}*:{hashlib.sha256(token.encode()).hexdigest()}"


def introspections_of(introspection: TestIntrospectionServer, token: str) -> int:
    """How many times the authorization server was asked about ``token``."""
    return sum(1 for request in introspection.requests if request["form"].get("token") == token)


def cache_of(gateway: Gateway) -> TieredCache[Any]:
    return gateway.holder.current.identity_cache.shared


def redis_of(gateway: Gateway) -> RedisCache:
    """The gateway's L2, read for measurements (error count, channel), never changed."""
    redis = cache_of(gateway).redis
    assert redis is not None, "the gateway has no Redis configured"
    return redis


def redis_errors(gateway: Gateway) -> int:
    """Failed (or, while its breaker is open, skipped-then-failed) Redis commands."""
    return redis_of(gateway).errors


def evictions_received(gateway: Gateway) -> int:
    """Eviction messages this gateway applied from elsewhere (pub/sub, or a resync)."""
    return gateway.holder.current.identity_cache.evictions_received


def resyncs_received(gateway: Gateway) -> int:
    """Gaps in this gateway's subscription, each answered by emptying its memory."""
    return gateway.holder.current.identity_cache.resyncs_received


def degraded(gateway: Gateway) -> bool:
    return cache_of(gateway).degraded


async def get(session: aiohttp.ClientSession, gateway: Gateway, token: str) -> int:
    url = f"http://127.0.0.1:{gateway.proxy_port}/read/x"
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status


async def evict(gateway: Gateway, body: dict[str, str]) -> int:
    url = f"http://127.0.0.1:{gateway.admin_port}/cache/evict"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        await response.read()
        return response.status


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails naming ``what`` past ``timeout``."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


# --- load ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Counters of both gateways at one moment, to report what an event cost."""

    redis_errors: int
    l2_hits: int
    l2_misses: int
    introspections: int
    evictions_received: int
    """Messages heard from the other gateway, plus one per gap in a subscription."""

    @classmethod
    def take(cls, fleet: list[Gateway], introspection: TestIntrospectionServer) -> Snapshot:
        stats = [cache_of(gateway).stats for gateway in fleet]
        return cls(
            redis_errors=sum(redis_errors(gateway) for gateway in fleet),
            l2_hits=sum(s["l2_hits"] for s in stats),
            l2_misses=sum(s["l2_misses"] for s in stats),
            introspections=introspection.calls,
            evictions_received=sum(evictions_received(gateway) for gateway in fleet),
        )

    def since(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(
            self.redis_errors - earlier.redis_errors, self.l2_hits - earlier.l2_hits,
            self.l2_misses - earlier.l2_misses, self.introspections - earlier.introspections,
            self.evictions_received - earlier.evictions_received,
        )  # fmt: skip


@dataclass
class Load:
    """Concurrent clients until stopped: JWT clients on both gateways, and opaque clients
    that each take a fresh token to A (introspected, written to L2) and then to B (an L2
    hit when Redis is up, a second introspection when it is not), plus a token the
    authorization server never issued, which must be refused every time."""

    fleet: list[Gateway]
    issuer: TestIssuer
    introspection: TestIntrospectionServer
    jwt_clients: int = 3
    opaque_clients: int = 3
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    second_introspections: int = 0
    opaque_tokens: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            jwts = [self.issuer.mint(scope="read") for _ in range(4)]
            workers = [self._jwt_client(session, jwts, n) for n in range(self.jwt_clients)]
            workers += [self._opaque_client(session) for _ in range(self.opaque_clients)]
            await asyncio.gather(*workers)

    def stop(self) -> None:
        self._stop.set()

    async def _jwt_client(self, session: aiohttp.ClientSession, jwts: list[str], n: int) -> None:
        turn = n
        while not self._stop.is_set():
            turn += 1
            await self._expect(session, "jwt", self.fleet[turn % 2], jwts[turn % len(jwts)], 200)
            await asyncio.sleep(0.002)

    async def _opaque_client(self, session: aiohttp.ClientSession) -> None:
        refused = secrets.token_urlsafe(32)  # never issued: inactive
        while not self._stop.is_set():
            token = opaque_token(self.introspection)
            self.opaque_tokens += 1
            await self._expect(session, "opaque", self.fleet[0], token, 200)
            await self._expect(session, "opaque", self.fleet[1], token, 200)
            if introspections_of(self.introspection, token) > 1:
                self.second_introspections += 1
            await self._expect(session, "inactive", self.fleet[1], refused, 401)
            await asyncio.sleep(0.002)

    async def _expect(
        self, session: aiohttp.ClientSession, kind: str, gateway: Gateway, token: str, want: int
    ) -> None:
        try:
            status = await get(session, gateway, token)
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        else:
            outcome = str(status)
        self.outcomes[(kind, outcome)] += 1
        if outcome != str(want):
            self.failures.append(f"{kind}: wanted {want}, got {outcome}")

    def count(self, kind: str) -> int:
        return sum(n for (k, _), n in self.outcomes.items() if k == kind)


@asynccontextmanager
async def under_load(load: Load) -> AsyncIterator[Load]:
    """Run ``load`` for the body of the ``async with``; it is stopped and awaited after,
    even when the body fails (a crash of the load itself fails the test)."""
    task = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(0.3)  # warm: every client has completed requests
        yield load
    finally:
        load.stop()
        await asyncio.wait_for(task, 10)


# --- an event under load -------------------------------------------------------------------


@dataclass
class EventReport:
    """What an outage cost, measured while ``Load`` ran through it."""

    event: Any
    """What the topology helper returned (a ``Failover`` or a ``Restart``)."""
    recovery: float
    """Seconds from the end of the event until both gateways were healthy and a token A
    introspected was an L2 hit on B."""
    load: Load
    during: Snapshot
    """Counters from the start of the event until the end of recovery."""
    revoked_accepted: list[tuple[str, float]] = field(default_factory=list)
    """(gateway, seconds after the eviction) of each time the token revoked and evicted
    during the event was still accepted."""
    recovered_at: float = 0.0
    """Seconds after the eviction when the cache had recovered."""
    refused_after_recovery: int = 0

    def summary(self) -> str:
        return (
            f"event {self.event}; recovery {self.recovery:.2f}s; requests "
            f"{dict(sorted(self.load.outcomes.items()))}; from the event to recovery: "
            f"{self.during}; fresh tokens introspected twice {self.load.second_introspections}"
            f"/{self.load.opaque_tokens}; revoked token accepted {len(self.revoked_accepted)}"
            f" times, last {self.last_accepted():.2f}s after the eviction (recovered at"
            f" {self.recovered_at:.2f}s)"
        )

    def last_accepted(self) -> float:
        return max((seconds for _, seconds in self.revoked_accepted), default=0.0)


async def event_under_load(
    fleet: list[Gateway],
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    event: Callable[[], Any],
    subscriptions: Callable[[str], int],
    placed: Callable[[str], bool] = lambda token: True,
) -> EventReport:
    """Run ``event`` (a blocking topology helper, in a thread) while ``Load`` runs; while
    it runs, revoke a token both gateways cached and evict it through A; then wait until
    the cache has recovered by itself: both gateways healthy, both subscribed again
    (``subscriptions(channel)`` counts them on the topology), and L2 hits on B again. The
    caller asserts on the report. The event always runs to its end, so the topology is
    whole again when this returns or raises.

    ``placed(token)`` picks the revoked token among fresh ones by where its entry is (a
    cluster node), so what a replica may read of it during the event is known."""
    a, b = fleet
    names = {id(a): "A", id(b): "B"}
    async with aiohttp.ClientSession() as session:
        for _ in range(40):
            revoked = opaque_token(introspection, subject="revoked-during-event")
            for gateway in fleet:
                assert await get(session, gateway, revoked) == 200
            if placed(revoked):
                break
        else:
            raise AssertionError("no fresh token's entry was placed where the test wants it")
        load = Load(fleet, issuer, introspection)
        before = Snapshot.take(fleet, introspection)
        accepted: list[tuple[str, float]] = []
        async with under_load(load):
            happening = asyncio.create_task(asyncio.to_thread(event))
            polling: asyncio.Task[None] | None = None
            try:
                await asyncio.sleep(0.2)  # the event has begun (a server is dead)
                introspection.remove_token(revoked)
                # Redis may be down right now: then the answer is an honest 503 (the
                # eviction is kept and replayed), never a 200 that did not happen.
                assert await evict(a, {"subject": "revoked-during-event"}) in (200, 503)
                evicted_at = time.monotonic()
                polling = asyncio.create_task(
                    _poll_revoked(session, fleet, names, revoked, evicted_at, accepted)
                )
                outcome = await happening
                ended = time.monotonic()
                await eventually(
                    lambda: _recovered(session, fleet, introspection, subscriptions), 15.0,
                    "the cache recovered by itself: subscribed again, L2 hits on B again",
                )  # fmt: skip
                recovery = time.monotonic() - ended
                recovered_at = time.monotonic() - evicted_at
                during = Snapshot.take(fleet, introspection).since(before)
                await asyncio.sleep(0.5)  # load on the recovered topology
            finally:
                if polling is not None:
                    polling.cancel()
                await asyncio.gather(*filter(None, [polling, happening]), return_exceptions=True)
        refused = 0
        for _ in range(5):
            for gateway in fleet:
                refused += await get(session, gateway, revoked) == 401
            await asyncio.sleep(0.1)
    return EventReport(outcome, recovery, load, during, accepted, recovered_at, refused)


async def _poll_revoked(
    session: aiohttp.ClientSession,
    fleet: list[Gateway],
    names: dict[int, str],
    token: str,
    evicted_at: float,
    accepted: list[tuple[str, float]],
) -> None:
    while True:
        for gateway in fleet:
            if await get(session, gateway, token) == 200:
                accepted.append((names[id(gateway)], time.monotonic() - evicted_at))
        await asyncio.sleep(0.05)


async def _recovered(
    session: aiohttp.ClientSession,
    fleet: list[Gateway],
    introspection: TestIntrospectionServer,
    subscriptions: Callable[[str], int] | None = None,
) -> bool:
    a, b = fleet
    if degraded(a) or degraded(b):
        return False
    channel = redis_of(a).channel
    if subscriptions and await asyncio.to_thread(subscriptions, channel) != len(fleet):
        return False
    token = opaque_token(introspection)
    if await get(session, a, token) != 200:
        return False
    hits = cache_of(b).stats["l2_hits"]
    return (
        await get(session, b, token) == 200
        and cache_of(b).stats["l2_hits"] == hits + 1
        and introspections_of(introspection, token) == 1
    )


async def warmed(fleet: list[Gateway], introspection: TestIntrospectionServer) -> None:
    """Until a token A introspects is an L2 hit on B: both clients have connected (a
    cluster client has discovered every node), so a test's counts start from a working
    cache rather than from a first command that timed out on a busy machine."""
    async with aiohttp.ClientSession() as session:
        await eventually(lambda: _recovered(session, fleet, introspection), 10.0, "a working L2")


async def evicted_everywhere(fleet: list[Gateway], introspection: TestIntrospectionServer) -> None:
    """Revoke a token both gateways cached, evict it through A: B refuses it within pub/sub
    delivery time, A at once."""
    a, b = fleet
    token = opaque_token(introspection, subject="revoked-after-event")
    async with aiohttp.ClientSession() as session:
        for gateway in fleet:
            assert await get(session, gateway, token) == 200
        introspection.remove_token(token)
        assert await get(session, b, token) == 200  # cached: not yet evicted
        assert await evict(a, {"subject": "revoked-after-event"}) == 200
        assert await get(session, a, token) == 401

        async def refused_by_b() -> bool:
            return await get(session, b, token) == 401

        await eventually(refused_by_b, 2.0, "B refuses the token evicted through A")
