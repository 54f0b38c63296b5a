"""The started rate limiter of a runtime (issue 17): one in-memory limiter, kept across
reloads while the limits are held the same way, and its cluster sync through Redis, kept
with it while ``cache.redis`` stays the same and started afresh on the new one when not.

A component like the others: its readiness note says when replicas cannot share counts
(each then enforces its local share), its metrics count allowed and limited requests by
route and limit, and closing stops the sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from gateway.auth.ratelimiter import RateLimiter
from gateway.compiler import CompiledConfig
from gateway.metrics import counter_family, gauge_family

if TYPE_CHECKING:  # redis-py only where configured
    from gateway.auth.ratelimit_sync import ClusterSync


class Limits:
    """A runtime's rate limiter (None when no route has limits) and its sync."""

    def __init__(self, compiled: CompiledConfig, previous: Limits | None) -> None:
        self._compiled = compiled
        self.settings = settings = compiled.rate_limiting
        self.sync: ClusterSync | None = None
        self.limiter: RateLimiter | None = None
        if not any(route.auth.rate_limits is not None for route in compiled.routes):
            return
        kept = previous is not None and previous.limiter is not None
        if kept and previous is not None and previous.settings == settings:
            self.limiter = previous.limiter  # counts survive a reload
        else:
            self.limiter = RateLimiter(max_keys=settings.max_keys, shared=settings.shared)

    async def start(self, previous: Limits | None) -> None:
        compiled = self._compiled
        if self.limiter is None or not compiled.rate_limiting.shared:
            return
        if previous is not None and previous.limiter is self.limiter and previous.sync:
            sync, previous.sync = previous.sync, None  # one sync per limiter
            if previous._compiled.redis == compiled.redis:
                self.sync = sync
                return
            # cache.redis changed: the counts stay with the limiter, its sharing moves to
            # the new Redis (pending admissions are pushed there by the new sync).
            await sync.close()
        from gateway.auth.ratelimit_sync import ClusterSync

        assert compiled.redis is not None  # the compile step requires cache.redis
        self.sync = ClusterSync(
            self.limiter,
            compiled.redis,
            interval=compiled.rate_limiting.sync_interval,
            key_prefix=compiled.rate_limiting.key_prefix,
        )
        await self.sync.start()

    def readiness(self) -> Iterable[tuple[str, bool]]:
        return ()

    def notes(self) -> Iterable[tuple[str, str]]:
        if self.sync is None:
            return ()
        return [("rate_limits", "shared" if self.sync.healthy else "local share")]

    def metric_families(self) -> Iterable[Metric]:
        if self.limiter is None:
            return
        samples: dict[tuple[str, ...], float] = {}
        for route in self._compiled.routes:
            if route.auth.rate_limits is None:
                continue
            for name, group, limit, allowed, limited in route.auth.rate_limits.counters():
                samples[(name, group, limit, "allowed")] = float(allowed)
                samples[(name, group, limit, "limited")] = float(limited)
        yield counter_family(
            "gateway_rate_limit_requests", "Requests checked against a rate limit, by outcome.",
            ["route", "group", "limit", "outcome"], samples,
        )  # fmt: skip
        yield gauge_family(
            "gateway_rate_limit_keys", "Rate-limit keys held in memory.", [],
            {(): float(len(self.limiter))},
        )  # fmt: skip

    async def close(self) -> None:
        if self.sync is not None:
            await self.sync.close()
            self.sync = None
