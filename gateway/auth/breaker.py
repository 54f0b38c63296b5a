"""A circuit breaker for one control-plane endpoint (an issuer's introspection or key set).

A dependency that hangs must not slow every client. Without this, each uncached opaque
token waited the full introspection timeout while the authorization server hung, and
those waits held the clients' connections until throughput on every route fell tenfold.
After ``failures`` consecutive timeouts or errors the breaker opens: callers fail fast
(503, fail closed) for a jittered ``open_for`` period, so a fleet does not retry in step.
Then one caller probes; success closes the breaker, failure opens it again. Results that
arrive while the breaker is open (from calls that started before) change nothing.

Pure state over a clock: the caller asks ``allow()`` before a call and reports
``succeeded()`` or ``failed()`` after it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

State = Literal["closed", "open", "half_open"]
STATE_VALUES: Final = {"closed": 0.0, "open": 1.0, "half_open": 2.0}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 5  # consecutive failures that open it; 0 turns the breaker off
    open_for: float = 5.0
    jitter: float = 0.5  # open_for is stretched by up to this fraction, at random


class Breaker:
    """Closed → (``failures`` in a row) → open → (``open_for`` ± jitter) → half-open →
    one probe → closed on success, open again on failure."""

    __slots__ = ("_clock", "_failures", "_opens_until", "_probing", "_random", "_settings",
                 "opened", "state")  # fmt: skip

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._random = rand
        self._failures = 0
        self._opens_until = 0.0
        self._probing = False
        self.state: State = "closed"
        self.opened = 0  # times it opened, for metrics

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only the one probe may)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() < self._opens_until:
                return False
            self.state = "half_open"
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def abandoned(self) -> None:
        """A call that ended without a result (cancelled): a half-open probe may go again."""
        if self.state == "half_open":
            self._probing = False

    def succeeded(self) -> None:
        if self.state == "open":
            return  # a call from before it opened: not the probe
        self._failures = 0
        self._probing = False
        self.state = "closed"

    def failed(self) -> None:
        settings = self._settings
        if settings.failures <= 0 or self.state == "open":
            return
        self._failures += 1
        if self.state == "half_open" or self._failures >= settings.failures:
            self._open()

    def _open(self) -> None:
        settings = self._settings
        stretch = 1.0 + settings.jitter * self._random()
        self._opens_until = self._clock() + settings.open_for * stretch
        self._failures = 0
        self._probing = False
        self.state = "open"
        self.opened += 1
