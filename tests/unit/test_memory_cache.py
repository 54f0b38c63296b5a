"""The L1 cache: TTLs on an injected clock, hard bounds on entries and bytes, oldest out first."""

from __future__ import annotations

import pytest

from gateway.cache.memory import MemoryCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, max_entries: int = 10, max_bytes: int = 1000) -> MemoryCache:
    return MemoryCache(max_entries, max_bytes, clock=clock)


def test_get_returns_value_and_monotonic_expiry(clock: Clock) -> None:
    cache = make(clock)
    cache.set(b"k", "v", ttl=5.0, size=10)
    assert cache.get(b"k") == ("v", 105.0)
    assert cache.get(b"other") is None


def test_entry_expires_exactly_at_its_ttl_and_frees_its_bytes(clock: Clock) -> None:
    cache = make(clock)
    cache.set(b"k", "v", ttl=5.0, size=10)
    clock.now = 104.999
    assert cache.get(b"k") is not None
    clock.now = 105.0
    assert cache.get(b"k") is None
    assert (len(cache), cache.size) == (0, 0)


@pytest.mark.parametrize(
    ("max_entries", "max_bytes", "sizes", "kept"),
    [
        pytest.param(3, 1000, [1, 1, 1, 1, 1], [b"3", b"4", b"5"], id="entry-bound"),
        pytest.param(10, 100, [40, 40, 40], [b"2", b"3"], id="byte-bound"),
        pytest.param(10, 100, [10, 10, 95], [b"3"], id="one-big-entry-evicts-many"),
        pytest.param(10, 100, [10, 101], [b"1"], id="oversized-entry-not-stored"),
        pytest.param(0, 100, [1], [], id="disabled"),
    ],
)
def test_bounds_evict_oldest_first(
    clock: Clock, max_entries: int, max_bytes: int, sizes: list[int], kept: list[bytes]
) -> None:
    cache = make(clock, max_entries, max_bytes)
    keys = [str(i).encode() for i in range(1, len(sizes) + 1)]
    for key, size in zip(keys, sizes, strict=True):
        cache.set(key, key, ttl=60.0, size=size)
    assert [key for key in keys if cache.get(key) is not None] == kept
    assert len(cache) <= max_entries
    assert cache.size <= max_bytes


def test_rewriting_a_key_replaces_its_size_and_makes_it_newest(clock: Clock) -> None:
    cache = make(clock, max_entries=2)
    cache.set(b"a", 1, ttl=60.0, size=50)
    cache.set(b"b", 2, ttl=60.0, size=10)
    cache.set(b"a", 3, ttl=60.0, size=20)
    assert cache.size == 30
    cache.set(b"c", 4, ttl=60.0, size=1)  # evicts b, now the oldest write
    assert cache.get(b"b") is None
    assert cache.get(b"a") == (3, 160.0)


@pytest.mark.parametrize("ttl", [pytest.param(0.0, id="zero"), pytest.param(-1.0, id="negative")])
def test_non_positive_ttl_stores_nothing_and_drops_the_old_value(clock: Clock, ttl: float) -> None:
    cache = make(clock)
    cache.set(b"k", "old", ttl=60.0, size=1)
    cache.set(b"k", "new", ttl=ttl, size=1)
    assert cache.get(b"k") is None
    assert cache.size == 0


def test_delete_and_delete_where(clock: Clock) -> None:
    cache = make(clock)
    for i in range(6):
        cache.set(bytes([i]), i, ttl=60.0, size=5)
    cache.delete(b"\x00")
    cache.delete(b"missing")
    assert cache.delete_where(lambda value: value % 2 == 1) == 3  # type: ignore[operator]
    survivors = {i: cache.get(bytes([i])) for i in range(6)}
    assert survivors == {0: None, 1: None, 2: (2, 160.0), 3: None, 4: (4, 160.0), 5: None}
    assert (len(cache), cache.size) == (2, 10)


def test_sweep_drops_expired_entries_from_the_old_end_within_its_limit() -> None:
    now = [0.0]
    cache = MemoryCache(100, 10_000, clock=lambda: now[0])
    for index in range(10):
        cache.set(bytes([index]), index, ttl=5.0, size=10)
    cache.set(b"long", "kept", ttl=100.0, size=10)
    now[0] = 6.0
    assert cache.sweep(limit=4) == 4
    assert cache.sweep() == 6
    assert len(cache) == 1 and cache.size == 10
    assert cache.get(b"long") == ("kept", 100.0)
    assert cache.sweep() == 0
