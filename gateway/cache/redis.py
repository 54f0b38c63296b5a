"""The shared (L2) cache in Redis: bytes by key, group indexes, and messages over pub/sub.

Redis is an accelerator, never a dependency of a decision: every failure or timeout of a
request-path command becomes a miss, so an outage costs the loads the cache would have
spared, not requests. A breaker stops paying the timeout on every request while Redis is
down; one probe per interval finds it again.

This module knows nothing of what it stores. Callers choose the keys (never a raw secret:
the gateway uses hashes) and seal the values. A group index (a sorted set of keys scored by
their expiry) lets a caller drop every entry of a group at once — the gateway's subject
eviction — and stays bounded: each write trims the members that have expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster, Sentinel
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError

from gateway import boundedjson
from gateway.cache.settings import RedisSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)
_KEEPALIVE: Final = 5.0
"""Seconds of pub/sub silence before a PING; no answer within three of them: resubscribe."""
_MAX_CONNECTIONS: Final = 64
_INDEX_CAP: Final = 10_000
"""Most members one group index keeps (the ones expiring last win)."""
_DELETE_BATCH: Final = 500
_MAX_MESSAGE: Final = 4096

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
        self._client = _client(settings)
        self._healthy = True
        self._probe_at = 0.0
        self._subscriber: asyncio.Task[None] | None = None
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
        await self._client.aclose()

    async def get(self, key: str) -> bytes | None:
        value = await self._run(lambda: self._client.get(key))
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
        whether Redis confirmed it."""

        async def remove() -> bool:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.delete(key)
                await pipe.execute()
            return True

        return bool(await self._run(remove, limit=self._admin_timeout))

    async def delete_group(self, group: str, *, budget: float = 10.0) -> GroupDeletion:
        """Delete every key indexed in ``group``, in batches, within ``budget`` seconds."""
        deadline = time.monotonic() + budget
        deleted = 0
        while True:
            if time.monotonic() > deadline:
                return GroupDeletion(deleted, complete=False, error="time budget exceeded")
            batch = await self._run(
                lambda: self._client.zrange(group, 0, _DELETE_BATCH - 1),
                limit=self._admin_timeout,
            )
            if batch is None:
                return GroupDeletion(deleted, complete=False, error="redis unavailable")
            if not batch:
                break
            removed = await self._run(
                partial(_delete_members, self._client, group, [m.decode() for m in batch]),
                limit=self._admin_timeout,
            )
            if removed is None:
                return GroupDeletion(deleted, complete=False, error="redis unavailable")
            deleted += removed
        await self._run(lambda: self._client.delete(group), limit=self._admin_timeout)
        return GroupDeletion(deleted, complete=True)

    async def publish(self, message: dict[str, Any]) -> bool:
        """Send a message to every subscriber; whether Redis took it."""
        payload = json.dumps(message, separators=(",", ":"))
        sent = await self._run(
            lambda: self._client.publish(self._channel, payload), limit=self._admin_timeout
        )
        return sent is not None

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
        limit: float | None = None,
    ) -> T | None:
        if not (probe or self._may_try()):
            return None
        self.commands += 1
        try:
            async with asyncio.timeout(self._timeout if limit is None else limit):
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

    def _succeeded(self) -> None:
        if not self._healthy:
            self._healthy = True
            log.info("redis available again")

    async def _listen(
        self, callback: Callable[[dict[str, Any]], None], ready: asyncio.Event
    ) -> None:
        gap = False
        while True:
            pubsub = self._client.pubsub()
            try:
                async with asyncio.timeout(self._timeout * 2 + 1.0):
                    await _subscribe(pubsub, self._channel)
                self._succeeded()
                if gap:
                    _deliver(callback, dict(RESYNC))
                ready.set()
                await _pump(pubsub, callback)
            except Exception as exc:  # whatever failed, resubscribe: revocation must keep flowing
                self._failed(exc)
                gap = True
            finally:
                ready.set()
                await _close_quietly(pubsub)
            await asyncio.sleep(self._probe_interval)


async def _delete_members(client: Any, group: str, members: list[str]) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.delete(member)
        pipe.zrem(group, *members)
        results = await pipe.execute()
    return int(sum(results[:-1]))


def _client(settings: RedisSettings) -> Any:
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
        settings.url, max_connections=_MAX_CONNECTIONS, timeout=settings.timeout, **options
    )
    return Redis.from_pool(pool)


async def _subscribe(pubsub: PubSub, channel: str) -> None:
    """SUBSCRIBE and wait for its confirmation, so the subscription is live on return."""
    await pubsub.subscribe(channel)
    while True:
        message = await pubsub.get_message(timeout=None)
        if message is not None and message["type"] == "subscribe":
            return


async def _pump(pubsub: PubSub, callback: Callable[[dict[str, Any]], None]) -> None:
    """Deliver messages until the connection fails; a silent link is probed, then dropped."""
    loop = asyncio.get_running_loop()
    heard = loop.time()
    while True:
        message = await pubsub.get_message(timeout=_KEEPALIVE)
        now = loop.time()
        if message is None:
            if now - heard > 3 * _KEEPALIVE:
                raise RedisConnectionError("pub/sub connection went silent")
            await pubsub.ping()
            continue
        heard = now
        if message["type"] == "message":
            decoded = _decode_message(message["data"])
            if decoded is not None:
                _deliver(callback, decoded)


def _decode_message(data: Any) -> dict[str, Any] | None:
    """Messages come from anyone who can publish to Redis: bounded, and objects only."""
    try:
        message = boundedjson.loads(data, max_bytes=_MAX_MESSAGE, max_depth=2)
    except (ValueError, TypeError):
        log.warning("ignoring a cache message that is not bounded JSON")
        return None
    return message if isinstance(message, dict) else None


def _deliver(callback: Callable[[dict[str, Any]], None], message: dict[str, Any]) -> None:
    """A failing callback loses one message, not the subscription."""
    try:
        callback(message)
    except Exception:
        log.exception("cache message callback failed")


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    except _FAILURES:
        log.debug("closing a failed pub/sub connection", exc_info=True)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
