"""The verified-token cache: lifetimes bounded by exp and max_ttl, size bounded, keys hashed."""

from __future__ import annotations

import gc
import hashlib

import pytest

from gateway.auth.identity import Identity
from gateway.auth.token_cache import TokenCache, token_hash
from gateway.problems import InvalidToken

WALL_START = 1_700_000_000.0


class Clocks:
    """A monotonic and a wall clock that advance together, starting far apart."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 50.0 + self.elapsed

    def wall(self) -> float:
        return WALL_START + self.elapsed


def make_identity(expires_in: float | None = 3600.0) -> Identity:
    return Identity(
        issuer="https://issuer.example/",
        subject="alice",
        client_id="app",
        scopes=frozenset({"read"}),
        audiences=("api",),
        expires_at=None if expires_in is None else WALL_START + expires_in,
        token_kind="jwt",
    )


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def cache(clocks: Clocks, max_entries: int = 100, max_ttl: float = 300.0) -> TokenCache:
    return TokenCache(
        max_entries, max_ttl, negative_ttl=10.0, clock=clocks.monotonic, wall=clocks.wall
    )


def test_hit_returns_the_stored_identity_and_miss_returns_none(clocks: Clocks) -> None:
    tokens = cache(clocks)
    who = make_identity()
    tokens.put(token_hash("a"), who)
    assert tokens.get(token_hash("a")) is who
    assert tokens.get(token_hash("b")) is None


@pytest.mark.parametrize(
    ("expires_in", "max_ttl", "alive_until"),
    [
        pytest.param(60.0, 300.0, 60.0, id="expires-at-exp-before-max-ttl"),
        pytest.param(3600.0, 300.0, 300.0, id="max-ttl-caps-long-tokens"),
        pytest.param(None, 300.0, 300.0, id="no-exp-lives-max-ttl"),
    ],
)
def test_lifetime(
    clocks: Clocks, expires_in: float | None, max_ttl: float, alive_until: float
) -> None:
    tokens = cache(clocks, max_ttl=max_ttl)
    tokens.put(b"k", make_identity(expires_in))
    clocks.elapsed = alive_until - 0.001
    assert tokens.get(b"k") is not None
    clocks.elapsed = alive_until
    assert tokens.get(b"k") is None
    assert len(tokens) == 0, "an expired entry is dropped when seen"


@pytest.mark.parametrize(
    ("expires_in", "max_entries", "rejections_kept"),
    [
        pytest.param(-1.0, 100, 1, id="already-expired-not-stored"),
        pytest.param(0.0, 100, 1, id="expiring-now-not-stored"),
        pytest.param(3600.0, 0, 0, id="zero-entries-disables"),
    ],
)
def test_put_that_stores_nothing(
    clocks: Clocks, expires_in: float, max_entries: int, rejections_kept: int
) -> None:
    tokens = cache(clocks, max_entries=max_entries)
    tokens.put(b"k", make_identity(expires_in))
    tokens.put_rejection(b"r", InvalidToken("expired"))
    assert tokens.get(b"k") is None
    assert len(tokens) == rejections_kept


def test_full_cache_evicts_the_oldest(clocks: Clocks) -> None:
    tokens = cache(clocks, max_entries=3)
    tokens.put(b"a", make_identity())
    tokens.put(b"b", make_identity())
    tokens.put(b"a", make_identity())  # a re-put makes "a" the youngest
    tokens.put(b"c", make_identity())
    tokens.put(b"d", make_identity())
    assert len(tokens) == 3
    assert tokens.get(b"b") is None
    assert all(tokens.get(key) is not None for key in (b"a", b"c", b"d"))


def test_rejection_is_cached_for_negative_ttl(clocks: Clocks) -> None:
    tokens = cache(clocks)
    error = InvalidToken("the token has expired", reason="expired")
    tokens.put_rejection(b"bad", error)
    clocks.elapsed = 9.999
    assert tokens.get(b"bad") is error
    clocks.elapsed = 10.0
    assert tokens.get(b"bad") is None


def test_evict_removes_one_entry(clocks: Clocks) -> None:
    tokens = cache(clocks)
    tokens.put(b"a", make_identity())
    tokens.put(b"b", make_identity())
    tokens.evict(b"a")
    tokens.evict(b"never-stored")
    assert tokens.get(b"a") is None
    assert tokens.get(b"b") is not None


def test_key_is_a_sha256_digest_and_no_raw_token_is_held(clocks: Clocks) -> None:
    token = "eyJhbGciOi.raw-secret-token.c2ln"
    assert token_hash(token) == hashlib.sha256(token.encode()).digest()
    tokens = cache(clocks)
    tokens.put(token_hash(token), make_identity())
    held = [obj for obj in gc.get_referents(tokens) if isinstance(obj, dict)]
    assert held, "the cache's storage is a mapping held by the cache itself"
    for storage in held:
        assert all(isinstance(key, bytes) and len(key) == 32 for key in storage)
        assert token not in repr(storage)


def test_max_ttl_caps_one_entry_below_the_cache_cap(clocks: Clocks) -> None:
    store = cache(clocks, max_ttl=300.0)
    store.put(b"k" * 32, make_identity(), max_ttl=30.0)
    clocks.elapsed += 29.0
    assert store.get(b"k" * 32) is not None
    clocks.elapsed += 2.0
    assert store.get(b"k" * 32) is None


def test_every_eviction_moves_the_epoch(clocks: Clocks) -> None:
    store = cache(clocks)
    seen = [store.epoch]
    store.evict(b"x" * 32)
    seen.append(store.epoch)
    store.evict_subject("alice")
    seen.append(store.epoch)
    store.clear()
    seen.append(store.epoch)
    assert seen == sorted(set(seen)), "an eviction left the epoch where it was"
