"""The verified-token tier of ``IdentityCache`` (the old ``TokenCache``): lifetimes bounded
by exp and max_ttl, size bounded by entries and bytes, rejections small and apart, keys a
context tag plus the token's SHA-256, and every eviction moving the epoch."""

from __future__ import annotations

import gc
import hashlib
import types
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.contexts import ValidationContext, context_for
from gateway.auth.identity import Identity
from gateway.auth.identity_cache import IdentityCache, Memo, Value
from gateway.auth.rejections import Rejection
from gateway.auth.settings import CacheSettings
from gateway.cache.memory import MemoryCache
from gateway.cache.tiered import TieredCache
from gateway.problems import InvalidToken
from tests.support.settings import Issuer

WALL_START = 1_700_000_000.0
ISSUER = Issuer(
    issuer="https://issuer.example/",
    audiences=["api"],
    algorithms=["HS256"],
    hmac_secret="a-test-secret-of-at-least-32-bytes!",
    mode="auto",
    introspection={
        "endpoint": "https://issuer.example/introspect",
        "client": {"client_id": "gateway", "client_secret": "secret"},
    },
)
JWT = context_for(ISSUER, "jwt")
INTROSPECTION = context_for(ISSUER, "introspection")
TOKEN_SIZE = 100
ENTRY_BYTES = 768 + 4 * TOKEN_SIZE  # what the tier charges one verified identity


