"""The shared (L2) cache in Redis: bytes by key, group indexes, and messages over pub/sub.

Redis is an accelerator, never a dependency of a decision: every failure or timeout of a
request-path command becomes a miss, so an outage costs the loads the cache would have
spared, not requests. A breaker stops paying the timeout on every request while Redis is
down; one probe per interval finds it again.

This module knows nothing of what it stores. Callers choose the keys (never a raw secret:
the gateway uses hashes) and seal the values. A group index (a sorted set of keys scored by
their expiry) lets a caller drop every entry of a group at once — the gateway's subject
eviction — and stays bounded: each write trims the members that have expired.

A hit costs one round trip and little Python: the GETs issued in one loop iteration leave
in one write, on one connection with many in flight (``InFlightGets``, for a plain
``redis://`` URL) or as one redis-py pipeline (``GetBatcher``, for the rest); measured in
``tests/bench/redis_l2.py`` at 2 and 18 µs of client CPU per GET, against 90 for one
redis-py command each.

Evictions (deletes, group deletions, publishes) are tried even while the breaker is open,
and one that cannot reach Redis is kept (``pending``: why, and the republish) and replayed
before any other command once Redis answers again. Until the replay succeeds, reads are
misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster, Sentinel
from redis.asyncio.client import PubSub
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError

from gateway.cache import redis_bus
from gateway.cache.batching import GetBatcher
from gateway.cache.inflight import InFlightGets, endpoint_of
from gateway.cache.pending import Operation, PendingEvictions
from gateway.cache.settings import RedisSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_CONNECTIONS: Final = 64
_INDEX_CAP: Final = 10_000
"""Most members one group index keeps (the ones expiring last win)."""
_DELETE_BATCH: Final = 500

RESYNC: Final = {"op": "resync"}
"""Delivered to the subscriber after a gap in the subscription: messages may be lost."""


@dataclass(frozen=True, slots=True)
class GroupDeletion:
    """What deleting a group did: an admin must learn when it could not finish."""

    deleted: int
    complete: bool
    error: str | None = None


class RedisCache:
    """Fault-tolerant L2 operations over caller-chosen string keys."""

    def __init__(
        self, settings: RedisSettings, channel: str, *, probe_interval: float = 1.0
    ) -> None:
        self._channel = channel
        self._timeout = settings.timeout
        self._admin_timeout = settings.admin_timeout
        self._probe_interval = probe_interval
        self._client = make_client(settings)
        self._gets = _request_path_gets(settings, self._client)
        self._healthy = True
        self._probe_at = 0.0
        self._subscriber: asyncio.Task[None] | None = None
        self._pending = PendingEvictions()
        self._background: set[asyncio.Task[object]] = set()
        self.errors = 0
        self.commands = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def channel(self) -> str:
        return self._channel

    async def start(self) -> None:
        """Never raises: a gateway must start (degraded) while Redis is down."""
        await self._run(lambda: self._client.ping(), probe=True)

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        await self._gets.close()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._client.aclose()

    async def get(self, key: str) -> bytes | None:
        value = await self._run(lambda: self._gets.get(key), timed=False)
        return value if isinstance(value, bytes) else None

    async def set(
        self, key: str, value: bytes, ttl: float, *, group: str | None = None, group_ttl: float = 0
    ) -> None:
        """SET with a lifetime; with ``group``, also index the key there, in one round trip
        (not a transaction: a lost index entry only means a later group deletion misses a
        key that expires by itself)."""
        if group is None:
            await self._run(lambda: self._client.set(key, value, px=_ms(ttl)))
            return

        async def write() -> None:
            now = time.time()
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(key, value, px=_ms(ttl))
                pipe.zadd(group, {key: round((now + ttl) * 1000)})
                pipe.zremrangebyscore(group, "-inf", round(now * 1000))
                pipe.zremrangebyrank(group, 0, -_INDEX_CAP - 1)
                pipe.pexpire(group, _ms(max(group_ttl, ttl)))
                await pipe.execute()

        await self._run(write)

    async def delete(self, *keys: str) -> bool:
        """Delete keys (one command each: in a cluster they live in different slots);
        whether Redis confirmed it (if not, it is replayed later)."""
        return await self._evict(("delete", keys))

    async def delete_group(self, group: str, *, budget: float = 10.0) -> GroupDeletion:
        """Delete every key indexed in ``group``, in batches, within ``budget`` seconds; if
        Redis fails midway the rest is replayed later. Past the budget the caller is told
        and the rest goes on in the background, a batch per command as here: replayed
        before a request's own command instead, under its short bound, a large group on a
        slow Redis would time out there and open the breaker."""
        deadline = time.monotonic() + budget
        deleted = 0
        while True:
            if time.monotonic() > deadline:
                self._in_background(self.delete_group(group, budget=math.inf))
                return GroupDeletion(deleted, complete=False, error="time budget exceeded")
            removed = await self._run(
                partial(self._delete_batch, group), probe=True, replay=False,
                limit=self._admin_timeout,
            )  # fmt: skip
            if removed is None:
                self._pending.keep(("group", (group,)))
                return GroupDeletion(deleted, complete=False, error="redis unavailable")
            if removed < 0:
                return GroupDeletion(deleted, complete=True)
            deleted += removed

    async def publish(self, message: dict[str, Any]) -> bool:
        """Send a message to every subscriber; whether Redis took it (if not, it is
        published when Redis answers again).

        Sent while a deletion waits for replay (Redis took the PUBLISH but not the DEL: a
        cluster node holding the entries or their group index is down), it is also sent
        again once the deletion is replayed: a replica that heard it has emptied its L1, read
        the entry the DEL left behind from a node still up, and would serve it until its TTL.
        """
        payload = json.dumps(message, separators=(",", ":"))
        deletion_pending = self._pending.deletion_waiting()
        sent = await self._evict(("publish", (payload,)))
        if sent and deletion_pending:
            self._pending.keep(("republish", (payload,)))
        return sent

    @property
    def pending(self) -> int:
        """Evictions kept for replay."""
        return len(self._pending)

    async def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Start the subscriber task; returns once the first subscription attempt ended, so
        a message published after ``start()`` is not lost to a race."""
        if self._subscriber is not None:
            raise RuntimeError("already subscribed")
        ready = asyncio.Event()
        self._subscriber = asyncio.create_task(self._listen(callback, ready))
        await ready.wait()

    # --- internals -------------------------------------------------------------------------

    async def _run(
        self,
        command: Callable[[], Awaitable[T]],
        *,
        probe: bool = False,
        replay: bool = True,
        limit: float | None = None,
        timed: bool = True,
    ) -> T | None:
        """``command`` as a miss on any failure; ``timed=False`` for one that bounds its own
        time (a batched GET), unless evictions wait to be replayed first."""
        if not (probe or self._may_try()):
            return None
        self.commands += 1
        try:
            if timed or (replay and self._pending):
                async with asyncio.timeout(self._timeout if limit is None else limit):
                    if replay and self._pending:
                        await self._pending.replay(self._apply)
                    result = await command()
            else:
                result = await command()
        except MaxConnectionsError:  # busy, not down: a miss, and the breaker stays closed
            self.errors += 1
            return None
        except Exception as exc:  # any failure of a cache is a miss, not a 500
            # Beyond redis-py's own errors: a server killed mid-handshake surfaces as uvloop's
            # RuntimeError from the transport, which redis-py re-raises as is.
            self._failed(exc)
            return None
        self._succeeded()
        return result

    async def _drop_idle_connections(self) -> None:
        """At the start of an outage: redis-py's idle connections are dead with the server
        they were made to, and the probes that find Redis again may not use them (the GETs
        have a connection of their own), so they go now rather than fail a write later."""
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=False)

    async def _evict(self, operation: Operation) -> bool:
        """Apply an eviction now, or keep it for replay; tried even while the breaker is open
        (in a cluster with one node down, the others still take it)."""
        done = await self._run(
            partial(self._apply, operation), probe=True, replay=False, limit=self._admin_timeout
        )
        if done is None:
            self._pending.keep(operation)
            return False
        return True

    async def _apply(self, operation: Operation) -> bool:
        kind, values = operation
        if kind == "delete":
            async with self._client.pipeline(transaction=False) as pipe:
                for key in values:
                    pipe.delete(key)
                await pipe.execute()
        elif kind == "group":
            while await self._delete_batch(values[0]) >= 0:
                pass
        else:
            await redis_bus.publish(self._client, self._channel, values[0])
        return True

    async def _delete_batch(self, group: str) -> int:
        """Delete up to one batch of the group's keys: how many were deleted, or -1 when the
        group is empty (and the index itself is then gone)."""
        batch = await self._client.zrange(group, 0, _DELETE_BATCH - 1)
        if not batch:
            await self._client.delete(group)
            return -1
        return await _delete_members(self._client, group, [m.decode() for m in batch])

    def _may_try(self) -> bool:
        """While down, let one command through per probe interval; the rest are misses."""
        if self._healthy:
            return True
        now = time.monotonic()
        if now < self._probe_at:
            return False
        self._probe_at = now + self._probe_interval
        return True

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._probe_at = time.monotonic() + self._probe_interval
        if self._healthy:
            self._healthy = False
            log.warning("redis unavailable, serving without L2: %s", _describe(exc))
            self._in_background(self._drop_idle_connections())

    def _in_background(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work`` as a task this client owns (``close`` waits for it)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _succeeded(self) -> None:
        if not self._healthy:
            self._healthy = True
            log.info("redis available again")

    async def _listen(self, callback: redis_bus.Callback, ready: asyncio.Event) -> None:
        gap = False
        turn = 0
        while True:
            pubsub: PubSub | None = None
            pool: ConnectionPool | None = None
            try:  # everything inside: an exception escaping this task would stop evictions
                pubsub, pool = redis_bus.subscription(self._client, turn)
                async with asyncio.timeout(self._timeout * 2 + 1.0):
                    await redis_bus.subscribe(pubsub, self._channel)
                self._succeeded()
                if self._pending:  # now, not at the next request: replicas are waiting
                    await self._run(
                        partial(self._pending.replay, self._apply), replay=False,
                        limit=self._admin_timeout,
                    )  # fmt: skip
                if gap:
                    redis_bus.deliver(callback, dict(RESYNC))
                ready.set()
                await redis_bus.pump(pubsub, callback)
            except Exception as exc:  # whatever failed, resubscribe: revocation must keep flowing
                self._failed(exc)
                gap = True
                turn += 1
            finally:
                ready.set()
                await redis_bus.close_quietly(pubsub, pool)
            await asyncio.sleep(self._probe_interval)


async def _delete_members(client: Any, group: str, members: list[str]) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.delete(member)
        pipe.zrem(group, *members)
        results = await pipe.execute()
    return int(sum(results[:-1]))


def _request_path_gets(settings: RedisSettings, client: Any) -> InFlightGets | GetBatcher:
    """The request path's one command: on one connection with many in flight for a plain
    ``redis://`` URL, else pipelined through redis-py (TLS, unix, Sentinel, Cluster)."""
    plain = settings.url is not None and not settings.cluster and not settings.sentinel_hosts
    endpoint = endpoint_of(settings.url) if plain and settings.url is not None else None
    if endpoint is not None:
        return InFlightGets(endpoint, settings.timeout)
    return GetBatcher(client, settings.timeout)


def make_client(settings: RedisSettings, *, max_connections: int = _MAX_CONNECTIONS) -> Any:
    """One client per target kind; retries off: a failed command is a miss, not a wait."""
    options: dict[str, Any] = {
        "socket_timeout": max(settings.timeout, settings.admin_timeout),
        "socket_connect_timeout": settings.timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.sentinel_hosts:
        if settings.cluster:
            raise ValueError("redis: cluster mode takes a url, not sentinel")
        assert settings.sentinel_service is not None  # the compiler guarantees it
        sentinel = Sentinel(list(settings.sentinel_hosts), **options)  # type: ignore[no-untyped-call]
        return sentinel.master_for(settings.sentinel_service, **options)
    assert settings.url is not None  # the compiler guarantees url xor sentinel
    if settings.cluster:
        return RedisCluster.from_url(settings.url, **options)
    # Bounded, and blocking: past this many concurrent commands one waits for a connection
    # (within its own timeout) rather than the pool growing with every burst and never
    # shrinking, or a burst of cold requests reading as an outage and opening the breaker.
    pool = BlockingConnectionPool.from_url(
        settings.url, max_connections=max_connections, timeout=settings.timeout, **options
    )
    return Redis.from_pool(pool)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
