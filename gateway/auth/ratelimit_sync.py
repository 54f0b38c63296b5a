"""Cluster-wide rate limits: each replica periodically pushes what it admitted to Redis and
pulls the shared GCRA state back; no request ever waits on Redis.

Per key Redis holds the cluster's ``tat`` in Redis's own clock (``TIME``), so replicas'
clocks never have to agree. Every ``interval`` one pipeline carries, per active key, a small
Lua script: it charges ``count`` admissions (``tat = max(tat, now - span) + count * T``,
``span`` being how long ago the first of them was, so a replica reporting late is not
charged as if they had all just happened) and answers ``tat - now``, which the replica folds
into its bucket (``ratelimiter.RateLimiter.apply``). Keys are SHA-256 of the bucket key; no
identity or address is sent to Redis.

Which keys a round carries: those with pending admissions, and those a replica watches,
pulled with a count of 0: not full here or in Redis, or pushed within the last two rounds.
A key a replica believes full is not pulled, so a client arriving there gets what a full
bucket allows until that replica's next round.

Worst-case overshoot (``N`` replicas, ``S`` the interval, ``d`` a Redis round trip, ``r``
the rate, ``b`` the burst). A replica learns another's admissions at most ``2S + d`` late
(one push, one pull), and in that time it admits at most what its own bucket allows:
``b + r(2S + d)``, the ``b`` when it believed the bucket full. So in any window the cluster
admits at most the one-instance bound (``limit + burst`` per ``window``) plus
``(N - 1)(b + r(2S + d)) + r(S + d)``, the last term for the ``span`` credit of one round.
Every excess admission is charged to the shared ``tat``, and every replica that learns of
the debt refuses until it is paid back: the overshoot does not accumulate, and over a long
run the cluster admits the limit. Measured with two instances (tests/integration/
test_ratelimit_cluster.py, S = 100 ms, 50/s, burst 50, both hammered every millisecond):
114 in the worst 1 s window against 100 for one instance, 108 in the worst 100 ms against
55; two replicas bursting at once from full admit exactly 2b, then nothing until the debt
is paid.

Redis unreachable (a round fails or times out): the limiter is marked ``degraded`` and each
replica enforces its fallback (``local_share``: the limit / ``expected_replicas``), counts
stay pending and are pushed once Redis answers again. redis-py is imported only here, and
only when a sync starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Final

from gateway.auth.ratelimiter import RateLimiter, SyncItem
from gateway.cache.settings import RedisSettings

log = logging.getLogger(__name__)

MAX_KEYS_PER_ROUND: Final = 10_000
_CHUNK: Final = 1_000
_MAX_DEBT_US: Final = 10**15  # ~30 years: anything larger is not a tat a script wrote
# KEYS[1]: the bucket. ARGV: count, span (µs), interval T (µs), grace (ms). Returns tat - now
# in µs, or false when Redis holds nothing for the key (its bucket is full).
_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
local count = tonumber(ARGV[1])
if count > 0 then
  local base = now - tonumber(ARGV[2])
  if tat ~= nil and tat > base then base = tat end
  tat = base + count * tonumber(ARGV[3])
  local ttl = math.ceil((tat - now) / 1000) + tonumber(ARGV[4])
  if ttl < 1 then ttl = 1 end
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl)
end
if tat == nil then return false end
return string.format('%.0f', tat - now)
"""
_SCRIPT_SHA: Final = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()


