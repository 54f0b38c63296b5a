"""The shared (L2) cache of RFC 7662 answers in Redis, and eviction messages over pub/sub.

Redis is an accelerator, never a dependency of a decision: every failure or timeout becomes
a miss, so an outage costs introspection calls, not requests. A breaker stops paying the
timeout on every request while Redis is down; one probe per interval finds it again.

Keys are ``key_prefix + hex(SHA-256(token))``: the raw token is never sent to Redis.

An eviction that cannot reach Redis is kept (bounded) and replayed before any other command
once Redis answers again: an entry a failed DEL left behind (a promoted replica still holds
it) must not be served after the outage, and replicas that missed the message must still
hear it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from redis.asyncio import Redis, RedisCluster, Sentinel
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from gateway.config.models import RedisConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)
_KEEPALIVE: Final = 5.0
"""Seconds of pub/sub silence before a PING; no answer within three of them: resubscribe."""

_PENDING_MAX: Final = 1024
"""Evictions kept for replay while Redis is unreachable; past this the oldest are lost."""

RESYNC: Final = {"op": "resync"}
"""Delivered to the eviction callback after a gap in the subscription: messages may be lost."""


class RedisCache:
    """Fault-tolerant L2 operations; ``key`` arguments are SHA-256 digests of tokens."""

    def __init__(
        self, config: RedisConfig, key_prefix: str, *, probe_interval: float = 1.0
    ) -> None:
        self._prefix = key_prefix
        self._channel = f"{key_prefix}evict"
        self._timeout = config.timeout
        self._probe_interval = probe_interval
        self._client = _client(config)
        self._healthy = True
        self._probe_at = 0.0
        self._subscriber: asyncio.Task[None] | None = None
        # ("delete", key) | ("subject", subject) | ("publish", payload), oldest first.
        self._pending: deque[tuple[str, str]] = deque()
        self._replaying = asyncio.Lock()
        self.errors = 0
        self.commands = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def channel(self) -> str:
        return self._channel

    def key(self, digest: bytes) -> str:
        return self._prefix + digest.hex()

    def subject_key(self, subject: str) -> str:
        return f"{self._prefix}sub:{hashlib.sha256(subject.encode()).hexdigest()}"

    async def start(self) -> None:
        """Never raises: a gateway must start (degraded) while Redis is down."""
        await self._run(lambda: self._client.ping(), probe=True)

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        await self._client.aclose()

    async def get(self, key: bytes) -> bytes | None:
        return await self._run(lambda: self._client.get(self.key(key)))

    async def set(self, key: bytes, value: bytes, ttl: float) -> None:
        await self._run(lambda: self._client.set(self.key(key), value, px=_ms(ttl)))

    async def set_for_subject(
        self, key: bytes, value: bytes, ttl: float, subject: str, subject_ttl: float
    ) -> None:
        """SET plus membership in the subject's index, in one round trip (not a transaction:
        a lost index entry only means a later subject eviction misses a key that expires)."""

        async def write() -> None:
            index = self.subject_key(subject)
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self.key(key), value, px=_ms(ttl))
                pipe.sadd(index, key.hex())
                pipe.pexpire(index, _ms(subject_ttl))
                await pipe.execute()

        await self._run(write)

    async def delete(self, key: bytes) -> None:
        await self._evict(("delete", self.key(key)))

    async def delete_subject(self, subject: str) -> None:
        """Delete every entry indexed under ``subject``, and the index."""
        await self._evict(("subject", subject))

    async def publish_eviction(self, message: dict[str, Any]) -> None:
        await self._evict(("publish", json.dumps(message, separators=(",", ":"))))

    async def subscribe_evictions(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Start the subscriber task; returns once the first subscription attempt ended, so
        a message published after ``start()`` is not lost to a race."""
        if self._subscriber is not None:
            raise RuntimeError("already subscribed")
        ready = asyncio.Event()
        self._subscriber = asyncio.create_task(self._listen(callback, ready))
        await ready.wait()

    # --- internals -------------------------------------------------------------------------

    async def _run(
        self, command: Callable[[], Awaitable[T]], *, probe: bool = False, replay: bool = True
    ) -> T | None:
        if not (probe or self._may_try()):
            return None
        self.commands += 1
        try:
            async with asyncio.timeout(self._timeout):
                if replay and self._pending:
                    await self._replay()
                result = await command()
        except Exception as exc:  # any failure of a cache is a miss, not a 500
            # Beyond redis-py's own errors: a server killed mid-handshake surfaces as uvloop's
            # RuntimeError from the transport, which redis-py re-raises as is.
            self._failed(exc)
            return None
        self._succeeded()
        return result

    async def _evict(self, operation: tuple[str, str]) -> None:
        """Apply an eviction now, or keep it for replay if Redis does not take it. Tried
        even while the breaker is open, and before older kept ones: in a cluster with one
        node down, the publish and the DELs on the other nodes still get through."""
        if await self._run(lambda: self._apply(operation), probe=True, replay=False) is None:
            if len(self._pending) == _PENDING_MAX:
                log.warning("redis unavailable: dropping the oldest eviction kept for replay")
                self._pending.popleft()
            self._pending.append(operation)

    async def _replay(self) -> None:
        """Every kept eviction, oldest first; those Redis took leave the queue. Raises the
        first failure once all were tried, so the command waiting on the replay is a miss:
        nothing is read from Redis while an entry a failed DEL left behind may be there."""
        async with self._replaying:
            failure: Exception | None = None
            for operation in list(self._pending):
                try:
                    await self._apply(operation)
                except Exception as exc:  # as in _run: whatever failed, keep it for later
                    failure = failure or exc
                    continue
                self._pending.remove(operation)
            if failure is not None:
                raise failure

    async def _apply(self, operation: tuple[str, str]) -> bool:
        """One eviction; True once done (``_run`` answers None for a failure)."""
        kind, value = operation
        if kind == "delete":
            await self._client.delete(value)
        elif kind == "subject":
            await self._delete_subject(value)
        else:
            await self._publish(value)
        return True

    async def _publish(self, payload: str) -> None:
        """In a cluster, PUBLISH (not sharded SPUBLISH) reaches the subscribers of every node
        from any node, even while the cluster refuses keyed commands: when one node is down
        the next primary carries it (redis-py would send it only to the channel's slot)."""
        if not isinstance(self._client, RedisCluster):
            await self._client.publish(self._channel, payload)
            return
        failure: Exception | None = None
        targets: list[ClusterNode | None] = [*self._client.get_primaries()]
        for node in targets or [None]:  # None: not yet discovered, redis-py picks the node
            try:
                await self._client.publish(self._channel, payload, target_nodes=node)
            except Exception as exc:  # as in _run: this node failed, try the next
                failure = failure or exc
                continue
            return
        assert failure is not None
        raise failure

    async def _delete_subject(self, subject: str) -> None:
        index = self.subject_key(subject)
        members = await self._client.smembers(index)
        # One DEL per key: in a cluster the keys live in different hash slots.
        async with self._client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.delete(self._prefix + member.decode("ascii"))
            pipe.delete(index)
            await pipe.execute()

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
        turn = 0
        while True:
            pubsub: PubSub | None = None
            pool: ConnectionPool | None = None
            try:  # everything inside: an exception escaping this task would stop evictions
                pubsub, pool = self._subscription(turn)
                async with asyncio.timeout(self._timeout * 2):
                    await _subscribe(pubsub, self._channel)
                self._succeeded()
                if self._pending:  # now, not at the next request: replicas are waiting
                    await self._run(self._replay, replay=False)
                if gap:
                    _deliver(callback, dict(RESYNC))
                ready.set()
                await _pump(pubsub, callback)
            except Exception as exc:  # whatever failed, resubscribe: revocation must keep flowing
                self._failed(exc)
                gap = True
                turn += 1
            finally:
                ready.set()
                await _close_quietly(pubsub, pool)
            await asyncio.sleep(self._probe_interval)

    def _subscription(self, turn: int) -> tuple[PubSub, ConnectionPool | None]:
        """A pub/sub connection, and the pool to close after it if it has its own.

        In a cluster, a subscription on any primary hears every PUBLISH: after a failure
        the next primary is tried, rather than only the node owning the channel's slot.
        Its connection is its own: redis-py's cluster pub/sub borrows the node's pool, and
        the cluster client closes every node's connections on each CLUSTERDOWN reply,
        which would cut the subscription (and the evictions it carries) each time."""
        if isinstance(self._client, RedisCluster):
            primaries = self._client.get_primaries()
            if primaries:  # empty until the client has discovered the cluster
                node = primaries[turn % len(primaries)]
                # The node's own settings (address, credentials, TLS, timeouts).
                pool = ConnectionPool(
                    connection_class=node.connection_class, **node.connection_kwargs
                )
                return PubSub(connection_pool=pool), pool
        return self._client.pubsub(), None


