"""RFC 6750 §5.3 / RFC 7519 §4.1.4: a bounded cache of verified tokens that never outlives exp.

Verifying a signature or asking the authorization server on every request is the expensive
part of the pipeline; a hit here is one dict lookup and one clock read. Keys are SHA-256
digests, so a heap dump of the gateway holds no usable bearer token (RFC 6750 §5.3:
implementations "MUST ensure that bearer tokens are not leaked to unintended parties").
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.auth.identity import Identity
from gateway.problems import GatewayError

Clock = Callable[[], float]


def token_hash(token: str) -> bytes:
    """The cache key for a token."""
    return hashlib.sha256(token.encode()).digest()


class TokenCache:
    """Identities and rejections by token hash, evicting the oldest insert when full.

    Entries are ``(expires, value)`` tuples on the monotonic clock, so a wall-clock step
    cannot stretch a lifetime; the wall clock is read only at ``put`` to convert ``exp``.
    """

    __slots__ = (
        "_clock", "_entries", "_max_entries", "_max_ttl", "_negative_ttl", "_wall", "epoch",
    )  # fmt: skip

    def __init__(
        self,
        max_entries: int,
        max_ttl: float,
        negative_ttl: float,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        # OrderedDict, not dict: popping a plain dict's oldest key leaves holes that the next
        # next(iter()) rescans, which made a full cache ~10x slower per insert.
        self._entries: OrderedDict[bytes, tuple[float, Identity | GatewayError]] = OrderedDict()
        self._max_entries = max_entries
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._wall = wall
        # Counts evictions: a caller that validated a token across one must not cache the
        # answer, which may predate the revocation (see AuthPipeline.authenticate).
        self.epoch = 0

    def get(self, key: bytes) -> Identity | GatewayError | None:
        """A cached Identity, a cached rejection, or None.

        A cached rejection is the very instance stored: raise ``error.with_traceback(None)``
        so repeated raises do not grow one shared traceback.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: bytes, identity: Identity, max_ttl: float | None = None) -> None:
        """``max_ttl`` caps this entry below the cache's own cap (introspection answers live
        no longer here than in the introspection cache's L1)."""
        ttl = self._max_ttl if max_ttl is None else min(self._max_ttl, max_ttl)
        if identity.expires_at is not None:
            # RFC 7519 §4.1.4: the token "MUST NOT be accepted for processing" on or after exp.
            ttl = min(ttl, identity.expires_at - self._wall())
        self._store(key, ttl, identity)

    def put_rejection(self, key: bytes, error: GatewayError) -> None:
        self._store(key, self._negative_ttl, error)

    def evict(self, key: bytes) -> None:
        self.epoch += 1
        self._entries.pop(key, None)

    def evict_subject(self, subject: str) -> int:
        """Drop every identity of ``subject`` (an admin action: a scan, off the hot path)."""
        self.epoch += 1
        doomed = [
            key for key, (_, value) in self._entries.items()
            if isinstance(value, Identity) and value.subject == subject
        ]  # fmt: skip
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _store(self, key: bytes, ttl: float, value: Identity | GatewayError) -> None:
        if ttl <= 0 or self._max_entries <= 0:
            return
        entries = self._entries
        # Re-inserting moves the key to the young end, so the eviction order stays by age.
        entries.pop(key, None)
        while len(entries) >= self._max_entries:
            entries.popitem(last=False)
        entries[key] = (self._clock() + ttl, value)
