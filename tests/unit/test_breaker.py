"""The control-plane circuit breaker as a state machine over a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.breaker import Breaker, BreakerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, open_for: float = 10.0, jitter: float = 0.5, rand: float = 0.0):
    clock = Clock()
    return Breaker(
        BreakerSettings(failures, open_for, jitter), clock=clock, rand=lambda: rand
    ), clock


def test_it_opens_after_the_configured_consecutive_failures_only() -> None:
    b, _ = breaker(failures=3)
    for _ in range(2):
        assert b.allow()
        b.failed()
    b.succeeded()  # a success resets the count
    for _ in range(2):
        b.failed()
    assert b.state == "closed" and b.allow()
    b.failed()
    assert b.state == "open" and not b.allow() and b.opened == 1


@pytest.mark.parametrize(("rand", "until"), [(0.0, 10.0), (1.0, 15.0), (0.5, 12.5)])
def test_the_open_period_is_stretched_by_the_jitter(rand: float, until: float) -> None:
    b, clock = breaker(failures=1, open_for=10.0, jitter=0.5, rand=rand)
    b.failed()
    clock.now += until - 0.001
    assert not b.allow()
    clock.now += 0.002
    assert b.allow() and b.state == "half_open"


def test_half_open_lets_exactly_one_probe_through() -> None:
    b, clock = breaker(failures=1)
    b.failed()
    clock.now += 20
    assert b.allow()
    assert not b.allow() and not b.allow()  # everyone else still fails fast
    b.succeeded()
    assert b.state == "closed" and b.allow() and b.allow()


def test_a_failed_probe_opens_it_again_at_once() -> None:
    b, clock = breaker(failures=5)
    for _ in range(5):
        b.failed()
    clock.now += 20
    assert b.allow()
    b.failed()  # one failure in half-open suffices
    assert b.state == "open" and b.opened == 2 and not b.allow()


def test_an_abandoned_probe_can_be_sent_again() -> None:
    b, clock = breaker(failures=1)
    b.failed()
    clock.now += 20
    assert b.allow()
    b.abandoned()
    assert b.allow()


def test_results_from_calls_started_before_it_opened_change_nothing() -> None:
    b, _ = breaker(failures=1)
    b.failed()
    b.succeeded()  # a slow call from before completes: not the probe
    assert b.state == "open"
    b.failed()
    assert b.opened == 1


def test_zero_failures_turns_it_off() -> None:
    b, _ = breaker(failures=0)
    for _ in range(100):
        b.failed()
    assert b.state == "closed" and b.allow()


@given(st.lists(st.sampled_from(["allow", "ok", "fail", "abandon", "tick"]), max_size=60))
def test_never_more_than_one_call_goes_out_while_not_closed(events: list[str]) -> None:
    b, clock = breaker(failures=2, open_for=1.0)
    outstanding = 0
    for event in events:
        if event == "allow":
            before = b.state
            if b.allow() and before != "closed" and b.state != "closed":
                outstanding += 1
                assert outstanding == 1
        elif event == "tick":
            clock.now += 0.6
        else:
            {"ok": b.succeeded, "fail": b.failed, "abandon": b.abandoned}[event]()
            outstanding = 0
