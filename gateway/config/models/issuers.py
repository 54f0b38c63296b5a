"""Token issuers: key sources (RFC 8414, RFC 7517), JWT rules (RFC 9068) and introspection
(RFC 7662, client authentication per RFC 6749 §2.3 and RFC 7523)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration, TokenMode

Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
]  # fmt: skip
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "PS256", "ES256", "EdDSA")


class KeySource(Strict):
    """Where an issuer's keys come from: exactly one of the four."""

    discovery: bool = False
    jwks_uri: str | None = None
    file: Path | None = None
    jwks: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        chosen = [self.discovery, self.jwks_uri is not None, self.file is not None,
                  self.jwks is not None]  # fmt: skip
        if sum(chosen) != 1:
            raise ValueError("give exactly one of discovery: true, jwks_uri, file or jwks")
        return self


class KeyRefresh(Strict):
    """How often key sets are refetched; Cache-Control max-age is honoured within bounds."""

    default: Duration = 3600.0
    min: Duration = 300.0
    max: Duration = 86400.0
    unknown_kid_interval: Duration = Field(
        30.0, description="At most one refetch per issuer in this interval for unknown kids."
    )
    retry: Duration = Field(10.0, description="Retry delay while no key set has loaded yet.")


class CircuitBreaker(Strict):
    """Fail fast while an issuer's endpoint keeps failing, instead of waiting on it."""

    failures: int = Field(5, ge=0, description="Consecutive timeouts/errors that open it; 0: off.")
    open_for: Duration = Field(
        5.0, description="How long it stays open (stretched ≤ 50% at random)."
    )


class IssuerHTTP(Strict):
    timeout: Duration = 5.0
    ca_file: Path | None = None
    insecure_http: bool = Field(
        False, description="Allow plain-http discovery/JWKS URLs outside loopback."
    )
    breaker: CircuitBreaker = CircuitBreaker()


class ClientAuth(Strict):
    """How the gateway authenticates to the introspection endpoint (RFC 7662 §2.1, RFC 7523)."""

    method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "client_secret_basic"
    )
    client_id: str
    client_secret: SecretStr | None = None
    private_key_file: Path | None = Field(None, description="PEM key for private_key_jwt.")
    private_key_alg: Algorithm = "RS256"
    key_id: str | None = None

    @model_validator(mode="after")
    def _credentials(self) -> ClientAuth:
        if self.method == "private_key_jwt":
            if self.private_key_file is None:
                raise ValueError("private_key_jwt needs private_key_file")
            if self.private_key_alg in HMAC_ALGORITHMS:
                raise ValueError("private_key_jwt signs with an asymmetric algorithm")
        elif self.client_secret is None:
            raise ValueError(f"{self.method} needs client_secret")
        return self


class Introspection(Strict):
    endpoint: str | None = Field(None, description="Default: introspection_endpoint by discovery.")
    client: ClientAuth
    token_type_hint: str | None = "access_token"  # noqa: S105
    timeout: Duration = 2.0
    allow_missing_audience: bool = Field(
        False,
        description="Accept active answers without aud (only for servers that never send "
        "it; otherwise a refresh token introspects as active and would pass).",
    )
    token_prefixes: list[str] = Field(
        default_factory=list,
        description="Opaque tokens starting with one of these belong to this issuer; needed "
        "when a route accepts several introspecting issuers.",
    )

    @field_validator("token_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix or not prefix.isprintable() or " " in prefix:
                raise ValueError(f"{prefix!r} is not a usable token prefix")
        return value


class Issuer(Strict):
    name: str | None = Field(
        None, description="Used by routes' `issuers`; default: the issuer URL."
    )
    issuer: str
    keys: KeySource = KeySource(discovery=True)
    audiences: list[str] = Field(min_length=1)
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    hmac_secret: SecretStr | None = Field(None, description="Enables HS* for this issuer only.")
    leeway: Duration = Field(30.0, le=600)
    required_claims: list[str] = Field(default_factory=lambda: ["exp"])
    require_at_jwt: bool = Field(False, description="RFC 9068: typ must be at+jwt.")
    scope_claims: list[str] = Field(default_factory=lambda: ["scope", "scp"], min_length=1)
    refresh: KeyRefresh = KeyRefresh()
    http: IssuerHTTP = IssuerHTTP()
    introspection: Introspection | None = None
    mode: TokenMode = Field(
        "jwt", description="jwt: local only; introspection: always ask; auto: JWTs locally."
    )
    introspect_jwts: bool = Field(False, description="Also introspect valid JWTs (revocation).")

    @property
    def key(self) -> str:
        return self.name or self.issuer

    @model_validator(mode="after")
    def _hmac_needs_secret(self) -> Issuer:
        wants_hmac = bool(HMAC_ALGORITHMS.intersection(self.algorithms))
        if wants_hmac and self.hmac_secret is None:
            raise ValueError("HS256/HS384/HS512 are accepted only with an explicit hmac_secret")
        if self.hmac_secret is not None and not wants_hmac:
            raise ValueError("hmac_secret is set but no HS* algorithm is listed in algorithms")
        if self.mode != "jwt" and self.introspection is None:
            raise ValueError(f"mode {self.mode} needs an introspection section")
        discovered = self.keys.discovery
        if (
            self.introspection is not None
            and self.introspection.endpoint is None
            and not discovered
        ):
            raise ValueError("introspection.endpoint is needed unless keys use discovery")
        if self.introspect_jwts and self.introspection is None:
            raise ValueError("introspect_jwts needs an introspection section")
        if self.hmac_secret is not None and len(self.hmac_secret.get_secret_value()) < 32:
            raise ValueError("hmac_secret must be at least 32 bytes (RFC 7518 §3.2)")
        return self