class Clocks:
    """A monotonic and a wall clock that advance together, starting far apart."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 50.0 + self.elapsed

    def wall(self) -> float:
        return WALL_START + self.elapsed


def make_identity(expires_in: float | None = 3600.0, subject: str = "alice") -> Identity:
    return Identity(
        issuer="https://issuer.example/",
        subject=subject,
        client_id="app",
        scopes=frozenset({"read"}),
        audiences=("api",),
        expires_at=None if expires_in is None else WALL_START + expires_in,
        token_kind="jwt",
    )


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def key(token: str, context: ValidationContext = JWT) -> bytes:
    return context.key(digest(token))


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def cache(clocks: Clocks, **changes: Any) -> IdentityCache:
    """Built as ``gateway.runtime`` builds it, without Redis."""
    settings = CacheSettings(**changes)
    shared: TieredCache[Value] = TieredCache(
        MemoryCache(settings.l1_max_entries, settings.l1_max_bytes, clocks.monotonic),
        MemoryCache(settings.l1_max_entries, settings.l1_max_entries * 512, clocks.monotonic),
        None,
        None,
        clock=clocks.monotonic,
        wall=clocks.wall,
    )
    return IdentityCache(
        settings, shared, (JWT, INTROSPECTION), 2, clock=clocks.monotonic, wall=clocks.wall
    )


def remember(store: IdentityCache, token_key: bytes, value: Value, size: int = TOKEN_SIZE) -> None:
    store.remember_local(token_key, value, epoch=store.epoch, token_size=size)


def verified(store: IdentityCache) -> int:
    return store.memory_entries()["verified"]


def test_hit_returns_the_stored_identity_and_miss_returns_none(clocks: Clocks) -> None:
    tokens = cache(clocks)
    who = make_identity()
    remember(tokens, key("a"), who)
    assert tokens.local(key("a")) is who
    assert tokens.local(key("b")) is None


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
    tokens = cache(clocks, verified_max_ttl=max_ttl)
    remember(tokens, key("k"), make_identity(expires_in))
    clocks.elapsed = alive_until - 0.001
    assert tokens.local(key("k")) is not None
    clocks.elapsed = alive_until
    assert tokens.local(key("k")) is None
    assert verified(tokens) == 0, "an expired entry is dropped when seen"


@pytest.mark.parametrize(
    ("expires_in", "changes", "rejections_kept"),
    [
        pytest.param(-1.0, {}, 1, id="already-expired-not-stored"),
        pytest.param(0.0, {}, 1, id="expiring-now-not-stored"),
        pytest.param(3600.0, {"verified_max_entries": 0}, 1, id="zero-entries-disables"),
        pytest.param(3600.0, {"verified_max_bytes": 0}, 1, id="zero-bytes-disables"),
        pytest.param(
            3600.0,
            {"verified_max_entries": 0, "negative_max_entries": 0},
            0,
            id="zero-entries-in-both-tiers-disables-both",
        ),
    ],
)
def test_remember_that_stores_nothing(
    clocks: Clocks, expires_in: float, changes: dict[str, int], rejections_kept: int
) -> None:
    """Rejections now have a tier of their own: a full or disabled verified tier leaves them
    alone (and the reverse, below)."""
    tokens = cache(clocks, **changes)
    remember(tokens, key("k"), make_identity(expires_in))
    remember(tokens, key("r"), Rejection.of("expired", "The token has expired."))
    assert tokens.local(key("k")) is None
    assert tokens.memory_entries() == {
        "verified": 0,
        "rejected": rejections_kept,
        "introspected": 0,
    }


def test_full_cache_evicts_the_oldest(clocks: Clocks) -> None:
    tokens = cache(clocks, verified_max_entries=3)
    for name in ("a", "b", "a", "c", "d"):  # a re-remember makes "a" the youngest
        remember(tokens, key(name), make_identity())
    assert verified(tokens) == 3
    assert tokens.local(key("b")) is None
    assert all(tokens.local(key(name)) is not None for name in ("a", "c", "d"))


def test_byte_bound_evicts_the_oldest_and_refuses_what_can_never_fit(clocks: Clocks) -> None:
    """Claims grow with the token, so the tier charges by token size."""
    tokens = cache(clocks, verified_max_bytes=3 * ENTRY_BYTES)
    for name in ("a", "b", "c", "d"):
        remember(tokens, key(name), make_identity())
    assert verified(tokens) == 3
    assert tokens.local(key("a")) is None
    remember(tokens, key("huge"), make_identity(), size=3 * ENTRY_BYTES)
    assert tokens.local(key("huge")) is None
    assert all(tokens.local(key(name)) is not None for name in ("b", "c", "d"))


def test_rejection_is_cached_for_negative_ttl(clocks: Clocks) -> None:
    tokens = cache(clocks, verified_negative_ttl=10.0)
    refused = Rejection.of("expired", "The token has expired.")
    remember(tokens, key("bad"), refused)
    clocks.elapsed = 9.999
    assert tokens.local(key("bad")) is refused
    assert refused.error() is not refused.error(), "every raise gets its own exception"
    clocks.elapsed = 10.0
    assert tokens.local(key("bad")) is None


def test_a_flood_of_rejections_stays_bounded_and_evicts_no_identity(clocks: Clocks) -> None:
    tokens = cache(clocks, negative_max_entries=1000)
    who = {name: make_identity() for name in ("a", "b", "c")}
    for name, identity in who.items():
        remember(tokens, key(name), identity)
    for n in range(20_000):
        remember(tokens, key(f"junk-{n}"), Rejection.of("signature", "Bad signature."))
    assert tokens.memory_entries()["rejected"] == 1000
    assert all(tokens.local(key(name)) is identity for name, identity in who.items())
    assert tokens.local(key("junk-19999")) is not None
    assert tokens.local(key("junk-0")) is None


async def test_evict_removes_one_token_under_every_context(clocks: Clocks) -> None:
    tokens = cache(clocks)
    remember(tokens, key("a"), make_identity())
    remember(tokens, key("b"), make_identity())
    remember(tokens, key("r"), Rejection.of("signature", "Bad signature."))
    report = await tokens.evict_token(digest("a"))
    await tokens.evict_token(digest("never-stored"))
    await tokens.evict_token(digest("r"))
    assert (report.local_entries, report.shared, report.broadcast) == (1, "none", "none")
    assert report.complete
    assert tokens.local(key("a")) is None
    assert tokens.local(key("r")) is None
    assert tokens.local(key("b")) is not None


async def test_evict_subject_drops_that_subjects_identities_only(clocks: Clocks) -> None:
    tokens = cache(clocks)
    for name, subject in (("a1", "alice"), ("a2", "alice"), ("b", "bob")):
        remember(tokens, key(name), make_identity(subject=subject))
    report = await tokens.evict_subject("alice")
    assert report.local_entries == 2
    assert [tokens.local(key(name)) is None for name in ("a1", "a2", "b")] == [True, True, False]


def reachable(root: object) -> Iterator[object]:
    """Every object the cache's data reaches (not code, classes or modules)."""
    skip = (type, types.ModuleType, types.FunctionType, types.MethodType,
            types.BuiltinFunctionType, types.CodeType)  # fmt: skip
    seen = {id(root)}
    queue = deque([root])
    while queue:
        item = queue.popleft()
        yield item
        for child in gc.get_referents(item):
            if id(child) not in seen and not isinstance(child, skip):
                seen.add(id(child))
                queue.append(child)


def test_key_is_a_context_tag_and_sha256_digest_and_no_raw_token_is_held(clocks: Clocks) -> None:
    token = "eyJhbGciOi.raw-secret-token.c2ln"
    assert key(token) == JWT.tag + hashlib.sha256(token.encode()).digest()
    assert len(JWT.tag) == 12 and JWT.tag != INTROSPECTION.tag
    tokens = cache(clocks)
    remember(tokens, key(token), make_identity())
    remember(tokens, key(token + "-bad"), Rejection.of("signature", "Bad signature."))
    held_keys = [item for item in reachable(tokens) if isinstance(item, bytes)]
    assert key(token) in held_keys and key(token + "-bad") in held_keys
    for item in reachable(tokens):
        if isinstance(item, str | bytes):
            assert "raw-secret-token" not in repr(item)


