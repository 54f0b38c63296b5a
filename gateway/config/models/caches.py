"""The verified-token cache and the two-tier introspection cache (memory L1, Redis L2)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.cache.sealing import GENERATE_HINT, parse_key
from gateway.config.models.base import Strict
from gateway.config.types import Duration


class TokenCache(Strict):
    """The in-process cache of verified tokens, keyed by SHA-256 of the token."""

    max_entries: int = Field(10000, ge=0)
    max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="Bound on verified identities (and, apart, on as "
        "many rejections as max_entries).",
    )
    max_ttl: Duration = 300.0
    negative_ttl: Duration = Field(10.0, description="How long a rejected token stays rejected.")


class RedisSentinel(Strict):
    hosts: list[str] = Field(min_length=1, description="host:port of each sentinel")
    service: str


class RedisConfig(Strict):
    url: str | None = Field(None, description="redis://, rediss:// or unix:// URL.")
    sentinel: RedisSentinel | None = None
    cluster: bool = False
    timeout: Duration = Field(0.1, description="Bound on each Redis command of a request.")
    admin_timeout: Duration = Field(5.0, description="Bound on each command of an eviction.")
    key: SecretStr | None = Field(
        None, description="AES-256-GCM key sealing every value in Redis (32 bytes, base64/hex)."
    )
    keys: list[SecretStr] | None = Field(
        None, description="Several keys, to rotate: the first seals, every one opens."
    )

    @field_validator("key")
    @classmethod
    def _one_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key(value.get_secret_value())
        return value

    @field_validator("keys")
    @classmethod
    def _key_list(cls, value: list[SecretStr] | None) -> list[SecretStr] | None:
        for key in value or ():
            parse_key(key.get_secret_value())
        return value

    @property
    def sealing_keys(self) -> list[bytes]:
        given = [self.key] if self.key is not None else list(self.keys or ())
        return [parse_key(key.get_secret_value()) for key in given]

    @model_validator(mode="after")
    def _target(self) -> RedisConfig:
        if (self.url is None) == (self.sentinel is None):
            raise ValueError("give exactly one of url or sentinel")
        if (self.key is None) == (not self.keys):
            raise ValueError(
                "values in Redis are sealed (AES-256-GCM): give exactly one of key: "
                "${GATEWAY_CACHE_KEY} or keys: [...] (32 random bytes, base64 or hex); "
                + GENERATE_HINT
            )
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
