"""The rate limiter of one process: GCRA buckets in a bounded LRU, checked on the hot path.

A check touches only memory: per limit one dict lookup, one comparison, one addition. With a
cluster sync attached (``ratelimit_sync``), each admission is also counted as *pending*; the
sync periodically pushes pending counts to Redis and pulls the cluster's state back into the
buckets, so no request ever waits on Redis.

Buckets are keyed by route, limit name and key, so one limiter can outlive a reload (keep
it, and its sync, for as long as ``rate_limiting`` is unchanged): clients keep their state
and a changed rate applies at once, since a GCRA state is a point in time, not a count.

Memory is bounded by ``max_keys`` buckets. When it is full the least recently used bucket is
dropped, even one still limited. That fails open for that one key, deliberately: pushing out
a limited bucket takes ``max_keys`` other keys used more recently, and a client that holds
that many keys already gets ``max_keys`` bursts, so refusing new keys instead (failing
closed) would add nothing against it and would lock every new legitimate client out. A
limit keyed by the route (or by few values) is always recently used and never dropped: it
is what holds the total. ``evicted_limited`` counts how often it happens.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.identity import Identity
from gateway.auth.ratelimit import (
    RateLimited,
    admit,
    ceil_seconds,
    conforms,
    limit_field,
    service_limit,
    wait,
)
from gateway.auth.ratelimit_keys import CompiledLimit, HeaderGetter, RouteLimits

_NEVER = -(2**62)  # a tat far in the past: a full bucket


class Bucket:
    """One key's GCRA state; ``pending`` admissions are not in Redis yet."""

    __slots__ = ("dropped", "first_pending", "key", "limit", "linger_until", "pending",
                 "remote_key", "tat")  # fmt: skip

    def __init__(self, key: tuple[str, ...], limit: CompiledLimit) -> None:
        self.key = key
        self.limit = limit
        self.tat = _NEVER
        self.pending = 0
        self.first_pending = 0
        self.remote_key: str | None = None
        self.dropped = False
        self.linger_until = 0  # pulled at least until then after pushing (see apply)


@dataclass(frozen=True, slots=True)
class SyncItem:
    """One bucket's share of a sync round: ``count`` admissions, the first at ``since``."""

    bucket: Bucket
    count: int
    since: int