def test_a_cached_rejection_keeps_no_exception_traceback_or_frame(clocks: Clocks) -> None:
    """Issue 11 defect 2: the old tier stored the exception, whose traceback held the
    request that raised it."""
    tokens = cache(clocks)

    def verify(headers: str) -> Rejection:
        try:
            raise InvalidToken("The token's signature does not verify.", reason="signature")
        except InvalidToken as error:
            return Rejection.from_error(error)

    remember(tokens, key("bad"), verify("x" * 100_000))
    assert tokens.local(key("bad")) is Rejection.of(
        "signature", "The token's signature does not verify."
    )
    kinds = (BaseException, types.TracebackType, types.FrameType)
    assert not [item for item in reachable(tokens) if isinstance(item, kinds)]
    assert not [item for item in reachable(tokens) if isinstance(item, str) and len(item) > 1000]


async def test_a_local_result_never_answers_an_introspection_lookup(clocks: Clocks) -> None:
    """Issue 11 defect 1, at the cache: a JWT verified locally is not an introspection
    answer, however fresh."""
    tokens = cache(clocks)
    remember(tokens, key("t"), make_identity())
    answer = make_identity(subject="from-the-authorization-server")
    calls = []

    async def introspect() -> Value:
        calls.append(1)
        return answer

    assert await tokens.introspected(INTROSPECTION, digest("t"), introspect) is answer
    assert calls == [1]
    assert tokens.local(key("t", INTROSPECTION)) is None


async def test_introspected_answers_live_in_memory_no_longer_than_l1_ttl(clocks: Clocks) -> None:
    """The old per-entry ``max_ttl=`` of the token cache: an introspection answer outlives
    neither the L1 lifetime nor the cache's max_ttl, whatever its exp says."""
    tokens = cache(clocks, l1_ttl=30.0, max_ttl=300.0, verified_max_ttl=300.0)
    calls = []

    async def introspect() -> Value:
        calls.append(1)
        return make_identity()

    await tokens.introspected(INTROSPECTION, digest("t"), introspect)
    clocks.elapsed += 29.0
    await tokens.introspected(INTROSPECTION, digest("t"), introspect)
    assert len(calls) == 1
    clocks.elapsed += 2.0
    await tokens.introspected(INTROSPECTION, digest("t"), introspect)
    assert len(calls) == 2


async def test_every_eviction_moves_the_epoch_and_a_straddling_result_is_dropped(
    clocks: Clocks,
) -> None:
    store = cache(clocks)
    seen = [store.epoch]
    await store.evict_token(digest("x"))
    seen.append(store.epoch)
    await store.evict_subject("alice")
    seen.append(store.epoch)
    for message in (
        {"op": "token", "digest": digest("y").hex()},
        {"op": "subject", "subject_sha256": "ab" * 32},
        {"op": "resync"},
    ):
        store.receive(message)
        seen.append(store.epoch)
    assert seen == sorted(set(seen)), "an eviction left the epoch where it was"

    before = store.epoch
    store.receive({"op": "token", "digest": digest("k").hex()})
    store.remember_local(key("k"), make_identity(), epoch=before, token_size=TOKEN_SIZE)
    assert store.local(key("k")) is None, "a result verified across an eviction was kept"


def test_a_memo_lives_only_as_long_as_the_identity_it_was_made_for(clocks: Clocks) -> None:
    tokens = cache(clocks, verified_max_ttl=60.0)
    who = make_identity()
    remember(tokens, key("t"), who)
    tokens.remember_decision(0, digest("t"), Memo(key("t"), who, "allow", introspected=False))
    assert tokens.memo(0, digest("t")) is not None
    assert tokens.memo(1, digest("t")) is None, "a memo belongs to one route"
    remember(tokens, key("t"), make_identity())  # re-verified: another identity object
    assert tokens.memo(0, digest("t")) is None
    tokens.remember_decision(0, digest("t"), Memo(key("t"), who, "allow", introspected=False))
    clocks.elapsed = 60.0
    assert tokens.memo(0, digest("t")) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.none() | st.floats(min_value=-10, max_value=600, allow_nan=False),
            st.floats(min_value=0, max_value=120, allow_nan=False),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_no_identity_is_served_on_or_after_exp_or_past_max_ttl(
    steps: list[tuple[float | None, float]],
) -> None:
    """RFC 7519 §4.1.4: the token "MUST NOT be accepted for processing" on or after exp;
    and nothing outlives the configured max_ttl. Entries still inside both are served."""
    clocks = Clocks()
    tokens = cache(clocks, verified_max_ttl=300.0)
    deadlines: dict[bytes, float] = {}
    for n, (expires_in, advance) in enumerate(steps):
        token_key = key(f"t{n}")
        now = clocks.elapsed
        remember(tokens, token_key, make_identity(None if expires_in is None else now + expires_in))
        deadlines[token_key] = min(now + 300.0, now + expires_in if expires_in is not None else 1e9)
        clocks.elapsed += advance
        for held, deadline in deadlines.items():
            found = tokens.local(held)
            if clocks.elapsed >= deadline + 1e-6:
                assert found is None
            elif clocks.elapsed < deadline - 1e-6:
                assert found is not None
