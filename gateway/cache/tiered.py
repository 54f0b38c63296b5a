"""A two-tier cache of RFC 7662 §2.2 answers: in-process L1, shared Redis L2, one load per key.

RFC 7662 §4 lets a protected resource cache answers, and warns that a cached answer can
hide a revocation and must not outlive the token, so every lifetime here is capped: by
the token's ``exp``, by ``max_ttl``, and (for L1, which misses evictions while pub/sub is
down) by ``l1.ttl``. Negative answers are cached too, briefly, so a flood of garbage
tokens costs the authorization server one call per token.

Concurrent requests for one uncached token share a single load, run in a task the cache
owns: a client that disconnects cancels its own wait, never the load the others wait for.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from gateway.auth.identity import Identity
from gateway.cache.codec import INACTIVE, decode_entry, encode_entry
from gateway.cache.memory import MemoryCache
from gateway.config.models import IntrospectionCache
from gateway.problems import InvalidToken, ServiceUnavailable

if TYPE_CHECKING:  # redis-py costs ~6 MB per process: imported only where configured
    from gateway.cache.redis import RedisCache

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[Identity | None]]
_ENTRY_OVERHEAD: Final = 256
"""Bytes charged per L1 entry beyond its encoded size: a rough cost of the Python objects."""
_STATS: Final = (
    "l1_hits", "l1_misses", "l2_hits", "l2_misses", "loads", "load_errors", "coalesced",
    "stale_served", "evictions_received",
)  # fmt: skip


class TieredCache:
    """Owns the lifecycle of the ``RedisCache`` it is given (``start``/``close``)."""

    def __init__(
        self,
        config: IntrospectionCache,
        redis: RedisCache | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        on_remote_eviction: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        # Other caches of this process (the verified-JWT cache) hear replicas' evictions too.
        self._on_remote_eviction = on_remote_eviction
        self._l1 = MemoryCache(config.l1.max_entries, config.l1.max_bytes, clock)
        self._redis = redis
        self._clock = clock
        self._wall = wall
        self._max_ttl = config.max_ttl
        self._l1_ttl = config.l1.ttl
        self._negative_ttl = config.negative_ttl
        self._stale = config.serve_stale
        self._flights: dict[bytes, asyncio.Task[Identity | None]] = {}
        self._origin = secrets.token_hex(8)
        self._evictions = 0  # loads that straddle an eviction must not cache their answer
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)

    @property
    def degraded(self) -> bool:
        return self._redis is not None and not self._redis.healthy

    async def start(self) -> None:
        if self._redis is not None:
            await self._redis.start()
            await self._redis.subscribe_evictions(self._on_eviction)

    async def close(self) -> None:
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        if self._redis is not None:
            await self._redis.close()

    async def get_or_load(self, token: str, load: Loader) -> Identity | None:
        """The identity for ``token``, or None when it is inactive; ``load`` runs on a miss.

        ``load`` raising ``InvalidToken`` is cached like an inactive answer (the same token
        will fail the same way) and re-raised; ``ServiceUnavailable`` is never cached.
        """
        key = hashlib.sha256(token.encode()).digest()
        hit = self._l1.get(key)
        if hit is not None:
            value, expires_at = hit
            if value is INACTIVE:
                self.stats["l1_hits"] += 1
                return None
            if not self._stale or self._clock() < expires_at - self._stale:
                self.stats["l1_hits"] += 1
                return value  # type: ignore[return-value]  # L1 holds Identity or INACTIVE
        self.stats["l1_misses"] += 1
        flight = self._flights.get(key)
        shared_stale: tuple[Identity, float] | None = None
        # An answer looked up across an eviction may predate the revocation it reports:
        # count evictions from before the L2 read, through the load.
        evictions = self._evictions
        if flight is None and self._redis is not None:
            # L2 is read in the caller's own task: a GET needs no single flight, and sparing
            # a task and a shield per request halves the cost of an L2 hit. Only a miss
            # starts the shared load below.
            data = await self._redis.get(key)
            if data is not None and (entry := _decode(data)) is not None:
                value, fresh_until = entry
                remaining = fresh_until - self._wall()
                if remaining > 0:
                    self.stats["l2_hits"] += 1
                    if evictions == self._evictions:  # not copied to L1 across an eviction
                        self._remember(key, value, remaining, len(data))
                    return value
                if value is not None:
                    shared_stale = value, fresh_until
            self.stats["l2_misses"] += 1
            # While this request read Redis, another may have loaded the answer (now in L1)
            # or started loading it: join that rather than ask the server again.
            hit = self._l1.get(key)
            if hit is not None and (hit[0] is INACTIVE or not self._stale):
                self.stats["coalesced"] += 1
                return None if hit[0] is INACTIVE else hit[0]  # type: ignore[return-value]
            flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(self._fill(key, load, shared_stale, evictions))
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        else:
            self.stats["coalesced"] += 1
        return await asyncio.shield(flight)

    async def evict_token(self, token_hash_hex: str) -> None:
        """Forget one token everywhere: L1 here, L2, and every replica's L1 via pub/sub."""
        key = _digest_from_hex(token_hash_hex)
        self._evictions += 1
        self._l1.delete(key)
        if self._redis is not None:
            await self._redis.delete(key)
            await self._redis.publish_eviction(self._message("token", key=key.hex()))

    async def evict_subject(self, subject: str) -> int:
        """Forget every token of ``subject``; returns how many L1 entries were dropped here."""
        self._evictions += 1
        dropped = self._l1.delete_where(partial(_has_subject, subject))
        if self._redis is not None:
            await self._redis.delete_subject(subject)
            await self._redis.publish_eviction(self._message("subject", subject=subject))
        return dropped

    # --- loading ---------------------------------------------------------------------------

    async def _fill(
        self,
        key: bytes,
        load: Loader,
        shared_stale: tuple[Identity, float] | None,
        evictions: int,
    ) -> Identity | None:
        """The shared load after L1 and L2 missed; ``shared_stale`` is an expired L2 entry
        that serve-stale may still use if the authorization server is down; ``evictions``
        is the eviction count when the lookup began."""
        self.stats["loads"] += 1
        try:
            identity = await load()
        except InvalidToken:
            await self._store(key, None)
            raise
        except ServiceUnavailable:
            self.stats["load_errors"] += 1
            fallback = self._stale_identity(key, shared_stale)
            if fallback is None:
                raise
            self.stats["stale_served"] += 1
            return fallback
        if identity is None or evictions == self._evictions:
            # An answer obtained across an eviction may predate the revocation it reports.
            await self._store(key, identity)
        return identity

    def _landed(self, key: bytes, flight: asyncio.Task[Identity | None]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here: every waiter may have gone away

    def _positive_ttl(self, identity: Identity) -> float:
        """Never cache past the token's own expiry (RFC 7662 §4)."""
        if identity.expires_at is None:
            return self._max_ttl
        return min(self._max_ttl, identity.expires_at - self._wall())

    def _grace(self, identity: Identity | None) -> float:
        """How long past freshness an entry is kept for stale serving (positives only)."""
        return 0.0 if identity is None else self._stale

    async def _store(self, key: bytes, identity: Identity | None) -> None:
        ttl = self._negative_ttl if identity is None else self._positive_ttl(identity)
        if ttl <= 0:
            self._l1.delete(key)
            return
        payload = encode_entry(identity, self._wall() + ttl)
        self._remember(key, identity, ttl, len(payload))
        if self._redis is None:
            return
        shared_ttl = ttl + self._grace(identity)
        if identity is not None and identity.subject is not None:
            index_ttl = self._max_ttl + self._stale
            await self._redis.set_for_subject(key, payload, shared_ttl, identity.subject, index_ttl)
        else:
            await self._redis.set(key, payload, shared_ttl)

    def _remember(self, key: bytes, identity: Identity | None, ttl: float, size: int) -> None:
        """Into L1, for at most ``l1.ttl``: L1 misses evictions while pub/sub is down."""
        value: object = INACTIVE if identity is None else identity
        ttl = min(ttl, self._l1_ttl) + self._grace(identity)
        self._l1.set(key, value, ttl, size + _ENTRY_OVERHEAD)

    def _stale_identity(
        self, key: bytes, shared_stale: tuple[Identity, float] | None
    ) -> Identity | None:
        """An expired positive entry still within ``serve_stale``, never past the token's exp."""
        if not self._stale:
            return None
        now = self._wall()
        candidate: Identity | None = None
        hit = self._l1.get(key)  # L1 keeps positives for `serve_stale` past freshness
        if hit is not None and isinstance(hit[0], Identity):
            candidate = hit[0]
        elif shared_stale is not None and now < shared_stale[1] + self._stale:
            candidate = shared_stale[0]
        if candidate is None or (candidate.expires_at is not None and candidate.expires_at <= now):
            return None
        return candidate

    # --- evictions from other replicas -----------------------------------------------------

    def _message(self, op: str, **fields: str) -> dict[str, Any]:
        return {"op": op, "origin": self._origin, **fields}

    def _on_eviction(self, message: dict[str, Any]) -> None:
        if message.get("origin") == self._origin:
            return
        op = message.get("op")
        self._evictions += 1
        if op == "token" and isinstance(key := message.get("key"), str):
            try:
                self._l1.delete(_digest_from_hex(key))
            except ValueError:
                log.warning("ignoring an eviction message with a malformed key")
                return
        elif op == "subject" and isinstance(subject := message.get("subject"), str):
            self._l1.delete_where(partial(_has_subject, subject))
        elif op == "resync":
            # Evictions may have been published while we were not subscribed.
            self._l1.delete_where(_is_identity)
        else:
            log.warning("ignoring an unknown eviction message")
            return
        self.stats["evictions_received"] += 1
        if self._on_remote_eviction is not None:
            self._on_remote_eviction(message)


def _decode(data: bytes) -> tuple[Identity | None, float] | None:
    try:
        return decode_entry(data)
    except ValueError:
        log.warning("ignoring an unreadable L2 entry (another release's format?)")
        return None


def _digest_from_hex(value: str) -> bytes:
    digest = bytes.fromhex(value)
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError("expected the hex SHA-256 of a token")
    return digest


def _has_subject(subject: str, value: object) -> bool:
    return isinstance(value, Identity) and value.subject == subject


def _is_identity(value: object) -> bool:
    return isinstance(value, Identity)
