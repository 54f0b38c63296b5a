"""The verified-token cache and the two-tier introspection cache (memory L1, Redis L2)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, model_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration


class TokenCache(Strict):
    """The in-process cache of verified tokens, keyed by SHA-256 of the token."""

    max_entries: int = Field(10000, ge=0)
    max_ttl: Duration = 300.0
    negative_ttl: Duration = Field(10.0, description="How long a rejected token stays rejected.")


class RedisSentinel(Strict):
    hosts: list[str] = Field(min_length=1, description="host:port of each sentinel")
    service: str


class RedisConfig(Strict):
    url: str | None = Field(None, description="redis://, rediss:// or unix:// URL.")
    sentinel: RedisSentinel | None = None
    cluster: bool = False
    timeout: Duration = Field(0.1, description="Bound on each Redis command.")

    @model_validator(mode="after")
    def _target(self) -> RedisConfig:
        if (self.url is None) == (self.sentinel is None):
            raise ValueError("give exactly one of url or sentinel")
        if self.url is not None and urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return self


class L1Cache(Strict):
    max_entries: int = Field(10000, ge=0)
    max_bytes: int = Field(16 * 1024 * 1024, ge=0)
    ttl: Duration = 30.0


class IntrospectionCache(Strict):
    """The two-tier cache of introspection answers: in-process L1, shared Redis L2."""

    l1: L1Cache = L1Cache()
    redis: RedisConfig | None = None
    key_prefix: str = "gw:introspect:"
    max_ttl: Duration = 300.0
    negative_ttl: Duration = 10.0
    serve_stale: Duration = Field(
        0.0, description="Serve an expired entry this long if the AS is down; 0: off."
    )