_MAX_CONNECTIONS = 64


def _client(config: RedisConfig) -> Any:
    """One client per target kind; retries off: a failed command is a miss, not a wait."""
    options: dict[str, Any] = {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if config.sentinel is not None:
        if config.cluster:
            raise ValueError("redis: cluster mode takes a url, not sentinel")
        sentinel = Sentinel([_host_port(item) for item in config.sentinel.hosts], **options)
        return sentinel.master_for(config.sentinel.service, **options)
    assert config.url is not None  # RedisConfig guarantees url xor sentinel
    if config.cluster:
        return RedisCluster.from_url(config.url, **options)
    # Bounded: past this many concurrent commands one fails fast and counts as a miss,
    # rather than the pool growing with every burst and never shrinking.
    return Redis.from_url(config.url, max_connections=_MAX_CONNECTIONS, **options)


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


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


def _decode_message(data: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(data)
    except ValueError:
        log.warning("ignoring an eviction message that is not JSON")
        return None
    return message if isinstance(message, dict) else None


def _deliver(callback: Callable[[dict[str, Any]], None], message: dict[str, Any]) -> None:
    """A failing callback loses one message, not the subscription."""
    try:
        callback(message)
    except Exception:
        log.exception("eviction callback failed")


async def _close_quietly(pubsub: PubSub | None, pool: ConnectionPool | None) -> None:
    try:
        if pubsub is not None:
            await pubsub.aclose()
        if pool is not None:
            await pool.disconnect()
    except _FAILURES:
        log.debug("closing a failed pub/sub connection", exc_info=True)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
