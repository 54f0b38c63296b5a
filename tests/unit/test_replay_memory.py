"""RFC 9449 §11.1: the in-process replay store, on a controlled clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.replay import DpopProofsExceeded, MemoryReplayStore, ReplayStoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_key_is_accepted_once_within_its_lifetime() -> None:
    clock = Clock()
    store = MemoryReplayStore(10, clock=clock)
    assert await store.record(b"k1", 60) is True
    assert await store.record(b"k1", 60) is False
    clock.now += 59.9
    assert await store.record(b"k1", 60) is False
    clock.now += 0.1
    assert await store.record(b"k1", 60) is True  # forgotten exactly when it expired


async def test_each_entry_expires_on_its_own() -> None:
    clock = Clock()
    store = MemoryReplayStore(10, clock=clock)
    await store.record(b"long", 65)
    await store.record(b"short", 1)
    clock.now += 2
    assert len(store) == 1
    assert await store.record(b"short", 1) is True
    assert await store.record(b"long", 65) is False


async def test_a_full_store_refuses_instead_of_forgetting_a_live_entry() -> None:
    clock = Clock()
    store = MemoryReplayStore(2, clock=clock)
    await store.record(b"a", 10)
    await store.record(b"b", 10)
    with pytest.raises(ReplayStoreUnavailable) as refused:
        await store.record(b"c", 10)
    assert refused.value.status == 503
    assert await store.record(b"a", 10) is False  # still remembered
    clock.now += 10
    assert await store.record(b"c", 10) is True  # room again once entries expire


async def test_one_key_past_its_share_is_refused_and_the_others_go_on() -> None:
    """RFC 9449 §11.1 "guard against memory exhaustion": one client signing fresh proofs
    with its one key fills its share, not the store; it is told when to come back."""
    clock = Clock()
    store = MemoryReplayStore(10, max_per_key=3, clock=clock)
    for n, ttl in enumerate((30, 10, 20)):
        assert await store.record(b"hog-%d" % n, ttl, "hog") is True
    with pytest.raises(DpopProofsExceeded) as refused:
        await store.record(b"hog-3", 30, "hog")
    assert refused.value.status == 429 and refused.value.reason == "dpop_replay_share"
    assert refused.value.extra_headers() == {"Retry-After": "10"}  # its earliest expires
    assert await store.record(b"hog-1", 10, "hog") is False  # a replay is still a replay
    for n in range(7):  # everyone else has the rest of the store
        assert await store.record(b"other-%d" % n, 30, f"key-{n}") is True
    with pytest.raises(ReplayStoreUnavailable):  # full is still full (503)
        await store.record(b"late", 30, "late")
    clock.now += 10.5
    assert await store.record(b"hog-3", 30, "hog") is True  # room in its share again
    clock.now += 30
    assert len(store) == 0 and store._owners == {}  # owners are forgotten with their entries


async def test_zero_ttl_still_records() -> None:
    clock = Clock()
    store = MemoryReplayStore(2, clock=clock)
    assert await store.record(b"k", 0.0) is True
    assert await store.record(b"k", 0.0) is False


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryReplayStore(0)


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0.5, 5), st.floats(0, 3)), max_size=60))
def test_matches_a_model_of_seen_keys(steps: list[tuple[int, float, float]]) -> None:
    """Differential: the store answers as a dict of key → expiry would."""
    clock = Clock()
    store = MemoryReplayStore(1000, clock=clock)
    model: dict[bytes, float] = {}
    for key_number, ttl, advance in steps:
        clock.now += advance
        key = bytes([key_number])
        expected = model.get(key, -1.0) <= clock.now
        if expected:
            model[key] = clock.now + ttl
        assert store.record_now(key, ttl) is expected
        assert len(store) == sum(1 for expiry in model.values() if expiry > clock.now)


@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 2), st.floats(0.5, 5), st.floats(0, 3)),
        max_size=80,
    )
)
def test_the_shares_match_a_model_of_live_entries_per_key(
    steps: list[tuple[int, int, float, float]],
) -> None:
    """Differential: replays, the per-key share (429) and the whole store (503) are
    answered as a dict of key → (owner, expiry) would answer them."""
    clock = Clock()
    store = MemoryReplayStore(6, max_per_key=3, clock=clock)
    model: dict[bytes, tuple[str, float]] = {}
    for key_number, owner_number, ttl, advance in steps:
        clock.now += advance
        live = {k: v for k, v in model.items() if v[1] > clock.now}
        key, owner = bytes([key_number]), f"jkt-{owner_number}"
        held = sum(1 for o, _ in live.values() if o == owner)
        if key in live:
            assert store.record_now(key, ttl, owner) is False
        elif held >= 3:
            with pytest.raises(DpopProofsExceeded):
                store.record_now(key, ttl, owner)
        elif len(live) >= 6:
            with pytest.raises(ReplayStoreUnavailable):
                store.record_now(key, ttl, owner)
        else:
            assert store.record_now(key, ttl, owner) is True
            live[key] = (owner, clock.now + ttl)
        model = live
        assert len(store) == len(model)
