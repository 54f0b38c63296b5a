"""The in-process (L1) cache for RFC 7662 answers: bounded by entries and bytes, with TTLs.

A token cache on a gateway is fed by untrusted input (every new bearer string is a new key),
so both bounds are hard: a flood of distinct tokens evicts the oldest entries instead of
growing the heap. Eviction is by insertion order: with TTLs capped to the same few minutes
the oldest write is the nearest to expiry anyway, and a hit stays one dict lookup with no
reordering on the request path.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple


class _Entry(NamedTuple):
    value: object
    expires_at: float
    size: int


class MemoryCache:
    """Not thread-safe: it belongs to one event loop, like everything else per worker."""

    def __init__(
        self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes charged for the entries held now."""
        return self._bytes

    def get(self, key: bytes) -> tuple[object, float] | None:
        """``(value, expires_at)`` on the monotonic clock; expired entries are dropped here."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            self._remove(key)
            return None
        return entry.value, entry.expires_at

    def set(self, key: bytes, value: object, ttl: float, size: int) -> None:
        """Store, then evict the oldest entries until both bounds hold again."""
        self._remove(key)
        if ttl <= 0 or size > self._max_bytes or self._max_entries <= 0:
            return
        self._entries[key] = _Entry(value, self._clock() + ttl, size)
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= oldest.size

    def delete(self, key: bytes) -> None:
        self._remove(key)

    def sweep(self, limit: int = 10_000) -> int:
        """Drop expired entries from the old end, at most ``limit`` of them (bounded work on
        the event loop), so memory is given back after a flood without waiting for a lookup.
        Entries are in insertion order, which for equal lifetimes is also expiry order; a
        younger entry with a shorter lifetime waits for its lookup or a later sweep."""
        now = self._clock()
        dropped = 0
        entries = self._entries
        while entries and dropped < limit:
            key, entry = next(iter(entries.items()))
            if entry.expires_at > now:
                break
            self._remove(key)
            dropped += 1
        return dropped

    def delete_where(self, predicate: Callable[[object], bool]) -> int:
        """Drop every entry whose value matches; a scan, meant for rare admin evictions."""
        doomed = [key for key, entry in self._entries.items() if predicate(entry.value)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
