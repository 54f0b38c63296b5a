"""A two-tier cache over bytes keys: in-process L1, shared sealed L2, one load per key.

Generic: what a value means, how long it lives, which group it belongs to and whether it
may be served stale are the caller's ``EntryPolicy``. What this module guarantees:

* Concurrent lookups of one missing key share a single load, run in a task the cache owns:
  a caller that goes away cancels its own wait, never the load the others wait on.
* L2 values are sealed (``gateway.cache.sealing``) with their Redis key as associated data
  and carry their own freshness, so a replica reading one later knows how much is left; a
  value that does not open or decode is a miss, never an error.
* A load that straddles an eviction is returned to its callers but not cached: it may
  predate the revocation the eviction reports.
* Positive and negative values live in separate L1 tiers, each bounded by entries and
  bytes, so a flood of junk keys cannot push hot values out.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

from gateway.cache.memory import MemoryCache
from gateway.cache.sealing import Sealer

if TYPE_CHECKING:  # redis-py costs ~6 MB per process: imported only where configured
    from gateway.cache.redis import RedisCache

log = logging.getLogger(__name__)

V = TypeVar("V")
_ENTRY_OVERHEAD: Final = 256
"""Bytes charged per L1 entry beyond its encoded size: a rough cost of the Python objects."""
_STAMP: Final = struct.Struct(">Q")
STATS: Final = (
    "l1_hits", "l1_misses", "l2_hits", "l2_misses", "l2_rejected", "loads", "load_errors",
    "coalesced", "stale_served",
)  # fmt: skip


class EntryPolicy(Protocol[V]):
    """What the cache needs to know about the values of one kind."""

    def encode(self, value: V) -> bytes: ...

    def decode(self, data: bytes) -> V | None:
        """An L2 payload back to a value, re-checked; None when it is unusable."""
        ...

    def ttl(self, value: V) -> float:
        """How long the value may be served (≤ 0: do not cache it)."""
        ...

    def l1_ttl(self, value: V) -> float: ...

    def negative(self, value: V) -> bool: ...

    def group(self, value: V) -> str | None:
        """The L2 group index the key joins (for group eviction), if any."""
        ...


class TieredCache(Generic[V]):
    """Owns the lifecycle of the ``RedisCache`` it is given (``start``/``close``)."""

    def __init__(
        self,
        l1: MemoryCache,
        l1_negative: MemoryCache,
        redis: RedisCache | None,
        sealer: Sealer | None,
        *,
        serve_stale: float = 0.0,
        group_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if redis is not None and sealer is None:
            raise ValueError("a shared tier needs a sealer")
        self._l1 = l1
        self._l1_negative = l1_negative
        self._redis = redis
        self._sealer = sealer
        self._stale = serve_stale
        self._group_ttl = group_ttl
        self._clock = clock
        self._wall = wall
        self._flights: dict[bytes, asyncio.Task[V]] = {}
        self._evictions = 0
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)

    @property
    def redis(self) -> RedisCache | None:
        return self._redis

    @property
    def degraded(self) -> bool:
        return self._redis is not None and not self._redis.healthy

    def __len__(self) -> int:
        return len(self._l1) + len(self._l1_negative)

    async def close(self) -> None:
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    def peek(self, key: bytes) -> V | None:
        """An L1 value still fresh (the request path's first look, without awaiting)."""
        negative = self._l1_negative.get(key)
        if negative is not None:
            return negative[0]  # type: ignore[return-value]  # L1 holds what _remember put
        hit = self._l1.get(key)
        if hit is None:
            return None
        value, expires_at = hit
        if self._stale and self._clock() >= expires_at - self._stale:
            return None  # a positive kept past freshness only for stale serving
        return value  # type: ignore[return-value]

    async def get_or_load(
        self, key: bytes, shared_key: str, load: Callable[[], Awaitable[V]], policy: EntryPolicy[V]
    ) -> V:
        """The value for ``key``: L1, else L2 (read in the caller's task), else one shared
        ``load``. An exception from ``load`` is never cached; it reaches every waiter."""
        value = self.peek(key)
        if value is not None:
            self.stats["l1_hits"] += 1
            return value
        self.stats["l1_misses"] += 1
        flight = self._flights.get(key)
        stale: V | None = None
        evictions = self._evictions  # from before the L2 read, through the load
        if flight is None and self._redis is not None:
            found = await self._read_shared(shared_key, policy)
            if found is not None:
                value, remaining, size = found
                if remaining > 0:
                    self.stats["l2_hits"] += 1
                    if evictions == self._evictions:
                        self._remember(key, value, remaining, policy, size)
                    return value
                if not policy.negative(value) and -remaining < self._stale:
                    stale = value
            self.stats["l2_misses"] += 1
            # While this request read Redis, another may have loaded the value (now in L1)
            # or started loading it: join that rather than load again.
            value = self.peek(key)
            if value is not None:
                self.stats["coalesced"] += 1
                return value
            flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(
                self._fill(key, shared_key, load, policy, stale, evictions)
            )
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        else:
            self.stats["coalesced"] += 1
        return await asyncio.shield(flight)

    def sweep(self) -> int:
        """Expired L1 entries out (see ``MemoryCache.sweep``)."""
        return self._l1.sweep() + self._l1_negative.sweep()

    def forget_local(self, key: bytes) -> None:
        """Drop ``key`` from L1 only (an eviction another replica already applied to L2)."""
        self._evictions += 1
        self._l1.delete(key)
        self._l1_negative.delete(key)

    def forget_local_where(self, predicate: Callable[[object], bool]) -> int:
        self._evictions += 1
        return self._l1.delete_where(predicate)

    async def forget(self, key: bytes, shared_key: str) -> bool:
        """Drop ``key`` from both tiers; whether L2 confirmed it (True without L2)."""
        self.forget_local(key)
        if self._redis is None:
            return True
        return await self._redis.delete(shared_key)

    # --- loading ---------------------------------------------------------------------------

    async def _read_shared(
        self, shared_key: str, policy: EntryPolicy[V]
    ) -> tuple[V, float, int] | None:
        """The L2 value, the seconds it stays fresh, and the size of its encoding."""
        assert self._redis is not None and self._sealer is not None
        data = await self._redis.get(shared_key)
        if data is None:
            return None
        plain = self._sealer.open(data, shared_key.encode())
        value = None
        if plain is not None and len(plain) > _STAMP.size:
            value = policy.decode(plain[_STAMP.size :])
        if value is None:
            self.stats["l2_rejected"] += 1
            log.warning("ignoring an L2 value that does not open, decode or re-check")
            return None
        fresh_until = _STAMP.unpack_from(plain)[0] / 1000  # type: ignore[arg-type]
        return value, fresh_until - self._wall(), len(plain) - _STAMP.size  # type: ignore[arg-type]

    async def _fill(
        self,
        key: bytes,
        shared_key: str,
        load: Callable[[], Awaitable[V]],
        policy: EntryPolicy[V],
        stale: V | None,
        evictions: int,
    ) -> V:
        self.stats["loads"] += 1
        try:
            value = await load()
        except Exception:
            self.stats["load_errors"] += 1
            fallback = self._stale_value(key, stale)
            if fallback is None:
                raise
            self.stats["stale_served"] += 1
            return fallback
        if evictions == self._evictions:
            await self._store(key, shared_key, value, policy)
        return value

    def _landed(self, key: bytes, flight: asyncio.Task[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here: every waiter may have gone away

    async def _store(self, key: bytes, shared_key: str, value: V, policy: EntryPolicy[V]) -> None:
        ttl = policy.ttl(value)
        if ttl <= 0:
            self._l1.delete(key)
            self._l1_negative.delete(key)
            return
        self._remember(key, value, ttl, policy)
        if self._redis is None or self._sealer is None:
            return
        grace = 0.0 if policy.negative(value) else self._stale
        stamp = _STAMP.pack(round((self._wall() + ttl) * 1000))
        sealed = self._sealer.seal(stamp + policy.encode(value), shared_key.encode())
        await self._redis.set(
            shared_key, sealed, ttl + grace, group=policy.group(value), group_ttl=self._group_ttl
        )

    def _remember(
        self, key: bytes, value: V, ttl: float, policy: EntryPolicy[V], size: int | None = None
    ) -> None:
        """Into L1, for at most the policy's L1 lifetime (L1 misses evictions while pub/sub is
        down), plus the stale-serving grace for positives. ``size``: of the value's encoding
        when known (an L2 hit just read it), so a hit does not encode it again."""
        negative = policy.negative(value)
        ttl = min(ttl, policy.l1_ttl(value)) + (0.0 if negative else self._stale)
        size = (len(policy.encode(value)) if size is None else size) + _ENTRY_OVERHEAD
        (self._l1_negative if negative else self._l1).set(key, value, ttl, size)

    def _stale_value(self, key: bytes, shared: V | None) -> V | None:
        """A positive value past freshness but within ``serve_stale``, when the load failed."""
        if not self._stale:
            return None
        hit = self._l1.get(key)
        if hit is not None:
            return hit[0]  # type: ignore[return-value]
        return shared
