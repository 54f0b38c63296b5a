"""The one owner of cached identities and decisions (RFC 7662 §4, RFC 6750 §5.3).

Every tier that remembers what validation concluded lives here, and nothing else stores or
reads a validated identity:

* verified JWTs (local signature checks), bounded by entries and bytes, never past ``exp``;
* rejections of the local kind (a bad signature, an expired token), small and separate, so
  a flood of junk cannot push valid tokens out;
* introspection answers in two tiers (``gateway.cache.tiered``): memory, then a sealed
  Redis L2 shared by every replica, one load per token;
* per-route decisions for hot tokens, valid only while the tier that produced the identity
  still hands out that very object.

Every entry is keyed by a ``ValidationContext`` and the token's SHA-256, so a result is
never served under rules other than those that produced it. Route-level outcomes (which
issuers a route accepts, its policy) are decided by the caller after the cache, never stored
as facts about a token. Evictions (a token, its hash, a subject) reach every tier here, the
shared tier, and every other process: through Redis pub/sub and through the supervisor of
``--workers N``, with or without Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.auth.answer_policy import IntrospectedPolicy, Value, subject_hash, until_exp
from gateway.auth.contexts import ValidationContext
from gateway.auth.identity import Identity
from gateway.auth.rejections import Rejection
from gateway.auth.settings import CacheSettings
from gateway.cache.memory import MemoryCache
from gateway.cache.tiered import TieredCache

log = logging.getLogger(__name__)

Relay = Callable[[dict[str, Any]], None]
# ("token", sha256 hex) | ("subject", subject sha256 hex) | ("all", ""): see add_eviction_listener.
EvictionListener = Callable[[str, str], None]
_REJECTION_BYTES: Final = 160
_IDENTITY_OVERHEAD: Final = 768
_MEMOS_PER_ROUTE: Final = 10_000
_SWEEP_INTERVAL: Final = 1.0


@dataclass(frozen=True, slots=True)
class Memo:
    """A route's decision for a hot token, and the identity it was made for."""

    key: bytes
    identity: Identity
    decision: object
    introspected: bool


@dataclass(slots=True)
class EvictionReport:
    """What an eviction did, so an admin is never told "done" when part of it failed."""

    local_entries: int = 0
    shared: str = "none"  # none | done | failed | incomplete
    shared_deleted: int = 0
    broadcast: str = "none"  # none | sent | failed  (Redis pub/sub)
    workers: str = "none"  # none | sent | failed  (the --workers supervisor)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (
            self.shared in ("none", "done")
            and self.broadcast in ("none", "sent")
            and self.workers in ("none", "sent")
        )