class RateLimiter:
    """Every bucket of one runtime. ``clock`` is monotonic nanoseconds."""

    def __init__(
        self,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], int] = time.monotonic_ns,
        shared: bool = False,
    ) -> None:
        self._buckets: OrderedDict[tuple[str, ...], Bucket] = OrderedDict()
        self._max_keys = max_keys
        self.clock = clock
        self.shared = shared  # a sync is attached: count pending admissions
        self.degraded = False  # the sync cannot reach Redis: enforce each limit's fallback
        self._dirty: dict[Bucket, None] = {}
        self._watched: dict[Bucket, None] = {}
        self.evicted = 0
        self.evicted_limited = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def check(
        self,
        route: RouteLimits,
        identity: Identity | None,
        client_ip: str,
        headers: HeaderGetter,
    ) -> tuple[tuple[str, str], ...]:
        """Admit the request under every limit of the route, or raise RateLimited.

        A refused request consumes nothing in any limit (all are checked before any is
        charged). Returns the RateLimit fields for the response when the route asks for
        them on allowed responses, else ().
        """
        limits = route.limits if identity is not None else route.anonymous
        if not limits:
            return ()
        now = self.clock()
        degraded = self.degraded
        buckets = self._buckets
        chosen: list[Bucket] = []
        refused = False
        for limit in limits:
            key = limit.key_of(identity, client_ip, headers)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = self._insert(key, limit, now)
            else:
                buckets.move_to_end(key)
                # A limiter kept across a reload: the bucket follows the current settings.
                bucket.limit = limit
            if not conforms(bucket.tat, now, limit.fallback if degraded else limit.rate):
                refused = True
            chosen.append(bucket)
        policy = route.policy if identity is not None else route.anonymous_policy
        if refused:
            raise self._refusal(policy, chosen, now, degraded)
        for bucket in chosen:
            limit = bucket.limit
            bucket.tat = admit(bucket.tat, now, limit.fallback if degraded else limit.rate)
            limit.allowed += 1
            if self.shared:
                if bucket.pending == 0:
                    bucket.first_pending = now
                    self._dirty[bucket] = None
                bucket.pending += 1
        if not route.headers:
            return ()
        return (("RateLimit-Policy", policy), ("RateLimit", self._field(chosen, now, degraded)))

    def _insert(self, key: tuple[str, ...], limit: CompiledLimit, now: int) -> Bucket:
        if len(self._buckets) >= self._max_keys:
            _, old = self._buckets.popitem(last=False)
            old.dropped = True
            self.evicted += 1
            if old.tat > now:
                self.evicted_limited += 1
        bucket = Bucket(key, limit)
        self._buckets[key] = bucket
        return bucket

    def _field(self, buckets: list[Bucket], now: int, degraded: bool) -> str:
        items = []
        for bucket in buckets:
            limit = bucket.limit
            r, t = service_limit(bucket.tat, now, limit.fallback if degraded else limit.rate)
            items.append((limit.name, r, t))
        return limit_field(items)

    def _refusal(self, policy: str, buckets: list[Bucket], now: int, degraded: bool) -> RateLimited:
        violated = []
        longest = 0
        for bucket in buckets:
            limit = bucket.limit
            rate = limit.fallback if degraded else limit.rate
            waited = wait(bucket.tat, now, rate)
            if waited > 0:
                violated.append(limit.name)
                limit.limited += 1
                longest = max(longest, waited)
        fields = {"RateLimit-Policy": policy, "RateLimit": self._field(buckets, now, degraded)}
        return RateLimited(ceil_seconds(longest), violated, fields)

    # --- the sync's side (ratelimit_sync) -----------------------------------------------

    def take_batch(self, max_items: int) -> list[SyncItem]:
        """Buckets for one sync round, pending ones first, their pending counts taken (the
        round returns them with ``restore`` if it fails). Watched buckets (not full when
        last seen) come along with a count of 0 to learn what other replicas spent."""
        items: list[SyncItem] = []
        for bucket in list(self._dirty):
            if len(items) >= max_items:
                break
            del self._dirty[bucket]
            self._watched.pop(bucket, None)
            items.append(SyncItem(bucket, bucket.pending, bucket.first_pending))
            bucket.pending = 0
        for bucket in list(self._watched):
            if len(items) >= max_items:
                break
            del self._watched[bucket]
            items.append(SyncItem(bucket, 0, 0))
        return items

    def restore(self, items: list[SyncItem]) -> None:
        """Give a failed round's counts back, to be pushed by a later one."""
        for item in items:
            bucket = item.bucket
            if item.count:
                if bucket.pending == 0 or item.since < bucket.first_pending:
                    bucket.first_pending = item.since
                bucket.pending += item.count
                self._dirty[bucket] = None
            elif not bucket.dropped:
                self._watched[bucket] = None

    def apply(self, items: list[SyncItem], debts: list[int | None], *, linger: int = 0) -> None:
        """Merge the cluster's state: ``debts[i]`` is the shared ``tat - now`` of item i in
        nanoseconds (None: Redis holds nothing, the cluster bucket is full). A bucket's
        ``tat`` only ever moves forward: what this replica knows itself is never lost.

        A bucket stays watched (pulled every round) while it is not full, and for ``linger``
        ns after it last pushed, so that other replicas' spending of the same moments, which
        reaches Redis up to a round later, is still seen here.
        """
        now = self.clock()
        for item, debt in zip(items, debts, strict=True):
            bucket = item.bucket
            if debt is not None:
                # Admissions made here while the round was in flight are still pending.
                seen = now + debt + bucket.pending * bucket.limit.rate.interval
                bucket.tat = max(bucket.tat, seen)
            if item.count:
                bucket.linger_until = now + linger
            busy = bucket.tat > now or bucket.linger_until > now
            if busy and not bucket.dropped and bucket not in self._dirty:
                self._watched[bucket] = None

    def backlog(self) -> int:
        return len(self._dirty) + len(self._watched)
