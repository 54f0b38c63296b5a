"""Rate limits (GCRA per key; RFC 6585 §4 429; draft-ietf-httpapi-ratelimit-headers fields).

``rate_limits`` (in ``defaults`` or a route, the route's section replacing the defaults' as
a whole) lists a route's limits; ``rate_limiting`` (top level) says how replicas share them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration

_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_:.\-]{1,256}")
IDENTITY_PARTS = frozenset({"client_id", "sub"})
REQUEST_PARTS = frozenset({"ip"})


def check_key_part(part: str) -> str:
    """``client_id``, ``sub``, ``ip``, ``header:NAME`` or ``claim:NAME``."""
    if part in IDENTITY_PARTS or part in REQUEST_PARTS:
        return part
    kind, _, name = part.partition(":")
    if kind == "header" and _FIELD_NAME.fullmatch(name):
        return part
    if kind == "claim" and _CLAIM_NAME.fullmatch(name):
        return part
    raise ValueError(f"{part!r}: a key part is client_id, sub, ip, header:NAME or claim:NAME")


class Limit(Strict):
    """``limit`` requests per ``window`` for each value of ``key`` (none: the whole route)."""

    name: str = Field(pattern=_NAME, description="Names the policy in RateLimit fields.")
    key: list[str] = Field(
        default_factory=list, max_length=8,
        description="Parts combined into the key: client_id, sub, ip, header:NAME, "
        "claim:NAME. Empty: one limit for everyone on the route.",
    )  # fmt: skip
    limit: int = Field(ge=1, le=1_000_000_000)
    window: Duration = Field(1.0, ge=1, le=86400, description="Whole seconds.")
    burst: int | None = Field(
        None, ge=1, le=1_000_000_000, description="Requests at once; default: limit."
    )

    @field_validator("key")
    @classmethod
    def _parts(cls, value: list[str]) -> list[str]:
        for part in value:
            check_key_part(part)
        if len(set(value)) != len(value):
            raise ValueError("a key part is listed twice")
        return value

    @field_validator("window")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        # draft-ietf-httpapi-ratelimit-headers §3.1.3: "w" is an Integer of seconds.
        if not float(value).is_integer():
            raise ValueError("a window is a whole number of seconds")
        return value


class RouteRateLimits(Strict):
    limits: list[Limit] = Field(
        default_factory=list, description="For requests with a validated identity."
    )
    anonymous: list[Limit] = Field(
        default_factory=list,
        description="For requests without one (keys: ip and header:NAME only).",
    )
    headers: bool = Field(
        False, description="Send RateLimit and RateLimit-Policy on allowed responses too."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RouteRateLimits:
        for group in (self.limits, self.anonymous):
            names = [limit.name for limit in group]
            if len(set(names)) != len(names):
                raise ValueError("two limits share a name")
        for limit in self.anonymous:
            for part in limit.key:
                if part in IDENTITY_PARTS or part.startswith("claim:"):
                    raise ValueError(
                        f"anonymous limit {limit.name!r}: {part} needs an identity "
                        "(use ip or header:NAME)"
                    )
        return self


class RateLimiting(Strict):
    """How limits are held: in memory, and with ``redis``, summed across replicas."""

    max_keys: int = Field(100_000, ge=1, description="Keys held in memory (least recent go).")
    redis: bool = Field(
        False, description="Sum counts across replicas through cache.redis (cluster-wide)."
    )
    sync_interval: Duration = Field(
        0.2, ge=0.05, le=5.0, description="How often each replica exchanges counts."
    )
    expected_replicas: int = Field(
        1, ge=1, le=1000, description="While Redis is unreachable each enforces 1/N."
    )
    when_redis_down: Literal["local_share", "local_full"] = Field(
        "local_share",
        description="local_share: each replica its 1/N share; local_full: each the whole "
        "limit (fails open by up to N times).",
    )
    key_prefix: str = Field("gw:rl:", max_length=64)
