"""The in-process limiter: keys, several limits per route, anonymous traffic, bounded memory,
the fallback share, fields on allowed and refused requests, and counters."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.auth.identity import Identity
from gateway.auth.ratelimit import NS, RateLimited
from gateway.auth.ratelimit_keys import RouteLimits, client_address
from gateway.auth.ratelimiter import RateLimiter
from gateway.compiler.ratelimit import compile_route_limits
from gateway.config.models.ratelimit import RateLimiting, RouteRateLimits

IP = "203.0.113.7"


class Clock:
    def __init__(self) -> None:
        self.now = 10 * NS

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * NS)


def who(client_id: str | None = "app-1", subject: str | None = "alice", **claims: Any) -> Identity:
    return Identity(
        issuer="https://as.example/",
        subject=subject,
        client_id=client_id,
        scopes=frozenset({"read"}),
        audiences=("api",),
        expires_at=None,
        token_kind="jwt",
        claims=claims,
    )


def route_limits(replicas: int = 1, **section: Any) -> RouteLimits:
    compiled = compile_route_limits(RouteRateLimits(**section), route="orders", replicas=replicas)
    assert compiled is not None
    return compiled


TWO_LIMITS = {
    "limits": [
        {"name": "per-client", "key": ["client_id"], "limit": 100, "window": 1},
        {"name": "route", "limit": 10_000, "window": 60},
    ]
}


def admitted(
    limiter: RateLimiter,
    route: RouteLimits,
    n: int,
    identity: Identity | None = None,
    ip: str = IP,
    headers: dict[str, str] | None = None,
) -> int:
    count = 0
    for _ in range(n):
        try:
            limiter.check(route, identity, ip, headers or {})
        except RateLimited:
            continue
        count += 1
    return count


def test_two_limits_the_tighter_refuses_and_a_refusal_charges_neither() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    route = route_limits(headers=True, **TWO_LIMITS)
    assert admitted(limiter, route, 100, who()) == 100
    with pytest.raises(RateLimited) as caught:
        limiter.check(route, who(), IP, {})
    error = caught.value
    assert error.violated == ("per-client",)
    assert error.retry_after == 1
    # The route limit was not charged for the refused request: 100 of 10000 spent.
    assert error.fields == {
        "RateLimit-Policy": '"per-client";q=100;w=1, "route";q=10000;w=60',
        "RateLimit": '"per-client";r=0;t=1, "route";r=9900;t=60',
    }
    assert list(route.counters()) == [
        ("orders", "limits", "per-client", 100, 1),
        ("orders", "limits", "route", 100, 0),
    ]
    # Another client has its own per-client bucket but shares the route's.
    assert admitted(limiter, route, 100, who("app-2")) == 100
    assert route.limits[1].allowed == 200


def test_allowed_responses_carry_the_fields_only_when_asked() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    quiet = route_limits(**TWO_LIMITS)
    assert limiter.check(quiet, who(), IP, {}) == ()
    loud = route_limits(headers=True, **TWO_LIMITS)
    assert RateLimiter(clock=clock).check(loud, who(), IP, {}) == (
        ("RateLimit-Policy", '"per-client";q=100;w=1, "route";q=10000;w=60'),
        ("RateLimit", '"per-client";r=99;t=1, "route";r=9999;t=60'),
    )


def test_a_client_loop_honouring_retry_after_is_always_admitted_on_retry() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    route = route_limits(limits=[{"name": "slow", "key": ["sub"], "limit": 3, "window": 10}])
    sent = admitted_total = 0
    start = clock.now
    while clock.now - start < 60 * NS:
        sent += 1
        try:
            limiter.check(route, who(), IP, {})
        except RateLimited as refused:
            clock.advance(refused.retry_after)
            limiter.check(route, who(), IP, {})  # must not raise: Retry-After was honoured
        admitted_total += 1
    # 3 at once, then one every 10/3 s for 60 s.
    assert 3 + 60 // (10 / 3) - 1 <= admitted_total <= 3 + 60 // (10 / 3) + 1


@pytest.mark.parametrize(
    ("key", "first", "second", "shared"),
    [
        pytest.param(["client_id"], who("a"), who("b"), False, id="client-ids-apart"),
        pytest.param(["client_id"], who(None), who(None, "bob"), True,
                     id="no-client-id-shares-one-bucket"),
        pytest.param(["sub"], who("a", "alice"), who("b", "alice"), True, id="same-subject"),
        pytest.param(["claim:tenant"], who(tenant="t1"), who(tenant="t2"), False,
                     id="claims-apart"),
        pytest.param(["claim:tenant"], who("a", tenant="t1"), who("b", tenant="t1"), True,
                     id="same-claim"),
        pytest.param(["client_id", "sub"], who("a", "x"), who("a", "y"), False,
                     id="combination"),
        pytest.param([], who("a"), who("b"), True, id="no-key-one-bucket-per-route"),
        # OpenID Connect Core §5.7: only iss and sub together identify a user (and a client
        # id is its issuer's): one issuer's user must not spend another issuer's quota.
        pytest.param(["sub"], who("a", "alice"),
                     replace(who("a", "alice"), issuer="https://other.example/"), False,
                     id="same-subject-other-issuer"),
        pytest.param(["client_id"], who("a"),
                     replace(who("a"), issuer="https://other.example/"), False,
                     id="same-client-other-issuer"),
    ],
)  # fmt: skip
def test_keys(key: list[str], first: Identity, second: Identity, shared: bool) -> None:
    limiter = RateLimiter(clock=Clock())
    route = route_limits(limits=[{"name": "l", "key": key, "limit": 2, "window": 1}])
    assert admitted(limiter, route, 2, first) == 2
    assert admitted(limiter, route, 2, second) == (0 if shared else 2)


def test_ip_and_header_keys() -> None:
    limiter = RateLimiter(clock=Clock())
    route = route_limits(
        limits=[{"name": "l", "key": ["ip", "header:X-Tenant"], "limit": 1, "window": 1}]
    )
    assert admitted(limiter, route, 2, who(), "198.51.100.1", {"X-Tenant": "t1"}) == 1
    assert admitted(limiter, route, 1, who(), "198.51.100.1", {"X-Tenant": "t2"}) == 1
    assert admitted(limiter, route, 1, who(), "198.51.100.2", {"X-Tenant": "t1"}) == 1
    # A header of any length costs a bounded key.
    assert admitted(limiter, route, 1, who(), "198.51.100.3", {"X-Tenant": "x" * 8000}) == 1
    assert max(len(part) for key in limiter._buckets for part in key) <= 128


def test_header_and_claim_parts_are_held_as_digests_however_short() -> None:
    """A header or a claim may be a credential (``Authorization``, a ``sid``): no bucket
    keeps it as sent, and distinct values still count apart."""
    limiter = RateLimiter(clock=Clock())
    route = route_limits(
        limits=[{"name": "l", "key": ["header:Authorization", "claim:sid"], "limit": 1}]
    )
    sent = [("Bearer tok-1", "sid-1"), ("Bearer tok-2", "sid-1"), ("Bearer tok-1", "sid-2")]
    for token, sid in sent:
        assert admitted(limiter, route, 2, who(sid=sid), IP, {"Authorization": token}) == 1
    assert len(limiter) == 3
    parts = [part for key in limiter._buckets for part in key]
    assert not [p for p in parts for secret in ("tok-", "sid-") if secret in p]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "20010db800010002::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "20010db800010002::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80000000000000::/64"),
    ],
)
def test_ipv6_clients_share_their_64(address: str, expected: str) -> None:
    assert client_address(address) == expected


def test_anonymous_requests_use_the_anonymous_limits_only() -> None:
    limiter = RateLimiter(clock=Clock())
    route = route_limits(
        limits=[{"name": "per-client", "key": ["client_id"], "limit": 1, "window": 1}],
        anonymous=[{"name": "per-ip", "key": ["ip"], "limit": 3, "window": 1}],
    )
    assert admitted(limiter, route, 5, None, "192.0.2.1") == 3
    assert admitted(limiter, route, 5, None, "192.0.2.2") == 3
    # Authenticated traffic from a limited address is not counted by the per-IP limit.
    assert admitted(limiter, route, 2, who(), "192.0.2.1") == 1
    assert list(route.counters()) == [
        ("orders", "limits", "per-client", 1, 1),
        ("orders", "anonymous", "per-ip", 6, 4),
    ]
    no_anonymous = route_limits(limits=[{"name": "l", "limit": 1, "window": 1}])
    assert admitted(limiter, no_anonymous, 5, None) == 5


def test_anonymous_limits_cannot_key_by_identity() -> None:
    with pytest.raises(ValidationError, match="needs an identity"):
        RouteRateLimits(anonymous=[{"name": "l", "key": ["client_id"], "limit": 1}])


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"name": "l", "key": ["cookie"], "limit": 1}, "a key part is"),
        ({"name": "l", "key": ["header:bad name"], "limit": 1}, "a key part is"),
        ({"name": "l", "key": ["ip", "ip"], "limit": 1}, "listed twice"),
        ({"name": "l", "limit": 1, "window": "1500ms"}, "whole number of seconds"),
        ({"name": "l", "limit": 1, "window": "500ms"}, "greater than or equal to 1"),
        ({"name": 'a"b', "limit": 1}, "should match pattern"),
        ({"name": "l", "limit": 0}, "greater than or equal to 1"),
    ],
)
def test_limit_config_errors(limit: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouteRateLimits(limits=[limit])


def test_config_defaults() -> None:
    top = RateLimiting()
    assert (top.max_keys, top.redis, top.sync_interval) == (100_000, False, 0.2)
    assert (top.expected_replicas, top.when_redis_down) == (1, "local_share")
    assert compile_route_limits(None, route="r") is None
    assert compile_route_limits(RouteRateLimits(), route="r") is None
    limits = route_limits(limits=[{"name": "l", "limit": 5, "window": "1m"}])
    assert (limits.limits[0].rate.limit, limits.limits[0].rate.window_s) == (5, 60)
    assert limits.limits[0].rate.burst == 5


def test_memory_is_bounded_and_an_evicted_limited_key_starts_afresh() -> None:
    clock = Clock()
    limiter = RateLimiter(max_keys=3, clock=clock)
    route = route_limits(limits=[{"name": "l", "key": ["client_id"], "limit": 1, "window": 60}])
    assert admitted(limiter, route, 2, who("a")) == 1  # "a" is now limited for 60 s
    for name in ("b", "c", "d"):
        assert admitted(limiter, route, 1, who(name)) == 1
    assert len(limiter) == 3
    assert (limiter.evicted, limiter.evicted_limited) == (1, 1)
    # Fail open for that one key (see the module docstring for why).
    assert admitted(limiter, route, 1, who("a")) == 1


def test_recently_used_keys_survive_eviction() -> None:
    clock = Clock()
    limiter = RateLimiter(max_keys=2, clock=clock)
    route = route_limits(limits=[{"name": "l", "key": ["client_id"], "limit": 1, "window": 60}])
    admitted(limiter, route, 1, who("hot"))
    for name in ("x", "y", "z"):
        admitted(limiter, route, 1, who("hot"))  # refused, but touched
        admitted(limiter, route, 1, who(name))
    assert admitted(limiter, route, 1, who("hot")) == 0  # still limited


def test_degraded_enforces_the_fallback_share() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    route = route_limits(replicas=4, limits=[{"name": "l", "limit": 100, "window": 1}])
    limiter.degraded = True
    assert admitted(limiter, route, 200, who()) == 25
    clock.advance(1)
    assert admitted(limiter, route, 200, who()) == 25
    limiter.degraded = False
    clock.advance(4)
    assert admitted(limiter, route, 200, who()) == 100


def test_local_full_keeps_the_whole_limit_when_degraded() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    section = RouteRateLimits(limits=[{"name": "l", "limit": 100, "window": 1}])
    route = compile_route_limits(section, route="r", replicas=4, share=False)
    assert route is not None
    limiter.degraded = True
    assert admitted(limiter, route, 200, who()) == 100


def test_pending_counts_are_kept_only_when_shared() -> None:
    clock = Clock()
    local = RateLimiter(clock=clock)
    route = route_limits(limits=[{"name": "l", "key": ["client_id"], "limit": 10, "window": 1}])
    admitted(local, route, 3, who())
    assert local.take_batch(100) == []
    shared = RateLimiter(clock=clock, shared=True)
    admitted(shared, route, 3, who())
    clock.advance(0.05)
    admitted(shared, route, 2, who("other"))
    batch = shared.take_batch(100)
    assert sorted(item.count for item in batch) == [2, 3]
    assert shared.take_batch(100) == []  # taken; watched again only after apply
    shared.restore(batch)
    again = shared.take_batch(100)
    assert sorted(item.count for item in again) == [2, 3]
    assert min(item.since for item in again) == 10 * NS


def test_apply_moves_a_bucket_forward_only_and_watches_busy_keys() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, shared=True)
    route = route_limits(limits=[{"name": "l", "key": ["client_id"], "limit": 10, "window": 1}])
    admitted(limiter, route, 1, who())
    batch = limiter.take_batch(100)
    # The cluster spent 8 more than this replica knows: 0.9 s of debt at 10/s.
    limiter.apply(batch, [9 * NS // 10])
    assert admitted(limiter, route, 5, who()) == 1  # 10 - 9 already spent
    watched = limiter.take_batch(100)
    assert [item.count for item in watched] == [1]
    # A stale, smaller answer never rolls the bucket back.
    limiter.apply(watched, [0])
    assert admitted(limiter, route, 1, who()) == 0
    # Redis knowing nothing (None) means nothing to add.
    limiter.apply(limiter.take_batch(100), [None])
    assert admitted(limiter, route, 1, who()) == 0


def test_a_bucket_that_pushed_is_pulled_for_a_while_even_when_full() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, shared=True)
    route = route_limits(limits=[{"name": "l", "key": ["client_id"], "limit": 100, "window": 1}])
    admitted(limiter, route, 1, who())
    pushed = limiter.take_batch(100)
    clock.advance(0.05)  # the bucket is full again here
    limiter.apply(pushed, [None], linger=NS // 5)
    # Other replicas' spending of the same moments reaches Redis up to a round later, so
    # the key is still pulled for the linger time...
    pulled = limiter.take_batch(100)
    assert [item.count for item in pulled] == [0]
    limiter.apply(pulled, [None], linger=NS // 5)
    clock.advance(0.3)
    pulled = limiter.take_batch(100)
    assert [item.count for item in pulled] == [0]
    # ... and then no longer: full here, full in Redis, nothing pushed lately.
    limiter.apply(pulled, [None], linger=NS // 5)
    assert limiter.take_batch(100) == []


def test_a_limiter_kept_across_a_reload_keeps_state_and_follows_new_rates() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    before = route_limits(limits=[{"name": "l", "key": ["client_id"], "limit": 10, "window": 1}])
    assert admitted(limiter, before, 20, who()) == 10  # 1 s of the limit spent at once
    # The same route and limit recompiled tighter (5/s, burst 5): the spent second still
    # counts, and the bucket refills at the new rate, one every 200 ms.
    after = route_limits(limits=[{"name": "l", "key": ["client_id"], "limit": 5, "window": 1}])
    assert admitted(limiter, after, 1, who()) == 0
    clock.advance(0.2)
    assert admitted(limiter, after, 20, who()) == 1
    clock.advance(0.2)
    assert admitted(limiter, after, 20, who()) == 1
    (bucket,) = limiter._buckets.values()
    assert bucket.limit is after.limits[0]