class IdentityCache:
    """Every validated identity and rejection of one runtime, in every tier."""

    def __init__(
        self,
        settings: CacheSettings,
        shared: TieredCache[Value],
        contexts: tuple[ValidationContext, ...],
        route_count: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._verified = MemoryCache(
            settings.verified_max_entries, settings.verified_max_bytes, clock
        )
        self._rejected = MemoryCache(
            settings.negative_max_entries, settings.negative_max_entries * _REJECTION_BYTES, clock
        )
        self._shared = shared
        self._contexts = contexts
        self._policies = {c.tag: IntrospectedPolicy(c, settings, wall) for c in contexts}
        self._memos: list[dict[bytes, Memo]] = [{} for _ in range(route_count)]
        self._clock = clock
        self._wall = wall
        self._epoch = 0  # counts evictions: a fill that straddles one is not stored
        self._origin = secrets.token_hex(8)
        self._relays: list[Relay] = []
        self._eviction_listeners: list[EvictionListener] = []
        self._pending: set[asyncio.Future[Any]] = set()
        self._sweeper: asyncio.Future[None] | None = None
        self.evictions_received = 0
        self.resyncs_received = 0  # gaps in the subscription (also in evictions_received)

    # --- local verification ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    def local(self, key: bytes) -> Value | None:
        """A verified identity or a local rejection, by context key."""
        hit = self._verified.get(key)
        if hit is None:
            hit = self._rejected.get(key)
        return None if hit is None else hit[0]  # type: ignore[return-value]

    def remember_local(self, key: bytes, value: Value, *, epoch: int, token_size: int) -> None:
        """Store a local result unless an eviction happened since ``epoch`` was read."""
        if epoch != self._epoch:
            return
        settings = self._settings
        if isinstance(value, Rejection):
            self._rejected.set(key, value, settings.verified_negative_ttl, _REJECTION_BYTES)
            return
        ttl = until_exp(value, settings.verified_max_ttl, self._wall())
        # Claims grow with the token: charge for it, so the byte bound means something.
        self._verified.set(key, value, ttl, _IDENTITY_OVERHEAD + 4 * token_size)

    # --- introspection -------------------------------------------------------------------------

    async def introspected(
        self, context: ValidationContext, digest: bytes, load: Callable[[], Awaitable[Value]]
    ) -> Value:
        """The answer for a token under ``context``: L1, L2 (sealed, re-checked), else one
        shared ``load``. Unavailability raised by ``load`` is never cached."""
        key = context.key(digest)
        return await self._shared.get_or_load(
            key, self._shared_key(context, digest), load, self._policies[context.tag]
        )

    def _shared_key(self, context: ValidationContext, digest: bytes) -> str:
        return f"{self._settings.key_prefix}{context.tag_hex}:{digest.hex()}"

    # --- decisions for hot tokens --------------------------------------------------------------

    def memo(self, route_id: int, digest: bytes) -> Memo | None:
        """A route's remembered decision, if the identity behind it is still the live one."""
        memo = self._memos[route_id].get(digest)
        if memo is None:
            return None
        live: object
        if memo.introspected:
            live = self._shared.peek(memo.key)
        else:
            hit = self._verified.get(memo.key)
            live = None if hit is None else hit[0]
        if live is not memo.identity:
            del self._memos[route_id][digest]
            return None
        return memo

    def remember_decision(self, route_id: int, digest: bytes, memo: Memo) -> None:
        memos = self._memos[route_id]
        if len(memos) >= _MEMOS_PER_ROUTE:
            memos.clear()
        memos[digest] = memo

    # --- evictions -----------------------------------------------------------------------------

    def add_relay(self, relay: Relay) -> None:
        """Another path to the other processes (the ``--workers`` supervisor)."""
        self._relays.append(relay)

    def add_eviction_listener(self, listener: EvictionListener) -> None:
        """Told of every eviction applied here, local or from another process, once applied:
        ``("token", sha256 hex)``, ``("subject", subject sha256 hex)``, or ``("all", "")``
        (a resync: anything may have been evicted). What outlives a decision (an open
        WebSocket) ends on it. A listener that raises is logged and skipped."""
        self._eviction_listeners.append(listener)

    def _tell(self, kind: str, key: str) -> None:
        for listener in self._eviction_listeners:
            try:
                listener(kind, key)
            except Exception:
                log.exception("an eviction listener failed")

    async def evict_token(self, digest: bytes) -> EvictionReport:
        """Forget one token (by SHA-256) here, in the shared tier, and everywhere else."""
        report = EvictionReport(local_entries=self._drop_token(digest))
        report.shared = await self._drop_shared_token(digest)
        await self._broadcast({"op": "token", "digest": digest.hex()}, report)
        return report

    async def evict_subject(self, subject: str) -> EvictionReport:
        """Forget every token of ``subject`` here, in the shared tier, and everywhere else."""
        hashed = subject_hash(subject)
        report = EvictionReport(local_entries=self._drop_subject(hashed))
        redis = self._shared.redis
        if redis is not None:
            group = f"{self._settings.key_prefix}sub:{hashed}"
            deletion = await redis.delete_group(group)
            report.shared_deleted = deletion.deleted
            report.shared = "done" if deletion.complete else "incomplete"
            if deletion.error:
                report.errors.append(f"shared cache: {deletion.error}")
        await self._broadcast({"op": "subject", "subject_sha256": hashed}, report)
        return report

    def receive(self, message: dict[str, Any]) -> None:
        """An eviction another process made (pub/sub or the supervisor); never raises."""
        if message.get("origin") == self._origin:
            return
        op = message.get("op")
        if op == "token" and isinstance(hexed := message.get("digest"), str):
            try:
                digest = bytes.fromhex(hexed)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                log.warning("ignoring an eviction message with a malformed digest")
                return
            self._drop_token(digest)
        elif op == "subject" and isinstance(hashed := message.get("subject_sha256"), str):
            self._drop_subject(hashed)
        elif op == "resync":
            # Evictions may have been published while we were not subscribed.
            self._drop_all()
            self.resyncs_received += 1
        else:
            log.warning("ignoring an unknown eviction message")
            return
        self.evictions_received += 1

    def _drop_token(self, digest: bytes) -> int:
        self._epoch += 1
        dropped = 0
        for context in self._contexts:
            key = context.key(digest)
            dropped += self._verified.get(key) is not None
            dropped += isinstance(self._shared.peek(key), Identity)
            self._verified.delete(key)
            self._rejected.delete(key)
            self._shared.forget_local(key)
        for memos in self._memos:
            memos.pop(digest, None)
        self._tell("token", digest.hex())
        return dropped

    def _drop_subject(self, hashed: str) -> int:
        self._epoch += 1

        def of_subject(value: object) -> bool:
            return (
                isinstance(value, Identity)
                and value.subject is not None
                and subject_hash(value.subject) == hashed
            )

        dropped = self._verified.delete_where(of_subject) + self._shared.forget_local_where(
            of_subject
        )
        self._tell("subject", hashed)
        return dropped

    def _drop_all(self) -> None:
        self._epoch += 1
        self._verified.delete_where(lambda _: True)
        self._shared.forget_local_where(lambda value: isinstance(value, Identity))
        for memos in self._memos:
            memos.clear()
        self._tell("all", "")

    async def _drop_shared_token(self, digest: bytes) -> str:
        redis = self._shared.redis
        if redis is None:
            return "none"
        keys = [self._shared_key(c, digest) for c in self._contexts if c.introspects]
        if not keys:
            return "none"
        return "done" if await redis.delete(*keys) else "failed"  # failed: kept for replay

    async def _broadcast(self, message: dict[str, Any], report: EvictionReport) -> None:
        message = {**message, "origin": self._origin}
        for relay in self._relays:
            try:
                relay(message)
            except Exception as exc:  # Redis may still carry it; the report says it failed
                log.warning("eviction relay failed: %s", exc)
                report.workers = "failed"
                report.errors.append("worker relay failed")
        if self._relays and report.workers == "none":
            report.workers = "sent"
        redis = self._shared.redis
        if redis is not None:
            report.broadcast = "sent" if await redis.publish(message) else "failed"

    # --- lifecycle and observability -----------------------------------------------------------

    async def start(self) -> None:
        """Connect the shared tier, listen for other replicas' evictions, and sweep expired
        entries out of memory once a second."""
        redis = self._shared.redis
        if redis is not None:
            await redis.start()
            await redis.subscribe(self._heard)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            self._verified.sweep()
            self._rejected.sweep()
            self._shared.sweep()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._pending.add(self._sweeper)
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._shared.close()
        if self._shared.redis is not None:
            await self._shared.redis.close()

    def _heard(self, message: dict[str, Any]) -> None:
        """A pub/sub message: apply it here and, for a token, delete this gateway's own L2
        entries too (a gateway with other contexts cannot name our keys)."""
        self.receive(message)
        if message.get("op") == "token" and message.get("origin") != self._origin:
            try:
                digest = bytes.fromhex(str(message.get("digest")))
            except ValueError:
                return
            if len(digest) == 32:
                task = asyncio.ensure_future(self._drop_shared_token(digest))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    def __len__(self) -> int:
        return len(self._verified) + len(self._rejected) + len(self._shared)

    @property
    def shared(self) -> TieredCache[Value]:
        return self._shared

    def memory_entries(self) -> dict[str, int]:
        return {
            "verified": len(self._verified),
            "rejected": len(self._rejected),
            "introspected": len(self._shared),
        }
