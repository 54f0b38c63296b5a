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

Each proof key (its ``jkt``) has a share of the L1, ``max_per_key`` entries: §11.1 asks
servers to "guard against memory exhaustion attacks", and one client holding one DPoP-bound
token can sign fresh proofs as fast as it likes, each a live entry for the proof lifetime.
Without a share that client fills the store and every DPoP request on the replica gets 503;
with one, the client past its share gets ``DpopProofsExceeded`` (429, Retry-After: when its
oldest entry expires) and everyone else goes on. Proof keys are the tokens' ``cnf.jkt``
(a proof is recorded only once it matched its token), so filling the store takes
``max_entries / max_per_key`` tokens from the authorization server.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from gateway.problems import GatewayError, ServiceUnavailable

_MIN_TTL: Final = 0.001


class ReplayStoreUnavailable(ServiceUnavailable):
    slug = "dpop-replay-store-unavailable"
    reason = "dpop_replay_store"


class DpopProofsExceeded(GatewayError):
    """One proof key holds its whole share of the replay store. RFC 6585 §4: 429 "indicates
    that the user has sent too many requests in a given amount of time" (a 401
    ``invalid_dpop_proof`` would tell the client its proof is wrong, and it would sign
    another at once); Retry-After (RFC 9110 §10.2.3) is when the key's oldest proof is
    forgotten and a new one fits."""

    status = 429
    title = "Too Many Requests"
    slug = "dpop-proofs-exceeded"
    reason = "dpop_replay_share"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"Too many DPoP proofs from this key; retry after {self.retry_after} "
                         "seconds.")  # fmt: skip

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ReplayStore(Protocol):
    async def record(self, key: bytes, ttl: float, owner: str = "") -> bool:
        """True when ``key`` was not seen within its lifetime (and is now recorded);
        ``owner`` is the proof key's thumbprint, whose share the entry counts against."""
        ...


@dataclass(slots=True, eq=False)
class _Owner:
    """One proof key's live entries: their expiry times, a heap (the earliest first)."""

    name: str
    expiries: list[float] = field(default_factory=list)


class MemoryReplayStore:
    """A bounded in-process set of keys, each forgotten when its own lifetime ends.

    A heap ordered by expiry finds the expired entries in O(log n) each; a dict answers
    membership. Never evicts a live entry: forgetting one would let its proof be replayed.
    ``max_per_key`` (None: no share) bounds the entries of one owner.
    """

    def __init__(
        self,
        max_entries: int,
        *,
        max_per_key: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or (max_per_key is not None and max_per_key < 1):
            raise ValueError("the replay store needs room for at least one entry")
        self._max_entries = max_entries
        self._max_per_key = max_per_key
        self._clock = clock
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes, _Owner]] = []
        self._owners: dict[str, _Owner] = {}

    def __len__(self) -> int:
        """The number of live entries."""
        self._purge(self._clock())
        return len(self._expiry)

    def record_now(self, key: bytes, ttl: float, owner: str = "") -> bool:
        """``record`` without the coroutine, for callers already on the event loop's thread."""
        now = self._clock()
        self._purge(now)
        if key in self._expiry:
            return False
        held = self._owners.get(owner)
        share = self._max_per_key
        if held is not None and share is not None and len(held.expiries) >= share:
            raise DpopProofsExceeded(held.expiries[0] - now)
        if len(self._expiry) >= self._max_entries:
            raise ReplayStoreUnavailable(
                "Too many DPoP proofs are in flight; try again shortly.", reason="dpop_replay_full"
            )
        if held is None:
            held = self._owners[owner] = _Owner(owner)
        expires = now + max(ttl, _MIN_TTL)
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key, held))
        heapq.heappush(held.expiries, expires)
        return True

    async def record(self, key: bytes, ttl: float, owner: str = "") -> bool:
        return self.record_now(key, ttl, owner)

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, key, held = heapq.heappop(heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]
                # The store forgets in expiry order, so this is the owner's earliest too.
                heapq.heappop(held.expiries)
                if not held.expiries:
                    del self._owners[held.name]


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

    async def record(self, key: bytes, ttl: float, owner: str = "") -> bool:
        if not self._l1.record_now(key, ttl, owner):
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
