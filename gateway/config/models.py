"""The config file's schema: frozen pydantic models that reject unknown keys.

These models are validated once at load and then compiled into runtime objects
(``gateway.state.Runtime``); nothing on the request path touches them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.config.types import Duration, HeaderName, HttpMethod

Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
]  # fmt: skip
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "PS256", "ES256", "EdDSA")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- listeners and HTTP limits -------------------------------------------------------------


class Listen(Strict):
    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens on every interface by default
    port: int = Field(8080, ge=0, le=65535)


class AdminListen(Strict):
    host: str = "127.0.0.1"
    port: int = Field(9901, ge=0, le=65535)
    token: SecretStr | None = Field(
        None, description="Bearer token required by admin actions (POST /cache/evict)."
    )


class Limits(Strict):
    """Bounds on what a client may send before the gateway refuses it."""

    max_request_line: int = Field(8190, ge=256, le=65536, description="bytes (else 400/414)")
    max_header_size: int = Field(8190, ge=256, le=65536, description="bytes per field (431)")
    max_headers: int = Field(100, ge=8, le=1000, description="header fields (431)")
    max_token_size: int = Field(8192, ge=256, le=65536, description="bytes of a bearer token")
    keepalive_timeout: Duration = 75.0
    path_parameters: bool = Field(
        False,
        description="Allow ';' in paths. Off: servlet-style upstreams read /admin;x/y as "
        "/admin/y, which routes matching the raw path would not see.",
    )


class Forwarding(Strict):
    """RFC 7239 / X-Forwarded-* handling, and which peers may set them before us."""

    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Peers (IPs or CIDRs) whose X-Forwarded-*/Forwarded are kept.",
    )
    x_forwarded: bool = True
    forwarded: bool = Field(False, description="Also send an RFC 7239 Forwarded header.")
    via: str | None = Field("gateway", description="Pseudonym in the Via header; null: no Via.")
    request_id_header: HeaderName = "X-Request-Id"

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value


# --- upstreams -----------------------------------------------------------------------------


class UpstreamTimeouts(Strict):
    connect: Duration = 5.0
    read: Duration = Field(60.0, description="Longest wait for the next byte of the response.")
    total: Duration | None = Field(None, description="Bound on the whole exchange; null: none.")


class UpstreamPool(Strict):
    max_connections: int = Field(256, ge=1, le=65536)
    idle_timeout: Duration = 60.0


class UpstreamTLS(Strict):
    ca_file: Path | None = None
    verify: bool = True
    server_name: str | None = None


class Upstream(Strict):
    url: str = Field(description="http://host:port[/base], https://…, or unix:/path/to.sock")
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    pool: UpstreamPool = UpstreamPool()
    tls: UpstreamTLS = UpstreamTLS()
    preserve_host: bool = Field(False, description="Send the client's Host instead of the URL's.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("unix:"):
            path = value.removeprefix("unix:").removeprefix("//")
            if not path.startswith("/"):
                raise ValueError("a unix socket URL must be unix:/absolute/path.sock")
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http://, https:// or unix: URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("an upstream URL may not carry a query, fragment or credentials")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        return value


# --- issuers (RFC 8414, RFC 7517, RFC 9068) ------------------------------------------------


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


class IssuerHTTP(Strict):
    timeout: Duration = 5.0
    ca_file: Path | None = None
    insecure_http: bool = Field(
        False, description="Allow plain-http discovery/JWKS URLs outside loopback."
    )


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


TokenMode = Literal["jwt", "introspection", "auto"]


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


# --- route policy --------------------------------------------------------------------------

Scalar = str | int | float | bool


class ScopeRule(Strict):
    all: list[str] = Field(default_factory=list)
    any: list[str] = Field(default_factory=list)


class ClaimRule(Strict):
    """Exactly one test per claim: ``equals``, ``one_of``, or ``contains`` (for arrays)."""

    equals: Scalar | None = None
    one_of: list[Scalar] | None = None
    contains: Scalar | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ClaimRule:
        if sum(v is not None for v in (self.equals, self.one_of, self.contains)) != 1:
            raise ValueError("give exactly one of equals, one_of or contains")
        return self


class Require(Strict):
    scopes: ScopeRule = ScopeRule()
    claims: dict[str, ClaimRule] = Field(default_factory=dict)


class TokenSources(Strict):
    """RFC 6750 §2: the header is always read; query and form tokens only where enabled."""

    query: bool = False
    form: bool = False


AuthMode = Literal["required", "anonymous"]


class RouteDefaults(Strict):
    auth: AuthMode = "required"
    realm: str = Field("gateway", pattern=r'^[^"\\\x00-\x1f]*$')
    identify_anonymous: bool = Field(
        False, description="On anonymous routes, validate a sent token and set identity headers."
    )
    tokens: TokenSources = TokenSources()
    require: Require = Require()
    issuers: list[str] | None = None
    identity_headers: dict[HeaderName, str] = Field(
        default_factory=lambda: {
            "X-Auth-Subject": "{sub}",
            "X-Auth-Client-Id": "{client_id|azp}",
            "X-Auth-Scopes": "{scope}",
        }
    )
    identity_prefix: str = Field("X-Auth-", description="Client headers with it are removed.")
    forward_authorization: bool = True


# --- routes --------------------------------------------------------------------------------


class PathMatch(Strict):
    """Exactly one of: exact, prefix (segment-aware), glob (* one segment, ** many), regex."""

    exact: str | None = None
    prefix: str | None = None
    glob: str | None = None
    regex: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"glob": value} if "*" in value else {"exact": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PathMatch:
        given = [(k, v) for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix, glob or regex")
        kind, pattern = given[0]
        if kind != "regex" and not pattern.startswith("/"):
            raise ValueError(f"a {kind} path must start with '/'")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, v in self.model_dump().items() if v is not None)

    @property
    def pattern(self) -> str:
        return next(v for v in self.model_dump().values() if v is not None)


class Match(Strict):
    host: list[str] | None = Field(None, description="Exact hosts or *.example.com wildcards.")
    path: PathMatch = PathMatch(prefix="/")
    methods: list[HttpMethod] | None = Field(None, description="null: every method.")

    @field_validator("host", mode="before")
    @classmethod
    def _one_host(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Rewrite(Strict):
    """Applied to the normalised path: strip a prefix, then add one."""

    strip_prefix: str | None = Field(None, pattern=r"^/")
    add_prefix: str | None = Field(None, pattern=r"^/")


class Route(Strict):
    name: str | None = None
    match: Match = Match()
    upstream: str
    rewrite: Rewrite | None = None
    websocket: bool = False
    # Everything below inherits from `defaults` when left out.
    auth: AuthMode | None = None
    identify_anonymous: bool | None = None
    tokens: TokenSources | None = None
    require: Require | None = None
    issuers: list[str] | None = None
    identity_headers: dict[HeaderName, str] | None = None
    forward_authorization: bool | None = None
    token_mode: TokenMode | None = Field(None, description="Overrides the issuers' mode here.")


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


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = Field(True, description="One line per request on stdout.")


class Tracing(Strict):
    enabled: bool = Field(
        False, description="OpenTelemetry server spans (needs opentelemetry-api installed)."
    )


class Shutdown(Strict):
    """SIGTERM: readiness false at once, stop accepting after a delay, then drain."""

    readiness_delay: Duration = Field(5.0, description="Time for load balancers to notice.")
    drain_timeout: Duration = Field(30.0, description="Longest wait for in-flight requests.")


class GatewayConfig(Strict):
    listen: Listen = Listen()
    admin: AdminListen = AdminListen()
    limits: Limits = Limits()
    logging: LoggingConfig = LoggingConfig()
    tracing: Tracing = Tracing()
    shutdown: Shutdown = Shutdown()
    forwarding: Forwarding = Forwarding()
    upstreams: dict[str, Upstream] = Field(min_length=1)
    issuers: list[Issuer] = Field(default_factory=list)
    token_cache: TokenCache = TokenCache()
    cache: IntrospectionCache = IntrospectionCache()
    defaults: RouteDefaults = RouteDefaults()
    routes: list[Route] = Field(min_length=1)
