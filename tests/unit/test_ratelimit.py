"""GCRA arithmetic and the draft-ietf-httpapi-ratelimit-headers-11 fields, without sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.ratelimit import (
    NS,
    QUOTA_EXCEEDED,
    Rate,
    RateLimited,
    admit,
    ceil_seconds,
    conforms,
    limit_field,
    policy_field,
    service_limit,
    wait,
)
from gateway.problems import GatewayError

MS = NS // 1000


def run(rate: Rate, arrivals: list[int]) -> list[int]:
    """The arrival times one instance admits."""
    tat = -(2**62)
    admitted = []
    for now in arrivals:
        if conforms(tat, now, rate):
            tat = admit(tat, now, rate)
            admitted.append(now)
    return admitted


def most_in_any_window(times: list[int], length: int) -> int:
    """The largest number of ``times`` inside any closed window [a, a + length]."""
    best = 0
    start = 0
    for end, t in enumerate(times):
        while times[start] < t - length:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_interval_rounds_up_so_the_rate_never_exceeds_the_limit() -> None:
    rate = Rate.of(3, 1)
    assert rate.interval == 333_333_334
    assert rate.interval * 3 >= NS
    assert rate.tolerance == 2 * rate.interval  # burst defaults to the limit


@pytest.mark.parametrize(
    ("limit", "window", "burst"), [(0, 1, None), (1, 0, None), (5, 1, 0)], ids=str
)
def test_a_rate_needs_positive_numbers(limit: int, window: int, burst: int | None) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Rate.of(limit, window, burst)


def test_a_full_bucket_admits_its_burst_at_once_then_nothing() -> None:
    rate = Rate.of(10, 1, burst=4)
    assert run(rate, [0] * 6) == [0, 0, 0, 0]


def test_a_client_at_exactly_the_rate_is_never_refused() -> None:
    rate = Rate.of(50, 1, burst=1)
    arrivals = [i * rate.interval for i in range(500)]
    assert run(rate, arrivals) == arrivals


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 40),
    window=st.integers(1, 3),
    extra=st.integers(0, 40),
    gaps=st.lists(st.integers(0, 200 * MS), min_size=1, max_size=400),
)
def test_no_window_ever_admits_more_than_limit_plus_burst(
    limit: int, window: int, extra: int, gaps: list[int]
) -> None:
    rate = Rate.of(limit, window, burst=1 + extra)
    arrivals = []
    now = 0
    for gap in gaps:
        now += gap
        arrivals.append(now)
    admitted = run(rate, arrivals)
    assert most_in_any_window(admitted, window * NS) <= limit + rate.burst
    # And over the whole run no more than the rate allows plus one burst.
    span = arrivals[-1] - arrivals[0]
    assert len(admitted) <= span // rate.interval + rate.burst


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 1000),
    window=st.integers(1, 3600),
    burst=st.integers(1, 50),
    spent=st.integers(0, 60),
    later=st.integers(0, 10 * NS),
)
def test_retry_after_is_when_the_next_request_fits(
    limit: int, window: int, burst: int, spent: int, later: int
) -> None:
    rate = Rate.of(limit, window, burst)
    tat = -(2**62)
    for _ in range(spent):
        if conforms(tat, 0, rate):
            tat = admit(tat, 0, rate)
    now = later
    waited = wait(tat, now, rate)
    assert conforms(tat, now + waited, rate)
    if waited:
        assert not conforms(tat, now, rate)
        assert not conforms(tat, now + waited - 1, rate)
        # Retry-After is whole seconds, rounded up: never too early, at most 1 s late.
        retry_after = ceil_seconds(waited)
        assert conforms(tat, now + retry_after * NS, rate)
        assert retry_after * NS - waited < NS
        # On a refusal the effective window equals Retry-After (draft §6).
        assert service_limit(tat, now, rate) == (0, retry_after)


def test_available_quota_counts_down_and_refills_at_the_rate() -> None:
    rate = Rate.of(100, 1)
    tat = -(2**62)
    assert service_limit(tat, 0, rate) == (100, 1)
    for _ in range(58):
        tat = admit(tat, 0, rate)
    assert service_limit(tat, 0, rate)[0] == 42
    assert service_limit(tat, 10 * MS, rate)[0] == 43  # one unit back every 10 ms
    assert service_limit(tat, 10 * MS - 1, rate)[0] == 42


def test_the_issue_example_fields() -> None:
    rate = Rate.of(100, 1)
    tat = -(2**62)
    for _ in range(58):
        tat = admit(tat, 0, rate)
    r, t = service_limit(tat, 0, rate)
    assert limit_field([("burst", r, t)]) == '"burst";r=42;t=1'
    assert policy_field([("burst", rate)]) == '"burst";q=100;w=1'


def test_the_effective_window_caps_quota_per_second_at_the_policy_rate() -> None:
    # draft §6 / §8.5: r/t must not advertise more than q/w (10000 per minute here).
    rate = Rate.of(10_000, 60)
    tat = admit(-(2**62), 0, rate)
    r, t = service_limit(tat, 0, rate)
    assert r == 9_999
    assert t == 60
    assert r / t <= rate.limit / rate.window_s


def test_several_policies_form_one_structured_list() -> None:
    per_client, per_route = Rate.of(100, 1), Rate.of(10_000, 60)
    assert policy_field([("per-client", per_client), ("route", per_route)]) == (
        '"per-client";q=100;w=1, "route";q=10000;w=60'
    )
    assert limit_field([("per-client", 0, 1), ("route", 9000, 54)]) == (
        '"per-client";r=0;t=1, "route";r=9000;t=54'
    )


def test_share_splits_limit_and_burst_over_replicas() -> None:
    rate = Rate.of(100, 1, burst=30)
    share = rate.share(3)
    assert (share.limit, share.burst) == (34, 10)
    assert share.interval == 3 * rate.interval
    assert run(share, [0] * 20) == [0] * 10
    assert rate.share(1) is rate


def test_rate_limited_renders_429_with_retry_after_and_the_draft_problem() -> None:
    error = RateLimited(3, ["per-client"], {"RateLimit-Policy": '"per-client";q=100;w=1',
                                            "RateLimit": '"per-client";r=0;t=3'})  # fmt: skip
    assert isinstance(error, GatewayError)
    assert error.status == 429
    assert error.reason == "rate_limited"
    assert error.extra_headers() == {
        "Retry-After": "3",
        "RateLimit-Policy": '"per-client";q=100;w=1',
        "RateLimit": '"per-client";r=0;t=3',
    }
    body = json.loads(error.problem_bytes("req-1"))
    assert body == {
        "type": QUOTA_EXCEEDED,
        "title": "Too Many Requests",
        "status": 429,
        "detail": "Too many requests; retry after 3 seconds.",
        "request_id": "req-1",
        "violated-policies": ["per-client"],
    }
    assert error.challenge("gateway") is None
