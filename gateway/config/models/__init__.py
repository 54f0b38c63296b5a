"""The config file's schema: frozen pydantic models that reject unknown keys.

These models are validated once at load and then compiled into plain runtime values; nothing
on the request path touches them. One module per part of the file; every name is
re-exported here, so ``from gateway.config.models import Issuer`` reads the same everywhere.
"""

from gateway.config.models.base import Strict
from gateway.config.models.caches import (
    IntrospectionCache,
    L1Cache,
    RedisConfig,
    RedisSentinel,
    TokenCache,
)
from gateway.config.models.decision import (
    DecisionCache,
    DecisionGrpc,
    DecisionListen,
    DecisionService,
)
from gateway.config.models.identity_token import (
    JwksServing,
    RouteIdentityToken,
    SignedTokenCache,
    SigningKeyFile,
    TokenSigning,
)
from gateway.config.models.issuers import (
    DEFAULT_ALGORITHMS,
    HMAC_ALGORITHMS,
    Algorithm,
    ClientAuth,
    Introspection,
    Issuer,
    IssuerHTTP,
    KeyRefresh,
    KeySource,
)
from gateway.config.models.listeners import AdminListen, Forwarding, Limits, Listen
from gateway.config.models.operations import LoggingConfig, Shutdown, Tracing
from gateway.config.models.ratelimit import Limit, RateLimiting, RouteRateLimits
from gateway.config.models.root import GatewayConfig
from gateway.config.models.routes import (
    AuthMode,
    ClaimRule,
    Match,
    PathMatch,
    Require,
    Rewrite,
    Route,
    RouteDefaults,
    Scalar,
    ScopeRule,
    TokenSources,
    WebSocket,
)
from gateway.config.models.upstreams import (
    PathRules,
    Upstream,
    UpstreamPool,
    UpstreamTimeouts,
    UpstreamTLS,
)
from gateway.config.types import TokenMode

__all__ = [
    "DEFAULT_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "AdminListen",
    "Algorithm",
    "AuthMode",
    "ClaimRule",
    "ClientAuth",
    "DecisionCache",
    "DecisionGrpc",
    "DecisionListen",
    "DecisionService",
    "Forwarding",
    "GatewayConfig",
    "Introspection",
    "IntrospectionCache",
    "Issuer",
    "IssuerHTTP",
    "JwksServing",
    "KeyRefresh",
    "KeySource",
    "L1Cache",
    "Limit",
    "Limits",
    "Listen",
    "LoggingConfig",
    "Match",
    "PathMatch",
    "PathRules",
    "RateLimiting",
    "RedisConfig",
    "RedisSentinel",
    "Require",
    "Rewrite",
    "Route",
    "RouteDefaults",
    "RouteIdentityToken",
    "RouteRateLimits",
    "Scalar",
    "ScopeRule",
    "Shutdown",
    "SignedTokenCache",
    "SigningKeyFile",
    "Strict",
    "TokenCache",
    "TokenMode",
    "TokenSigning",
    "TokenSources",
    "Tracing",
    "Upstream",
    "UpstreamPool",
    "UpstreamTLS",
    "UpstreamTimeouts",
    "WebSocket",
]