def remote_key(prefix: str, key: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\x1e".join(key).encode("utf-8", "replace")).hexdigest()
    return prefix + digest[:48]


def _debt(reply: Any) -> int | None:
    """The script's answer in ns; anything else is refused (ValueError)."""
    if reply is None:
        return None
    if not isinstance(reply, bytes | str | int) or isinstance(reply, bool):
        raise ValueError("unexpected answer from the rate-limit script")
    debt_us = int(reply)
    if abs(debt_us) > _MAX_DEBT_US:
        raise ValueError("rate-limit state out of range")
    return debt_us * 1000


class ClusterSync:
    """Owns the periodic task that keeps one ``RateLimiter`` in step with the cluster."""

    def __init__(
        self,
        limiter: RateLimiter,
        config: RedisSettings,
        *,
        interval: float = 0.2,
        key_prefix: str = "gw:rl:",
        client: Any = None,
    ) -> None:
        self._limiter = limiter
        self._config = config
        self._interval = interval
        self._prefix = key_prefix
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.rounds = 0
        self.errors = 0
        self.keys_synced = 0
        limiter.shared = True

    async def start(self) -> None:
        """Never raises: limits hold locally while Redis is away."""
        if self._client is None:
            from gateway.cache.redis import make_client  # redis-py only where configured

            self._client = make_client(self._config, max_connections=4)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ratelimit-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        next_round = loop.time()
        while True:
            next_round += self._interval
            await self.sync_once()
            if task is not None and task.cancelling():
                # redis-py (8.1) can swallow a cancellation that lands inside a pipeline;
                # honour it here, or close() would wait forever.
                raise asyncio.CancelledError
            # A fixed cadence; a slow round is followed at once, never by a burst of them.
            next_round = max(next_round, loop.time())
            await asyncio.sleep(next_round - loop.time())

    async def sync_once(self) -> bool:
        """One round: push pending counts, pull shared state. True when Redis answered."""
        limiter = self._limiter
        items = limiter.take_batch(MAX_KEYS_PER_ROUND)
        if not items:
            return self.healthy
        from redis.exceptions import RedisClusterException, RedisError

        try:
            async with asyncio.timeout(self._interval + self._config.timeout):
                debts = await self._exchange(items)
        except (RedisError, RedisClusterException, OSError, TimeoutError, ValueError) as exc:
            # ValueError: an answer that is not what the script returns (Redis is outside).
            limiter.restore(items)
            self._failed(exc)
            return False
        limiter.apply(items, debts, linger=int(2 * self._interval * 1e9))
        self.rounds += 1
        self.keys_synced += len(items)
        if not self.healthy:
            log.warning("rate limits: Redis answers again; limits are cluster-wide again")
        self.healthy = True
        limiter.degraded = False
        return True

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.healthy:
            log.warning("rate limits: Redis unreachable (%s); each replica enforces its "
                        "fallback (when_redis_down) until it answers",
                        type(exc).__name__)  # fmt: skip
        self.healthy = False
        self._limiter.degraded = True

    async def _exchange(self, items: list[SyncItem]) -> list[int | None]:
        from redis.exceptions import NoScriptError

        try:
            return await self._pipeline(items)
        except NoScriptError:
            await self._client.script_load(_SCRIPT)
            return await self._pipeline(items)

    async def _pipeline(self, items: list[SyncItem]) -> list[int | None]:
        grace_ms = str(int(self._interval * 10_000) + 1000)
        now = self._limiter.clock()
        debts: list[int | None] = []
        for start in range(0, len(items), _CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for item in items[start : start + _CHUNK]:
                bucket = item.bucket
                if bucket.remote_key is None:
                    bucket.remote_key = remote_key(self._prefix, bucket.key)
                span_us = max(0, now - item.since) // 1000
                interval_us = repr(bucket.limit.rate.interval / 1000)
                # execute_command: redis-py's cluster pipeline refuses evalsha() by name,
                # but routes a raw EVALSHA by its key like any other command.
                pipe.execute_command("EVALSHA", _SCRIPT_SHA, 1, bucket.remote_key, item.count,
                                     span_us, interval_us, grace_ms)  # fmt: skip
            debts.extend(_debt(reply) for reply in await pipe.execute())
        return debts

    def stats(self) -> dict[str, int]:
        """Plain counters for metrics."""
        return {
            "rounds": self.rounds,
            "errors": self.errors,
            "keys_synced": self.keys_synced,
            "healthy": int(self.healthy),
            "backlog": self._limiter.backlog(),
        }
