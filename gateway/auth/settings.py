"""The auth core's compiled settings: plain frozen values, built from the config once.

The auth core never reads ``gateway.config.models``: the compile step (``gateway.compiler``)
turns the operator's file into these values, so the request path, ``gateway check`` and the
tests all work on the same small, immutable shapes, and a change to the file format stays
on the config side of that line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.auth.breaker import BreakerSettings
from gateway.config.types import TokenMode

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


@dataclass(frozen=True, slots=True)
class KeyRefreshSettings:
    """When key sets are refetched; Cache-Control max-age is honoured within [min, max]."""

    default: float = 3600.0
    min: float = 300.0
    max: float = 86400.0
    unknown_kid_interval: float = 30.0
    retry: float = 10.0


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """How the control plane talks to one issuer."""

    timeout: float = 5.0
    ca_file: Path | None = None
    insecure_http: bool = False
    breaker: BreakerSettings = field(default_factory=BreakerSettings)


@dataclass(frozen=True, slots=True)
class KeySourceSettings:
    """Exactly one of: discovery, a jwks_uri, a file, an inline JWK Set."""

    discovery: bool = False
    jwks_uri: str | None = None
    file: Path | None = None
    jwks: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """The gateway's own client credentials at an authorization server (RFC 6749 §2.3)."""

    client_id: str
    method: ClientAuthMethod = "client_secret_basic"
    client_secret: str | None = None
    private_key_file: Path | None = None
    private_key_alg: str = "RS256"
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class IntrospectionSettings:
    """One issuer's RFC 7662 endpoint and how opaque tokens are recognised as its own."""

    client: ClientCredentials
    endpoint: str | None = None  # None: introspection_endpoint from discovery
    token_type_hint: str | None = "access_token"  # noqa: S105 - a hint, not a secret
    timeout: float = 2.0
    allow_missing_audience: bool = False
    token_prefixes: tuple[str, ...] = ()  # opaque tokens this issuer owns; () = any


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    """Everything the gateway trusts about one issuer."""

    key: str  # the name routes use (the configured name, else the issuer URL)
    issuer: str
    audiences: tuple[str, ...]
    keys: KeySourceSettings = KeySourceSettings(discovery=True)
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    hmac_secret: str | None = None
    leeway: float = 30.0
    required_claims: tuple[str, ...] = ("exp",)
    require_at_jwt: bool = False
    scope_claims: tuple[str, ...] = ("scope", "scp")
    refresh: KeyRefreshSettings = KeyRefreshSettings()
    http: HttpSettings = HttpSettings()
    introspection: IntrospectionSettings | None = None
    mode: TokenMode = "jwt"
    introspect_jwts: bool = False


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Bounds and lifetimes of every tier of the identity cache."""

    verified_max_entries: int = 10_000
    verified_max_bytes: int = 32 * 1024 * 1024
    verified_max_ttl: float = 300.0
    verified_negative_ttl: float = 10.0
    l1_max_entries: int = 10_000
    l1_max_bytes: int = 16 * 1024 * 1024
    l1_ttl: float = 30.0
    max_ttl: float = 300.0
    negative_ttl: float = 10.0
    negative_max_entries: int = 10_000
    serve_stale: float = 0.0
    key_prefix: str = "gw:id:"
