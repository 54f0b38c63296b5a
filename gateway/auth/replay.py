"""RFC 9449 §11.1: the DPoP proof replay store (an in-process L1, and Redis shared by replicas).

"servers can store the jti value of each DPoP proof for the time window in which the
respective DPoP proof JWT would be accepted to prevent multiple uses of the same DPoP proof";
"a server that is tracking jti values should ... store only a hash thereof." Keys are
``dpop.replay_key`` digests (SHA-256 over the proof key's thumbprint and the jti), kept for
``VerifiedProof.replay_ttl`` seconds. ``record`` answers True the first time a key is seen
and False for a replay.

Fail closed: a full L1 (after dropping expired entries) and an unreachable Redis both raise
``ReplayStoreUnavailable`` (503), unless the Redis store is configured to fall back to
its L1 alone (``fail_open=True``), which then still catches replays on this replica.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from gateway.problems import ServiceUnavailable

_MIN_TTL: Final = 0.001


class ReplayStoreUnavailable(ServiceUnavailable):
    slug = "dpop-replay-store-unavailable"
    reason = "dpop_replay_store"


class ReplayStore(Protocol):
    async def record(self, key: bytes, ttl: float) -> bool:
        """True when ``key`` was not seen within its lifetime (and is now recorded)."""
        ...


class MemoryReplayStore:
    """A bounded in-process set of keys, each forgotten when its own lifetime ends.

    A heap ordered by expiry finds the expired entries in O(log n) each; a dict answers
    membership. Never evicts a live entry: forgetting one would let its proof be replayed.
    """

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("the replay store needs room for at least one entry")
        self._max_entries = max_entries
        self._clock = clock
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        """The number of live entries."""
        self._purge(self._clock())
        return len(self._expiry)

    def record_now(self, key: bytes, ttl: float) -> bool:
        """``record`` without the coroutine, for callers already on the event loop's thread."""
        now = self._clock()
        self._purge(now)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self._max_entries:
            raise ReplayStoreUnavailable(
                "Too many DPoP proofs are in flight; try again shortly.", reason="dpop_replay_full"
            )
        expires = now + max(ttl, _MIN_TTL)
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True

    async def record(self, key: bytes, ttl: float) -> bool:
        return self.record_now(key, ttl)

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]


class RedisReplayStore:
    """``SET key 1 NX PX ttl`` in Redis, behind this process's L1.

    The L1 answers replays on this replica without a round trip; Redis answers them across
    replicas. ``client`` is a ``redis.asyncio`` client (``Redis`` or ``RedisCluster``) the
    caller owns. redis-py is imported only when this store is built.
    """

    def __init__(
        self,
        client: Any,
        l1: MemoryReplayStore,
        *,
        key_prefix: str = "gw:dpop:",
        timeout: float = 0.1,
        fail_open: bool = False,
    ) -> None:
        from redis.exceptions import RedisClusterException, RedisError

        self._client = client
        self._l1 = l1
        self._prefix = key_prefix
        self._timeout = timeout
        self._fail_open = fail_open
        self._failures: tuple[type[BaseException], ...] = (
            RedisError,
            RedisClusterException,
            OSError,
            TimeoutError,
        )
        self.errors = 0

    async def close(self) -> None:
        """Close the Redis client this store was given (it lives as long as the store)."""
        await self._client.aclose()

    async def record(self, key: bytes, ttl: float) -> bool:
        if not self._l1.record_now(key, ttl):
            return False
        milliseconds = max(1, math.ceil(ttl * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                created = await self._client.set(
                    self._prefix + key.hex(), b"1", nx=True, px=milliseconds
                )
        except self._failures:
            self.errors += 1
            if self._fail_open:
                return True  # the L1 above has already said "first seen here"
            raise ReplayStoreUnavailable(
                "The DPoP replay store is unavailable.", reason="dpop_replay_store"
            ) from None
        # SET ... NX answers OK when it set the key and nil when the key already existed.
        return bool(created)
