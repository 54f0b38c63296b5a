"""GCRA rate arithmetic, and the IETF httpapi ``RateLimit`` fields (draft-ietf-httpapi-ratelimit-
headers-11, RFC 8941 structured fields; RFC 6585 §4 429; RFC 9110 §10.2.3 Retry-After).

Why GCRA (the Generic Cell Rate Algorithm, a token bucket written as one timestamp): the
state of a limit is a single integer, the theoretical arrival time ``tat`` of the next
request, so a check is a comparison and an addition, O(1), with no timer and no refill loop;
two replicas' consumption can be merged by adding to ``tat``; and the bucket's contents, the
wait before the next request fits and the time to the next free unit all follow from it by
arithmetic. A fixed-window counter, the other O(1) choice, admits twice its limit across a
window boundary; a sliding log costs memory per request.

With emission interval ``T = window / limit`` (rounded up to a whole nanosecond, so the
rate never exceeds the limit) and tolerance ``tau = (burst - 1) * T``, a request at ``now``
conforms iff ``tat - now <= tau``; admitting it sets ``tat = max(tat, now) + T``. Then in
any window of ``window`` seconds at most ``limit + burst`` requests are admitted: the
k-th admission after the first at ``t1`` needs ``t_k >= t1 + (k - 1) * T - tau``.

All times are integers in nanoseconds of a monotonic clock: the arithmetic is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.problems import GatewayError

NS: Final = 1_000_000_000
# draft-ietf-httpapi-ratelimit-headers-11 §5.1 (the problem type the draft registers).
QUOTA_EXCEEDED: Final = "https://iana.org/assignments/http-problem-types#quota-exceeded"


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` requests per ``window_s`` seconds, ``burst`` of them at once."""

    limit: int
    window_s: int
    burst: int
    interval: int  # T, ns
    tolerance: int  # tau, ns

    @classmethod
    def of(cls, limit: int, window_s: int, burst: int | None = None) -> Rate:
        if limit < 1 or window_s < 1:
            raise ValueError("a rate needs a limit and a window of at least 1")
        burst = limit if burst is None else burst
        if burst < 1:
            raise ValueError("burst must be at least 1")
        interval = -(-window_s * NS // limit)  # ceil: never faster than the limit
        return cls(limit, window_s, burst, interval, (burst - 1) * interval)

    def share(self, replicas: int) -> Rate:
        """This rate split over ``replicas`` (each enforces its part when they cannot talk):
        ``limit / replicas`` per window, ``burst / replicas`` at once, both rounded up."""
        if replicas <= 1:
            return self
        limit = max(1, math.ceil(self.limit / replicas))
        burst = max(1, math.ceil(self.burst / replicas))
        interval = self.interval * replicas
        return Rate(limit, self.window_s, burst, interval, (burst - 1) * interval)


def conforms(tat: int, now: int, rate: Rate) -> bool:
    return tat - now <= rate.tolerance


def admit(tat: int, now: int, rate: Rate) -> int:
    """The new ``tat`` once a conforming request is admitted at ``now``."""
    return max(tat, now) + rate.interval


def wait(tat: int, now: int, rate: Rate) -> int:
    """Nanoseconds until a request would conform (0 when it does now)."""
    return max(0, tat - rate.tolerance - now)


def ceil_seconds(ns: int) -> int:
    return -(-ns // NS)


def service_limit(tat: int, now: int, rate: Rate) -> tuple[int, int]:
    """(r, t) of the draft's RateLimit field (§4.1): ``r`` the available quota, ``t`` the
    effective window in whole seconds.

    ``t`` is never less than the time until another unit is restored (so on a refusal it
    equals Retry-After: §6, Retry-After "SHOULD NOT reference a point in time earlier than
    the end of the effective window"), and never less than spending ``r`` at the policy's
    rate takes: §6 asks servers to "cap the ratio between the available quota and the
    effective window values" so that r/t never advertises more than the policy allows.
    """
    interval = rate.interval
    slack = now + rate.tolerance - max(tat, now)
    if slack < 0:
        return 0, -(slack // NS)  # ceil(-slack / NS): the wait, as Retry-After
    r = min(slack // interval + 1, rate.burst)
    next_unit = 0 if slack >= rate.tolerance else interval - slack % interval
    return r, -(-max(next_unit, r * interval) // NS)


def _sf_string(value: str) -> str:
    """RFC 8941 §4.1.6 sf-string (names are checked printable ASCII at config load)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_field(policies: Sequence[tuple[str, Rate]]) -> str:
    """``RateLimit-Policy`` (§3): ``"name";q=LIMIT;w=WINDOW`` for each policy, an RFC 8941
    §4.1.1 list (members joined by ", ")."""
    return ", ".join(f"{_sf_string(name)};q={rate.limit};w={rate.window_s}"
                     for name, rate in policies)  # fmt: skip


def limit_field(limits: Sequence[tuple[str, int, int]]) -> str:
    """``RateLimit`` (§4): ``"name";r=AVAILABLE;t=SECONDS`` for each policy."""
    return ", ".join(f"{_sf_string(name)};r={r};t={t}" for name, r, t in limits)


class RateLimited(GatewayError):
    """RFC 6585 §4: "The 429 status code indicates that the user has sent too many requests
    in a given amount of time"; "The response representations SHOULD include details
    explaining the condition, and MAY include a Retry-After header"."""

    status = 429
    title = "Too Many Requests"
    slug = "rate-limited"
    reason = "rate_limited"

    def __init__(self, retry_after: int, violated: Sequence[str], fields: dict[str, str]) -> None:
        self.retry_after = max(1, retry_after)
        self.violated = tuple(violated)
        self.fields = dict(fields)
        super().__init__(f"Too many requests; retry after {self.retry_after} seconds.")

    def extra_headers(self) -> dict[str, str]:
        # RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds (a whole number).
        return {"Retry-After": str(self.retry_after), **self.fields}

    def problem(self, request_id: str | None = None) -> dict[str, object]:
        body = super().problem(request_id)
        # The draft's §5.1 problem type, with its "violated-policies" extension member.
        body["type"] = QUOTA_EXCEEDED
        body["violated-policies"] = list(self.violated)
        return body
