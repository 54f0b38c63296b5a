"""Routes and their defaults: what to match, where to send it, and the auth policy."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from gateway.config.models.base import Strict
from gateway.config.models.identity_token import RouteIdentityToken
from gateway.config.models.ratelimit import RouteRateLimits
from gateway.config.models.sender_constraint import ClientCertificates, Dpop
from gateway.config.models.sessions import RouteSession
from gateway.config.models.upstreams import PathRules
from gateway.config.types import HeaderName, HttpMethod, TokenMode

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


AuthMode = Literal["required", "anonymous", "session"]


class RouteDefaults(Strict):
    auth: AuthMode = "required"
    session: RouteSession | None = Field(None, description="With auth: session (browser login).")
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
    paths: PathRules = Field(
        PathRules(), description="How upstreams read paths, unless an upstream says."
    )
    identity_token: RouteIdentityToken | None = None
    rate_limits: RouteRateLimits | None = None
    dpop: Dpop = Field(Dpop(), description="RFC 9449 DPoP-bound tokens (off by default).")
    client_certificates: ClientCertificates = Field(
        ClientCertificates(), description="RFC 8705 certificate-bound tokens (off by default)."
    )


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
        return str(next(v for v in self.model_dump().values() if v is not None))


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


class WebSocket(Strict):
    """``websocket: true`` with its defaults, or these settings (RFC 6455 tunnels)."""

    max_connections: int = Field(
        1000, ge=1, le=1_000_000,
        description="WebSockets this route keeps open at once per process; 503 beyond.",
    )  # fmt: skip


def _websocket_form(value: Any) -> str:
    # One branch per shape, so a wrong value gets one message (a boolean's), not two.
    return "settings" if isinstance(value, dict | WebSocket) else "switch"


WebSocketSetting = Annotated[
    Annotated[bool, Tag("switch")] | Annotated[WebSocket, Tag("settings")],
    Discriminator(_websocket_form),
]


class Route(Strict):
    name: str | None = None
    match: Match = Match()
    upstream: str
    rewrite: Rewrite | None = None
    websocket: WebSocketSetting = False
    # Everything below inherits from `defaults` when left out.
    auth: AuthMode | None = None
    session: RouteSession | None = None
    dpop: Dpop | None = None
    client_certificates: ClientCertificates | None = None
    identify_anonymous: bool | None = None
    tokens: TokenSources | None = None
    require: Require | None = None
    issuers: list[str] | None = None
    identity_headers: dict[HeaderName, str] | None = None
    forward_authorization: bool | None = None
    token_mode: TokenMode | None = Field(None, description="Overrides the issuers' mode here.")
    identity_token: RouteIdentityToken | None = None
    rate_limits: RouteRateLimits | None = None
