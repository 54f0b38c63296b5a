"""Cache messages over Redis pub/sub: publishing and the subscriber's connection and loop.

Revocations travel here, so the bus must survive what the cache survives. In a Redis
Cluster a plain PUBLISH reaches the subscribers of every node from any node, even while
the cluster refuses keyed commands; redis-py would send it only to the channel's slot
owner, so when that node is down the next primary carries it, and a subscription moves to
the next primary after a failure. A cluster subscription gets a connection of its own:
redis-py's cluster pub/sub borrows the node's pool, and the cluster client closes every
node's connections on each CLUSTERDOWN reply, which would cut the subscription each time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio import RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from gateway import boundedjson

log = logging.getLogger(__name__)

KEEPALIVE: Final = 5.0
"""Seconds of pub/sub silence before a PING; no answer within three of them: resubscribe."""
MAX_MESSAGE: Final = 4096
_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)

Callback = Callable[[dict[str, Any]], None]


async def publish(client: Any, channel: str, payload: str) -> None:
    """PUBLISH; in a cluster, on the first primary that takes it."""
    if not isinstance(client, RedisCluster):
        await client.publish(channel, payload)
        return
    failure: Exception | None = None
    targets: list[ClusterNode | None] = [*client.get_primaries()]
    for node in targets or [None]:  # None: not discovered yet, redis-py picks the node
        try:
            await client.publish(channel, payload, target_nodes=node)
        except Exception as exc:  # this node failed: try the next
            failure = failure or exc
            continue
        return
    assert failure is not None
    raise failure


def subscription(client: Any, turn: int) -> tuple[PubSub, ConnectionPool | None]:
    """A pub/sub connection, and its own pool to close after it where it has one; in a
    cluster, on primary number ``turn`` (modulo), so each failure moves it along."""
    if isinstance(client, RedisCluster):
        primaries = client.get_primaries()
        if primaries:  # empty until the client has discovered the cluster
            node = primaries[turn % len(primaries)]
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            return PubSub(connection_pool=pool), pool
    return client.pubsub(), None


async def subscribe(pubsub: PubSub, channel: str) -> None:
    """SUBSCRIBE and wait for its confirmation, so the subscription is live on return."""
    await pubsub.subscribe(channel)
    while True:
        message = await pubsub.get_message(timeout=None)
        if message is not None and message["type"] == "subscribe":
            return


async def pump(pubsub: PubSub, callback: Callback) -> None:
    """Deliver messages until the connection fails; a silent link is probed, then dropped."""
    loop = asyncio.get_running_loop()
    heard = loop.time()
    while True:
        message = await pubsub.get_message(timeout=KEEPALIVE)
        now = loop.time()
        if message is None:
            if now - heard > 3 * KEEPALIVE:
                raise RedisConnectionError("pub/sub connection went silent")
            await pubsub.ping()
            continue
        heard = now
        if message["type"] == "message":
            decoded = decode_message(message["data"])
            if decoded is not None:
                deliver(callback, decoded)


def decode_message(data: Any) -> dict[str, Any] | None:
    """Messages come from anyone who can publish to Redis: bounded, and objects only."""
    try:
        message = boundedjson.loads(data, max_bytes=MAX_MESSAGE, max_depth=2)
    except (ValueError, TypeError):
        log.warning("ignoring a cache message that is not bounded JSON")
        return None
    return message if isinstance(message, dict) else None


def deliver(callback: Callback, message: dict[str, Any]) -> None:
    """A failing callback loses one message, not the subscription."""
    try:
        callback(message)
    except Exception:
        log.exception("cache message callback failed")


async def close_quietly(pubsub: PubSub | None, pool: ConnectionPool | None) -> None:
    try:
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        if pool is not None:
            await pool.disconnect()
    except _FAILURES:
        log.debug("closing a failed pub/sub connection", exc_info=True)
